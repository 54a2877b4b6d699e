"""mn04 on integers: the network, its calibration, and the numpy reference of the
integer arithmetic that the C engine (``_ckernels.Cnn``) reproduces bit for bit.

The network is the one of ``mn04_spec`` with every BatchNorm folded. Feature maps are
channels-last (height = mel bins, width = frames, channels) and stored as uint8 with a
scale and zero point per channel (``real = scale * (q - zero)``), calibrated once on
real windows by ``tools/calibrate_mn04.py`` and shipped as ``mn04-int8-calibration
.safetensors`` (scales and means, no weights). Weights are int8, symmetric, one scale
per output channel, with the input's per-channel scale folded in, and each bias takes
back its weights' rounding error on the calibration mean input (bias correction).

One rule makes the C engine and this reference agree exactly: every sum is an integer
sum (int32 accumulators of uint8 x int8 products, exact in any order), and every float
operation is elementwise, in one written order, without fused multiply-adds
(``-ffp-contract=off``): an IEEE single multiply or add rounds the same in numpy and in
C. The float parts are the stem (a 3x3 on the one log-mel channel, nine products in tap
order), each epilogue (``float(acc + corr) * w_scale + bias [+ residual]``, ReLU or
hard-swish, ``rint(f * (1 / out_scale)) + zero`` clamped to 0..255), the squeeze-excitation's
two small layers (sums over inputs in index order) and its sigmoid (a table of
2049 values of ``z`` from -16 to 16 in steps of 1/64, as a 15-bit gate), and the
pooled embedding. The AudioSet classifier quantises the embedding per window (max-abs,
int8) and its hidden layer likewise.

The integer network is converted once (``convert``: from the weights, sha256 checked,
and the shipped calibration; under a second) into an embedder bundle, a safetensors file
of the engine's operations in the converted-embedder folder, named by the weights' and
the calibration's sha256, which its metadata records too; the embedder loads it at
every later start, or converts it at the first.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..audio.frontend import MN04_MEL
from .base import EmbedderInfo, MelEmbedder
from .mn04_spec import EMBED_DIM, MN04_BLOCKS, fold_bn

F32 = np.float32
SIXTH = F32(1.0 / 6.0)
GATE_STEPS = 64  # sigmoid table: z in steps of 1/64
GATE_RANGE = 16  # ... from -16 to 16
GATE_ONE = 1 << 15
CALIBRATION_FILE = Path(__file__).with_name("mn04-int8-calibration.safetensors")


def gate_table() -> np.ndarray:
    z = np.arange(-GATE_RANGE * GATE_STEPS, GATE_RANGE * GATE_STEPS + 1) / GATE_STEPS
    return np.rint(GATE_ONE / (1.0 + np.exp(-z))).astype(np.int32)


def _fold(state: Dict[str, np.ndarray], key: str):
    return fold_bn(state, f"{key}.0", f"{key}.1")


def layers(state: Dict[str, np.ndarray]) -> dict:
    """The folded float network (float64 weights) from mn04's state dict."""
    w, b = _fold(state, "features.0")
    net = {"stem": (w[:, 0], b), "blocks": []}
    for i, (cin, k, exp, cout, se, act, stride) in enumerate(MN04_BLOCKS, start=1):
        key, j, blk = f"features.{i}.block", 0, {"k": k, "stride": stride, "act": act}
        if exp != cin:
            w, b = _fold(state, f"{key}.{j}")
            blk["expand"], j = (w[:, :, 0, 0], b), j + 1
        w, b = _fold(state, f"{key}.{j}")
        blk["dw"], j = (w[:, 0].reshape(exp, k * k), b), j + 1
        if se:
            p = f"{key}.{j}.conc_se_layers.0"
            blk["se"] = tuple(state[f"{p}.{n}"].astype(np.float64) for n in ("fc1.weight", "fc1.bias",
                                                                            "fc2.weight", "fc2.bias"))
            j += 1
        w, b = _fold(state, f"{key}.{j}")
        blk["project"] = (w[:, :, 0, 0], b)
        blk["residual"] = stride == 1 and cin == cout
        net["blocks"].append(blk)
    w, b = _fold(state, "features.16")
    net["final"] = (w[:, :, 0, 0], b)
    net["fc1"] = (state["classifier.2.weight"].astype(np.float64), state["classifier.2.bias"].astype(np.float64))
    net["fc2"] = (state["classifier.5.weight"].astype(np.float64), state["classifier.5.bias"].astype(np.float64))
    return net


def _act(f: np.ndarray, act: Optional[str]) -> np.ndarray:
    if act == "RE":
        return np.maximum(f, F32(0))
    if act == "HS":
        return f * np.clip(f + F32(3), F32(0), F32(6)) * SIXTH
    return f


def _out_size(n: int, k: int, stride: int) -> int:
    return (n + 2 * ((k - 1) // 2) - k) // stride + 1


def stem(mel: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The float stem: mel (B, 128, T) -> (B, 64, T', C) before its activation, nine products
    in tap order (the C engine's order)."""
    mel = np.asarray(mel, dtype=F32)
    B, H, T = mel.shape
    Ho, Wo = _out_size(H, 3, 2), _out_size(T, 3, 2)
    xp = np.zeros((B, H + 2, T + 2), F32)
    xp[:, 1:-1, 1:-1] = mel
    w, acc = w.astype(F32), np.zeros((B, Ho, Wo, w.shape[0]), F32)
    for ty in range(3):
        for tx in range(3):
            acc = acc + xp[:, ty:ty + 2 * Ho - 1:2, tx:tx + 2 * Wo - 1:2, None] * w[:, ty, tx]
    return acc + b.astype(F32)


def _taps(x: np.ndarray, k: int, stride: int):
    """(tap index, the input at that tap for every output pixel): zero padded."""
    B, H, W, C = x.shape
    p = (k - 1) // 2
    Ho, Wo = _out_size(H, k, stride), _out_size(W, k, stride)
    xp = np.zeros((B, H + 2 * p, W + 2 * p, C), x.dtype)
    xp[:, p:p + H, p:p + W] = x
    for ty in range(k):
        for tx in range(k):
            yield ty * k + tx, xp[:, ty:ty + stride * (Ho - 1) + 1:stride, tx:tx + stride * (Wo - 1) + 1:stride]


# ---------------------------------------------------------------------------------------------
# float network, with the statistics calibration records


def float_forward(net: dict, mel: np.ndarray, stats: Optional[dict] = None):
    """The folded float network in numpy: mel (B, 128, T) -> (embeddings, logits). With
    ``stats``, adds each feature map's per-channel min, max, sum and count to it."""

    def seen(name, x):
        if stats is None:
            return
        flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
        lo, hi, s, n = flat.min(0), flat.max(0), flat.sum(0), flat.shape[0]
        if name in stats:
            o = stats[name]
            lo, hi, s, n = np.minimum(lo, o[0]), np.maximum(hi, o[1]), s + o[2], n + o[3]
        stats[name] = (lo, hi, s, n)

    x = _act(stem(mel, *net["stem"]), "HS")
    seen("stem", x)
    for i, blk in enumerate(net["blocks"], start=1):
        y = x
        if "expand" in blk:
            w, b = blk["expand"]
            y = _act(y @ w.T.astype(F32) + b.astype(F32), blk["act"])
            seen(f"b{i}.expand", y)
        w, b = blk["dw"]
        acc = 0
        for t, xs in _taps(y, blk["k"], blk["stride"]):
            acc = acc + xs * w[:, t].astype(F32)
        y = _act(acc + b.astype(F32), blk["act"])
        seen(f"b{i}.dw", y)
        if "se" in blk:
            w1, b1, w2, b2 = blk["se"]
            m = y.mean(axis=(1, 2))
            h = np.maximum(m @ w1.T + b1, 0)
            g = 1.0 / (1.0 + np.exp(-(h @ w2.T + b2)))
            y = (y * g[:, None, None, :]).astype(F32)
            seen(f"b{i}.gated", y)
        w, b = blk["project"]
        y = y @ w.T.astype(F32) + b.astype(F32)
        x = x + y if blk["residual"] else y
        seen(f"b{i}.out", x)
    w, b = net["final"]
    x = _act(x @ w.T.astype(F32) + b.astype(F32), "HS")
    seen("final", x)
    e = x.mean(axis=(1, 2))
    seen("embedding", e[:, None, None, :])
    h = _act((e @ net["fc1"][0].T + net["fc1"][1]).astype(F32), "HS")
    seen("hidden", h[:, None, None, :])
    return e.astype(F32), (h @ net["fc2"][0].T + net["fc2"][1]).astype(F32)


def calibration_from_stats(stats: dict) -> Dict[str, np.ndarray]:
    """Per-channel min, max and mean of every feature map: what ships."""
    out = {}
    for name, (lo, hi, s, n) in stats.items():
        out[f"{name}.min"], out[f"{name}.max"] = lo.astype(np.float32), hi.astype(np.float32)
        out[f"{name}.mean"] = (s / n).astype(np.float32)
    return out


def load_calibration(path: Optional[Path] = None) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path or CALIBRATION_FILE))


# ---------------------------------------------------------------------------------------------
# the integer network


def _qparams(lo: np.ndarray, hi: np.ndarray):
    """uint8 scale and zero point per channel for values in [lo, hi] (0 always inside)."""
    lo, hi = np.minimum(lo.astype(np.float64), 0), np.maximum(hi.astype(np.float64), 0)
    rng = hi - lo
    scale = np.where(rng > 1e-7, rng / 255.0, 1.0)
    zero = np.clip(np.rint(-lo / scale), 0, 255).astype(np.int32)
    return scale, zero


def _quant_rows(w: np.ndarray, bits: int = 8):
    """Codes per output row (axis 0), symmetric: (codes, scales). 8 bits: int8 codes, max-abs
    scale. 16 bits: int16 codes up to 127 x 256 (so that the engine splits each into an int8
    high and low part), max-abs scale. Fewer than 8: per row the clipping (1.0 to 0.5 of
    max-abs) with the least squared error, in int8."""
    qmax = 127 * 256 if bits == 16 else 2 ** (bits - 1) - 1
    W = w.reshape(w.shape[0], -1).astype(np.float64)
    amax = np.abs(W).max(axis=1)
    best_q = best_s = best_err = None
    for clip in (1.0,) if bits >= 8 else (1.0, 0.9, 0.8, 0.7, 0.6, 0.5):
        scale = np.where(amax > 0, clip * amax / qmax, 1.0)
        q = np.clip(np.rint(W / scale[:, None]), -qmax, qmax)
        err = ((q * scale[:, None] - W) ** 2).sum(axis=1)
        if best_err is None:
            best_q, best_s, best_err = q, scale, err
        else:
            m = err < best_err
            best_q[m], best_s[m], best_err[m] = q[m], scale[m], err[m]
    return best_q.astype(np.int16 if bits == 16 else np.int8).reshape(w.shape), best_s


# Pointwise layers whose weights get 16-bit codes (their inputs and outputs stay uint8): the
# projections of blocks 1-6, where the input scales folded into each row differ most; with
# int8 codes there they set the embedding's worst case (cosine min over the shared clips'
# 8,592 windows 0.973 -> 0.984; docs/int8.md), for 1.2 M of the 12.3 M multiply-accumulates
WIDE_LAYERS = ("b1.project", "b2.project", "b3.project", "b4.project", "b5.project", "b6.project")


def quantize(net: dict, calib: Dict[str, np.ndarray], pointwise_bits: int = 8,
             wide: Tuple[str, ...] = WIDE_LAYERS) -> dict:
    """The float network and its calibration -> the integer network (what the C engine runs).
    Pointwise layers named in ``wide`` get 16-bit weight codes. ``pointwise_bits`` < 8
    restricts the other pointwise weights' codes to that many bits (still stored as int8):
    how much accuracy 4-bit pointwise weights would cost (docs/int8.md)."""

    def tensor(name):
        s, z = _qparams(calib[f"{name}.min"], calib[f"{name}.max"])
        return {"scale": s, "zero": z, "mean": calib[f"{name}.mean"].astype(np.float64)}

    def pointwise(wb, src, dst, act, name=""):
        w, b = wb
        wf = w * src["scale"][None, :]  # acts on codes minus zero
        wq, sw = _quant_rows(wf, 16 if name in wide else pointwise_bits)
        eff = wq * sw[:, None] / src["scale"][None, :]  # what the int8 weights do to real inputs
        b = b - (eff - w) @ src["mean"]
        corr = -(wq.astype(np.int64) @ src["zero"])
        return {"w": wq, "corr": corr.astype(np.int32), "w_scale": sw.astype(F32), "bias": b.astype(F32),
                "out_inv": (1.0 / dst["scale"]).astype(F32), "out_zero": dst["zero"], "act": act}

    q = {"gate": gate_table()}
    t = tensor("stem")
    q["stem"] = {"w": net["stem"][0].astype(F32), "bias": net["stem"][1].astype(F32),
                 "out_inv": (1.0 / t["scale"]).astype(F32), "out_zero": t["zero"]}
    blocks = []
    for i, blk in enumerate(net["blocks"], start=1):
        cur, qb = t, {"k": blk["k"], "stride": blk["stride"], "act": blk["act"]}
        if "expand" in blk:
            e = tensor(f"b{i}.expand")
            qb["expand"], cur = pointwise(blk["expand"], t, e, blk["act"], f"b{i}.expand"), e
        d = tensor(f"b{i}.dw")
        w, b = blk["dw"]
        wq, sw_raw = _quant_rows(w)
        eff = wq * sw_raw[:, None]
        b = b - (eff - w).sum(axis=1) * cur["mean"]
        qb["dw"] = {"w": wq, "in_zero": cur["zero"], "w_scale": (sw_raw * cur["scale"]).astype(F32),
                    "bias": b.astype(F32), "out_inv": (1.0 / d["scale"]).astype(F32), "out_zero": d["zero"],
                    "act": blk["act"]}
        proj_in = d
        if "se" in blk:
            w1, b1, w2, b2 = blk["se"]
            qb["se"] = {"w1": w1.astype(F32), "b1": b1.astype(F32), "w2": w2.astype(F32), "b2": b2.astype(F32),
                        "in_scale": d["scale"].astype(F32), "in_zero": d["zero"]}
            proj_in = {"scale": d["scale"], "zero": d["zero"], "mean": calib[f"b{i}.gated.mean"].astype(np.float64)}
        o = tensor(f"b{i}.out")
        qb["project"] = pointwise(blk["project"], proj_in, o, None, f"b{i}.project")
        if blk["residual"]:
            qb["residual"] = {"scale": t["scale"].astype(F32), "zero": t["zero"]}
        blocks.append(qb)
        t = o
    q["blocks"] = blocks
    f = tensor("final")
    q["final"] = pointwise(net["final"], t, f, "HS")
    q["pool"] = {"scale": f["scale"].astype(F32), "zero": f["zero"]}
    for name, mean in (("fc1", calib["embedding.mean"]), ("fc2", calib["hidden.mean"])):
        w, b = net[name]
        wq, sw = _quant_rows(w)
        b = b - (wq * sw[:, None] - w) @ mean.astype(np.float64)
        q[name] = {"w": wq, "w_scale": sw.astype(F32), "bias": b.astype(F32)}
    return q


def _requant(f: np.ndarray, inv: np.ndarray, zero: np.ndarray) -> np.ndarray:
    y = np.clip(f * inv, F32(-512), F32(512))
    return np.clip(np.rint(y).astype(np.int32) + zero, 0, 255).astype(np.uint8)


def _epilogue(acc: np.ndarray, L: dict, corr, residual=None, res_q=None) -> np.ndarray:
    f = (acc + corr).astype(F32) * L["w_scale"] + L["bias"]
    if residual is not None:
        f = f + (res_q.astype(np.int32) - residual["zero"]).astype(F32) * residual["scale"]
    return _requant(_act(f, L["act"]), L["out_inv"], L["out_zero"])


def _pw(x: np.ndarray, L: dict, residual=None, res_q=None) -> np.ndarray:
    acc = np.einsum("bhwk,ok->bhwo", x.astype(np.int32), L["w"].astype(np.int32))
    return _epilogue(acc, L, L["corr"], residual, res_q)


def _dense_q(x: np.ndarray):
    """A vector per row -> int8 codes and the row's scale (max-abs)."""
    amax = np.abs(x).max(axis=1, keepdims=True)
    safe = np.where(amax > 0, amax, F32(1))
    inv = F32(127) / safe
    return np.clip(np.rint(x * inv), -127, 127).astype(np.int32), safe / F32(127)


def _dense(x: np.ndarray, L: dict, act: Optional[str]) -> np.ndarray:
    q, sa = _dense_q(x)
    acc = q @ L["w"].astype(np.int32).T
    return _act(acc.astype(F32) * L["w_scale"] * sa + L["bias"], act)


def int_forward(q: dict, mel: np.ndarray):
    """The integer network in numpy (slow; the C engine's reference): mel (B, 128, T) ->
    (embeddings, logits), float32."""
    st = q["stem"]
    x = _requant(_act(stem(mel, st["w"], st["bias"]), "HS"), st["out_inv"], st["out_zero"])
    for qb in q["blocks"]:
        y = _pw(x, qb["expand"]) if "expand" in qb else x
        d = qb["dw"]
        acc = 0
        yd = y.astype(np.int32) - d["in_zero"]
        for t, xs in _taps(yd, qb["k"], qb["stride"]):
            acc = acc + xs * d["w"][:, t].astype(np.int32)
        y = _epilogue(acc, d, 0)
        if "se" in qb:
            y = _se(y, qb["se"], q["gate"])
        x = _pw(y, qb["project"], qb.get("residual"), x)
    x = _pw(x, q["final"])
    p, n = q["pool"], x.shape[1] * x.shape[2]
    e = (x.astype(np.int64).sum(axis=(1, 2)) - n * p["zero"]).astype(F32) * p["scale"] * F32(1.0 / n)
    h = _dense(e, q["fc1"], "HS")
    return e, _dense(h, q["fc2"], None)


def _se(y: np.ndarray, se: dict, table: np.ndarray) -> np.ndarray:
    n = y.shape[1] * y.shape[2]
    m = (y.astype(np.int64).sum(axis=(1, 2)) - n * se["in_zero"]).astype(F32) * se["in_scale"] * F32(1.0 / n)
    h = np.zeros((y.shape[0], se["w1"].shape[0]), F32)
    for c in range(se["w1"].shape[1]):
        h = h + m[:, c:c + 1] * se["w1"][:, c]
    h = np.maximum(h + se["b1"], F32(0))
    z = np.zeros((y.shape[0], se["w2"].shape[0]), F32)
    for c in range(se["w2"].shape[1]):
        z = z + h[:, c:c + 1] * se["w2"][:, c]
    z = z + se["b2"]
    idx = np.rint(np.clip(z * F32(GATE_STEPS), F32(-GATE_RANGE * GATE_STEPS), F32(GATE_RANGE * GATE_STEPS)))
    g = table[idx.astype(np.int32) + GATE_RANGE * GATE_STEPS]
    d = y.astype(np.int32) - se["in_zero"]
    return (se["in_zero"] + ((d * g[:, None, None, :] + (1 << 14)) >> 15)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# the C engine

ACT_CODE = {None: 0, "RE": 1, "HS": 2}


def engine_ops(q: dict) -> List[dict]:
    """The integer network as the C engine's operation list (``_ckernels.Cnn``): map
    buffers assigned so that a block's input stays until its residual is added."""
    i32, f32 = np.int32, np.float32

    def arr(a, dtype):
        return np.ascontiguousarray(a, dtype=dtype)

    def epi(L):
        return {"w_scale": arr(L["w_scale"], f32), "bias": arr(L["bias"], f32), "out_inv": arr(L["out_inv"], f32),
                "out_zero": arr(L["out_zero"], i32), "act": ACT_CODE[L["act"]]}

    def pw(L, src, dst, res=None):
        op = {"kind": "pw", "src": src, "dst": dst, "cin": L["w"].shape[1], "cout": L["w"].shape[0],
              "w": arr(L["w"], np.int8), "corr": arr(L["corr"], i32), **epi(L)}
        if L["w"].dtype == np.int16:  # 16-bit codes as an int8 high part (w) and low part (w_lo): 256 hi + lo
            hi = np.floor_divide(L["w"].astype(i32) + 128, 256)
            op.update(w=arr(hi, np.int8), w_lo=arr(L["w"].astype(i32) - 256 * hi, np.int8))
        if res is not None:
            op.update(res=res[0], res_scale=arr(res[1]["scale"], f32), res_zero=arr(res[1]["zero"], i32))
        return op

    st = q["stem"]
    ops = [{"kind": "stem", "dst": 0, "cout": st["w"].shape[0], "fw": arr(st["w"].reshape(-1, 9), f32),
            "fb": arr(st["bias"], f32), "out_inv": arr(st["out_inv"], f32), "out_zero": arr(st["out_zero"], i32)}]
    cur = 0
    for qb in q["blocks"]:
        a, b = [n for n in range(3) if n != cur][:2]
        src = cur
        if "expand" in qb:
            ops.append(pw(qb["expand"], cur, a))
            src = a
        d = qb["dw"]
        c = d["w"].shape[0]
        dst = b if src == a else a
        ops.append({"kind": "dw", "src": src, "dst": dst, "cin": c, "cout": c, "k": qb["k"], "stride": qb["stride"],
                    "w": arr(d["w"].T, np.int8), "zero": arr(d["in_zero"], i32), **epi(d)})
        if "se" in qb:
            se = qb["se"]
            ops.append({"kind": "se", "src": dst, "cin": c, "cout": se["w1"].shape[0],
                        "fw": arr(np.concatenate([se["w1"].ravel(), se["w2"].ravel()]), f32),
                        "fb": arr(np.concatenate([se["b1"], se["b2"]]), f32), "scale": arr(se["in_scale"], f32),
                        "zero": arr(se["in_zero"], i32)})
        out = next(n for n in range(3) if n not in (cur, dst))
        res = (cur, qb["residual"]) if "residual" in qb else None
        ops.append(pw(qb["project"], dst, out, res))
        cur = out
    fin = next(n for n in range(3) if n != cur)
    ops.append(pw(q["final"], cur, fin))
    p = q["pool"]
    ops.append({"kind": "pool", "src": fin, "cin": len(p["zero"]), "cout": len(p["zero"]),
                "scale": arr(p["scale"], f32),
                "zero": arr(p["zero"], i32)})
    for name, act in (("fc1", "HS"), ("fc2", None)):
        L = q[name]
        ops.append({"kind": "dense", "cin": L["w"].shape[1], "cout": L["w"].shape[0], "w": arr(L["w"], np.int8),
                    "scale": arr(L["w_scale"], f32), "fb": arr(L["bias"], f32), "act": ACT_CODE[act]})
    return ops


class Engine:
    """The integer mn04 on one kernel variant, an engine per window length (built on first
    use, then reused: fixed work and no allocation per window; the daemon's windows have
    one length, and at most MAX_ENGINES lengths are kept)."""

    MAX_ENGINES = 4

    def __init__(self, ops: List[dict], gate: np.ndarray, variant: str):
        self.ops, self.gate, self.variant = ops, gate, variant
        self.emb_dim = next(o["cout"] for o in ops if o["kind"] == "pool")
        self.out_dim = [o["cout"] for o in ops if o["kind"] == "dense"][-1]
        self._by_frames: Dict[int, object] = {}

    @classmethod
    def of(cls, q: dict, variant: str) -> "Engine":
        """The engine of an integer network (``quantize``'s result)."""
        return cls(engine_ops(q), q["gate"], variant)

    def forward_mel(self, mel: np.ndarray):
        """mel (B, n_mels, T) -> (embeddings (B, 384), logits (B, 527)), float32."""
        from ..kernels import _ckernels

        mel = np.ascontiguousarray(mel, dtype=np.float32)  # the engine reads a sample that is not finite as 0
        B, H, T = mel.shape
        eng = self._by_frames.get(T)
        if eng is None:
            if len(self._by_frames) >= self.MAX_ENGINES:  # a caller with ever new lengths: drop the oldest
                self._by_frames.pop(next(iter(self._by_frames)))
            eng = self._by_frames[T] = _ckernels.Cnn(self.variant, H, T, self.ops, self.gate)
        emb, out = np.empty((B, self.emb_dim), np.float32), np.empty((B, self.out_dim), np.float32)
        eng.run(mel, emb, out)
        return emb, out


# ---------------------------------------------------------------------------------------------
# the embedder


# ---------------------------------------------------------------------------------------------
# the embedder bundle

BUNDLE_VERSION = "4"  # 2: every tensor 64-byte aligned, read memory-mapped; 3: 16-bit codes in blocks 1-6;
#                       4: the tensors' sha256 in the metadata, checked at every load
_INTS = ("src", "dst", "res", "cin", "cout", "k", "stride", "act")


def calibration_sha256() -> str:
    from .weights import sha256_of

    return sha256_of(CALIBRATION_FILE)


def bundle_path(source_sha256: str, calib_sha256: Optional[str] = None) -> Path:
    from .mn04_onnx import converted_dir

    calib_sha256 = calib_sha256 or calibration_sha256()
    return converted_dir() / f"mn04-int8-{source_sha256[:16]}-c{calib_sha256[:8]}-v{BUNDLE_VERSION}.safetensors"


def build_ops(weights_path) -> Tuple[List[dict], np.ndarray]:
    """The engine's operations and sigmoid table from the weights file and the shipped
    calibration."""
    from .ptfile import CheckpointError, read_state_dict
    from .weights import WeightsError

    try:
        net = layers(read_state_dict(weights_path))
    except (CheckpointError, KeyError) as e:
        raise WeightsError(f"{weights_path}: cannot build the integer embedder from it ({e})") from None
    try:
        calib = load_calibration()
    except (OSError, KeyError, ValueError) as e:
        raise WeightsError(f"the integer embedder's calibration {CALIBRATION_FILE} cannot be read ({e}); "
                           "reinstall edgeqmoe") from None
    q = quantize(net, calib)
    return engine_ops(q), q["gate"]


ALIGN = 64
_ST_DTYPES = {"I8": np.int8, "U8": np.uint8, "I16": np.int16, "I32": np.int32, "F32": np.float32}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


def _aligned_safetensors(tensors: List[Tuple[str, np.ndarray]], metadata: Dict[str, str]) -> bytes:
    """A safetensors file in which every tensor starts at a multiple of ALIGN bytes: the
    header is padded with spaces, and since the format allows no holes between tensors,
    each gap is a padding tensor of its own (``__pad.N``, uint8), which readers skip."""
    header: Dict[str, object] = {"__metadata__": metadata}
    chunks, off = [], 0
    for name, a in tensors:
        if off % ALIGN:
            gap = ALIGN - off % ALIGN
            header[f"__pad.{len(chunks)}"] = {"dtype": "U8", "shape": [gap], "data_offsets": [off, off + gap]}
            chunks.append(bytes(gap))
            off += gap
        a = np.ascontiguousarray(a)
        header[name] = {"dtype": _ST_NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        chunks.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-(8 + len(h)) % ALIGN)
    return len(h).to_bytes(8, "little") + h + b"".join(chunks)


def _map_safetensors(path: Path) -> Tuple[Dict[str, str], Dict[str, np.ndarray]]:
    """The metadata and tensors of a safetensors file, the tensors as read-only views of
    the file memory-mapped (nothing copied; pages are read when used)."""
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    n = int.from_bytes(mm[:8].tobytes(), "little")
    if not 2 <= n <= len(mm) - 8:
        raise ValueError(f"header of {n} bytes in a file of {len(mm)}")
    header = json.loads(mm[8:8 + n].tobytes())
    base, meta, arrays = 8 + n, header.pop("__metadata__", {}) or {}, {}
    for name, d in header.items():
        lo, hi = d["data_offsets"]
        if not 0 <= lo <= hi <= len(mm) - base:
            raise ValueError(f"tensor {name} ends at byte {base + hi} of a file of {len(mm)}")
        if name.startswith("__pad."):
            continue
        arrays[name] = mm[base + lo:base + hi].view(_ST_DTYPES[d["dtype"]]).reshape(d["shape"])
    return meta, arrays


def save_bundle(ops: List[dict], gate: np.ndarray, path: Path, source_sha256: str, calib_sha256: str) -> None:
    """Write the operations as a safetensors file, every tensor 64-byte aligned (a
    temporary name, fsync, rename); older versions of the same bundle are removed."""
    tensors = [("gate", gate)]
    layout = []
    for i, op in enumerate(ops):
        layout.append({k: (v if isinstance(v, str) else int(v)) for k, v in op.items() if not isinstance(v, np.ndarray)})
        tensors += [(f"op{i}.{k}", v) for k, v in op.items() if isinstance(v, np.ndarray)]
    digest = hashlib.sha256()
    for _, a in tensors:
        digest.update(np.ascontiguousarray(a).tobytes())
    data = _aligned_safetensors(tensors, {"format": "edgeqmoe mn04 int8 engine operations",
                                          "version": BUNDLE_VERSION, "source_sha256": source_sha256,
                                          "calibration_sha256": calib_sha256, "ops": json.dumps(layout),
                                          "tensors_sha256": digest.hexdigest()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    stem = path.name.rsplit("-v", 1)[0]
    for old in path.parent.glob(f"{stem}-v*.safetensors"):
        if old != path:
            old.unlink(missing_ok=True)


def load_bundle(path: Path, source_sha256: str, calib_sha256: str) -> Tuple[List[dict], np.ndarray]:
    """The operations of a bundle made from these weights and this calibration, their
    arrays memory-mapped from the file; a file that cannot be read, or was made from
    others, is a WeightsError that says what to do."""
    from .weights import WeightsError

    try:
        meta, arrays = _map_safetensors(path)
        if meta.get("source_sha256") != source_sha256 or meta.get("calibration_sha256") != calib_sha256:
            raise WeightsError(f"{path} was converted from other weights or another calibration; delete it and "
                               "start again to convert anew.")
        ops = json.loads(meta["ops"])
        digest = hashlib.sha256(arrays["gate"])
        for i, op in enumerate(ops):  # in the order written: the digest covers every tensor's bytes
            for name in [k for k in arrays if k.startswith(f"op{i}.")]:
                op[name.split(".", 1)[1]] = arrays[name]
                digest.update(arrays[name])
        if digest.hexdigest() != meta.get("tensors_sha256"):
            raise ValueError("its tensors do not match their sha256: the file was changed or damaged")
        gate = arrays["gate"]
    except WeightsError:
        raise
    except Exception as e:  # a damaged file: say where; it is rebuilt once removed
        raise WeightsError(f"the converted embedder {path} cannot be read ({e}); delete it and start again to "
                           "convert anew.") from None
    return ops, gate


def convert(weights: Optional[str] = None, out: Optional[str] = None) -> Path:
    """The pretrained weights (sha256 checked) -> the integer embedder bundle; returns its path."""
    from .weights import MN04_WEIGHTS, WeightsError, resolve, sha256_of

    src = resolve(MN04_WEIGHTS, weights)
    digest, calib = sha256_of(src), calibration_sha256()
    path = Path(out) if out else bundle_path(digest, calib)
    ops, gate = build_ops(src)
    try:
        save_bundle(ops, gate, path, digest, calib)
    except OSError as e:
        raise WeightsError(f"cannot write the converted embedder to {path} ({e}); set EDGEQMOE_CACHE_DIR to a "
                           "writable folder") from None
    return path


class MN04Int8Embedder(MelEmbedder):
    """mn04 on our integer kernels (``model.embedder_runtime: int8``), from its bundle in
    the converted-embedder folder (made at the first start from the pretrained weights,
    sha256 checked, and the shipped calibration; ``say`` is told); no torch and no ONNX
    Runtime. ``kernel`` is the profile's kernel choice: a C variant, or ``ref`` for the
    numpy reference (slow; for checks)."""

    info = EmbedderInfo(id="mn04", version="2-int8", sample_rate=MN04_MEL.sample_rate, dim=EMBED_DIM)
    mel_spec = MN04_MEL
    runtime = "int8"

    def __init__(self, weights: Optional[str] = None, kernel: str = "simd", say=None):
        from ..kernels import resolve_variant
        from .weights import MN04_WEIGHTS, WeightsError, resolve, sha256_of

        src = resolve(MN04_WEIGHTS, weights)
        self.weights_path, self.source_sha256 = str(src), sha256_of(src)
        self.variant = resolve_variant(kernel)
        self.converted, self.model_path, self.q, self.engine = False, None, None, None
        if self.variant == "ref":  # the numpy reference works on the network itself
            from .ptfile import read_state_dict

            self.q = quantize(layers(read_state_dict(src)), load_calibration())
            return
        calib = calibration_sha256()
        path = bundle_path(self.source_sha256, calib)
        ops = None
        if path.is_file():
            try:
                ops, gate = load_bundle(path, self.source_sha256, calib)
            except WeightsError as e:  # damaged or changed: the weights are here, so convert anew
                if say is not None:
                    say(f"{e} Converting anew.")
        if ops is None:  # first start with these weights (or a damaged file): under a second, said once
            ops, gate = build_ops(src)
            self.converted = True
            try:
                save_bundle(ops, gate, path, self.source_sha256, calib)
                if say is not None:
                    say(f"converting the mn04 weights {src} for the integer kernels (once) into {path}")
            except OSError as e:  # nowhere to keep it: convert at every start instead, and say so
                path = None
                if say is not None:
                    say(f"cannot write the converted embedder ({e}); set EDGEQMOE_CACHE_DIR to a writable folder; "
                        "converting the mn04 weights in memory at every start until then")
        self.model_path = str(path) if path is not None else None
        self.engine = Engine(ops, gate, self.variant)

    def forward_mel(self, mel: np.ndarray):
        """mel (B, 128, T) -> (embeddings (B, 384), logits (B, 527))."""
        if self.engine is None:
            return int_forward(self.q, np.nan_to_num(np.asarray(mel, dtype=F32), nan=0.0, posinf=0.0, neginf=0.0))
        return self.engine.forward_mel(mel)


