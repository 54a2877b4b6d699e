"""Torch-free models behind one interface: ``predict(x) -> Prediction``.

``HeadModel`` wraps a single packed head. ``EnsembleModel`` runs a seed ensemble of
heads (``edgeqmoe.train.models.Ensemble``): every member on the same normalised input,
their class probabilities averaged. ``MoEModel`` runs a mixture of packed
experts exactly as ``edgeqmoe.train.models.MoE`` computes it in eval mode:

1. router first layer (+ ReLU) once; its output times each of the S fixed dropout
   masks (one batch of S rows) through the rest of the router;
   p_s = softmax(logits_s / T), p = mean_s p_s; uncertainty = H(p) - mean_s H(p_s).
   Without curiosity the router runs once, without masks.
2. curiosity: every expert runs; q_i = softmax(E_i(x)), q_bar = mean_i q_i,
   w_i = p_i exp(alpha KL(q_i || q_bar)), normalised; predictive entropy H(q_bar).
   Without curiosity: w = p, and only the top-k experts run (``evaluate_all`` makes
   them all run, for fixed work per window).
3. top-k of w; output logits = sum over the top-k of w_i E_i(x) (paper Eq. 6: the
   weights are not renormalised over the top-k, so with top-1 the router's
   probability scales the output, and the router learns from the task loss).

Routing modes (``load_model(routing=...)``): ``trained`` as above, as the bundle was
trained; ``router`` the router's plain top-k even if the bundle has curiosity;
``uniform`` no router at all: every window draws top_k distinct experts uniformly at
random (a seeded generator, so a replay draws the same) and weighs them 1/N (a
uniform router's probabilities), the
baseline that the paper compares curiosity routing against. ``router`` and
``uniform`` run only the chosen experts (unless ``evaluate_all``).

Inputs are the embedder's raw output; the bundle's input normalisation is applied
here once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ..kernels import KernelChoiceError, _ckernels
from .bundle import Bundle, BundleError, load_bundle
from .runtime import Head, InputNorm, check_embedder, out_features, softmax, steps_from_meta


@dataclass
class Prediction:
    proba: np.ndarray                        # (B, classes)
    experts: Optional[np.ndarray] = None     # (B, k) expert indices used
    weights: Optional[np.ndarray] = None     # (B, k) their mixing weights
    uncertainty: Optional[np.ndarray] = None  # (B,) router epistemic uncertainty (nats)
    entropy: Optional[np.ndarray] = None     # (B,) predictive entropy of the experts' mean (nats)


def _entropy(p: np.ndarray, axis=-1) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis)


class HeadModel(InputNorm):
    kind = "mlp"

    def __init__(self, head: Head, mean, std, classes, embedder, meta):
        self.head, self.classes, self.embedder, self.meta = head, list(classes), dict(embedder), meta
        self.in_features = head.in_features
        self._set_norm(mean, std)
        self.experts = [meta["graph"].get("kind", "head")]

    @property
    def variant(self) -> str:
        return self.head.variant

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.head._run(self._norm(x))

    def predict(self, x: np.ndarray) -> Prediction:
        return Prediction(softmax(self.logits(x)))


class EnsembleModel(InputNorm):
    kind = "ensemble"

    def __init__(self, heads: List[Head], mean, std, classes, embedder, meta):
        self.heads, self.classes, self.embedder, self.meta = list(heads), list(classes), dict(embedder), meta
        self.in_features = self.heads[0].in_features
        self._set_norm(mean, std)
        self.experts = [meta["graph"].get("kind", "head")] * len(self.heads)
        self._buf = np.zeros((len(self.heads), len(self.classes)), np.float32)  # one window's member logits
        self._lock = threading.Lock()

    @property
    def variant(self) -> str:
        return self.heads[0].variant

    def proba(self, x: np.ndarray) -> np.ndarray:
        """Mean of the members' class probabilities, (B, classes)."""
        x = self._norm(x)
        if x.shape[0] == 1:  # the daemon: each member writes its row of one preallocated buffer
            with self._lock:
                for i, h in enumerate(self.heads):
                    h.run_into(x, self._buf[i:i + 1])
                return softmax(self._buf).mean(0, keepdims=True)
        return np.mean([softmax(h._run(x)) for h in self.heads], axis=0)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Log of the mean probabilities: a softmax of it gives them back."""
        return np.log(np.maximum(self.proba(x), 1e-30))

    def predict(self, x: np.ndarray) -> Prediction:
        return Prediction(self.proba(x))


class MoEModel(InputNorm):
    kind = "moe"

    def __init__(self, router_in: Head, router_out: Head, experts: List[Head], masks: np.ndarray, top_k: int,
                 temperature: float, curiosity: bool, alpha: float, mean, std, classes, embedder, meta,
                 evaluate_all: bool = False, kinds: Optional[List[str]] = None, uniform: bool = False,
                 seed: int = 0):
        self.router_in, self.router_out, self.expert_heads = router_in, router_out, experts
        #: uniform routing: experts drawn at random per window (module doc)
        self.uniform = bool(uniform)
        if self.uniform:
            curiosity = False
        self._rng = np.random.default_rng(seed)
        self.masks = np.ascontiguousarray(masks, np.float32)
        self.top_k, self.temperature, self.curiosity, self.alpha = top_k, temperature, curiosity, alpha
        self.evaluate_all = evaluate_all or curiosity
        self.classes, self.embedder, self.meta = list(classes), dict(embedder), meta
        self.in_features = router_in.in_features
        self._set_norm(mean, std)
        self.experts = kinds or [f"expert{i}" for i in range(len(experts))]
        # one window at a time (the daemon), C variants: the whole window in one call
        # (normalisation, router, experts, combine) into preallocated buffers
        N, C = len(experts), len(self.classes)
        self._out = np.zeros((1, C), np.float32)
        self._chosen = np.zeros(top_k, np.int32)
        self._wk = np.zeros(top_k, np.float32)
        self._lock = threading.Lock()
        self._c = None
        if all(hasattr(h, "_program") for h in [router_in, router_out, *experts]) and N <= 64 and C <= 64:
            self._c = _ckernels.MoE(router_in._program, router_out._program, [e._program for e in experts],
                                    self.masks if curiosity else None, self._mul, self._add, top_k,
                                    temperature, curiosity, alpha, self.evaluate_all, self.uniform, seed)

    @property
    def variant(self) -> str:
        return self.router_in.variant

    def _draw(self, B: int) -> np.ndarray:
        """Uniform routing: top_k distinct experts per row, uniformly at random."""
        N = len(self.expert_heads)
        return np.argsort(self._rng.random((B, N)), axis=1)[:, :self.top_k]

    def _predict_one(self, x: np.ndarray) -> Prediction:
        """One row through the C mixture: fixed work with curiosity or evaluate_all;
        nothing is allocated but the result."""
        with self._lock:  # the buffers are the object's: one caller at a time fills and reads them
            unc, ent = self._c.run(x, self._out, self._chosen, self._wk)
            return Prediction(softmax(self._out), self._chosen[None, :].copy(), self._wk[None, :].copy(),
                              np.array([unc], np.float32), np.array([ent], np.float32) if self.curiosity else None)

    def predict(self, x: np.ndarray) -> Prediction:
        x = np.asarray(x, dtype=np.float32)
        if self._c is not None and x.ndim == 2 and x.shape[0] == 1 and x.shape[1] == self.in_features:
            return self._predict_one(np.ascontiguousarray(x))
        if self.uniform and self._c is not None:  # the C generator draws: one window at a time
            rows = [self._predict_one(np.ascontiguousarray(r[None, :])) for r in x]
            return Prediction(np.concatenate([r.proba for r in rows]), np.concatenate([r.experts for r in rows]),
                              np.concatenate([r.weights for r in rows]),
                              np.concatenate([r.uncertainty for r in rows]), None)
        x = self._norm(x)
        B, N = x.shape[0], len(self.expert_heads)
        if self.uniform:
            top = self._draw(B)
            wk = np.full(top.shape, 1.0 / N, np.float32)
            outs = np.zeros((B, N, len(self.classes)), np.float32)
            for i in range(N):
                rows = np.arange(B) if self.evaluate_all else np.flatnonzero((top == i).any(1))
                if rows.size:
                    outs[rows, i] = self.expert_heads[i]._run(np.ascontiguousarray(x[rows]))
            logits = (np.take_along_axis(outs, top[:, :, None], 1) * wk[:, :, None]).sum(1)
            return Prediction(softmax(logits), top, wk, np.zeros(B, np.float32), None)
        h = self.router_in._run(x)                                        # (B, H)
        if self.curiosity:
            S = self.masks.shape[0]
            hs = np.ascontiguousarray((h[:, None, :] * self.masks[None]).reshape(B * S, -1))
            ps = softmax(self.router_out._run(hs).reshape(B, S, N) / self.temperature)
            p = ps.mean(1)
            unc = _entropy(p) - _entropy(ps).mean(1)
        else:
            p = softmax(self.router_out._run(h) / self.temperature)
            unc = np.zeros(B, np.float32)
        C = len(self.classes)
        outs = np.zeros((B, N, C), np.float32)
        if self.evaluate_all:
            for i, e in enumerate(self.expert_heads):
                outs[:, i] = e._run(x)
        ent = None
        if self.curiosity:
            q = softmax(outs)
            qbar = q.mean(1, keepdims=True)
            kl = (q * (np.log(np.clip(q, 1e-12, None)) - np.log(np.clip(qbar, 1e-12, None)))).sum(-1)
            w = p * np.exp(self.alpha * kl)
            w = w / w.sum(-1, keepdims=True)
            ent = _entropy(qbar[:, 0])
        else:
            w = p
        top = np.argsort(-w, axis=1, kind="stable")[:, :self.top_k]
        wk = np.take_along_axis(w, top, 1)  # Eq. 6: not renormalised
        if not self.evaluate_all:  # only the chosen experts run: data-dependent work
            for i in np.unique(top):
                rows = np.flatnonzero((top == i).any(1))
                outs[rows, i] = self.expert_heads[i]._run(np.ascontiguousarray(x[rows]))
        logits = (np.take_along_axis(outs, top[:, :, None], 1) * wk[:, :, None]).sum(1)
        return Prediction(softmax(logits), top, wk, unc, ent)


#: MoE routing modes (module doc).
ROUTING_MODES = ("trained", "router", "uniform")


def load_model(path_or_bundle, kernel: Optional[str] = None, embedder=None, evaluate_all: bool = False,
               routing: str = "trained", seed: int = 0):
    """A HeadModel or MoEModel from a bundle file (see module doc). ``routing`` picks
    how a MoE bundle routes (``ROUTING_MODES``); ``seed`` seeds uniform routing."""
    if routing not in ROUTING_MODES:
        raise ValueError(f"routing {routing!r}; use one of {', '.join(ROUTING_MODES)}")
    b: Bundle = path_or_bundle if isinstance(path_or_bundle, Bundle) else load_bundle(path_or_bundle)
    if embedder is not None:
        check_embedder(b, embedder)
    g = b.meta["graph"]
    n_classes = len(b.classes)

    def head(step_meta, d_in, d_out, what):
        try:
            steps = steps_from_meta(b, step_meta, d_in)
        except BundleError as e:  # say which expert, member or router part
            raise BundleError(b.path, e.problem if what == "the head" else f"{what}: {e.problem}") from None
        if d_out is not None and out_features(steps) != d_out:
            raise BundleError(b.path, f"{what} gives {out_features(steps)} outputs; the bundle has "
                                      f"{d_out} {'classes' if what != 'router' else 'experts'}")
        return Head(steps, kernel=kernel)

    try:
        norm = b.meta.get("input_norm")
        mean = b.tensor(norm["mean"]) if norm else None
        std = b.tensor(norm["std"]) if norm else None
        d_in = int(mean.size) if mean is not None else int(b.embedder.get("dim", 0)) or None
        if g.get("type") == "mlp":
            return HeadModel(head(g["steps"], d_in, n_classes, "the head"), mean, std, b.classes, b.embedder,
                             b.meta)
        if g.get("type") == "ensemble":
            if not isinstance(g["members"], list) or not g["members"]:
                raise BundleError(b.path, "an ensemble needs a non-empty list of members")
            return EnsembleModel([head(m["steps"], d_in, n_classes, f"member {i}") for i, m in enumerate(g["members"])],
                                 mean, std, b.classes, b.embedder, b.meta)
        if g.get("type") == "moe":
            if not isinstance(g["experts"], list) or not g["experts"]:
                raise BundleError(b.path, "a mixture needs a non-empty list of experts")
            experts = [head(e["steps"], d_in, n_classes, f"expert {i}") for i, e in enumerate(g["experts"])]
            r_in = head(g["router_in"], d_in, None, "router")
            return MoEModel(r_in, head(g["router_out"], out_features(r_in.steps), len(experts), "router"), experts,
                            b.tensor(g["masks"]), int(g["top_k"]), float(g["temperature"]),
                            bool(g["curiosity"]) and routing == "trained",
                            float(g["curiosity_alpha"]), mean, std, b.classes, b.embedder, b.meta,
                            evaluate_all=evaluate_all, kinds=[e["kind"] for e in g["experts"]],
                            uniform=routing == "uniform", seed=seed)
    except KernelChoiceError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise BundleError(b.path, f"bad graph: {type(e).__name__} {e}") from None
    raise BundleError(b.path, f"unknown graph type {g.get('type')!r}")
