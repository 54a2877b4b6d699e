"""``edgeqmoe eval``: a bundle (or a profile's bundle) on a dataset, run by the
torch-free runtime with the bundle's own embedder and windowing; clip scores average
the window probabilities of each clip."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from .metrics import clip_scores, scores


def evaluate(bundle_path: str, dataset: str, cache: str = "cache", folds: Sequence[int] = (),
             kernel: Optional[str] = None, weights: Optional[str] = None, window: Optional[float] = None,
             hop: Optional[float] = None) -> Dict:
    from ..audio.datasets import read_dataset
    from ..embed import get_embedder
    from ..embed.cache import embed_dataset, load_embeddings
    from ..model.bundle import load_bundle
    from ..model.moe import load_model

    b = load_bundle(bundle_path)
    model = load_model(b, kernel=kernel)
    win = b.meta.get("window") or {}
    window = window if window is not None else win.get("window_s")
    hop = hop if hop is not None else win.get("hop_s")
    ds = read_dataset(dataset)
    if folds:
        ds.clips = [c for c in ds.clips if c.fold in set(folds)]
        # a subset gets its own cache file: the whole dataset's must not be overwritten
        ds.name = f"{ds.name}.folds-{'-'.join(str(f) for f in sorted(set(folds)))}"
    if ds.classes != model.classes:
        raise ValueError(f"{dataset}: its classes {ds.classes} differ from the bundle's {model.classes}")
    emb = get_embedder(b.embedder["id"], weights=weights)
    s = embed_dataset(ds, emb, cache, window=window, hop=hop)
    z = load_embeddings(s.output)
    pred = model.predict(z["embedding"])
    out = clip_scores(pred.proba, z["label"], z["clip"], len(model.classes))
    w = scores(z["label"], pred.proba.argmax(1), len(model.classes))
    out.update({"bundle": bundle_path, "dataset": dataset, "folds": list(folds), "classes": model.classes,
                "window_s": window, "hop_s": hop, "n_windows": w["n"], "window_weighted_f1": w["weighted_f1"],
                "window_accuracy": w["accuracy"], "failed_files": len(s.failed), "kernel": model.variant})
    if pred.uncertainty is not None:
        out["mean_uncertainty"] = float(np.mean(pred.uncertainty))
    return out
