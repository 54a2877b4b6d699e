"""Torch-free inference: packed layers, heads, and model bundles.

Nothing here imports torch; the daemon runs heads with numpy and the C kernels.
"""

from .bundle import BUNDLE_FORMAT_VERSION, Bundle, BundleError, load_bundle, save_bundle
from .runtime import Head, LayerNorm, PackedLinear, ReLU, check_embedder, load_head, save_head, softmax

__all__ = [
    "BUNDLE_FORMAT_VERSION", "Bundle", "BundleError", "load_bundle", "save_bundle",
    "Head", "LayerNorm", "PackedLinear", "ReLU", "check_embedder", "load_head", "save_head", "softmax",
]
