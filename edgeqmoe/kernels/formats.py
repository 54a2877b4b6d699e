"""Packed weight formats: one definition each, mirrored by ``csrc/eq_formats.h``.

Every format turns a float weight matrix ``W`` of shape ``(n_out, k_in)`` into
*codes* (small integers, or float16 for ``f16``), packs the codes into bytes, and
defines how activations are quantized and how the integer dot product is taken.
The numpy code here is the reference implementation (the ``ref`` kernel): the C
kernels must reproduce its int32 accumulators bit for bit.

Common rules
------------
* Rows are output channels. Each row's input dimension is zero-padded to
  ``kp = ceil(k / 64) * 64`` so that every row starts on a 64-weight boundary;
  padding codes are zero (and padding activations are zero, so they never count).
* Activations of the integer formats (q1, q2, q4, q8, ternary) are int8 with an
  absmax scale per row: ``s_x = 127 / max|x|``, ``x_q = rint(x * s_x)`` (ties to
  even, float32 arithmetic), in [-127, 127].
* The dot product of a row is accumulated in int32 and dequantized once per
  output: ``y = acc * w_scale * (1 / s_x) + bias``.

Bit layouts (bit 0 is the least significant bit; "w[j]" is the code of weight j of
the row):

``q1`` / ``q2`` / ``ternary`` / ``q4``  b = 1, 2, 2, 4 bits per weight, stored
            unsigned: q1 stores bit 1 for +1 and 0 for -1; q2, ternary and q4 store
            u = q + offset (2, 1, 8).  The row is cut into blocks of ``big`` weights
            (512, 256, 256, 128: always 64 bytes) while at least ``big`` remain, then
            blocks of 64.  A block of B weights takes B*b/8 bytes; with f = 8/b fields
            per byte, byte i of the block holds weights i + j*B/f for j = 0..f-1, field
            j at bits [b*j, b*j + b)::

                q1, B=512:  byte i: | w[i+448] | ... | w[i+64] | w[i] |        (1 bit each)
                q2, B=256:  byte i: | w[i+192] | w[i+128] | w[i+64] | w[i] |   (2 bits each)
                q4, B=128:  byte i: | w[i+64] | w[i] |                         (4 bits each)

            so field j of a whole 64-byte block is 64 consecutive weights, obtained with
            one AND (and a shift) per 64 weights; a 64-weight tail block likewise gives
            8, 16 or 32 consecutive weights per field.
``q8``      one signed byte per weight, natural order.
``f16``     IEEE half per weight, natural order, little endian.
``popcount`` ternary weights (paper Eq. 3-4: |W| > tau * max|W|, tau = 0.05) stored as
            two bit planes per row, each LSB first: ``sign`` (bit 1 -> negative) then
            ``mask`` (bit 1 -> non-zero), each ``kp / 8`` bytes.  Activations are
            binarized at x > tau (tau = 0.05; inputs are standardised or
            LayerNorm-ed), one bit each (1 = low), in one of two modes per layer:
            ``sign`` (+1 / -1, scale mean|x|) or ``unsigned`` (1 / 0, scale mean of
            the high inputs; for inputs after a ReLU). The kernel computes the +-1
            dot product ``popcount(mask) - 2 * popcount(mask & (sign_w ^ low_x))``
            (XOR/AND + popcount, Eq. 4); in unsigned mode the result is
            ``(that + sum w) / 2``. ``popcount(mask)`` and ``sum w`` of each row are
            computed at load.

"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import numpy as np

#: Weights per padding unit: every packed row holds a multiple of this many codes.
ROW_ALIGN = 64
#: Threshold of the popcount format, relative to the tensor's (or row's) absmax.
POPCOUNT_TAU = 0.05
#: int8 activation range (symmetric; -128 is never produced).
ACT_QMAX = 127


#: Byte alignment of packed weights in memory and in bundle files: a 64-byte vector
#: load that straddles two cache lines costs two.
TENSOR_ALIGN = 64


def aligned_copy(a: np.ndarray, align: int = TENSOR_ALIGN) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data starts on an ``align``-byte boundary."""
    a = np.ascontiguousarray(a)
    buf = np.empty(a.nbytes + align, dtype=np.uint8)
    start = (-buf.ctypes.data) % align
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def padded_k(k: int) -> int:
    """Input length rounded up to the row alignment."""
    return -(-k // ROW_ALIGN) * ROW_ALIGN


def block_sizes(kp: int, big: int) -> list:
    """Block sizes that tile a padded row: ``big`` while it fits, then 64."""
    sizes = []
    left = kp
    while left >= big:
        sizes.append(big)
        left -= big
    while left > 0:
        sizes.append(ROW_ALIGN)
        left -= ROW_ALIGN
    return sizes


# --------------------------------------------------------------------------------------
# activation quantizers (reference)


def quantize_act_int8(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """int8 absmax per row. Returns (x_q int8 (B, k), act_scale float32 (B,)) with
    ``x ~= x_q * act_scale`` (act_scale = max|x| / 127, 1/127 for an all-zero row)."""
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    amax = np.abs(x).max(axis=1)
    amax = np.where(amax > 0, amax, np.float32(1.0)).astype(np.float32)
    s = (np.float32(ACT_QMAX) / amax).astype(np.float32)
    q = np.rint(x * s[:, None]).clip(-ACT_QMAX, ACT_QMAX).astype(np.int8)
    return q, (amax / np.float32(ACT_QMAX)).astype(np.float32)


def ternarize(v: np.ndarray, tau: float = POPCOUNT_TAU, axis=None):
    """sign(v) where |v| > tau * max|v| (over ``axis``), else 0; plus the scale
    alpha = mean|v| of the kept entries (1.0 where nothing is kept)."""
    v = np.asarray(v, dtype=np.float32)
    a = np.abs(v)
    amax = a.max(axis=axis, keepdims=True)
    thr = (np.float32(tau) * amax).astype(np.float32)
    keep = a > thr
    t = (np.sign(v) * keep).astype(np.int8)
    cnt = keep.sum(axis=axis, keepdims=True)
    tot = np.where(keep, a, 0).sum(axis=axis, keepdims=True, dtype=np.float64)
    alpha = np.where(cnt > 0, tot / np.maximum(cnt, 1), 1.0).astype(np.float32)
    return t, alpha


#: popcount activation modes: "sign" codes x > tau as +1, else -1 (scale mean|x|), for
#: signed inputs; "unsigned" codes x > tau as 1, else 0 (scale: mean of the x > tau),
#: for inputs after a ReLU, where every sign bit would be the same.
POPCOUNT_ACT_MODES = ("sign", "unsigned")


def quantize_act_popcount(x: np.ndarray, tau: float = POPCOUNT_TAU, mode: str = "sign"):
    """Binary activations for the popcount format: (codes int8 (B,k), scale (B,))."""
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    hi = x > np.float32(tau)
    if mode == "sign":
        codes = np.where(hi, 1, -1).astype(np.int8)
        scale = np.abs(x).mean(axis=1, dtype=np.float32)
    elif mode == "unsigned":
        codes = hi.astype(np.int8)
        n = hi.sum(axis=1)
        scale = (np.where(hi, x, 0).sum(axis=1, dtype=np.float32) / np.maximum(n, 1)).astype(np.float32)
    else:
        raise ValueError(f"popcount activation mode {mode!r}; use one of {POPCOUNT_ACT_MODES}")
    return codes, np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


# --------------------------------------------------------------------------------------
# packers: codes (n, k) -> packed bytes (n, row_bytes); unpackers invert them


def _pad_codes(codes: np.ndarray, kp: int, fill=0) -> np.ndarray:
    n, k = codes.shape
    out = np.full((n, kp), fill, dtype=codes.dtype)
    out[:, :k] = codes
    return out


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """(n, kp) of 0/1 -> (n, kp/8) uint8, LSB first."""
    return np.packbits(bits.astype(np.uint8), axis=1, bitorder="little")


def _unpack_bits(packed: np.ndarray, kp: int) -> np.ndarray:
    return np.unpackbits(packed, axis=1, count=kp, bitorder="little")


def _pack_fields(u: np.ndarray, bits: int, big: int) -> np.ndarray:
    """Pack unsigned fields of ``bits`` bits, block-interleaved as in the module doc."""
    n, kp = u.shape
    per = 8 // bits
    out = np.zeros((n, kp * bits // 8), dtype=np.uint8)
    pos = 0
    for bsz in block_sizes(kp, big):
        nb = bsz // per
        blk = u[:, pos:pos + bsz].reshape(n, per, nb).astype(np.uint8)
        byte = np.zeros((n, nb), dtype=np.uint8)
        for j in range(per):
            byte |= (blk[:, j, :] << (bits * j)).astype(np.uint8)
        out[:, pos * bits // 8:(pos + bsz) * bits // 8] = byte
        pos += bsz
    return out


def _unpack_fields(packed: np.ndarray, kp: int, bits: int, big: int) -> np.ndarray:
    n = packed.shape[0]
    per = 8 // bits
    mask = (1 << bits) - 1
    u = np.zeros((n, kp), dtype=np.uint8)
    pos = 0
    for bsz in block_sizes(kp, big):
        nb = bsz // per
        byte = packed[:, pos * bits // 8:(pos + bsz) * bits // 8]
        for j in range(per):
            u[:, pos + j * nb:pos + (j + 1) * nb] = (byte >> (bits * j)) & mask
        pos += bsz
    return u


# --------------------------------------------------------------------------------------
# weight quantizers: W (n, k) float -> (codes, scale)


def _centered_absmax(W: np.ndarray, per_channel: bool) -> np.ndarray:
    if per_channel:
        c = W - W.mean(axis=1, keepdims=True)
        return np.abs(c).max(axis=1)
    return np.array([np.abs(W - W.mean()).max()])


def _quantize_kbit(W: np.ndarray, bits: int, per_channel: bool):
    """Paper Eq. 2: s = max|W - mean W| / (2^(k-1) - 1); q = clip(round(W/s))."""
    qmax = 2 ** (bits - 1) - 1
    s = _centered_absmax(W, per_channel) / qmax
    s = np.where(s > 0, s, 1.0).astype(np.float32)
    sc = s[:, None] if per_channel else s[0]
    q = np.clip(np.rint(W / sc), -(qmax + 1), qmax).astype(np.int8)
    return q, s


def _quantize_q1(W: np.ndarray, per_channel: bool):
    """sign(W - mean W) in {-1, +1} (zero maps to +1); scale mean|W - mean W|."""
    if per_channel:
        c = W - W.mean(axis=1, keepdims=True)
        s = np.abs(c).mean(axis=1)
    else:
        c = W - W.mean()
        s = np.array([np.abs(c).mean()])
    q = np.where(c >= 0, 1, -1).astype(np.int8)
    return q, np.where(s > 0, s, 1.0).astype(np.float32)


def _quantize_ternary(W: np.ndarray, per_channel: bool = True):
    """BitNet b1.58 absmean ternarization with a per-output-channel scale alpha
    (mean|W| of the row); training learns alpha, post-hoc packing uses this."""
    alpha = np.abs(W).mean(axis=1)
    alpha = np.where(alpha > 0, alpha, 1.0).astype(np.float32)
    q = np.clip(np.rint(W / alpha[:, None]), -1, 1).astype(np.int8)
    return q, alpha


def _quantize_popcount(W: np.ndarray, per_channel: bool = False):
    t, alpha = ternarize(W, POPCOUNT_TAU, axis=None)
    return t, alpha.reshape(1)


def _quantize_f16(W: np.ndarray, per_channel: bool = False):
    return W.astype(np.float16), np.ones(1, dtype=np.float32)


# --------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class Format:
    """A packed weight format.

    ``code`` is the id shared with C (``EQ_FMT_*``); ``bits`` the storage bits per
    weight; ``offset`` the value added to signed codes before storing them unsigned.
    """

    name: str
    code: int
    bits: int
    offset: int
    act: str  # "int8", "binary" or "f32"
    quantize_fn: Callable
    pack_fn: Callable
    unpack_fn: Callable
    per_channel_default: bool = False
    doc: str = ""

    # ---- sizes
    def row_bytes(self, k: int) -> int:
        return padded_k(k) * self.bits // 8

    def weight_nbytes(self, n: int, k: int) -> int:
        """Packed weight bytes of an (n, k) layer: n * ceil(k/64)*64 * bits / 8."""
        return n * self.row_bytes(k)

    # ---- codes
    def quantize(self, W: np.ndarray, per_channel: bool | None = None):
        """Float weights -> (signed codes (n, k), scale float32 (1,) or (n,))."""
        W = np.asarray(W, dtype=np.float32)
        pc = self.per_channel_default if per_channel is None else per_channel
        return self.quantize_fn(W, pc)

    def pack(self, codes: np.ndarray) -> np.ndarray:
        """Codes (n, k) -> packed bytes (n, row_bytes), 64-byte aligned."""
        codes = np.asarray(codes)
        return aligned_copy(self.pack_fn(_pad_codes(codes, padded_k(codes.shape[1]))))

    def unpack(self, packed: np.ndarray, k: int) -> np.ndarray:
        return self.unpack_fn(np.asarray(packed), padded_k(k))[:, :k]

    def dequantize(self, codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
        c = np.asarray(codes, dtype=np.float32)
        s = np.asarray(scale, dtype=np.float32)
        return c * (s[:, None] if s.size > 1 else s[0])

    # ---- reference arithmetic
    def quantize_act(self, x: np.ndarray, act_mode: str = "sign"):
        if self.act == "int8":
            return quantize_act_int8(x)
        if self.act == "binary":
            return quantize_act_popcount(x, POPCOUNT_TAU, act_mode)
        x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
        return x, np.ones(x.shape[0], dtype=np.float32)

    def ref_acc(self, packed: np.ndarray, k: int, xq: np.ndarray) -> np.ndarray:
        """int32 accumulators (B, n) of quantized activations with the packed codes."""
        codes = self.unpack(packed, k).astype(np.int64)
        return (np.atleast_2d(xq).astype(np.int64) @ codes.T).astype(np.int32)

    def ref_linear(self, packed, scale, bias, k, x, act_mode: str = "sign") -> np.ndarray:
        """Float outputs (B, n) exactly as the kernels compute them (reference)."""
        s = np.asarray(scale, dtype=np.float32)
        if self.act == "f32":
            W = self.unpack(packed, k).astype(np.float32)
            y = np.atleast_2d(x).astype(np.float32) @ W.T
        else:
            xq, xs = self.quantize_act(x, act_mode)
            acc = self.ref_acc(packed, k, xq).astype(np.float32)
            y = acc * (s[None, :] if s.size > 1 else s[0]) * xs[:, None]
        if bias is not None:
            y = y + np.asarray(bias, dtype=np.float32)
        return y.astype(np.float32)


def _offset_fields(bits: int, big: int, offset: int):
    def pack(c):
        return _pack_fields((c.astype(np.int16) + offset).astype(np.uint8), bits, big)

    def unpack(p, kp):
        return (_unpack_fields(p, kp, bits, big).astype(np.int16) - offset).astype(np.int8)

    return pack, unpack


def _pack_q1(c):
    return _pack_fields((c > 0).astype(np.uint8), 1, 512)


def _unpack_q1(p, kp):
    return (_unpack_fields(p, kp, 1, 512).astype(np.int8) * 2 - 1).astype(np.int8)


def _pack_q8(c):
    return np.ascontiguousarray(c.astype(np.int8)).view(np.uint8)


def _unpack_q8(p, kp):
    return np.ascontiguousarray(p).view(np.int8)[:, :kp]


def _pack_f16(c):
    return np.ascontiguousarray(c.astype("<f2")).view(np.uint8)


def _unpack_f16(p, kp):
    return np.ascontiguousarray(p).view("<f2")[:, :kp]


def _pack_popcount(c):
    return np.concatenate([_pack_bits(c < 0), _pack_bits(c != 0)], axis=1)


def _unpack_popcount(p, kp):
    half = kp // 8
    sign = _unpack_bits(p[:, :half], kp)
    mask = _unpack_bits(p[:, half:], kp)
    return (mask.astype(np.int8) * np.where(sign > 0, -1, 1)).astype(np.int8)


_q2p, _q2u = _offset_fields(2, 256, 2)
_tp, _tu = _offset_fields(2, 256, 1)
_q4p, _q4u = _offset_fields(4, 128, 8)

FORMATS: Dict[str, Format] = {
    f.name: f
    for f in [
        Format("q1", 0, 1, 0, "int8", _quantize_q1, _pack_q1, _unpack_q1,
               doc="1-bit sign(W - mean W), per-layer scale mean|W - mean W|"),
        Format("q2", 1, 2, 2, "int8", lambda W, pc: _quantize_kbit(W, 2, pc), _q2p, _q2u,
               doc="symmetric 2-bit, codes -2..1"),
        Format("q4", 2, 4, 8, "int8", lambda W, pc: _quantize_kbit(W, 4, pc), _q4p, _q4u,
               doc="symmetric 4-bit, codes -8..7"),
        Format("q8", 3, 8, 0, "int8", lambda W, pc: _quantize_kbit(W, 8, pc), _pack_q8,
               _unpack_q8, doc="symmetric 8-bit, codes -128..127"),
        Format("ternary", 4, 2, 1, "int8", _quantize_ternary, _tp, _tu,
               per_channel_default=True, doc="BitNet {-1,0,+1}, per-channel alpha"),
        Format("f16", 5, 16, 0, "f32", _quantize_f16, _pack_f16, _unpack_f16,
               doc="float16 storage, float32 arithmetic"),
        Format("popcount", 6, 2, 0, "binary", _quantize_popcount, _pack_popcount,
               _unpack_popcount,
               doc="ternary weights (tau=0.05 of absmax), binary activations, XOR/AND popcount"),
    ]
}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown packed format {name!r}; known: {', '.join(FORMATS)}") from None


# --------------------------------------------------------------------------------------
# named tolerances (float paths only; integer accumulators are compared exactly)

#: C kernel outputs vs the numpy reference: same int32 accumulators, float32
#: epilogue in another order; relative to the largest output magnitude.
TOL_KERNEL_VS_REF = 2e-6
#: int8 absmax rounding moves each activation by at most half a step,
#: max|x| / 127 / 2, so an output moves by at most that times sum|w| of its row.
ACT_INT8_HALF_STEP = 0.5 / ACT_QMAX
#: f16 kernels accumulate float32 products in another order than numpy.
TOL_F16_VS_FLOAT = 1e-5
