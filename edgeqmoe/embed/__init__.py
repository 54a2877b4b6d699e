"""Embedders: ``mn04`` (AudioSet-pretrained CNN, on ONNX Runtime, torch, or our integer
kernels) and
``logmel-stats`` (weight-free, numpy). ``get_embedder(id)`` builds one; mn04 imports
torch only when it runs on torch."""

from __future__ import annotations

from typing import Optional

from .base import Embedder, EmbedderInfo, resample
from .weights import WeightsError

EMBEDDERS = ("mn04", "logmel-stats")


#: how mn04 can run: ONNX Runtime fp32 (no torch), the torch module, or int8 on our kernels
RUNTIMES = ("auto", "onnxruntime", "torch", "int8")


def get_embedder(embedder_id: str, weights: Optional[str] = None, threads: int = 1, runtime: str = "auto",
                 say=None, kernel: str = "simd") -> Embedder:
    """The embedder ``embedder_id`` (``_build``), its C front end on the kernel variant that
    ``kernel`` picks for every other C path too (``audio.frontend.front_end_variant``)."""
    from ..audio.frontend import front_end_variant

    front_end = front_end_variant(kernel)  # a kernel this CPU cannot run fails before anything loads
    emb = _build(embedder_id, weights, threads, runtime, say, kernel)
    emb.front_end = front_end
    return emb


def _build(embedder_id: str, weights: Optional[str] = None, threads: int = 1, runtime: str = "auto",
           say=None, kernel: str = "simd") -> Embedder:
    """``runtime`` (mn04): ``auto`` is ONNX Runtime when installed (the daemon then
    never imports torch), else torch; the first use of a weights file with ONNX Runtime
    converts it once (``say`` is told). ``int8`` runs the integer network on our C
    kernels (variant ``kernel``), converted once from the weights and the shipped
    calibration (``say`` is told too)."""
    if embedder_id == "mn04":
        from .weights import MN04_WEIGHTS, resolve

        path = resolve(MN04_WEIGHTS, weights)  # before any runtime loads: a machine without weights never does
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown embedder runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
        if runtime == "int8":
            from .mn04_int8 import MN04Int8Embedder

            return MN04Int8Embedder(weights=str(path), kernel=kernel, say=say)
        from .mn04_onnx import onnxruntime_available

        if runtime == "onnxruntime" or (runtime == "auto" and onnxruntime_available()):
            if not onnxruntime_available():
                raise WeightsError("the profile asks for model.embedder_runtime onnxruntime, which is not installed: "
                                   "pip install onnxruntime onnx (or set embedder_runtime: auto)")
            from .mn04_onnx import MN04OnnxEmbedder

            return MN04OnnxEmbedder(weights=str(path), threads=threads, say=say)
        try:
            from .mn04 import MN04Embedder
        except ImportError:
            if runtime == "torch":
                raise WeightsError("embedder runtime torch needs torch, which is not installed: pip install "
                                   "'edgeqmoe[train]' (or use the int8 or onnxruntime runtime)") from None
            raise WeightsError("mn04 needs ONNX Runtime (pip install onnxruntime onnx) or torch "
                               "(pip install 'edgeqmoe[train]'); neither is installed") from None
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


__all__ = ["Embedder", "EmbedderInfo", "EMBEDDERS", "RUNTIMES", "WeightsError", "embedder_info", "get_embedder", "resample"]
