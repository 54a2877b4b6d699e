"""The open-set rule: is a window one of the model's classes at all?

A logistic regression on mn04's 527 AudioSet log-probabilities (``features``) gives the
probability that a window holds one of the ten target sounds; below the rule's
threshold the window is ``other``, whatever the head says. Trained by
``tools/train_openset.py`` (positives: the labelled clips; negatives: speech, music and
other sounds made from Debian packages) and shipped as a small safetensors file
(``edgeqmoe/bundles/openset-mn04.safetensors``: weights, bias, threshold and the
training summary). docs/open-set.md has what it catches and what it costs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np

RULE_FILE = Path(__file__).resolve().parent.parent / "bundles" / "openset-mn04.safetensors"


def features(logits: np.ndarray) -> np.ndarray:
    """log sigmoid of the AudioSet logits, (B, 527) float32 (stable for large |logit|)."""
    z = np.asarray(logits, np.float64)
    return (-np.logaddexp(0.0, -z)).astype(np.float32)


class OpenSetRule:
    def __init__(self, w: np.ndarray, b: float, threshold: float, meta: Dict):
        if w.shape != (527,) or not np.isfinite(w).all() or not np.isfinite([b, threshold]).all():
            raise ValueError("an open-set rule needs 527 finite weights, a finite bias and threshold")
        self.w, self.b, self.threshold, self.meta = w.astype(np.float32), float(b), float(threshold), meta

    def target_probability(self, logits: np.ndarray) -> float:
        """For one window's 527 AudioSet logits."""
        z = float(features(logits[None, :])[0] @ self.w) + self.b
        return 1.0 / (1.0 + np.exp(-z)) if z > -60 else 0.0


def save_rule(path, w: np.ndarray, b: float, threshold: float, summary: Dict) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.asarray(w, np.float32), "b": np.array([b], np.float32)}, str(path),
              metadata={"threshold": repr(float(threshold)), "summary": json.dumps(summary)})


def load_rule(path=RULE_FILE) -> OpenSetRule:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        w, b = f.get_tensor("w"), f.get_tensor("b")
    return OpenSetRule(w, float(b[0]), float(meta["threshold"]), json.loads(meta.get("summary", "{}")))
