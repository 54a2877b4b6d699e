"""``edgeqmoe train CONFIG``: protocol folds, summary, final bundle, model card.

Writes into ``<out>/<name>/``: ``folds.csv`` and ``folds.json`` (per fold: clip-level
and window-level scores, epochs, seconds, bundle agreement), ``summary.json`` (mean and
std over folds), ``model.eqm`` (trained on all given data) and ``model_card.md``.

Every fold's model is exported and run by the torch-free runtime on that fold's test
windows: ``agreement`` is the share of windows with the same top-1 as the torch model,
``max_abs_proba_diff`` the largest probability difference. Both are checked against
``MIN_AGREEMENT`` and ``EXPORT_PROBA_TOL`` (``export_ok``, per fold, for the final bundle
and in the summary); a bundle that misses them is said in the log with the figures.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from ..settings import to_dict
from .config import Config
from .data import Data, load_data, splits, val_split
from .export import export_bundle
from .metrics import clip_scores, mean_std, scores
from .trainer import predict_proba, train_model

#: Largest probability difference allowed between a torch model and its bundle on a
#: window: activation rounding at a float tie and float16 storage of fp32 heads move
#: probabilities by far less.
EXPORT_PROBA_TOL = 0.05
MIN_AGREEMENT = 0.995


def _say_export(log: Callable, what: str, agr: Dict) -> None:
    if not agr["export_ok"]:
        log(f"  WARNING {what}: the exported bundle differs from the torch model beyond the tolerance (agreement "
            f"{agr['agreement']:.4f} < {MIN_AGREEMENT} or largest probability difference "
            f"{agr['max_abs_proba_diff']:.4f} > {EXPORT_PROBA_TOL}); check the export before shipping it")


def embed_if_needed(cfg: Config, log: Callable = print) -> str:
    from ..audio.datasets import read_dataset
    from ..embed import get_embedder
    from ..embed.cache import cache_name, embed_dataset

    if not cfg.data.dataset:
        raise ValueError("data.dataset is empty: name the dataset to train on")
    ds = read_dataset(cfg.data.dataset)
    emb = get_embedder(cfg.data.embedder, weights=cfg.data.weights)
    path = Path(cfg.data.cache) / f"{cache_name(ds, emb, cfg.data.window, cfg.data.hop)}.npz"
    s = embed_dataset(ds, emb, cfg.data.cache, window=cfg.data.window, hop=cfg.data.hop)
    log(f"embeddings: {s.output} ({s.rows} rows; {s.computed} computed, {s.reused} reused, {len(s.failed)} failed)")
    return str(path)


def agreement(trained, bundle_path: str, d: Data) -> Dict:
    from ..model.moe import load_model

    m = load_model(bundle_path)
    X = d.X
    torch_p = predict_proba(trained.model, ((X - trained.mean) / trained.std).astype(np.float32))
    run_p = m.predict(X).proba
    agr = float((torch_p.argmax(1) == run_p.argmax(1)).mean()) if len(X) else 1.0
    diff = float(np.abs(torch_p - run_p).max()) if len(X) else 0.0
    return {"agreement": agr, "max_abs_proba_diff": diff,
            "export_ok": agr >= MIN_AGREEMENT and diff <= EXPORT_PROBA_TOL}


def _bundle_meta(cfg: Config, d: Data, extra: dict) -> dict:
    meta = {"name": cfg.name, "window": {"window_s": d.window_s or None, "hop_s": d.hop_s or None},
            "train_config": to_dict(cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    meta.update(extra)
    return meta


def run_training(cfg: Config, cache: Optional[str] = None, log: Callable = print, final: bool = True) -> Dict:
    t0 = time.perf_counter()
    cache = cache or embed_if_needed(cfg, log)
    d = load_data(cache, cfg.data.folds)
    out = Path(cfg.out) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    if cfg.cv != "none":
        for name, tr, te in splits(d, cfg.cv, cfg.train.seed):
            dtr, dte = d.subset(tr), d.subset(te)
            a, v = val_split(dtr, cfg.train.val_fraction, cfg.train.seed, by="clip" if cfg.cv == "5" else "group")
            t = train_model(cfg, dtr.subset(a), dtr.subset(v), cfg.train.seed, log)
            proba = predict_proba(t.model, ((dte.X - t.mean) / t.std).astype(np.float32))
            cs = clip_scores(proba, dte.y, dte.clip, d.n_classes)
            ws = scores(dte.y, proba.argmax(1), d.n_classes)
            with tempfile.TemporaryDirectory() as tmp:
                bp = export_bundle(t.model, os.path.join(tmp, "m.eqm"), d.classes, d.embedder, t.mean, t.std,
                                   _bundle_meta(cfg, d, {}))
                agr = agreement(t, bp, dte)
            rows.append({"fold": name, "weighted_f1": cs["weighted_f1"], "accuracy": cs["accuracy"],
                         "macro_f1": cs["macro_f1"], "n_clips": cs["n"], "window_weighted_f1": ws["weighted_f1"],
                         "window_accuracy": ws["accuracy"], "n_windows": ws["n"], "epochs": t.epochs,
                         "seconds": round(t.seconds, 2), **agr, "confusion": cs["confusion"]})
            log(f"  {cfg.name} {name}: weighted F1 {cs['weighted_f1']:.4f}, accuracy {cs['accuracy']:.4f}, "
                f"bundle agreement {agr['agreement']:.4f}")
            _say_export(log, f"{cfg.name} {name}", agr)
        with open(out / "folds.json", "w") as f:
            json.dump(rows, f, indent=1)
        keys = [k for k in rows[0] if k != "confusion"]
        with open(out / "folds.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    summary = {"name": cfg.name, "protocol": cfg.cv, "cache": cache, "embedder": d.embedder,
               "window_s": d.window_s, "hop_s": d.hop_s, "n_rows": int(len(d.y)),
               "n_clips": int(len(np.unique(d.clip))), "folds": [r["fold"] for r in rows]}
    for k in ("weighted_f1", "accuracy", "macro_f1", "window_weighted_f1", "agreement"):
        if rows:
            summary[k] = mean_std([r[k] for r in rows])
    if rows:
        summary["per_fold_weighted_f1"] = [r["weighted_f1"] for r in rows]
        summary["min_agreement"] = min(r["agreement"] for r in rows)
        summary["max_abs_proba_diff"] = max(r["max_abs_proba_diff"] for r in rows)
        summary["export_ok"] = all(r["export_ok"] for r in rows)
    if final:
        a, v = val_split(d, cfg.train.val_fraction, cfg.train.seed, by="clip" if cfg.cv == "5" else "group")
        t = train_model(cfg, d.subset(a), d.subset(v), cfg.train.seed, log)
        bp = export_bundle(t.model, out / "model.eqm", d.classes, d.embedder, t.mean, t.std,
                           _bundle_meta(cfg, d, {"scores": {k: summary[k] for k in ("weighted_f1", "accuracy", "macro_f1")
                                                            if k in summary}, "protocol": cfg.cv}))
        summary["bundle"] = str(bp)
        summary["bundle_bytes"] = os.path.getsize(bp)
        summary["final_agreement"] = agreement(t, bp, d)
        _say_export(log, f"{cfg.name} final bundle", summary["final_agreement"])
        write_card(out / "model_card.md", cfg, summary)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def write_card(path, cfg: Config, s: Dict) -> None:
    def ms(k):
        v = s.get(k)
        return f"{v['mean']:.4f} +- {v['std']:.4f}" if v else "n/a"

    m = cfg.model
    arch = (f"MoE of {', '.join(m.expert_kinds)} (top-{m.top_k}, T={m.temperature}"
            + (f", curiosity alpha={m.curiosity_alpha}, {m.mc_samples} MC samples" if m.curiosity else "") + ")"
            if m.kind == "moe" else f"head {m.expert}, hidden {list(m.hidden)}"
            + (f", seed ensemble of {m.seeds} (probabilities averaged)" if m.seeds > 1 else ""))
    lines = [f"# Model card: {cfg.name}", "",
             f"- Model: {arch}; bundle `{os.path.basename(s.get('bundle', ''))}`, {s.get('bundle_bytes', 0):,} bytes.",
             f"- Embedder: {s['embedder'].get('id')} v{s['embedder'].get('version')} ({s['embedder'].get('dim')}-d).",
             f"- Data: {s['n_clips']} clips ({s['n_rows']} rows) from `{cfg.data.dataset or s['cache']}`"
             + (f", folds {list(cfg.data.folds)}" if cfg.data.folds else "") + "; windows "
             + (f"{s['window_s']:g} s, hop {s['hop_s']:g} s" if s.get("window_s") else "whole clips") + ".",
             f"- Protocol: {cfg.cv} ({', '.join(s['folds'])}); clip scores average window probabilities.",
             f"- Weighted F1 {ms('weighted_f1')}, accuracy {ms('accuracy')}, macro F1 {ms('macro_f1')} "
             f"(mean +- std over folds).",
             f"- Bundle vs torch: top-1 agreement {ms('agreement')} over the test windows "
             f"(min {s.get('min_agreement', float('nan')):.4f}), largest probability difference "
             f"{s.get('max_abs_proba_diff', float('nan')):.4f}.",
             "- The shipped bundle was trained on all the data above (early stopping on a held-out "
             "validation split); the fold scores are what to expect on recordings it never saw."]
    Path(path).write_text("\n".join(lines) + "\n")
