"""Heads and mixtures of quantized experts (torch, for training).

Expert kinds (the names used in configs, bundles and reports):

| kind | layers | exported format |
|---|---|---|
| ``fp32`` | float Linear | ``f16`` storage* |
| ``q1``, ``q2``, ``q4``, ``q8`` | BitLinear k (QAT) | same |
| ``q16`` | BitLinear 16 (float16 weights) | ``f16`` |
| ``bitnet`` | BitNetLinear (QAT, learned alpha) | ``ternary`` |
| ``q8-ptq`` | float, then int8 post-training | ``q8`` |
| ``popcount-ptq`` | float, then popcount post-training (Eq. 4) | ``popcount`` |

(*) the runtime has no float32 packed format; an fp32 head is stored as float16,
which the export check measures like any other.

A head is Linear -> LayerNorm -> ReLU -> Dropout per hidden layer, then a Linear to
the classes (hidden [640, 320], dropout 0.195: the paper's 4.2-4.3).

A seed ensemble (``Ensemble``) is N heads of one kind, trained alike on the same
rows with seeds seed..seed+N-1; its output is the log of the members' mean class
probabilities, so a softmax of it gives that mean.

MoE (paper 3.3): N experts, a router Linear(d,128)-ReLU-Dropout(0.2)-Linear(128,64)-
ReLU-Linear(64,N) with Xavier init; routing p = softmax(G(z) / T) (Eq. 5); output
y = sum over the top-k of p_i E_i(z), p as it is, not renormalised over the top-k
(Eq. 6; with top-1 the router's probability scales the output, so the task loss
trains the router);
load-balancing loss alpha_lb * N * sum_i f_i P_i (f_i: share of rows routed to i, P_i:
mean routing probability).

MoE-C (curiosity) computes exactly this, in this order:
1. Router: S Monte-Carlo dropout samples (the dropout after the first router layer;
   S = 10, one batched pass), p_s = softmax(G_s(z) / T), p_router = mean_s p_s.
   Epistemic uncertainty u = H(p_router) - mean_s H(p_s) (mutual information).
2. Every expert is evaluated: q_i = softmax(E_i(z)) over classes, q_bar = mean_i q_i;
   predictive entropy H(q_bar) (Eq. 7).
3. Curiosity (Eq. 8): p_i^c = p_router_i * exp(alpha * KL(q_i || q_bar)), normalised.
4. Top-k of p^c; y = sum over the top-k of p^c_i * E_i(z) (Eq. 6).
At inference the S dropout masks are fixed (drawn once from the bundle's seed), so
replaying the same audio gives the same output whatever came before.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .quant import BitLinear, BitNetLinear, PTQLinear

EXPERT_KINDS = ("fp32", "q1", "q2", "q4", "q8", "q16", "bitnet", "q8-ptq", "popcount-ptq")
PTQ_FORMAT = {"q8-ptq": "q8", "popcount-ptq": "popcount"}


def make_linear(kind: str, d_in: int, d_out: int) -> nn.Linear:
    if kind in ("fp32", "q8-ptq", "popcount-ptq"):
        return nn.Linear(d_in, d_out)
    if kind == "bitnet":
        return BitNetLinear(d_in, d_out)
    if kind in ("q1", "q2", "q4", "q8", "q16"):
        return BitLinear(d_in, d_out, int(kind[1:]))
    raise ValueError(f"unknown expert kind {kind!r}; known: {', '.join(EXPERT_KINDS)}")


class Head(nn.Module):
    """MLP head: [Linear -> LayerNorm -> ReLU -> Dropout] per hidden size, Linear out."""

    def __init__(self, kind: str, d_in: int, n_classes: int, hidden: Sequence[int] = (640, 320),
                 dropout: float = 0.195):
        super().__init__()
        self.kind = kind
        dims = [d_in, *hidden]
        self.linears = nn.ModuleList([make_linear(kind, dims[i], dims[i + 1]) for i in range(len(hidden))])
        self.norms = nn.ModuleList([nn.LayerNorm(h) for h in hidden])
        self.drop = nn.Dropout(dropout)
        self.out = make_linear(kind, dims[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin, ln in zip(self.linears, self.norms):
            x = self.drop(F.relu(ln(lin(x))))
        return self.out(x)

    def ptq(self) -> "Head":
        """The post-training-quantized view of a float head (q8-ptq, popcount-ptq)."""
        if self.kind not in PTQ_FORMAT:
            return self
        fmt = PTQ_FORMAT[self.kind]
        import copy

        h = copy.deepcopy(self)
        # the first layer sees standardised (signed) inputs; the others follow a ReLU
        h.linears = nn.ModuleList([PTQLinear(l, fmt, "sign" if i == 0 else "unsigned")
                                   for i, l in enumerate(self.linears)])
        h.out = PTQLinear(self.out, fmt, "unsigned" if self.linears else "sign")
        return h


class Ensemble(nn.Module):
    """Heads of one kind whose class probabilities are averaged (module doc); the
    members are trained (and PTQ-converted) before they are put together."""

    def __init__(self, members: Sequence[Head]):
        super().__init__()
        if not members or len({m.kind for m in members}) != 1:
            raise ValueError("an ensemble holds one or more heads of one kind")
        self.members = nn.ModuleList(members)
        self.kind = members[0].kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.stack([F.softmax(m(x), -1) for m in self.members]).mean(0)
        return torch.log(p.clamp_min(1e-30))


class Router(nn.Module):
    """Linear(d,128)-ReLU-Dropout(p)-Linear(128,64)-ReLU-Linear(64,N), Xavier init."""

    def __init__(self, d_in: int, n_experts: int, dropout: float = 0.2, hidden=(128, 64)):
        super().__init__()
        self.l1 = nn.Linear(d_in, hidden[0])
        self.l2 = nn.Linear(hidden[0], hidden[1])
        self.l3 = nn.Linear(hidden[1], n_experts)
        self.p = dropout
        for l in (self.l1, self.l2, self.l3):
            nn.init.xavier_uniform_(l.weight)
            nn.init.zeros_(l.bias)

    def logits(self, z: torch.Tensor, masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, N) without MC sampling, or (S, B, N) with masks (S, hidden0) applied
        after the first layer (inverted dropout: mask / (1 - p))."""
        h = F.relu(self.l1(z))
        if masks is None:
            h = F.dropout(h, self.p, self.training)
            return self.l3(F.relu(self.l2(h)))
        h = h[None] * masks[:, None, :]
        return self.l3(F.relu(self.l2(h)))


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim)


class MoE(nn.Module):
    """Heterogeneous experts with a top-k router; ``curiosity`` switches on MoE-C."""

    def __init__(self, experts: List[str], d_in: int, n_classes: int, top_k: int = 2, temperature: float = 1.0,
                 curiosity: bool = False, curiosity_alpha: float = 1.0, mc_samples: int = 10,
                 router_dropout: float = 0.2, hidden: Sequence[int] = (640, 320), dropout: float = 0.195,
                 seed: int = 0):
        super().__init__()
        self.kinds = list(experts)
        self.experts = nn.ModuleList([Head(k, d_in, n_classes, hidden, dropout) for k in experts])
        self.router = Router(d_in, len(experts), router_dropout)
        self.top_k = min(top_k, len(experts))
        self.temperature = temperature
        self.curiosity = curiosity
        self.alpha = curiosity_alpha
        self.mc_samples = mc_samples
        self.seed = seed
        g = torch.Generator().manual_seed(seed)
        keep = (torch.rand(mc_samples, self.router.l1.out_features, generator=g) >= router_dropout).float()
        self.register_buffer("eval_masks", keep / (1.0 - router_dropout))
        self.last: Dict[str, torch.Tensor] = {}

    def _masks(self) -> torch.Tensor:
        if self.training:  # fresh masks each step while training
            keep = (torch.rand_like(self.eval_masks) >= self.router.p).float()
            return keep / (1.0 - self.router.p)
        return self.eval_masks

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        B = z.shape[0]
        if self.curiosity:
            ps = F.softmax(self.router.logits(z, self._masks()) / self.temperature, dim=-1)  # (S, B, N)
            p = ps.mean(0)
            self.last["uncertainty"] = entropy(p) - entropy(ps).mean(0)
        else:
            p = F.softmax(self.router.logits(z) / self.temperature, dim=-1)
            self.last["uncertainty"] = torch.zeros(B)
        outs = torch.stack([e(z) for e in self.experts], dim=1)  # (B, N, C)
        if self.curiosity:
            q = F.softmax(outs, dim=-1)
            qbar = q.mean(1, keepdim=True)
            kl = (q * (torch.log(q.clamp_min(1e-12)) - torch.log(qbar.clamp_min(1e-12)))).sum(-1)  # (B, N)
            self.last["predictive_entropy"] = entropy(qbar[:, 0])
            w = p * torch.exp(self.alpha * kl)
            w = w / w.sum(-1, keepdim=True)
        else:
            w = p
        top = torch.topk(w, self.top_k, dim=-1)
        # paper Eq. 6: y = sum over the top-k of p_i E_i(z), the weights as they are (not
        # renormalised over the top-k): with top-1 the router's probability still scales
        # the output, so the task loss trains the router, not only the balance term
        wk = top.values
        y = (outs.gather(1, top.indices[:, :, None].expand(-1, -1, outs.shape[-1])) * wk[:, :, None]).sum(1)
        self.last["experts"] = top.indices
        self.last["p_router"] = p
        # load balancing (Switch-style): N * sum_i f_i * P_i, f from the top-1 choice
        f = F.one_hot(top.indices[:, 0], len(self.experts)).float().mean(0)
        self.last["balance"] = len(self.experts) * (f * p.mean(0)).sum()
        return y

    def ptq(self) -> "MoE":
        import copy

        last, self.last = self.last, {}  # holds graph tensors, which cannot be deep-copied
        try:
            m = copy.deepcopy(self)
        finally:
            self.last = last
        m.experts = nn.ModuleList([e.ptq() for e in self.experts])
        return m
