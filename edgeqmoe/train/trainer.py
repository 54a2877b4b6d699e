"""Training loops: one model on one split, with early stopping on a validation split.

Inputs are standardised with the training rows' mean and standard deviation (stored
in the bundle). Loss: cross-entropy, class-weighted by inverse frequency (the paper),
plus ``load_balance`` times the router's balance term for MoEs. Gradients are clipped
(max norm 1.0). Early stopping watches clip-level weighted F1 on the validation split
(recordings held out of the training side) and keeps the best epoch's weights.

``train_model`` is what every caller uses: one model, or with ``model.seeds`` > 1 a
seed ensemble of heads (each member stopped on its own best validation epoch).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.nn import functional as F

from .config import Config, expert_kind
from .data import Data
from .metrics import clip_scores
from .models import Ensemble, Head, MoE


@dataclass
class Trained:
    model: torch.nn.Module           # eval mode; PTQ kinds already in their quantized view
    mean: np.ndarray
    std: np.ndarray
    epochs: int
    best_val: float
    seconds: float
    history: List[Dict] = field(default_factory=list)


def build_model(cfg: Config, d_in: int, n_classes: int) -> torch.nn.Module:
    m = cfg.model
    if m.kind == "moe":
        return MoE(list(m.expert_kinds), d_in, n_classes, m.top_k, m.temperature, m.curiosity, m.curiosity_alpha,
                   m.mc_samples, m.router_dropout, m.hidden, m.dropout, seed=cfg.train.seed)
    return Head(expert_kind(m.expert), d_in, n_classes, m.hidden, m.dropout)


def quantized_view(model: torch.nn.Module) -> torch.nn.Module:
    return model.ptq() if hasattr(model, "ptq") else model


@torch.no_grad()
def predict_proba(model: torch.nn.Module, X: np.ndarray, batch: int = 4096) -> np.ndarray:
    model.eval()
    out = [F.softmax(model(torch.from_numpy(X[i:i + batch])), -1).numpy() for i in range(0, len(X), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def train_one(cfg: Config, train: Data, val: Optional[Data], seed: int = 0, log=None) -> Trained:
    t0 = time.perf_counter()
    hp = cfg.resolved_train()
    torch.manual_seed(seed)
    torch.set_num_threads(cfg.train.threads)
    rng = np.random.default_rng(seed)
    mean = train.X.mean(0).astype(np.float32)
    std = (train.X.std(0) + 1e-6).astype(np.float32)
    Xtr = torch.from_numpy((train.X - mean) / std)
    ytr = torch.from_numpy(train.y)
    Xva = ((val.X - mean) / std).astype(np.float32) if val is not None and len(val.y) else None
    model = build_model(cfg, train.X.shape[1], train.n_classes)
    counts = np.bincount(train.y, minlength=train.n_classes).astype(np.float64)
    weights = None
    if cfg.train.class_weighted:
        w = np.where(counts > 0, counts.sum() / (train.n_classes * np.maximum(counts, 1)), 0.0)
        weights = torch.tensor(w, dtype=torch.float32)
    opt_cls = torch.optim.AdamW if hp["optimizer"] == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    best, best_state, best_epoch, bad = -1.0, None, 0, 0
    history = []
    n = len(ytr)
    for epoch in range(cfg.train.max_epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for i in range(0, n, hp["batch_size"]):
            idx = perm[i:i + hp["batch_size"]]
            if len(idx) < 2:
                continue
            logits = model(Xtr[idx])
            loss = F.cross_entropy(logits, ytr[idx], weight=weights)
            if isinstance(model, MoE) and cfg.train.load_balance:
                loss = loss + cfg.train.load_balance * model.last["balance"]
            opt.zero_grad()
            loss.backward()
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            total += float(loss.detach()) * len(idx)
        if Xva is None:
            history.append({"epoch": epoch, "loss": total / n})
            best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
            continue
        score = clip_scores(predict_proba(quantized_view(model), Xva), val.y, val.clip, train.n_classes)["weighted_f1"]
        history.append({"epoch": epoch, "loss": total / n, "val_weighted_f1": score})
        if score > best:
            best, best_state, best_epoch, bad = score, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= hp["patience"]:
                break
    model.load_state_dict(best_state)
    model.eval()
    if log:
        log(f"  {cfg.name}: {len(history)} epochs, best at {best_epoch + 1} (val wF1 {best:.3f}), "
            f"{time.perf_counter() - t0:.1f} s")
    return Trained(quantized_view(model).eval(), mean, std, best_epoch + 1, best,
                   time.perf_counter() - t0, history)


def train_model(cfg: Config, train: Data, val: Optional[Data], seed: int = 0, log=None) -> Trained:
    """The model ``cfg`` describes: ``train_one``, or for ``model.seeds`` = N > 1 an
    ``Ensemble`` of N heads trained with seeds seed..seed+N-1 on the same rows (so they
    share the input standardisation)."""
    n = cfg.model.seeds
    if n == 1:
        return train_one(cfg, train, val, seed, log)
    members = [train_one(cfg, train, val, seed + i, log) for i in range(n)]
    model = Ensemble([m.model for m in members]).eval()
    best = -1.0
    if val is not None and len(val.y):
        Xva = ((val.X - members[0].mean) / members[0].std).astype(np.float32)
        best = clip_scores(predict_proba(model, Xva), val.y, val.clip, train.n_classes)["weighted_f1"]
    if log:
        log(f"  {cfg.name}: ensemble of {n} (val wF1 {best:.3f})")
    return Trained(model, members[0].mean, members[0].std, round(float(np.mean([m.epochs for m in members]))), best,
                   sum(m.seconds for m in members), [h for m in members for h in m.history])
