"""Export of trained torch models to bundles the torch-free runtime runs.

Every layer becomes the packed format its training simulated (see
``edgeqmoe.train.models``): BitLinear k -> q1/q2/q4/q8 (the same Eq. 2 codes), k=16
and fp32 -> f16, BitNet -> ternary codes with the learned per-channel alpha, PTQ ->
q8 or popcount of the trained float weights. LayerNorms and biases stay float32.

A MoE bundle's graph holds the router (first layer + ReLU, then the rest), the
experts, the fixed Monte-Carlo dropout masks and the routing parameters; see
``edgeqmoe.model.moe`` for how it runs. A seed ensemble's graph lists its members'
steps (tensors prefixed ``m<i>.``); the runtime averages their probabilities.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
from torch import nn

from ..kernels import get_format
from ..model.bundle import save_bundle
from ..model.runtime import LayerNorm, PackedLinear, ReLU, head_tensors
from .models import Ensemble, Head, MoE
from .quant import BitLinear, BitNetLinear, PTQLinear


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def pack_layer(layer: nn.Module) -> PackedLinear:
    b = _np(layer.bias) if getattr(layer, "bias", None) is not None else None
    if isinstance(layer, BitNetLinear):
        f = get_format("ternary")
        codes = layer.ternary().cpu().numpy().astype(np.int8)
        return PackedLinear("ternary", layer.in_features, layer.out_features, f.pack(codes),
                            _np(layer.alpha).astype(np.float32), b)
    if isinstance(layer, BitLinear):
        return PackedLinear.from_float(_np(layer.weight), b, layer.export_format)
    if isinstance(layer, PTQLinear):
        W = _np(layer.w_float)
        return PackedLinear.from_float(W, b, layer.fmt, act_mode=layer.act_mode)
    if isinstance(layer, nn.Linear):
        return PackedLinear.from_float(_np(layer.weight), b, "f16")
    raise TypeError(f"cannot export {type(layer).__name__}")


def head_steps(head: Head) -> list:
    steps: list = []
    for lin, ln in zip(head.linears, head.norms):
        steps += [pack_layer(lin), LayerNorm(_np(ln.weight), _np(ln.bias), float(ln.eps)), ReLU()]
    steps.append(pack_layer(head.out))
    return steps


def export_bundle(model: nn.Module, path, classes: List[str], embedder: Dict, mean: np.ndarray, std: np.ndarray,
                  extra: Optional[dict] = None) -> str:
    """Write ``model`` (a Head, an Ensemble of heads or a MoE; PTQ kinds in their
    quantized view) to ``path``."""
    tensors = {"norm.mean": np.asarray(mean, np.float32), "norm.std": np.asarray(std, np.float32)}
    meta = dict(extra or {})
    meta.update({"embedder": embedder, "classes": list(classes), "input_norm": {"mean": "norm.mean", "std": "norm.std"}})
    if isinstance(model, Head):
        t, steps = head_tensors(head_steps(model))
        tensors.update(t)
        meta["graph"] = {"type": "mlp", "kind": model.kind, "steps": steps}
    elif isinstance(model, Ensemble):
        members = []
        for i, h in enumerate(model.members):
            t, steps = head_tensors(head_steps(h), prefix=f"m{i}.")
            tensors.update(t)
            members.append({"steps": steps})
        meta["graph"] = {"type": "ensemble", "kind": model.kind, "members": members}
    elif isinstance(model, MoE):
        r = model.router
        t_in, s_in = head_tensors([pack_layer(r.l1), ReLU()], prefix="router.in.")
        t_out, s_out = head_tensors([pack_layer(r.l2), ReLU(), pack_layer(r.l3)], prefix="router.out.")
        tensors.update(t_in)
        tensors.update(t_out)
        tensors["router.masks"] = _np(model.eval_masks)
        experts = []
        for i, e in enumerate(model.experts):
            t, steps = head_tensors(head_steps(e), prefix=f"expert{i}.")
            tensors.update(t)
            experts.append({"kind": model.kinds[i], "steps": steps})
        meta["graph"] = {"type": "moe", "router_in": s_in, "router_out": s_out, "masks": "router.masks",
                         "experts": experts, "top_k": model.top_k, "temperature": model.temperature,
                         "curiosity": bool(model.curiosity), "curiosity_alpha": model.alpha,
                         "mc_samples": model.mc_samples, "seed": model.seed}
    else:
        raise TypeError(f"cannot export {type(model).__name__}")
    return save_bundle(path, tensors, meta)
