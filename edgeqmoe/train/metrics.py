"""Scores and statistics as the paper reports them.

Scores: weighted F1 (the paper's headline), accuracy, macro F1, confusion matrix.
Clip-level scores average the window probabilities of each clip.

Statistics (scipy.stats): paired t-tests over folds with Bonferroni correction,
Cohen's d of paired differences, Levene's test (Brown-Forsythe, median-centred) for
comparing variances, Welch's t-test for means of independent samples.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> Dict:
    cm = confusion(np.asarray(y_true), np.asarray(y_pred), n_classes)
    tp = np.diag(cm).astype(float)
    support = cm.sum(1).astype(float)
    pred = cm.sum(0).astype(float)
    prec = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    rec = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=(prec + rec) > 0)
    n = support.sum()
    present = support > 0
    return {
        "n": int(n),
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "weighted_f1": float((f1 * support).sum() / n) if n else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "confusion": cm.tolist(),
    }


def clip_scores(proba: np.ndarray, y: np.ndarray, clip: np.ndarray, n_classes: int,
                keep: Optional[np.ndarray] = None) -> Dict:
    """Scores of clips: mean window probabilities per clip, then argmax. ``keep`` (a mask
    of windows): only those count, as the daemon leaves 'other' windows undecided; a clip
    with none kept is a miss (``missed``; the confusion then has a last column for it)."""
    clips, inv = np.unique(clip, return_inverse=True)
    keep = np.ones(len(inv), bool) if keep is None else np.asarray(keep, bool)
    summed = np.zeros((len(clips), proba.shape[1]))
    np.add.at(summed, inv[keep], proba[keep])
    any_kept = np.zeros(len(clips), bool)
    any_kept[inv[keep]] = True
    label = np.zeros(len(clips), dtype=np.int64)
    label[inv] = y
    if any_kept.all():
        return scores(label, summed.argmax(1), n_classes)
    out = scores(label, np.where(any_kept, summed.argmax(1), n_classes), n_classes + 1)
    out["missed"] = int((~any_kept).sum())
    return out


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def cohens_d_paired(a: Sequence[float], b: Sequence[float]) -> float:
    d = np.asarray(a, float) - np.asarray(b, float)
    sd = d.std(ddof=1) if len(d) > 1 else 0.0
    return float(d.mean() / sd) if sd > 0 else 0.0


def paired_tests(per_model: Dict[str, List[float]], reference: str) -> List[Dict]:
    """Paired t-test of every model against ``reference`` over the same folds,
    Bonferroni-corrected for the number of comparisons, with Cohen's d."""
    from scipy import stats

    others = [m for m in per_model if m != reference]
    out = []
    for m in others:
        a, b = per_model[m], per_model[reference]
        if len(a) != len(b) or len(a) < 2:
            continue
        if np.allclose(np.asarray(a) - np.asarray(b), 0):
            t, p = 0.0, 1.0
        else:
            t, p = stats.ttest_rel(a, b)
        out.append({"model": m, "reference": reference, "t": float(t), "p": float(p),
                    "p_bonferroni": float(min(1.0, p * len(others))), "cohens_d": cohens_d_paired(a, b),
                    "diff": float(np.mean(a) - np.mean(b))})
    return out
