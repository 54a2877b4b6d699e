"""The weight-free embedder: statistics of a 16 kHz log-mel over time (numpy only).

Front end: pre-emphasis 0.97; STFT n_fft 512 with a 400-sample (25 ms) symmetric
Hann window, hop 160 (10 ms), centre padding by reflection; power; 64 Kaldi-style mel
bands from 50 Hz to 7.8 kHz; natural log of (mel + 1e-6).

Embedding (320 values, band-major within each statistic), over the frames of the
window, per band: mean, standard deviation, minimum, maximum, and the mean absolute
frame-to-frame difference (how fast the band changes). Windows shorter than one STFT
frame (512 samples) are refused.

It needs no pretrained weights at all, so a fresh machine can run with it; it is
much weaker than mn04 and the models trained on it say so in their cards.
"""

from __future__ import annotations

import numpy as np

from ..audio.frontend import MelSpec, log_mel
from .base import Embedder, EmbedderInfo

STATS_MEL = MelSpec(sample_rate=16000, n_fft=512, win_length=400, hop=160, n_mels=64, fmin=50.0, fmax=7800.0,
                    preemphasis=0.97, log_offset=1e-6, shift=0.0, scale=1.0)
N_STATS = 5


class LogMelStatsEmbedder(Embedder):
    info = EmbedderInfo(id="logmel-stats", version="1", sample_rate=16000, dim=STATS_MEL.n_mels * N_STATS)
    runtime = "numpy"

    def _embed_batch(self, waves: np.ndarray) -> np.ndarray:
        m = log_mel(waves, STATS_MEL, variant=self.front_end)  # (B, 64, T)
        d = np.abs(np.diff(m, axis=2)).mean(axis=2) if m.shape[2] > 1 else np.zeros(m.shape[:2], np.float32)
        feats = [m.mean(axis=2), m.std(axis=2), m.min(axis=2), m.max(axis=2), d]
        return np.concatenate(feats, axis=1).astype(np.float32)
