"""What a profile's daemon decides, and which events it raises, measured offline.

Every file is cut into the profile's windows as the daemon cuts it, each window goes once
through the profile's embedder and head (``observe``, batched), and the daemon's own
decision code replays them (``replay``: ``Pipeline.decide`` and the level gate, the
open-set rule, smoothing, thresholds, events), starting afresh with each file as the
daemon does. So rules and thresholds can be swapped and measured again without running
the network twice.

- ``event_figures(profile, dataset)``: per class, the share of target clips that get the
  right event, a wrong-class event, or no event; honest only on clips the bundle and the
  rule were not trained on.
- ``open_set_figures(profile, folder, data)``: per category of non-target audio (the
  folders of ``tools/negatives.py build``), the share of windows decided as a class and
  the target events per hour of that sound. With ``data`` (the labelled target clips),
  each category is measured with a rule trained without it (leave one category out), and
  each source (package) with a rule trained without that source (leave one source out);
  without ``data``, with the shipped rule.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .profiles import Profile
from .records import DECISION_CODES


@dataclass
class Observed:
    """What the network gave for each window of one file."""

    name: str
    starts: np.ndarray            # (n,) s
    window_s: float
    rms: np.ndarray               # (n,) dBFS
    peak: np.ndarray
    proba: np.ndarray             # (n, classes); rows of gated windows are unused
    unc: Optional[np.ndarray]
    logits: Optional[np.ndarray]  # (n, 527) with mn04
    gated: np.ndarray             # (n,) bool: below the level gate (nothing ran)

    @property
    def seconds(self) -> float:
        return float(self.starts[-1] + self.window_s) if len(self.starts) else 0.0


def observe(pipe, path, window: float, hop: float, batch: int = 16) -> Observed:
    """Cut ``path`` into windows as the daemon does (a file shorter than a window gives one
    zero-padded window) and run the embedder (with its AudioSet output where it has one)
    and the head on those above the level gate."""
    from ..audio.io import load
    from ..audio.windowing import frame, window_starts
    from .pipeline import level_dbfs

    sr = pipe.sr
    win, hp = int(round(window * sr)), int(round(hop * sr))
    x = load(str(path), sr)
    w = frame(x, win, hp)
    starts = np.array(window_starts(len(x), win, hp), np.float64) / sr
    lv = np.array([level_dbfs(r) for r in w]).reshape(-1, 2)
    gated = lv[:, 0] < pipe.min_level if pipe.min_level is not None else np.zeros(len(w), bool)
    n, C = len(w), len(pipe.classes)
    proba = np.zeros((n, C), np.float32)
    unc = np.zeros(n, np.float32) if pipe.is_moe else None
    audioset = hasattr(pipe.embedder, "embed_with_logits")
    logits = np.zeros((n, 527), np.float32) if audioset else None
    live = np.flatnonzero(~gated)
    for i in range(0, len(live), batch):
        rows = live[i:i + batch]
        if audioset:
            emb, lg = pipe.embedder.embed_with_logits(w[rows], sr)
            logits[rows] = lg
        else:
            emb = np.stack([pipe.embedder.embed(r, sr) for r in w[rows]])
        pred = pipe.model.predict(emb)
        proba[rows] = pred.proba
        if unc is not None and pred.uncertainty is not None:
            unc[rows] = pred.uncertainty
    return Observed(str(path), starts, window, lv[:, 0], lv[:, 1], proba, unc, logits, gated)


def replay(pipe, obs: Observed) -> Tuple[List[Optional[int]], List]:
    """The daemon's decisions on one file's windows: (the ``d`` code of each window record,
    the events), starting afresh as the daemon does at a new file."""
    pipe.flush_events()
    pipe.decider.reset()
    codes, events = [], []
    for i, t in enumerate(obs.starts):
        if obs.gated[i]:
            rec, ev = pipe._quiet(float(obs.rms[i]), float(obs.peak[i]), time.perf_counter())
        else:
            rec, ev = pipe.decide(float(obs.rms[i]), float(obs.peak[i]), obs.proba[i],
                                  None if obs.unc is None else float(obs.unc[i]),
                                  None if obs.logits is None else obs.logits[i], float(t), float(t) + obs.window_s)
        codes.append(rec.get("d"))
        events += ev
    events += pipe.flush_events()
    return codes, events


def _pipeline(profile: Profile):
    from .pipeline import Pipeline

    return Pipeline.from_profile(profile)


# ---------------------------------------------------------------------------- target clips
def observe_dataset(pipe, profile: Profile, data, progress: Optional[Callable[[str], None]] = None, folds=()):
    """(dataset, [Observed per clip]) for the labelled clips of ``data`` (of ``folds`` only)."""
    from ..audio.datasets import read_dataset

    ds = read_dataset(data)
    if folds:
        ds.clips = [c for c in ds.clips if c.fold in set(folds)]
    if list(ds.classes) != list(pipe.classes):
        raise ValueError(f"{data}: its classes {ds.classes} differ from the model's {pipe.classes}")
    out = []
    for i, c in enumerate(ds.clips):
        out.append(observe(pipe, c.path, profile.audio.window, profile.audio.hop))
        if progress and (i + 1) % 500 == 0:
            progress(f"{i + 1} of {len(ds.clips)} clips")
    return ds, out


def clip_outcomes(pipe, ds, observed: List[Observed]) -> Dict:
    """Per class: target clips, right event, wrong-class event (and no right one), no
    event; and window accuracy of the decisions (decided as the right class)."""
    classes = list(pipe.classes)
    rows = {c: {"clips": 0, "right": 0, "wrong": 0, "none": 0} for c in classes}
    wrong_as: Dict[str, int] = {}
    groups: Dict[str, Dict[str, int]] = {}
    windows = right_windows = 0
    for clip, obs in zip(ds.clips, observed):
        codes, events = replay(pipe, obs)
        label = classes[clip.label]
        r = rows[label]
        r["clips"] += 1
        names = [e.label for e in events if e.source is None]
        for g in {e.label for e in events if e.source is not None}:  # listen groups: on which clips they fired
            per = groups.setdefault(g, {})
            per[label] = per.get(label, 0) + 1
        if label in names:
            r["right"] += 1
        elif names:
            r["wrong"] += 1
            for n in set(names):
                wrong_as[f"{label} -> {n}"] = wrong_as.get(f"{label} -> {n}", 0) + 1
        else:
            r["none"] += 1
        windows += len(codes)
        right_windows += sum(1 for d in codes if d is not None and d >= 0 and classes[d] == label)
    total = {k: sum(r[k] for r in rows.values()) for k in ("clips", "right", "wrong", "none")}
    return {"per_class": rows, "total": total, "wrong_as": dict(sorted(wrong_as.items(), key=lambda kv: -kv[1])),
            "groups": groups,
            "windows": windows, "windows_right": right_windows,
            "right_event_share": total["right"] / max(1, total["clips"]),
            "lowest_class": min(((r["right"] / max(1, r["clips"]), c) for c, r in rows.items() if r["clips"]),
                                default=(0.0, None))}


def event_figures(profile: Profile, data, progress=None, folds=()) -> Dict:
    pipe = _pipeline(profile)
    ds, observed = observe_dataset(pipe, profile, data, progress, folds)
    return clip_outcomes(pipe, ds, observed)


def format_events(r: Dict) -> str:
    t = r["total"]
    n = max(1, t["clips"])
    lines = [f"events (the daemon's decisions on each clip as a file): right event {t['right']} of {t['clips']} clips "
             f"({100 * t['right'] / n:.1f}%), a wrong-class event only {t['wrong']} ({100 * t['wrong'] / n:.1f}%), "
             f"no event {t['none']} ({100 * t['none'] / n:.1f}%); windows decided right {r['windows_right']} of "
             f"{r['windows']}"]
    for c, v in r["per_class"].items():
        k = max(1, v["clips"])
        lines.append(f"  {c:18s} {v['clips']:5d} clips: right {100 * v['right'] / k:5.1f}%  wrong "
                     f"{100 * v['wrong'] / k:5.1f}%  none {100 * v['none'] / k:5.1f}%")
    for g, per in r.get("groups", {}).items():
        lines.append(f"  listen group {g}: an event on " + ", ".join(
            f"{n} of {r['per_class'][c]['clips']} {c}" for c, n in sorted(per.items(), key=lambda kv: -kv[1])) + " clips")
    if r["wrong_as"]:
        lines.append("  most frequent wrong events: " + ", ".join(f"{k} {v}" for k, v in list(r["wrong_as"].items())[:6]))
    return "\n".join(lines)


def format_open_set(r: Dict) -> str:
    lines = [f"open set ({r['protocol']}):"]

    def table(rows: Dict, what: str):
        lines.append(f"  {what:20s} windows  decided  other  quiet  events  events/h  decided as")
        for k, v in rows.items():
            top = ", ".join(f"{c} {n}" for c, n in sorted(v["as"].items(), key=lambda kv: -kv[1])[:3])
            lines.append(f"  {k:20s} {v['windows']:7d}  {100 * v['decided_share']:6.1f}%  "
                         f"{100 * v['other'] / max(1, v['windows']):5.1f}%  {100 * v['quiet'] / max(1, v['windows']):5.1f}%"
                         f"  {v['events']:6d}  {v['events_per_hour']:8.1f}  {top}")

    table(r["categories"], "category")
    groups = sorted({g for v in r["categories"].values() for g in v.get("groups", {})})
    if groups:
        lines.append("  listen groups: events per hour (files with one) per category: ")
        for k, v in r["categories"].items():
            gs = v.get("groups", {})
            lines.append(f"  {k:20s} " + "  ".join(f"{g} {gs[g]['events_per_hour']:.0f}/h ({gs[g]['files']}/{v['files']})"
                                                  for g in groups if g in gs))
    cats = {k: v for k, v in r["categories"].items() if k != "music"}
    if cats:
        w, d = sum(v["windows"] for v in cats.values()), sum(v["decided"] for v in cats.values())
        e, s = sum(v["events"] for v in cats.values()), sum(v["seconds"] for v in cats.values())
        lines.append(f"  all categories but music: {100 * d / max(1, w):.1f}% of {w} windows decided as a class, "
                     f"{3600 * e / max(s, 1e-9):.1f} target events per hour (music apart: street_music is a class)")
    if r.get("sources"):
        table(r["sources"], "source held out")
    if r.get("targets"):
        t = r["targets"]
        lines.append(f"  what the rule costs on the target clips (each fold by a rule trained without it): right event "
                     f"{100 * t['right_event_share']:.1f}% of {t['total']['clips']} clips with the rule, "
                     f"{100 * t['right_event_share_without_rule']:.1f}% without; windows decided right "
                     f"{t['windows_right']} against {t['windows_right_without_rule']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- non-target sound
def read_corpus(folder) -> List[Dict]:
    """The files of a negative corpus: [{file, category, source}] from its manifest
    (``tools/negatives.py build``), or from its category folders (source: the folder)."""
    from ..audio.datasets import AUDIO_EXT

    folder = Path(folder)
    man = folder / "manifest.jsonl"
    if man.is_file():
        out = []
        for line in man.read_text().splitlines():
            if line.strip():
                m = json.loads(line)
                out.append({"file": folder / m["file"], "category": m["category"], "source": m["source"]})
        return out
    cats = sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    if not cats:
        raise ValueError(f"{folder}: no category folders and no manifest.jsonl; make a corpus with "
                         "'python tools/negatives.py build DIR'")
    return [{"file": f, "category": c.name, "source": c.name} for c in cats for f in sorted(c.iterdir())
            if f.suffix.lower() in AUDIO_EXT]


def _count(pipe, observed: List[Observed]) -> Dict:
    row = {"windows": 0, "decided": 0, "quiet": 0, "other": 0, "abstain": 0, "events": 0, "seconds": 0.0,
           "as": {}}
    for obs in observed:
        codes, events = replay(pipe, obs)
        row["seconds"] += obs.seconds
        for d in codes:
            row["windows"] += 1
            key = DECISION_CODES.get(d, "decided" if d is not None else None)
            if key:
                row[key] += 1
            if d is not None and d >= 0:
                c = pipe.classes[d]
                row["as"][c] = row["as"].get(c, 0) + 1
        row["events"] += sum(1 for e in events if e.source is None)
        for e in events:  # the listen groups' events (a profile with ``listen:``)
            if e.source is not None:
                g = row.setdefault("groups", {}).setdefault(e.label, {"events": 0, "files": 0})
                g["events"] += 1
        for name in {e.label for e in events if e.source is not None}:
            row["groups"][name]["files"] += 1
        row["files"] = row.get("files", 0) + 1
    row["events_per_hour"] = row["events"] / max(row["seconds"], 1e-9) * 3600.0
    for g in row.get("groups", {}).values():
        g["events_per_hour"] = g["events"] / max(row["seconds"], 1e-9) * 3600.0
    row["decided_share"] = row["decided"] / max(1, row["windows"])
    return row


def open_set_figures(profile: Profile, folder, data=None, progress=None, target_loss: Optional[float] = None,
                     class_loss: Optional[float] = None) -> Dict:
    """Per category (and, with ``data``, per held-out source too): windows and how many
    were decided as a class, quiet, other, abstained; target events and events per hour
    of that sound. With ``data``: every figure by a rule that never saw the category
    (the source) it is measured on."""
    from ..embed.openset import train_rule

    files = read_corpus(folder)
    pipe = _pipeline(profile)
    say = progress or (lambda s: None)
    observed = [observe(pipe, f["file"], profile.audio.window, profile.audio.hop) for f in files]
    say(f"{len(files)} files of non-target sound observed")
    cats = sorted({f["category"] for f in files})
    out: Dict = {"categories": {}, "protocol": "the shipped rule"}
    if data is None or pipe.open_set is None:
        for c in cats:
            out["categories"][c] = _count(pipe, [o for o, f in zip(observed, files) if f["category"] == c])
        return out
    shipped = pipe.open_set
    loss = dict(target_loss=target_loss if target_loss is not None else shipped.meta.get("target_loss", 0.03),
                class_loss=class_loss if class_loss is not None else shipped.meta.get("class_loss", 0.03),
                l2=shipped.meta.get("l2", 30.0), conditional=shipped.wc is not None)
    ds, targets = observe_dataset(pipe, profile, data, progress)
    say("target clips observed")
    P, y, fold = target_rows(ds, targets)
    if len(np.unique(fold)) < 2:
        raise ValueError(f"{data}: the held-out protocol needs target clips of at least two folds (or --shipped-rule)")

    def fit(rows, keep, ref=None):
        logits, group = negative_rows(files, observed, keep)
        return train_rule(P[rows], y[rows], fold[rows], logits, ds.classes, neg_group=group, thresholds_of=ref,
                          **loss).bind(pipe.classes)

    out["protocol"] = ("leave one category out: each category measured by a rule trained without it; "
                       "leave one source out: each source measured by a rule trained without it")
    out["rule"] = {k: v for k, v in loss.items()}
    everything = np.ones(len(P), bool)
    try:
        full = fit(everything, lambda f: True)  # its thresholds: set on held-out folds of the target clips
        for key, held in (("categories", "category"), ("sources", "source")):
            out[key] = {}
            for v in sorted({f[held] for f in files}):
                pipe.open_set = fit(everything, lambda f, held=held, v=v: f[held] != v, full)
                out[key][v] = _count(pipe, [o for o, f in zip(observed, files) if f[held] == v])
                say(f"held out {held} {v}: {100 * out[key][v]['decided_share']:.1f}% decided, "
                    f"{out[key][v]['events_per_hour']:.0f} events/h")
        # what the rules cost on the target clips: each fold by a rule trained without it
        rules = {}
        for f in np.unique(fold):
            rules[int(f)] = fit(fold != f, lambda _: True)
        outcomes = {"with_rule": {}, "without_rule": None}
        for f, rule in rules.items():
            pipe.open_set = rule
            part = [(c, o) for c, o in zip(ds.clips, targets) if c.fold == f]
            outcomes["with_rule"][f] = clip_outcomes(pipe, _Clips([c for c, _ in part]), [o for _, o in part])
        pipe.open_set = None
        outcomes["without_rule"] = clip_outcomes(pipe, ds, targets)
        out["targets"] = _merge_outcomes(list(outcomes["with_rule"].values()), outcomes["without_rule"])
    finally:
        pipe.open_set = shipped
    return out


def target_rows(ds, observed: List[Observed]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AudioSet logits, class, fold) of the target windows above the level gate: the
    positives the open-set rule is trained on."""
    rows = [(o.logits[i], c.label, c.fold) for c, o in zip(ds.clips, observed) for i in range(len(o.starts))
            if not o.gated[i]]
    return (np.array([r[0] for r in rows]).reshape(-1, 527), np.array([r[1] for r in rows]),
            np.array([r[2] for r in rows]))


def negative_rows(files: List[Dict], observed: List[Observed], keep=lambda f: True) -> Tuple[np.ndarray, np.ndarray]:
    """(AudioSet logits, category) of the non-target windows above the gate of the files kept."""
    parts = [(o.logits[~o.gated], f["category"]) for o, f in zip(observed, files) if keep(f)]
    return (np.concatenate([p for p, _ in parts] or [np.zeros((0, 527), np.float32)]),
            np.concatenate([[c] * len(p) for p, c in parts] or [np.zeros(0, str)]))


class _Clips:
    def __init__(self, clips):
        self.clips = clips


def _merge_outcomes(parts: List[Dict], without: Dict) -> Dict:
    total = {k: sum(p["total"][k] for p in parts) for k in ("clips", "right", "wrong", "none")}
    return {"right_event_share": total["right"] / max(1, total["clips"]), "total": total,
            "without_rule": without["total"], "right_event_share_without_rule": without["right_event_share"],
            "windows_right": sum(p["windows_right"] for p in parts), "windows": sum(p["windows"] for p in parts),
            "windows_right_without_rule": without["windows_right"]}
