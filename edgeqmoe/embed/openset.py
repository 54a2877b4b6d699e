"""The open-set rule: is a window one of the model's classes at all, and does what mn04's
AudioSet output hears fit the class the head chose?

Two logistic regressions on mn04's 527 AudioSet log-probabilities (``features``):
- the *any-target* part gives the probability that a window holds one of the target
  sounds at all (positives: the labelled clips; negatives: sounds that are none of them);
- the *class-conditional* part gives, per class, the probability that the window is that
  class rather than a non-target sound (positives: that class's windows only). A hammer
  that the head calls gun_shot passes the first part (it is impulsive and loud) and fails
  the second: nothing AudioSet hears in it fits a gun shot.
A window is ``other`` when either probability is below its threshold (``judge``).
Thresholds are set on held-out folds for a stated loss of target windows. Trained by
``tools/train_openset.py`` with ``fit_logistic`` (numpy and scipy, no torch), shipped as
a small safetensors file (``edgeqmoe/bundles/openset-mn04.safetensors``); docs/open-set.md
has what it catches and what it costs, measured with categories and sources held out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

RULE_FILE = Path(__file__).resolve().parent.parent / "bundles" / "openset-mn04.safetensors"


def features(logits: np.ndarray) -> np.ndarray:
    """log sigmoid of the AudioSet logits, (B, 527) float32 (stable for large |logit|)."""
    z = np.asarray(logits, np.float64)
    return (-np.logaddexp(0.0, -z)).astype(np.float32)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + np.exp(-z)) if z > -60 else 0.0


class OpenSetRule:
    """``w``, ``b``, ``threshold``: the any-target part; ``wc`` (classes, 527), ``bc``,
    ``tc`` and ``classes``: the class-conditional part (optional)."""

    def __init__(self, w: np.ndarray, b: float, threshold: float, meta: Dict, wc: Optional[np.ndarray] = None,
                 bc: Optional[np.ndarray] = None, tc: Optional[np.ndarray] = None,
                 classes: Optional[Sequence[str]] = None):
        if w.shape != (527,) or not np.isfinite(w).all() or not np.isfinite([b, threshold]).all():
            raise ValueError("an open-set rule needs 527 finite weights, a finite bias and threshold")
        self.w, self.b, self.threshold, self.meta = w.astype(np.float32), float(b), float(threshold), meta
        self.wc = self.bc = self.tc = None
        self.classes: List[str] = list(classes or [])
        if wc is not None:
            n = len(self.classes)
            if wc.shape != (n, 527) or bc.shape != (n,) or tc.shape != (n,) or not (
                    np.isfinite(wc).all() and np.isfinite(bc).all() and np.isfinite(tc).all()):
                raise ValueError(f"the class-conditional part needs ({n}, 527) finite weights, {n} biases and "
                                 f"{n} thresholds for its {n} classes")
            self.wc, self.bc, self.tc = wc.astype(np.float32), bc.astype(np.float64), tc.astype(np.float64)
        self._index: Optional[np.ndarray] = None  # head class -> row of the class-conditional part (-1: none)

    def bind(self, classes: Sequence[str]) -> "OpenSetRule":
        """Map the head's classes to the class-conditional rows (by name; a class the
        rule does not know is judged by the any-target part alone)."""
        self._index = np.array([self.classes.index(c) if c in self.classes else -1 for c in classes])
        return self

    def describe(self) -> Dict:
        """For the start record: the thresholds, per class where the rule has that part."""
        out: Dict = {"threshold": round(self.threshold, 4)}
        if self.wc is not None:
            out["class_thresholds"] = {c: round(float(t), 4) for c, t in zip(self.classes, self.tc)}
        return out

    def target_probability(self, logits: np.ndarray) -> float:
        """For one window's 527 AudioSet logits: is it any of the target sounds?"""
        return _sigmoid(float(features(logits[None, :])[0] @ self.w) + self.b)

    def judge(self, logits: np.ndarray, head_class: int) -> Tuple[bool, float]:
        """(whether the window may be decided as the head's class, the probability that
        decided it: the any-target one, or the class-conditional one when that failed)."""
        f = features(logits[None, :])[0]
        p = _sigmoid(float(f @ self.w) + self.b)
        if p < self.threshold:
            return False, p
        row = self._index[head_class] if self._index is not None and self.wc is not None else -1
        if row < 0:
            return True, p
        q = _sigmoid(float(f @ self.wc[row]) + self.bc[row])
        return (True, p) if q >= self.tc[row] else (False, q)

    def scores(self, logits: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Batch form for evaluation: (any-target probabilities (B,), class-conditional
        probabilities (B, classes) or None)."""
        f = features(logits).astype(np.float64)
        p = 1.0 / (1.0 + np.exp(-np.clip(f @ self.w + self.b, -60, 60)))
        if self.wc is None:
            return p, None
        return p, 1.0 / (1.0 + np.exp(-np.clip(f @ self.wc.T.astype(np.float64) + self.bc, -60, 60)))


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1.0, weight: Optional[np.ndarray] = None,
                 init: Optional[Tuple[np.ndarray, float]] = None) -> Tuple[np.ndarray, float]:
    """A binary logistic regression by L-BFGS: (weights, bias) for raw ``X``. Features are
    standardised inside (and folded back); ``l2`` is the ridge strength on the
    standardised weights per training row. Positives and negatives weigh the same in
    total; ``weight`` spreads each side's weight over its rows (default: evenly), e.g. so
    that every category of negatives counts the same however long it is. ``init``: start
    from these (raw) weights and bias, e.g. those of a fit on nearly the same rows."""
    from scipy.optimize import minimize

    X = np.asarray(X, np.float32)
    y = np.asarray(y, np.float64)
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sd
    w0 = np.ones(len(y)) if weight is None else np.asarray(weight, np.float64)
    sw = np.where(y > 0.5, 0.5 * w0 / max(w0[y > 0.5].sum(), 1e-12), 0.5 * w0 / max(w0[y <= 0.5].sum(), 1e-12))
    lam = l2 / len(y)

    def loss(theta):
        w, b = theta[:-1], theta[-1]
        z = (Z @ w.astype(np.float32)).astype(np.float64) + b
        # log(1 + e^-z) for positives, log(1 + e^z) for negatives
        ll = np.where(y > 0.5, np.logaddexp(0, -z), np.logaddexp(0, z))
        g = (1.0 / (1.0 + np.exp(-z)) - y) * sw
        return float(sw @ ll + 0.5 * lam * w @ w), np.concatenate([(g.astype(np.float32) @ Z) + lam * w, [g.sum()]])

    theta0 = np.zeros(X.shape[1] + 1)
    if init is not None:  # the same function in standardised coordinates
        theta0 = np.r_[np.asarray(init[0], np.float64) * sd, init[1] + float(np.asarray(init[0], np.float64) @ mu)]
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 300})
    w = res.x[:-1] / sd
    return w.astype(np.float32), float(res.x[-1] - (w * mu).sum())


def save_rule(path, rule: OpenSetRule, summary: Dict) -> None:
    from safetensors.numpy import save_file

    tensors = {"w": np.asarray(rule.w, np.float32), "b": np.array([rule.b], np.float32)}
    meta = {"threshold": repr(float(rule.threshold)), "summary": json.dumps(summary)}
    if rule.wc is not None:
        tensors.update(wc=rule.wc, bc=rule.bc.astype(np.float32), tc=rule.tc.astype(np.float32))
        meta["classes"] = json.dumps(rule.classes)
    save_file(tensors, str(path), metadata=meta)


def load_rule(path=RULE_FILE) -> OpenSetRule:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        t = {k: f.get_tensor(k) for k in f.keys()}
    return OpenSetRule(t["w"], float(t["b"][0]), float(meta["threshold"]), json.loads(meta.get("summary", "{}")),
                       t.get("wc"), t.get("bc"), t.get("tc"), json.loads(meta.get("classes", "[]")))


def _threshold_for_loss(scores: np.ndarray, loss: float) -> float:
    """The largest threshold that turns away at most ``loss`` of these (positive) scores."""
    if len(scores) == 0:
        return 0.5
    return float(np.quantile(scores, loss, method="lower"))


def train_rule(pos_logits: np.ndarray, pos_class: np.ndarray, pos_fold: np.ndarray, neg_logits: np.ndarray,
               classes: Sequence[str], target_loss: float = 0.03, class_loss: float = 0.03, l2: float = 30.0,
               conditional: bool = True, neg_group: Optional[np.ndarray] = None,
               thresholds_of: Optional[OpenSetRule] = None, meta: Optional[Dict] = None) -> OpenSetRule:
    """Both parts of the rule from windows of the target classes (their AudioSet logits,
    class index and fold) and of non-target sound (``neg_group``: each window's category;
    every category then weighs the same, however long it is).

    Each threshold is set on held-out folds: each fold scored by a part trained on the
    other folds (and the negatives), the threshold at the ``target_loss`` (``class_loss``)
    quantile of those held-out scores, so that about that share of target windows is
    turned away by each part. ``thresholds_of``: take the thresholds of that rule instead,
    and start from its weights (a rule refitted without some negatives, as the open-set
    evaluation does for each held-out category, keeps the thresholds set with all of
    them: 4x fewer fits, each a few iterations from where it ends)."""
    P, N = features(pos_logits), features(neg_logits)
    folds = np.unique(pos_fold)
    if neg_group is not None and len(N):
        _, inv, cnt = np.unique(np.asarray(neg_group), return_inverse=True, return_counts=True)
        nw = 1.0 / cnt[inv]
    else:
        nw = np.ones(len(N))

    def fit(rows: np.ndarray, init=None) -> Tuple[np.ndarray, float]:
        return fit_logistic(np.vstack([P[rows], N]), np.r_[np.ones(rows.sum()), np.zeros(len(N))], l2,
                            np.r_[np.ones(rows.sum()), nw], init)

    def part(rows: np.ndarray, loss: float, given: Optional[float], init=None) -> Tuple[np.ndarray, float, float]:
        w, b = fit(rows, init)
        if given is not None:
            return w, b, given
        held = []
        for f in folds if len(folds) > 1 else []:
            wf, bf = fit(rows & (pos_fold != f))
            te = rows & (pos_fold == f)
            held.append(1.0 / (1.0 + np.exp(-np.clip(P[te] @ wf + bf, -60, 60))))
        scores = np.concatenate(held) if held else 1.0 / (1.0 + np.exp(-np.clip(P[rows] @ w + b, -60, 60)))
        return w, b, _threshold_for_loss(scores, loss)

    ref = thresholds_of
    w, b, thr = part(np.ones(len(P), bool), target_loss, ref.threshold if ref is not None else None,
                     (ref.w, ref.b) if ref is not None else None)
    summary = dict(meta or {}, positives=int(len(P)), negatives=int(len(N)), l2=l2, target_loss=target_loss,
                   class_loss=class_loss, threshold=thr)
    if not conditional:
        return OpenSetRule(w, b, thr, summary)
    wc, bc, tc = [], [], []
    for k in range(len(classes)):
        j = ref.classes.index(classes[k]) if ref is not None and ref.wc is not None else None
        wk, bk, tk = part(pos_class == k, class_loss, None if j is None else float(ref.tc[j]),
                          None if j is None else (ref.wc[j], ref.bc[j]))
        wc.append(wk), bc.append(bk), tc.append(tk)
    summary["class_thresholds"] = dict(zip(classes, map(float, tc)))
    return OpenSetRule(w, b, thr, summary, np.array(wc), np.array(bc), np.array(tc), classes)
