"""Resampling of windows and clips (soxr, high quality)."""

from __future__ import annotations

import numpy as np


def resample(wave: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample the last axis from ``sr_in`` to ``sr_out`` (soxr 'HQ'); float32."""
    wave = np.asarray(wave, dtype=np.float32)
    if sr_in == sr_out:
        return wave
    import soxr

    if wave.ndim == 1:
        return soxr.resample(wave, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)
    # row by row: soxr's multi-channel path is slower than a loop for a few windows
    return np.stack([soxr.resample(r, sr_in, sr_out, quality="HQ") for r in wave]).astype(np.float32, copy=False)
