"""Embedders: ``mn04`` (AudioSet-pretrained CNN, torch) and ``logmel-stats``
(weight-free, numpy). ``get_embedder(id)`` builds one; mn04 imports torch only
when it is built."""

from __future__ import annotations

from typing import Optional

from .base import Embedder, EmbedderInfo, resample
from .weights import WeightsError

EMBEDDERS = ("mn04", "logmel-stats")


def get_embedder(embedder_id: str, weights: Optional[str] = None, threads: int = 1) -> Embedder:
    if embedder_id == "mn04":
        from .weights import MN04_WEIGHTS, resolve

        path = resolve(MN04_WEIGHTS, weights)  # before importing torch: a machine without weights never loads it
        from .mn04 import MN04Embedder

        return MN04Embedder(weights=str(path), threads=threads)
    if embedder_id == "logmel-stats":
        from .stats import LogMelStatsEmbedder

        return LogMelStatsEmbedder()
    raise ValueError(f"unknown embedder {embedder_id!r}; known: {', '.join(EMBEDDERS)}")


def embedder_info(embedder_id: str) -> EmbedderInfo:
    """Declared info without building the embedder (no weights, no torch)."""
    if embedder_id == "mn04":
        from ..audio.frontend import MN04_MEL

        return EmbedderInfo("mn04", "1", MN04_MEL.sample_rate, 384)
    if embedder_id == "logmel-stats":
        from .stats import LogMelStatsEmbedder

        return LogMelStatsEmbedder.info
    raise ValueError(f"unknown embedder {embedder_id!r}; known: {', '.join(EMBEDDERS)}")


__all__ = ["Embedder", "EmbedderInfo", "EMBEDDERS", "WeightsError", "embedder_info", "get_embedder", "resample"]
