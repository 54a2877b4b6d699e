"""mn04's layout, without torch: what both the torch module (``mn04.py``) and the
torch-free runtime (``mn04_onnx.py``) are built from."""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

BN_EPS = 1e-3

#: (in, kernel, expanded, out, se_squeeze or 0, activation, stride) for features.1-15
MN04_BLOCKS: List[Tuple[int, int, int, int, int, str, int]] = [
    (8, 3, 8, 8, 0, "RE", 1),
    (8, 3, 24, 16, 0, "RE", 2),
    (16, 3, 32, 16, 0, "RE", 1),
    (16, 5, 32, 16, 8, "RE", 2),
    (16, 5, 48, 16, 16, "RE", 1),
    (16, 5, 48, 16, 16, "RE", 1),
    (16, 3, 96, 32, 0, "HS", 2),
    (32, 3, 80, 32, 0, "HS", 1),
    (32, 3, 72, 32, 0, "HS", 1),
    (32, 3, 72, 32, 0, "HS", 1),
    (32, 3, 192, 48, 48, "HS", 1),
    (48, 3, 272, 48, 72, "HS", 1),
    (48, 5, 272, 64, 72, "HS", 2),
    (64, 5, 384, 64, 96, "HS", 1),
    (64, 5, 384, 64, 96, "HS", 1),
]
EMBED_DIM = 384
N_AUDIOSET = 527


def fold_bn(state: Dict[str, np.ndarray], conv: str, bn: str):
    """A convolution's weight and its BatchNorm (eval) -> the folded (weight, bias), float64."""
    w = state[f"{conv}.weight"].astype(np.float64)
    g, b = state[f"{bn}.weight"].astype(np.float64), state[f"{bn}.bias"].astype(np.float64)
    mean, var = state[f"{bn}.running_mean"].astype(np.float64), state[f"{bn}.running_var"].astype(np.float64)
    scale = g / np.sqrt(var + BN_EPS)
    return w * scale[:, None, None, None], b - mean * scale
