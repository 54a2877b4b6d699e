"""Train the bundles that ship inside the package (edgeqmoe/bundles), one per profile
plus a weight-free balanced bundle, on all the shared UrbanSound8K clips.

    EDGEQMOE_WEIGHTS_DIR=../shared/models python tools/train_defaults.py [--data ../shared/data/us8k16k]

First measures honest accuracy (the dataset's folds) of a q4 head against the window
length (1, 2 and 4 s) and writes it to docs/windows.md; the profiles' window comes
from that table, except where a profile's YAML sets its own (latency-critical: 1 s),
which its bundle is then trained on. Then, per profile, runs the honest protocol (scores for the model
card) and trains the final bundle on all clips. Each model follows the paper's
deployment recommendation for its case (Sec. 5.3-5.4).
"""
import argparse
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from edgeqmoe.train.config import config_from_dict  # noqa: E402
from edgeqmoe.train.run import run_training  # noqa: E402

#: where tools/honest_table.py puts its table in MODEL_CARDS.md (kept when the cards are rewritten)
TABLE_BEGIN, TABLE_END = "<!-- honest-table: begin -->", "<!-- honest-table: end -->"

PROFILES = {
    # profile: (embedder, model settings, why)
    "latency-critical": ("mn04", {"kind": "head", "expert": "q1"}, "Q1-Base: the paper's latency-critical pick"),
    "balanced": ("mn04", {"kind": "head", "expert": "q4", "seeds": 5},
                 "Q4-Base: the paper's balanced pick; a seed ensemble of 5 (+0.01 weighted F1 on held-out folds)"),
    "accuracy": ("mn04", {"kind": "head", "expert": "q16"}, "Q16-Base: the paper's maximum-accuracy pick"),
    "energy": ("mn04", {"kind": "moe", "experts": ["bitnet", "popcount-ptq"], "top_k": 1},
               "BitNet-Q8PTQ-QMoE: the paper's energy-constrained pick"),
    "stable": ("mn04", {"kind": "moe", "experts": ["bitnet", "popcount-ptq", "q16"], "top_k": 2, "curiosity": True},
               "BitNet-Q8/16-PTQ-QMoE-C: the paper's stable real-time pick"),
    "balanced-weightfree": ("logmel-stats", {"kind": "head", "expert": "q4"},
                            "Q4-Base on the weight-free embedder: the fallback without mn04 weights"),
    "latency-critical-weightfree": ("logmel-stats", {"kind": "head", "expert": "q4"},
                                    "Q4-Base on the weight-free embedder, on latency-critical's 1 s windows: "
                                    "that profile's fallback without mn04 weights"),
}


def profile_window(name: str, default: float) -> float:
    """The window a bundle is trained on: its profile's (profiles/NAME.yaml), which the
    daemon runs it with (a weight-free fallback NAME-weightfree: NAME's); ``default`` for a
    bundle without a profile of its own. The training windows overlap by half whatever the profile's hop."""
    if name.endswith("-weightfree"):  # a fallback: the window of the profile it stands in for
        name = name[:-len("-weightfree")]
    path = os.path.join(ROOT, "profiles", f"{name}.yaml")
    if not os.path.exists(path):
        return default
    from edgeqmoe.daemon.profiles import load_profile

    return load_profile(path).audio.window


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "us8k16k"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "cache"))
    ap.add_argument("--runs", default=os.path.join(ROOT, "runs", "defaults"))
    ap.add_argument("--window", type=float, default=None, help="skip the window study and use this window")
    ap.add_argument("--only", nargs="*", default=None)
    a = ap.parse_args()
    t0 = time.time()
    window = a.window
    if window is None:
        rows = []
        for w, hop in ((1.0, 0.5), (2.0, 1.0), (4.0, 2.0)):
            cfg = config_from_dict({"name": f"window-{w:g}", "model": {"kind": "head", "expert": "q4"}, "cv": "folds",
                                    "out": a.runs, "data": {"dataset": a.data, "embedder": "mn04", "cache": a.cache,
                                                            "window": w, "hop": hop}})
            s = run_training(cfg, log=print, final=False)
            rows.append((w, hop, s["weighted_f1"], s["accuracy"], s["per_fold_weighted_f1"]))
            print(f"window {w} s: weighted F1 {s['weighted_f1']['mean']:.4f}", flush=True)
        best = max(rows, key=lambda r: r[2]["mean"])
        window = best[0]
        with open(os.path.join(ROOT, "docs", "windows.md"), "w") as f:
            f.write("# Accuracy against window length\n\n"
                    "q4 head on mn04 embeddings of the shared UrbanSound8K clips, honest protocol (each dataset fold "
                    "held out in turn; early stopping on held-out recordings), clip scores from averaged window "
                    "probabilities. Made by `tools/train_defaults.py`.\n\n"
                    "| window | hop | weighted F1 (mean +- std) | accuracy | per fold |\n|---|---|---|---|---|\n")
            for w, hop, wf, acc, per in rows:
                f.write(f"| {w:g} s | {hop:g} s | {wf['mean']:.4f} +- {wf['std']:.4f} | {acc['mean']:.4f} | "
                        f"{', '.join(f'{x:.3f}' for x in per)} |\n")
            f.write(f"\nThe profiles use {window:g} s windows (the best mean above); the daemon emits a decision "
                    f"every hop (half a window).\n")
            own = {n: w for n in PROFILES if not n.endswith("-weightfree")
                   for w in [profile_window(n, window)] if w != window}
            if own:
                f.write("Profiles that set another window in their YAML, with their bundles trained on it: "
                        + ", ".join(f"{n} {w:g} s" for n, w in own.items())
                        + " (latency-critical: half the work per window; MODEL_CARDS.md has its score, "
                          "docs/open-set.md what the shorter window costs in the open set).\n")
    report = {}
    for name, (embedder, model, why) in PROFILES.items():
        if a.only and name not in a.only:
            continue
        w = profile_window(name, window)
        cfg = config_from_dict({"name": name, "model": model, "cv": "folds", "out": a.runs,
                                "data": {"dataset": a.data, "embedder": embedder, "cache": a.cache,
                                         "window": w, "hop": w / 2}})
        s = run_training(cfg, log=print)
        dest = os.path.join(ROOT, "edgeqmoe", "bundles", f"{name}.eqm")
        shutil.copyfile(s["bundle"], dest)
        card = open(os.path.join(a.runs, name, "model_card.md")).read()
        card = card.replace("bundle `model.eqm`", f"bundle `{name}.eqm`") + f"- Why this model: {why}.\n"
        report[name] = card
        print(f"{name}: {dest} ({os.path.getsize(dest):,} bytes), weighted F1 {s['weighted_f1']['mean']:.4f}",
              flush=True)
    cards_path = os.path.join(ROOT, "edgeqmoe", "bundles", "MODEL_CARDS.md")
    cards = {name: card.replace("# Model card:", "##") for name, card in report.items()}
    old_text, table = (open(cards_path).read() if os.path.exists(cards_path) else ""), ""
    if TABLE_BEGIN in old_text and TABLE_END in old_text:  # tools/honest_table.py's table stays, at the end
        i, j = old_text.index(TABLE_BEGIN), old_text.index(TABLE_END) + len(TABLE_END)
        table, old_text = old_text[i:j] + "\n", old_text[:i] + old_text[j:]
    if a.only and old_text:  # keep the cards of the bundles not trained again
        old = old_text.split("\n## ")[1:]
        for sec in old:
            name = sec.split()[0]
            cards.setdefault(name, "## " + sec.rstrip("\n") + "\n")
    with open(cards_path, "w") as f:
        f.write("# Shipped bundles\n\nTrained by `tools/train_defaults.py` on all 2,148 shared UrbanSound8K clips "
                "(folds 1-3). Scores are the honest protocol: each fold held out in turn.\n\n")
        for name in PROFILES:
            if name in cards:
                f.write(cards[name].rstrip("\n") + "\n\n")
        f.write(table)
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
