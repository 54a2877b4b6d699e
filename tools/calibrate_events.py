"""Per-class thresholds and event lengths of each profile, calibrated on held-out folds for
a stated event precision; and the event-level figures that go with them.

    EDGEQMOE_WEIGHTS_DIR=../shared/models python tools/calibrate_events.py \
        --data ../shared/data/us8k16k --negatives NEG [--only stable] [--precision 0.9] [--write]

For each profile and each fold of the labelled clips held out in turn (recordings never
split), the profile's head is trained on the other folds exactly as
``tools/train_defaults.py`` trains the shipped bundle, and the open-set rule on the other
folds and the negative corpus (``tools/negatives.py``); the held-out clips then go through
the daemon's own decisions (``edgeqmoe.daemon.evaluate.replay``: level gate, rule,
smoothing, thresholds, events), each clip a file as the daemon reads it. Per class, the
threshold (0.20 .. 0.80) and, for short sounds (``SHORT``), the windows an event needs
(1 or the profile's default) are chosen to give the most clips the right event while the
events of that class are right at least ``--precision`` of the time; a class that cannot
reach it gets the setting of highest precision. ``--write`` puts the result in the
profile's YAML (``decision.thresholds``, ``decision.event_windows``).

The held-out heads see fp32 embeddings (the cache that training uses); the profiles that
run the integer embedder see slightly different ones in the daemon (docs/int8.md: 0.002
weighted F1). The mixtures' router uncertainty is not replayed (no abstentions here).
Prints, per profile: right / wrong / no event per class before and after, and writes the
trade-off curve (right events against false events per hour of non-target sound, for a
common threshold from 0.2 to 0.9) to ``--curve FILE`` as JSON for docs/open-set.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

#: classes whose sound can be over within one window: an event may come from one window
SHORT = ("gun_shot", "car_horn", "dog_bark")
GRID = [round(x, 2) for x in np.arange(0.2, 0.81, 0.05)]


def heldout_heads(name, prof, data, weights, cache, observed, ds):
    """Replace each clip's head probabilities by those of a head trained without its fold."""
    from edgeqmoe.train.config import config_from_dict
    from edgeqmoe.train.data import load_data, splits, val_split
    from edgeqmoe.train.run import embed_if_needed
    from edgeqmoe.train.trainer import predict_proba, train_model
    from train_defaults import PROFILES

    embedder, model, _ = PROFILES[name]
    window = prof.audio.window
    cfg = config_from_dict({"name": name, "model": model, "cv": "folds", "out": os.path.join(ROOT, "runs", "calib"),
                            "data": {"dataset": data, "embedder": embedder, "cache": cache, "window": window,
                                     "hop": window / 2, "weights": weights}})
    d = load_data(embed_if_needed(cfg, log=lambda *x: None))
    with np.load(embed_if_needed(cfg, log=lambda *x: None)) as z:
        start = z["start"]
    saved = os.path.join(cache, f"heldout-{name}-{window:g}s.npy")  # a rerun (another precision) trains nothing
    held = np.load(saved) if os.path.exists(saved) else None
    if held is not None and held.shape == (len(d.y), len(d.classes)):
        print(f"  {name}: held-out heads from {saved}", flush=True)
        splits_to_train = []
    else:
        held = np.zeros((len(d.y), len(d.classes)), np.float32)
        splits_to_train = list(splits(d, "folds", cfg.train.seed))
    for fold, tr, te in splits_to_train:
        dtr = d.subset(tr)
        tr_i, va_i = val_split(dtr, cfg.train.val_fraction, cfg.train.seed, by="group")
        t = train_model(cfg, dtr.subset(tr_i), dtr.subset(va_i), cfg.train.seed)
        held[te] = predict_proba(t.model, ((d.X[te] - t.mean) / t.std).astype(np.float32))
        print(f"  {name}: head without fold {fold} trained", flush=True)
    if splits_to_train:
        np.save(saved, held)
    by_clip = {}
    for r in range(len(d.y)):
        by_clip.setdefault(int(d.clip[r]), {})[round(float(start[r]), 3)] = r
    out = []
    for i, o in enumerate(observed):
        rows = by_clip[i]
        o = copy.copy(o)
        try:
            o.proba = held[[rows[round(float(s), 3)] for s in o.starts]]
        except KeyError:
            raise SystemExit(f"{ds.clips[i].path}: the embedding cache has no window at one of {o.starts}") from None
        out.append(o)
    return out


def fold_rules(pipe, ds, observed, neg_obs, neg_files, meta):
    """The open-set rule for each fold, trained without it; and for each category of the
    negatives, the rule trained without that category (its thresholds those of the rule
    trained with everything, as ``edgeqmoe eval --open-set`` does)."""
    from edgeqmoe.daemon.evaluate import negative_rows, target_rows
    from edgeqmoe.embed.openset import train_rule

    P, y, fold = target_rows(ds, observed)
    N, g = negative_rows(neg_files, neg_obs)
    kw = dict(target_loss=meta.get("target_loss", 0.03), class_loss=meta.get("class_loss", 0.03),
              l2=meta.get("l2", 30.0))
    folds = {int(f): train_rule(P[fold != f], y[fold != f], fold[fold != f], N, ds.classes, neg_group=g,
                                **kw).bind(pipe.classes) for f in np.unique(fold)}
    full = train_rule(P, y, fold, N, ds.classes, neg_group=g, **kw)
    cats = {c: train_rule(P, y, fold, N[g != c], ds.classes, neg_group=g[g != c], thresholds_of=full,
                          **kw).bind(pipe.classes) for c in sorted(set(g))}
    return folds, cats


class Replayer:
    """The held-out clips, each fold with its own rule; and the negatives, each category
    with the rule trained without it."""

    def __init__(self, pipe, ds, observed, rules, neg_obs, neg_files):
        self.pipe, self.ds, self.observed, (self.rules, self.cat_rules) = pipe, ds, observed, rules
        self.neg_obs, self.neg_files = neg_obs, neg_files

    def negatives(self, decision) -> dict:
        """Target events per hour of non-target sound: music apart (street_music is a class)."""
        from edgeqmoe.daemon.evaluate import replay
        from edgeqmoe.daemon.pipeline import Decider

        pipe, out = self.pipe, {"music": [0, 0.0], "other sound": [0, 0.0]}
        for o, f in zip(self.neg_obs, self.neg_files):
            pipe.open_set = self.cat_rules[f["category"]]
            pipe.decider = Decider(pipe.classes, decision)
            _, evs = replay(pipe, o)
            row = out["music" if f["category"] == "music" else "other sound"]
            row[0] += sum(1 for e in evs if e.source is None)
            row[1] += o.seconds
        return {k: 3600.0 * n / max(s, 1e-9) for k, (n, s) in out.items()}

    def run(self, decision) -> dict:
        from edgeqmoe.daemon.evaluate import replay
        from edgeqmoe.daemon.pipeline import Decider

        pipe = self.pipe
        classes = pipe.classes
        right = np.zeros(len(classes), int)
        clips = np.zeros(len(classes), int)
        wrong = np.zeros(len(classes), int)  # clips of the class with a wrong event and no right one
        events_of = np.zeros(len(classes), int)
        events_right = np.zeros(len(classes), int)
        for c, o in zip(self.ds.clips, self.observed):
            pipe.open_set = self.rules[c.fold]
            pipe.decider = Decider(classes, decision)
            _, evs = replay(pipe, o)
            names = {e.label for e in evs if e.source is None}
            clips[c.label] += 1
            for e in evs:
                if e.source is None:
                    k = classes.index(e.label)
                    events_of[k] += 1
                    events_right[k] += e.label == classes[c.label]
            if classes[c.label] in names:
                right[c.label] += 1
            elif names:
                wrong[c.label] += 1
        return {"right": right, "clips": clips, "wrong": wrong, "events_of": events_of, "events_right": events_right}


def main() -> None:
    from dataclasses import replace

    from edgeqmoe.daemon import evaluate as E
    from edgeqmoe.daemon.profiles import load_profile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--negatives", required=True)
    ap.add_argument("--weights", default=os.environ.get("EDGEQMOE_WEIGHTS_DIR"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "cache"))
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--precision", type=float, default=0.9)
    ap.add_argument("--write", action="store_true", help="write the thresholds into profiles/NAME.yaml")
    ap.add_argument("--curve", default=None, help="write the trade-off curves here (JSON)")
    a = ap.parse_args()
    t0 = time.time()
    names = a.only or ["latency-critical", "balanced", "accuracy", "energy", "stable"]
    curves = {}
    rules_by_window = {}
    for name in names:
        prof = load_profile(name)
        base = replace(prof.decision, thresholds={}, event_windows={})
        pipe = E._pipeline(replace(prof, decision=base))
        ds, observed = E.observe_dataset(pipe, prof, a.data)
        neg_files = E.read_corpus(a.negatives)
        neg_obs = [E.observe(pipe, f["file"], prof.audio.window, prof.audio.hop) for f in neg_files]
        key = prof.audio.window
        if key not in rules_by_window:
            rules_by_window[key] = fold_rules(pipe, ds, observed, neg_obs, neg_files, pipe.open_set.meta)
        observed = heldout_heads(name, prof, a.data, a.weights, a.cache, observed, ds)
        rep = Replayer(pipe, ds, observed, rules_by_window[key], neg_obs, neg_files)
        before = rep.run(base)
        chosen_t, chosen_n = {}, {}
        for k, cls in enumerate(pipe.classes):
            best = None
            for n in ([1, base.event_min_windows] if cls in SHORT else [base.event_min_windows]):
                for t in GRID:
                    dec = replace(base, thresholds={cls: t}, event_windows={cls: n})
                    r = rep.run(dec)
                    prec = r["events_right"][k] / max(1, r["events_of"][k])
                    score = (prec >= a.precision, r["right"][k] if prec >= a.precision else prec, -t)
                    if best is None or score > best[0]:
                        best = (score, t, n, prec, r["right"][k] / max(1, r["clips"][k]))
            _, chosen_t[cls], chosen_n[cls], prec, rate = best
            print(f"  {name} {cls}: threshold {chosen_t[cls]}, event from {chosen_n[cls]} window(s): right event "
                  f"{100 * rate:.1f}% of its clips, its events right {100 * prec:.1f}%", flush=True)
        after_dec = replace(base, thresholds=chosen_t,
                            event_windows={c: n for c, n in chosen_n.items() if n != base.event_min_windows})
        after = rep.run(after_dec)
        neg_before, neg_after = rep.negatives(base), rep.negatives(after_dec)
        for label, r, n in (("before (one threshold)", before, neg_before), ("calibrated", after, neg_after)):
            share = r["right"].sum() / r["clips"].sum()
            low = min(zip(r["right"] / np.maximum(1, r["clips"]), pipe.classes))
            print(f"{name} {label}: right event {100 * share:.1f}% of {r['clips'].sum()} held-out clips, wrong "
                  f"{100 * r['wrong'].sum() / r['clips'].sum():.1f}%, lowest class {low[1]} {100 * low[0]:.1f}%; "
                  f"target events per hour of other sound {n['other sound']:.0f}, of music {n['music']:.0f}",
                  flush=True)
        curves[name] = {
            "per_class": {c: {"threshold": chosen_t[c], "event_windows": chosen_n[c],
                              "right": int(after["right"][k]), "clips": int(after["clips"][k]),
                              "wrong": int(after["wrong"][k]),
                              "precision": float(after["events_right"][k] / max(1, after["events_of"][k])),
                              "right_before": int(before["right"][k]), "wrong_before": int(before["wrong"][k])}
                          for k, c in enumerate(pipe.classes)},
            "right_share": float(after["right"].sum() / after["clips"].sum()),
            "right_share_before": float(before["right"].sum() / before["clips"].sum()),
            "wrong_share": float(after["wrong"].sum() / after["clips"].sum()),
            "wrong_share_before": float(before["wrong"].sum() / before["clips"].sum()),
            "events_per_hour": neg_after, "events_per_hour_before": neg_before,
            "curve": [],
        }
        for scale in (0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5):  # the operating points around the calibrated one
            dec = replace(after_dec, thresholds={c: min(0.95, t * scale) for c, t in chosen_t.items()})
            r, n = rep.run(dec), rep.negatives(dec)
            curves[name]["curve"].append({"scale": scale, "right_share": float(r["right"].sum() / r["clips"].sum()),
                                          "wrong_share": float(r["wrong"].sum() / r["clips"].sum()),
                                          "events_per_hour": n})
            print(f"  {name} thresholds x{scale}: right {100 * r['right'].sum() / r['clips'].sum():.1f}%, events/h "
                  f"other sound {n['other sound']:.0f}, music {n['music']:.0f}", flush=True)
        if a.write:
            write_profile(name, chosen_t, {c: n for c, n in chosen_n.items() if n != base.event_min_windows},
                          a.precision)
    if a.curve:
        with open(a.curve, "w") as f:
            json.dump(curves, f, indent=1)
    print(f"done in {(time.time() - t0) / 60:.1f} min")


def write_profile(name: str, thresholds: dict, event_windows: dict, precision: float) -> None:
    """Set decision.thresholds and decision.event_windows in profiles/NAME.yaml (one line
    each, under ``decision:``; the rest of the file, comments included, untouched)."""
    path = os.path.join(ROOT, "profiles", f"{name}.yaml")
    lines = [ln for ln in open(path).read().splitlines()
             if not re.match(r"\s+(thresholds|event_windows):", ln) and "calibrated by tools/calibrate_events" not in ln]
    i = next(i for i, ln in enumerate(lines) if ln.startswith("decision:"))
    body = ", ".join(f"{c}: {t}" for c, t in thresholds.items())
    new = [f"  # per-class thresholds calibrated by tools/calibrate_events.py on held-out folds for event "
           f"precision {precision} (docs/open-set.md)", f"  thresholds: {{{body}}}"]
    if event_windows:
        new.append(f"  event_windows: {{{', '.join(f'{c}: {n}' for c, n in event_windows.items())}}}")
    lines[i + 1:i + 1] = new
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
