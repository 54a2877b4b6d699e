"""Torch-free inference: packed layers, heads, and model bundles.

Nothing here imports torch; the daemon runs heads with numpy and the C kernels.
``load_model`` is the one way to load a bundle for inference (a head or a mixture).
"""

from .bundle import BUNDLE_FORMAT_VERSION, Bundle, BundleError, load_bundle, save_bundle
from .moe import EnsembleModel, HeadModel, MoEModel, load_model
from .runtime import Head, LayerNorm, PackedLinear, ReLU, check_embedder, save_head, softmax

__all__ = [
    "BUNDLE_FORMAT_VERSION", "Bundle", "BundleError", "load_bundle", "save_bundle",
    "EnsembleModel", "Head", "HeadModel", "LayerNorm", "MoEModel", "PackedLinear", "ReLU", "check_embedder", "load_model",
    "save_head", "softmax",
]
