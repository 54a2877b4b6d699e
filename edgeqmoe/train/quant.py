"""Quantization-aware layers (torch) whose forward pass computes exactly what the
packed runtime computes after export, with straight-through estimators (STE) for
the gradients.

* ``BitLinear(k)``, k in 1, 2, 4, 8 (paper Eq. 2): weights
  q = clip(round(W / s), -2^(k-1), 2^(k-1) - 1), s = max|W - mean W| / (2^(k-1) - 1)
  per layer; k = 1: sign(W - mean W) (zero -> +1) with s = mean|W - mean W|.
  Activations int8 absmax per row: x_q = round(x * 127 / max|x|).
  k = 16: float16 weights, float32 activations (exported as ``f16``).
* ``BitNetLinear``: ternary {-1, 0, +1} weights (absmean threshold) with a learned
  per-output-channel scale alpha, int8 activations.
* Post-training (``ptq``): int8 (``q8``) and popcount (ternary weights at
  tau = 0.05 of max|W|, binary activations, Eq. 4) of a trained float layer; they are
  applied in ``export``, and evaluated here by ``PTQLinear`` for the torch-side scores.

The forward value of each quantizer equals the reference arithmetic of
``edgeqmoe.kernels.formats``: (int weights x int activations) * scales, so exported
bundles agree with their torch models up to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

ACT_QMAX = 127.0


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward q, backward identity."""
    return x + (q - x).detach()


def quant_act_int8(x: torch.Tensor) -> torch.Tensor:
    """Fake int8 absmax per row (forward: x_q * max|x| / 127)."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    s = ACT_QMAX / amax
    q = torch.clamp(torch.round(x * s), -ACT_QMAX, ACT_QMAX) / s
    return ste(x, q)


def quant_weight_kbit(w: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 1:
        c = w - w.detach().mean()
        s = c.detach().abs().mean().clamp_min(1e-12)
        q = torch.where(c >= 0, torch.ones_like(w), -torch.ones_like(w)) * s
        return ste(w, q)
    qmax = 2 ** (bits - 1) - 1
    s = ((w.detach() - w.detach().mean()).abs().max() / qmax).clamp_min(1e-12)
    q = torch.clamp(torch.round(w / s), -qmax - 1, qmax) * s
    return ste(w, q)


class BitLinear(nn.Linear):
    """k-bit weights (k in 1, 2, 4, 8) and int8 activations, or f16 weights (k = 16)."""

    def __init__(self, in_features: int, out_features: int, bits: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        if bits not in (1, 2, 4, 8, 16):
            raise ValueError(f"BitLinear bits must be 1, 2, 4, 8 or 16, not {bits}")
        self.bits = bits

    @property
    def export_format(self) -> str:
        return {1: "q1", 2: "q2", 4: "q4", 8: "q8", 16: "f16"}[self.bits]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits == 16:
            w = ste(self.weight, self.weight.half().float())
            return F.linear(x, w, self.bias)
        return F.linear(quant_act_int8(x), quant_weight_kbit(self.weight, self.bits), self.bias)


class BitNetLinear(nn.Linear):
    """Ternary weights with a learned per-output-channel scale alpha (BitNet)."""

    export_format = "ternary"

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.alpha = nn.Parameter(self.weight.detach().abs().mean(dim=1).clamp_min(1e-4))

    def ternary(self) -> torch.Tensor:
        """Codes in {-1, 0, 1}: round(W / mean|W_row|), clipped."""
        gamma = self.weight.detach().abs().mean(dim=1, keepdim=True).clamp_min(1e-8)
        return torch.clamp(torch.round(self.weight.detach() / gamma), -1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.weight.detach().abs().mean(dim=1, keepdim=True).clamp_min(1e-8)
        t = ste(self.weight / gamma, self.ternary())  # gradient reaches W through the STE
        w = t * self.alpha[:, None]
        return F.linear(quant_act_int8(x), w, self.bias)


class PTQLinear(nn.Module):
    """A trained float layer as it computes after post-training quantization to
    ``fmt`` (q8 or popcount); used to score PTQ models on the torch side."""

    def __init__(self, linear: nn.Linear, fmt: str, act_mode: str = "sign"):
        super().__init__()
        self.act_mode = act_mode  # popcount: "unsigned" for inputs after a ReLU
        from ..kernels import get_format

        import numpy as np

        self.fmt = fmt
        f = get_format(fmt)
        W = linear.weight.detach().cpu().numpy()
        codes, scale = f.quantize(W)
        self.register_buffer("w_deq", torch.from_numpy(f.dequantize(codes, scale).astype(np.float32)))
        self.register_buffer("w_float", linear.weight.detach().clone())  # what export packs
        self.register_buffer("bias", linear.bias.detach().clone() if linear.bias is not None else None)

    export_format = property(lambda self: self.fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fmt == "popcount":
            from ..kernels.formats import POPCOUNT_TAU

            hi = x > POPCOUNT_TAU
            if self.act_mode == "unsigned":
                scale = (x * hi).sum(-1, keepdim=True) / hi.sum(-1, keepdim=True).clamp_min(1)
                scale = torch.where(scale > 0, scale, torch.ones_like(scale))
                xb = hi.float() * scale
            else:
                scale = x.abs().mean(-1, keepdim=True)
                scale = torch.where(scale > 0, scale, torch.ones_like(scale))
                xb = torch.where(hi, torch.ones_like(x), -torch.ones_like(x)) * scale
        else:
            xb = quant_act_int8(x)
        return F.linear(xb, self.w_deq, self.bias)
