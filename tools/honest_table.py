"""The honest protocol for every shipped profile, with and without the open-set rule,
against a plain logistic regression on the same embeddings.

    EDGEQMOE_WEIGHTS_DIR=../shared/models python tools/honest_table.py [--data ../shared/data/us8k16k]
        [--only balanced stable] [--write edgeqmoe/bundles/MODEL_CARDS.md]

Per fold (each of the dataset's folds held out in turn, recordings never split): the
profile's model trained exactly as ``tools/train_defaults.py`` trains it (same config,
same seed), and scikit-learn's LogisticRegression with its defaults on standardised
embeddings, both scored per clip (mean of the clip's window probabilities, then argmax).
With the open-set rule (mn04's AudioSet output, ``edgeqmoe/embed/openset.py``), windows
the rule calls 'other' are left out of their clip's mean, as the daemon leaves them
undecided; a clip with every window 'other' counts as a miss (no class). The shipped rule
was fitted on all folds (and on non-target audio), so its held-out cost here is, if
anything, understated.

``--test-runtime int8`` also scores each fold's model and LR (trained on the fp32
embeddings, as the shipped bundles are) on the held-out fold embedded by the integer
mn04 (``model.embedder_runtime: int8``): what a bundle loses when a profile runs on it.

``--write FILE`` puts the table in FILE between the markers below (replacing an older
one), so MODEL_CARDS.md carries the figures of the last run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from train_defaults import TABLE_BEGIN as BEGIN, TABLE_END as END  # noqa: E402


def audioset_target(data: str, weights: str, window: float, hop: float, n_rows: int):
    """The open-set rule's target probability for every window of the dataset, in the
    embedding cache's order (clips in dataset order, windows in time order)."""
    from edgeqmoe.audio.datasets import read_dataset
    from edgeqmoe.audio.io import load
    from edgeqmoe.audio.windowing import frame
    from edgeqmoe.embed import get_embedder
    from edgeqmoe.embed.openset import load_rule

    rule = load_rule()
    emb = get_embedder("mn04", weights=weights)
    out = []
    sr = 16000
    for c in read_dataset(data).clips:
        w = frame(load(c.path, sr), int(round(window * sr)), int(round(hop * sr)))
        _, logits = emb.embed_with_logits(w, sr)
        out += [rule.target_probability(lg) for lg in logits]
    t = np.array(out)
    if len(t) != n_rows:
        raise SystemExit(f"the AudioSet pass gave {len(t)} windows, the embedding cache has {n_rows}")
    return t, rule.threshold


def runtime_cache(data: str, weights: str, cache: str, window: float, runtime: str) -> str:
    """The dataset's embeddings by mn04 on ``runtime`` (cached beside the fp32 ones)."""
    from edgeqmoe.audio.datasets import read_dataset
    from edgeqmoe.embed import get_embedder
    from edgeqmoe.embed.cache import cache_name, embed_dataset

    ds, emb = read_dataset(data), get_embedder("mn04", weights=weights, runtime=runtime)
    embed_dataset(ds, emb, cache, window=window, hop=window / 2)
    return os.path.join(cache, f"{cache_name(ds, emb, window, window / 2)}.npz")


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    from edgeqmoe.machine import describe, machine_info
    from edgeqmoe.train.config import config_from_dict
    from edgeqmoe.train.data import load_data, splits, val_split
    from edgeqmoe.train.metrics import clip_scores
    from edgeqmoe.train.run import embed_if_needed
    from edgeqmoe.train.trainer import predict_proba, train_model
    from train_defaults import PROFILES, profile_window

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "us8k16k"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "cache"))
    ap.add_argument("--weights", default=os.environ.get("EDGEQMOE_WEIGHTS_DIR"))
    ap.add_argument("--window", type=float, default=2.0, help="for a bundle without a profile of its own")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--write", default=None)
    ap.add_argument("--test-runtime", default=None, choices=("int8",),
                    help="also score the held-out folds embedded by this mn04 runtime")
    a = ap.parse_args()
    t0 = time.time()
    rows, target, cache_of = [], {}, {}
    for name, (embedder, model, _why) in PROFILES.items():
        if a.only and name not in a.only:
            continue
        window = profile_window(name, a.window)  # the window the shipped bundle was trained on
        cfg = config_from_dict({"name": name, "model": model, "cv": "folds", "out": os.path.join(ROOT, "runs", "honest"),
                                "data": {"dataset": a.data, "embedder": embedder, "cache": a.cache,
                                         "window": window, "hop": window / 2, "weights": a.weights}})
        cache = cache_of.get((embedder, window)) or embed_if_needed(cfg, log=lambda *x: None)
        cache_of[(embedder, window)] = cache
        d = load_data(cache)
        d_test = None
        if a.test_runtime and embedder == "mn04":
            d_test = load_data(runtime_cache(a.data, a.weights, a.cache, window, a.test_runtime))
            if not (np.array_equal(d_test.y, d.y) and np.array_equal(d_test.clip, d.clip)):
                raise SystemExit(f"the {a.test_runtime} embeddings are not in the order of the fp32 ones")
        if embedder == "mn04" and window not in target:
            target[window] = audioset_target(a.data, a.weights, window, window / 2, len(d.y))
        folds = []
        for fold, tr, te in splits(d, "folds", cfg.train.seed):
            dtr, dte = d.subset(tr), d.subset(te)
            tr_i, va_i = val_split(dtr, cfg.train.val_fraction, cfg.train.seed, by="group")
            t = train_model(cfg, dtr.subset(tr_i), dtr.subset(va_i), cfg.train.seed)
            p_model = predict_proba(t.model, ((dte.X - t.mean) / t.std).astype(np.float32))
            mean, std = dtr.X.mean(0), dtr.X.std(0) + 1e-6
            lr = LogisticRegression(max_iter=5000).fit((dtr.X - mean) / std, dtr.y)
            p_lr = lr.predict_proba((dte.X - mean) / std)
            row = {"fold": fold}
            if d_test is not None:
                X8 = d_test.subset(te).X
                p8 = predict_proba(t.model, ((X8 - t.mean) / t.std).astype(np.float32))
                row["model_q"] = clip_scores(p8, dte.y, dte.clip, d.n_classes)["weighted_f1"]
                row["lr_q"] = clip_scores(lr.predict_proba((X8 - mean) / std), dte.y, dte.clip,
                                          d.n_classes)["weighted_f1"]
            for who, p in (("model", p_model), ("lr", p_lr)):
                row[who] = clip_scores(p, dte.y, dte.clip, d.n_classes)["weighted_f1"]
                if embedder == "mn04":
                    prob, thr = target[window]
                    keep = prob[te] >= thr
                    with_rule = clip_scores(p, dte.y, dte.clip, d.n_classes, keep)
                    row[f"{who}_rule"] = with_rule["weighted_f1"]
                    row["clips_lost"] = with_rule.get("missed", 0)
                    row["windows_other"] = float(1 - keep.mean())
            folds.append(row)
            print(f"{name} {fold}: model {row['model']:.4f}, LR {row['lr']:.4f}"
                  + (f"; tested on {a.test_runtime}: model {row['model_q']:.4f}, LR {row['lr_q']:.4f}"
                     if "model_q" in row else "")
                  + (f"; with the open-set rule model {row['model_rule']:.4f}, LR {row['lr_rule']:.4f} "
                     f"({100 * row['windows_other']:.1f}% of windows other, {row['clips_lost']} clips with none left)"
                     if "model_rule" in row else ""), flush=True)
        rows.append((name, embedder, folds, window))
    lines = [BEGIN, "## Honest protocol against logistic regression, with and without the open-set rule", "",
             f"Made by `tools/honest_table.py` in {(time.time() - t0) / 60:.1f} min on "
             f"{describe(machine_info())}. Weighted F1 per clip, folds 1 / 2 / 3 held out in turn and their mean; "
             "LR: scikit-learn's LogisticRegression with its defaults on the same standardised embeddings and the "
             "same training folds. With the rule: windows that the open-set rule calls 'other' are left out of "
             "their clip; a clip with none left is a miss. This is a fresh run of the configs that made the shipped "
             "bundles (embeddings from ONNX Runtime); the figures in each card above come from the run that made "
             "the bundle, and the two differ by run-to-run variation of training. Each profile on its own window "
             "(the window its bundle is trained on and the daemon runs), the LR on the same windows.", "",
             "| profile | window | model | LR | model, open-set rule | LR, open-set rule | windows 'other' | "
             "clips with none left |",
             "|---|---:|---|---|---|---|---:|---:|"]

    def cell(folds, k):
        if k not in folds[0]:
            return "n/a (no AudioSet output)"
        v = [f[k] for f in folds]
        return " / ".join(f"{x:.3f}" for x in v) + f", **{np.mean(v):.4f}**"

    for name, _embedder, folds, window in rows:
        other = (f"{100 * np.mean([f['windows_other'] for f in folds]):.1f}%" if "windows_other" in folds[0] else "-")
        lost = str(sum(f["clips_lost"] for f in folds)) if "clips_lost" in folds[0] else "-"
        lines.append(f"| {name} | {window:g} s | {cell(folds, 'model')} | {cell(folds, 'lr')} | "
                     f"{cell(folds, 'model_rule')} | "
                     f"{cell(folds, 'lr_rule')} | {other} | {lost} |")
    if a.test_runtime:
        lines += ["", f"Held-out folds embedded by mn04 on the {a.test_runtime} runtime (models and LR trained on fp32 "
                      "embeddings, as the shipped bundles are):", "",
                  "| profile | window | model, fp32 | model, " + a.test_runtime + " | LR, fp32 | LR, " + a.test_runtime + " |",
                  "|---|---:|---|---|---|---|"]
        for name, _embedder, folds, window in rows:
            if "model_q" in folds[0]:
                lines.append(f"| {name} | {window:g} s | {cell(folds, 'model')} | {cell(folds, 'model_q')} | {cell(folds, 'lr')} | "
                             f"{cell(folds, 'lr_q')} |")
    lines.append(END)
    table = "\n".join(lines)
    print(table)
    if a.write:
        with open(a.write) as f:
            text = f.read()
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + table + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n" + table + "\n"
        with open(a.write, "w") as f:
            f.write(text)
        print(f"wrote the table into {a.write}")


if __name__ == "__main__":
    main()
