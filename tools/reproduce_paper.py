"""The paper's 15 configurations (Table 1) on our data, with both protocols.

    EDGEQMOE_WEIGHTS_DIR=../shared/models python tools/reproduce_paper.py [--data DIR] [--out docs/results.md]
    python tools/reproduce_paper.py --cache FILE.npz --tiny       (a two-model smoke run)

Embeds the clips (mn04, whole 4 s clips as the paper's clip embeddings), then for every
configuration runs the paper's protocol (stratified shuffled 5-fold, validation by
clip) and the honest one (the dataset's folds, validation by recording), trains the
final model on all clips and exports its bundle. Writes a Markdown report: weighted
F1 mean and std per protocol next to the paper's UrbanSound8K column, paired t-tests
against FP32 over the 5 folds (Bonferroni-corrected) with Cohen's d, and the model
sizes read from the bundle files on disk (Table 7).
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from edgeqmoe.train.config import config_from_dict  # noqa: E402
from edgeqmoe.train.metrics import paired_tests  # noqa: E402
from edgeqmoe.train.run import run_training  # noqa: E402

# name: (model settings, the paper's UrbanSound8K weighted F1 (Table 1), or None)
CONFIGS = {
    "Q16-Base": ({"kind": "head", "expert": "q16"}, 0.952),
    "Q4-Base": ({"kind": "head", "expert": "q4"}, 0.950),
    "Q8-Base": ({"kind": "head", "expert": "q8"}, 0.948),
    "FP32-Base": ({"kind": "head", "expert": "fp32"}, 0.946),
    "Q8-Base-PTQ": ({"kind": "head", "expert": "popcount-ptq"}, 0.950),
    "Q1-Base": ({"kind": "head", "expert": "q1"}, 0.944),
    "BitNet-Q4/8/16-QMoE": ({"kind": "moe", "experts": ["bitnet", 4, 8, 16]}, 0.943),
    "BitNet-Q4/8/16-QMoE-C": ({"kind": "moe", "experts": ["bitnet", 4, 8, 16], "curiosity": True}, "0.940-0.944"),
    "BitNet-Q4/8-QMoE": ({"kind": "moe", "experts": ["bitnet", 4, 8]}, None),
    "BitNet-Q4/8-QMoE-C": ({"kind": "moe", "experts": ["bitnet", 4, 8], "curiosity": True}, "0.940-0.944"),
    "Q2-Base": ({"kind": "head", "expert": "q2"}, 0.921),
    "BitNet-Base": ({"kind": "head", "expert": "bitnet"}, 0.906),
    "BitNet-Q8PTQ-QMoE": ({"kind": "moe", "experts": ["bitnet", "popcount-ptq"], "top_k": 1}, None),
    "BitNet-Q8PTQ-QMoE-C": ({"kind": "moe", "experts": ["bitnet", "popcount-ptq"], "top_k": 1, "curiosity": True},
                            "0.940-0.944"),
    "BitNet-Q8/16-PTQ-QMoE-C": ({"kind": "moe", "experts": ["bitnet", "popcount-ptq", 16], "curiosity": True},
                                "0.940-0.944"),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "us8k16k"))
    ap.add_argument("--cache", default=None, help="an embedding cache to use instead of embedding --data")
    ap.add_argument("--runs", default=os.path.join(ROOT, "runs", "paper"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "results.md"))
    ap.add_argument("--tiny", action="store_true", help="two configurations, few epochs (a smoke run)")
    ap.add_argument("--window", type=float, default=None, help="train on windows of this length (s), clip scores "
                                                                "from averaged window probabilities")
    ap.add_argument("--only", nargs="*", default=None, help="only these configurations")
    ap.add_argument("--protocols", nargs="*", default=["5", "folds"])
    a = ap.parse_args()
    t0 = time.time()
    configs = dict(list(CONFIGS.items())[:1] + [("BitNet-Q4/8-QMoE-C", CONFIGS["BitNet-Q4/8-QMoE-C"])]) \
        if a.tiny else CONFIGS
    if a.only:
        configs = {k: v for k, v in configs.items() if k in a.only}
    cache = a.cache
    if cache is None:
        from edgeqmoe.train.run import embed_if_needed

        cache = embed_if_needed(config_from_dict({"data": {"dataset": a.data, "embedder": "mn04",
                                                           "cache": os.path.join(ROOT, "cache"),
                                                           "window": a.window, "hop": a.window / 2 if a.window
                                                           else None}}))
    results = {}
    for name, (model, paper) in configs.items():
        safe = name.replace("/", "-")
        row = {"paper": paper}
        for cv in a.protocols:
            d = {"name": f"{safe}.cv{cv}", "model": model, "cv": cv, "out": a.runs}
            if a.tiny:
                d["model"] = {**model, "hidden": [32, 16]}
                d["train"] = {"max_epochs": 8, "patience": 3}
            s = run_training(config_from_dict(d), cache=cache, log=lambda *_: None, final=(cv == a.protocols[-1]))
            row[cv] = {"weighted_f1": s["weighted_f1"], "per_fold": s["per_fold_weighted_f1"],
                       "accuracy": s["accuracy"], "agreement_min": s["min_agreement"]}
            if cv == a.protocols[-1]:
                row["bundle_bytes"] = s["bundle_bytes"]
                row["seconds"] = s["seconds"]
            print(f"{name} cv {cv}: weighted F1 {s['weighted_f1']['mean']:.4f} +- {s['weighted_f1']['std']:.4f}",
                  flush=True)
        results[name] = row
    tests = {cv: paired_tests({n: r[cv]["per_fold"] for n, r in results.items()}, "FP32-Base")
             for cv in a.protocols} if "FP32-Base" in results else {}
    elapsed = time.time() - t0
    write_report(a.out, results, tests, elapsed, cache, a.tiny, a.protocols)
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump({"results": results, "tests": tests, "seconds": elapsed}, f, indent=1)
    print(f"wrote {a.out} in {elapsed / 60:.1f} min")


def write_report(path, results, tests, elapsed, cache, tiny, protocols=("5", "folds")):
    from edgeqmoe.machine import describe, machine_info

    lines = ["# The paper's configurations on our data", "",
             f"Made by `tools/reproduce_paper.py`{' --tiny' if tiny else ''} in {elapsed / 60:.1f} min on "
             f"{describe(machine_info())}.", "",
             f"Data: mn04 embeddings (`{os.path.basename(cache)}`: whole 4 s clips unless the name says windows "
             "w<length>-h<hop>) of the 2,148 shared UrbanSound8K "
             "clips of folds 1-3. Weighted F1, mean +- std over folds. `cv 5`: the paper's stratified shuffled "
             "5-fold split over clips (it leaks recordings between train and test); `folds`: each dataset fold held "
             "out in turn (honest). The paper's column is its UrbanSound8K result on the full dataset with its "
             "own leaky protocol. Size: the exported bundle file on disk (packed weights, scales, LayerNorms, "
             "metadata).", "",
             "| model | ours, cv 5 | ours, folds (honest) | paper (US8K) | bundle size KB | bundle = torch top-1 (min) |",
             "|---|---|---|---|---:|---:|"]
    for name, r in results.items():
        paper = r["paper"] if isinstance(r["paper"], str) else (f"{r['paper']:.3f}" if r["paper"] else "-")
        cells = []
        for cv in ("5", "folds"):
            w = r.get(cv, {}).get("weighted_f1")
            cells.append(f"{w['mean']:.4f} +- {w['std']:.4f}" if w else "not run")
        agree = min(r[cv]["agreement_min"] for cv in protocols)
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {paper} | {r['bundle_bytes'] / 1024:.0f} | {agree:.4f} |")
    for cv, rows in tests.items():
        lines += ["", f"Paired t-tests against FP32-Base over the {'5 folds' if cv == '5' else 'dataset folds'} "
                      f"(protocol {cv}), Bonferroni-corrected for {len(rows)} comparisons:", "",
                  "| model | diff | t | p | p (Bonferroni) | Cohen's d |", "|---|---:|---:|---:|---:|---:|"]
        for t in rows:
            lines.append(f"| {t['model']} | {t['diff']:+.4f} | {t['t']:.2f} | {t['p']:.3g} | {t['p_bonferroni']:.3g} | "
                         f"{t['cohens_d']:.2f} |")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
