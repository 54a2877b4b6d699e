"""What every embedder declares and does.

An embedder turns mono audio windows into fixed-size vectors. It declares its ``id``
(model bundles record it and refuse to run on another), ``version`` (part of the
embedding cache key), the ``sample_rate`` its model runs at, and ``dim``. Audio at
another rate is resampled per window (soxr, high quality; a log-mel embedder upsamples
2x inside its front end), so the result depends on the window alone, never on how the
stream was chunked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio.frontend import log_mel
from ..audio.resample import resample


@dataclass(frozen=True)
class EmbedderInfo:
    id: str
    version: str
    sample_rate: int
    dim: int

    def as_dict(self) -> dict:
        return {"id": self.id, "version": self.version, "sample_rate": self.sample_rate, "dim": self.dim}


class Embedder:
    """Base class: subclasses set ``info`` and implement ``_embed_batch`` on audio at
    ``info.sample_rate``."""

    info: EmbedderInfo
    #: the kernel variant its C front end runs (get_embedder sets the profile's; None: the
    #: environment's choice, else the best this CPU runs)
    front_end = None

    def __new__(cls, *args, **kwargs):
        from ..heap import keep_heap

        keep_heap()  # per-window temporaries are reused, not faulted in again
        return super().__new__(cls)

    def embed(self, wave: np.ndarray, sr: int) -> np.ndarray:
        """One window (n,) at ``sr`` -> (dim,) float32."""
        return self.embed_batch(np.asarray(wave)[None, :], sr)[0]

    def embed_batch(self, waves: np.ndarray, sr: int) -> np.ndarray:
        """Windows (B, n) of equal length at ``sr`` -> (B, dim) float32."""
        waves = resample(np.atleast_2d(waves), sr, self.info.sample_rate)
        return self._embed_batch(waves)

    def _embed_batch(self, waves: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class MelEmbedder(Embedder):
    """An embedder whose network reads a log-mel (``mel_spec``). Windows at any rate go
    through the C front end (``log_mel``); at half the spec's rate (16 kHz for mn04) they
    are upsampled inside it, so no resampler runs per window. Subclasses set ``mel_spec``
    and implement ``forward_mel``: mel (B, n_mels, T) -> (embeddings, logits)."""

    mel_spec = None

    def forward_mel(self, mel: np.ndarray):  # pragma: no cover - abstract
        raise NotImplementedError

    def _embed_batch(self, waves: np.ndarray) -> np.ndarray:
        return self.forward_mel(log_mel(waves, self.mel_spec, variant=self.front_end))[0]

    def embed_batch(self, waves: np.ndarray, sr: int) -> np.ndarray:
        return self.embed_with_logits(waves, sr)[0]

    def embed_with_logits(self, waves: np.ndarray, sr: int):
        """Windows (B, n) at ``sr`` -> (embeddings, the network's logits)."""
        return self.forward_mel(log_mel(np.atleast_2d(waves), self.mel_spec, sr=sr, variant=self.front_end))
