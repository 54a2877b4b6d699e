"""Torch-free inference of packed heads: linear layers on the packed kernels,
LayerNorm, ReLU and softmax, assembled from a model bundle.

A head is a list of steps (``PackedLinear``, ``LayerNorm``, ``ReLU``). Binding it to a
kernel variant happens once, at construction: the C variants run the whole list in
one call (``_ckernels.Program``); ``ref`` runs the numpy reference of every step.
The hot path therefore has no branches on configuration.

Shapes: inputs (B, in_features) float32, outputs (B, n_classes) float32 logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np

from ..kernels import _ckernels, get_format, resolve_variant
from .bundle import Bundle, BundleError

#: LayerNorm epsilon of the heads (as torch.nn.LayerNorm's default).
LN_EPS = 1e-5


@dataclass
class PackedLinear:
    """y = W x + b with W stored packed in ``fmt`` (see kernels.formats)."""

    fmt: str
    in_features: int
    out_features: int
    packed: np.ndarray  # uint8 of get_format(fmt).packed_shape(out, in)
    scale: np.ndarray  # (1,) or (out,) float32
    bias: Optional[np.ndarray]  # (out,) float32
    act_mode: str = "sign"  # popcount only: "sign" or "unsigned" (inputs after a ReLU)

    @classmethod
    def from_float(cls, W: np.ndarray, b: Optional[np.ndarray], fmt: str, per_channel: Optional[bool] = None,
                   act_mode: str = "sign"):
        f = get_format(fmt)
        codes, scale = f.quantize(W, per_channel)
        return cls(fmt, W.shape[1], W.shape[0], f.pack(codes), np.asarray(scale, np.float32),
                   None if b is None else np.asarray(b, np.float32), act_mode)

    @property
    def nbytes(self) -> int:
        """Bytes of packed weights plus scales (bias excluded)."""
        return int(self.packed.nbytes + self.scale.nbytes)

    def c_layer(self):
        from ..kernels.formats import POPCOUNT_ACT_MODES, POPCOUNT_TAU

        f = get_format(self.fmt)
        return _ckernels.Layer(f.code, self.out_features, self.in_features, self.packed, self.scale, self.bias,
                               POPCOUNT_ACT_MODES.index(self.act_mode), POPCOUNT_TAU)

    def ref(self, x: np.ndarray) -> np.ndarray:
        return get_format(self.fmt).ref_linear(self.packed, self.scale, self.bias, self.out_features,
                                               self.in_features, x,
                                               self.act_mode)


@dataclass
class LayerNorm:
    gamma: np.ndarray
    beta: np.ndarray
    eps: float = LN_EPS

    def ref(self, x: np.ndarray) -> np.ndarray:
        mu = x.mean(axis=1, keepdims=True, dtype=np.float32)
        var = ((x - mu) ** 2).mean(axis=1, keepdims=True, dtype=np.float32)
        return ((x - mu) / np.sqrt(var + np.float32(self.eps)) * self.gamma + self.beta).astype(np.float32)


@dataclass
class ReLU:
    def ref(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0, dtype=np.float32)


Step = Union[PackedLinear, LayerNorm, ReLU]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class InputNorm:
    """Input standardisation (x - mean) / std, folded into one multiply-add; also
    checks the input width. Shared by every runnable model."""

    def _set_norm(self, mean, std) -> None:
        if std is None:
            self._mul = self._add = None
        else:
            self._mul = (1.0 / np.asarray(std, np.float32)).astype(np.float32)
            self._add = (-np.asarray(mean, np.float32) * self._mul).astype(np.float32)

    def _norm(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
        if x.shape[1] != self.in_features:
            raise ValueError(f"model takes {self.in_features} inputs, got {x.shape[1]}")
        if self._mul is not None:
            x = np.ascontiguousarray(x * self._mul + self._add, dtype=np.float32)
        return x


class Head(InputNorm):
    """A sequence of steps bound to one kernel variant.

    ``kernel`` is a choice as in :func:`edgeqmoe.kernels.resolve_variant` (``ref``,
    ``generic``, ``simd`` or a variant name; default from EDGEQMOE_KERNEL, else simd).
    """

    def __init__(self, steps: Sequence[Step], kernel: Optional[str] = None,
                 norm_mean: Optional[np.ndarray] = None, norm_std: Optional[np.ndarray] = None):
        self.steps: List[Step] = list(steps)
        if not self.steps or not isinstance(self.steps[0], PackedLinear):
            raise ValueError("a head starts with a linear step")
        self.in_features = self.steps[0].in_features
        self.out_features = [s for s in self.steps if isinstance(s, PackedLinear)][-1].out_features
        self.variant = resolve_variant(kernel)
        self._set_norm(norm_mean, norm_std)
        if self.variant == "ref":
            self._run = self._run_ref
        else:
            prog = []
            for s in self.steps:
                if isinstance(s, PackedLinear):
                    prog.append(("linear", s.c_layer()))
                elif isinstance(s, LayerNorm):
                    prog.append(("layernorm", s.gamma, s.beta, float(s.eps)))
                else:
                    prog.append(("relu",))
            self._program = _ckernels.Program(self.variant, prog)
            self._run = self._run_c
            # the hot path is the C method itself: no Python frame per call
            self.run_into = self._program.run

    # -- execution
    def _run_ref(self, x: np.ndarray) -> np.ndarray:
        for s in self.steps:
            x = s.ref(x)
        return x

    def _run_c(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], self.out_features), dtype=np.float32)
        self._program.run(x, out)
        return out

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits (B, classes) of inputs (B, in_features) or (in_features,)."""
        return self._run(self._norm(x))

    __call__ = forward

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.forward(x))

    def run_into(self, x: np.ndarray, out: np.ndarray) -> None:
        """Hot-path form: x (B, in) float32 C-contiguous, already normalised; writes
        logits into the preallocated ``out`` (B, classes). For C variants this name
        is rebound to the C method at construction."""
        out[...] = self._run(x)

    @property
    def weight_nbytes(self) -> int:
        return sum(s.nbytes for s in self.steps if isinstance(s, PackedLinear))


# ---------------------------------------------------------------------- bundles


def head_tensors(steps: Sequence[Step], prefix: str = "") -> tuple:
    """(tensors, step metadata) describing ``steps`` for a bundle."""
    tensors, meta = {}, []
    for i, s in enumerate(steps):
        key = f"{prefix}s{i}"
        if isinstance(s, PackedLinear):
            tensors[f"{key}.w"] = s.packed
            tensors[f"{key}.scale"] = s.scale
            d = {"op": "linear", "format": s.fmt, "in": s.in_features, "out": s.out_features,
                 "w": f"{key}.w", "scale": f"{key}.scale"}
            if s.fmt == "popcount":
                d["act_mode"] = s.act_mode
            if s.bias is not None:
                tensors[f"{key}.b"] = s.bias
                d["bias"] = f"{key}.b"
            meta.append(d)
        elif isinstance(s, LayerNorm):
            tensors[f"{key}.g"], tensors[f"{key}.beta"] = s.gamma, s.beta
            meta.append({"op": "layernorm", "gamma": f"{key}.g", "beta": f"{key}.beta", "eps": s.eps})
        else:
            meta.append({"op": "relu"})
    return tensors, meta


#: largest layer side a bundle may declare (a corrupt header must not allocate terabytes)
MAX_FEATURES = 1 << 16


def steps_from_meta(bundle: Bundle, step_meta: list, in_features: Optional[int] = None) -> List[Step]:
    """Rebuild steps from bundle metadata, checking every tensor's size and that each
    step takes what the one before gives (``in_features``: what the first one gets)."""
    if not isinstance(step_meta, list) or not step_meta:
        raise BundleError(bundle.path, "a head's 'steps' must be a non-empty list")
    steps: List[Step] = []
    width = in_features
    for i, d in enumerate(step_meta):
        if not isinstance(d, dict):
            raise BundleError(bundle.path, f"step {i}: not a mapping")
        op = d.get("op")
        try:
            if op == "linear":
                f = get_format(d["format"])
                n, k = int(d["out"]), int(d["in"])
                if not (0 < n <= MAX_FEATURES and 0 < k <= MAX_FEATURES):
                    raise BundleError(bundle.path, f"step {i}: a {n}x{k} layer is not a layer this code runs")
                if width is not None and k != width:
                    raise BundleError(bundle.path, f"step {i}: takes {k} inputs, the step before gives {width}")
                w = bundle.tensor(d["w"])
                if w.nbytes != f.weight_nbytes(n, k):
                    raise BundleError(bundle.path, f"step {i}: packed {d['format']} weights of {n}x{k} need "
                                                   f"{f.weight_nbytes(n, k)} bytes, tensor has {w.nbytes}")
                scale = _float_vector(bundle, d["scale"], (1, n), i, "scale")
                bias = _float_vector(bundle, d["bias"], (n,), i, "bias") if d.get("bias") else None
                mode = d.get("act_mode", "sign")
                if mode not in ("sign", "unsigned"):
                    raise BundleError(bundle.path, f"step {i}: unknown activation mode {mode!r}")
                steps.append(PackedLinear(d["format"], k, n, w.reshape(f.packed_shape(n, k)), scale, bias, mode))
                width = n
            elif op == "layernorm":
                sizes = (width,) if width is not None else None
                gamma = _float_vector(bundle, d["gamma"], sizes, i, "gamma")
                beta = _float_vector(bundle, d["beta"], (gamma.size,), i, "beta")
                steps.append(LayerNorm(gamma, beta, float(d.get("eps", LN_EPS))))
                width = gamma.size
            elif op == "relu":
                steps.append(ReLU())
            else:
                raise BundleError(bundle.path, f"step {i}: unknown op {op!r}")
        except KeyError as e:
            raise BundleError(bundle.path, f"step {i}: lacks {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise BundleError(bundle.path, f"step {i}: {e}") from None
    if not any(isinstance(s, PackedLinear) for s in steps):
        raise BundleError(bundle.path, "a head without a linear step")
    return steps


def _float_vector(bundle: Bundle, name: str, sizes, i: int, what: str) -> np.ndarray:
    t = bundle.tensor(name)
    if t.dtype != np.float32 or t.ndim != 1 or (sizes is not None and t.size not in sizes):
        raise BundleError(bundle.path, f"step {i}: {what} tensor {name!r} is {t.dtype} of shape {t.shape}; "
                                       f"expected float32 of {' or '.join(map(str, sizes or ['any']))} values")
    return t


def out_features(steps: Sequence[Step]) -> int:
    return [s for s in steps if isinstance(s, PackedLinear)][-1].out_features


def save_head(path, head_steps: Sequence[Step], classes: Sequence[str], embedder: dict,
              norm_mean=None, norm_std=None, extra: Optional[dict] = None) -> str:
    from .bundle import save_bundle

    tensors, step_meta = head_tensors(head_steps)
    meta = dict(extra or {})
    meta.update({"embedder": embedder, "classes": list(classes), "graph": {"type": "mlp", "steps": step_meta}})
    if norm_mean is not None:
        tensors["norm.mean"] = np.asarray(norm_mean, np.float32)
        tensors["norm.std"] = np.asarray(norm_std, np.float32)
        meta["input_norm"] = {"mean": "norm.mean", "std": "norm.std"}
    else:
        meta["input_norm"] = None
    return save_bundle(path, tensors, meta)


def check_embedder(bundle: Bundle, info) -> None:
    """Refuse a bundle trained on another embedder (id or output size) than ``info``
    (an ``EmbedderInfo`` or a dict with ``id`` and ``dim``)."""
    want = bundle.embedder
    got = info if isinstance(info, dict) else info.as_dict()
    if want.get("id") != got.get("id") or int(want.get("dim", -1)) != int(got.get("dim", -2)):
        raise BundleError(bundle.path, f"was trained on embedder {want.get('id')!r} ({want.get('dim')}-d) and cannot "
                                       f"run on {got.get('id')!r} ({got.get('dim')}-d); use a bundle made for "
                                       f"{got.get('id')!r} or switch the embedder")
