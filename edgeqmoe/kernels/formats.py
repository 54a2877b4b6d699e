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
            u = q + offset (2, 1, 8).  Rows are stored in *tiles* of 16 (the last tile
            is filled up with all-zero rows, whose outputs are never read).  A tile is
            cut along the padded row into *spans* of 4f columns (f = 8/b fields per
            byte: 32, 16, 16, 8 columns), and each span is one 64-byte vector: byte
            ``4r + c`` (r = row in the tile, c = 0..3) holds, in field j (bits
            [b*j, b*j + b)), the weight of row r at column ``span start + 4j + c``::

                span bytes:  | row 0: c0 c1 c2 c3 | row 1: c0 .. c3 | ... | row 15: c0 .. c3 |
                q1 byte 4r+c:  | w[r, 28+c] | w[r, 24+c] | ... | w[r, 4+c] | w[r, c] |   (1 bit each)
                q2 byte 4r+c:  | w[r, 12+c] | w[r, 8+c] | w[r, 4+c] | w[r, c] |        (2 bits each)
                q4 byte 4r+c:  | w[r, 4+c] | w[r, c] |                              (4 bits each)

            Field j of a span is then a 16-row x 4-column block whose four columns
            sit in the four bytes of one 32-bit lane: an int8 dot-product instruction
            (VPDPBUSD, SDOT) multiplies it with four broadcast activations and
            accumulates one row per lane, with no reduction across lanes.  For q1 the
            low (high) nibble of byte 4r+c holds columns c, c+4, c+8, c+12 (c+16 ..
            c+28): the AVX-512 kernel looks nibbles up in tables of the 16 possible
            sums of those four activations (one table per c, 64 bytes in all).  The
            tensor has shape (tiles, 16 * kp * b / 8); tile t's spans follow each
            other in column order.
``q8``      one signed byte per weight, natural order.
``f16``     IEEE half per weight, natural order, little endian.
``popcount`` ternary weights (paper Eq. 3-4: |W| > tau * max|W|, tau = 0.05) stored as
            two bit planes, ``sign`` (bit 1 -> negative) and ``mask`` (bit 1 ->
            non-zero), in tiles of 16 rows like the formats above: each span of 32
            columns is 64 bytes of sign bits then 64 bytes of mask bits, bytes
            ``4r .. 4r+3`` holding row r's 32 bits as a little-endian word (bit i =
            column span start + i)::

                span: | sign: row 0 word | row 1 word | ... | row 15 | mask: row 0 | ... | row 15 |

            Activations are
            binarized at x > tau (tau = 0.05; inputs are standardised or
            LayerNorm-ed), one bit each (1 = low), in one of two modes per layer:
            ``sign`` (+1 / -1, scale mean|x|) or ``unsigned`` (1 / 0, scale mean of
            the high inputs; for inputs after a ReLU). The kernel computes the +-1
            dot product ``popcount(mask) - 2 * popcount(mask & (sign_w ^ low_x))``
            (XOR/AND + popcount, Eq. 4) with the span's 32 activation bits broadcast
            to every row's lane; in unsigned mode the result is
            ``(that + sum w) / 2``. ``popcount(mask)`` and ``sum w`` of each row are
            computed at load.

"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import numpy as np

#: Weights per padding unit: every packed row holds a multiple of this many codes.
ROW_ALIGN = 64
#: Rows per tile of the sub-byte integer formats (q1, q2, ternary, q4).
ROW_TILE = 16
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


def tiled_rows(n: int) -> int:
    """Rows stored for an n-row layer of a tiled format (n rounded up to a tile)."""
    return -(-n // ROW_TILE) * ROW_TILE


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


def _pack_tiles(u: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned fields (n, kp) -> (tiles, 16 * kp * bits / 8) bytes, as in the module doc."""
    n, kp = u.shape
    per = 8 // bits
    span = 4 * per
    full = np.zeros((tiled_rows(n), kp), dtype=np.uint8)
    full[:n] = u
    tiles = full.shape[0] // ROW_TILE
    # (tile, row, span, field j, byte c) -> (tile, span, row, c, j)
    v = full.reshape(tiles, ROW_TILE, kp // span, per, 4).transpose(0, 2, 1, 4, 3)
    byte = np.zeros(v.shape[:-1], dtype=np.uint8)
    for j in range(per):
        byte |= (v[..., j] << (bits * j)).astype(np.uint8)
    return byte.reshape(tiles, -1)


def _unpack_tiles(packed: np.ndarray, kp: int, bits: int) -> np.ndarray:
    """Inverse of _pack_tiles: every stored row, (tiles * 16, kp) unsigned fields."""
    per = 8 // bits
    span = 4 * per
    mask = (1 << bits) - 1
    tiles = packed.shape[0]
    b = np.asarray(packed, dtype=np.uint8).reshape(tiles, kp // span, ROW_TILE, 4)
    v = np.stack([(b >> (bits * j)) & mask for j in range(per)], axis=-1)  # tile, span, row, c, j
    return v.transpose(0, 2, 1, 4, 3).reshape(tiles * ROW_TILE, kp)


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
    @property
    def tiled(self) -> bool:
        """Rows stored in tiles of ROW_TILE (q1, q2, ternary, q4, popcount)."""
        return self.act != "f32" and self.bits < 8

    def row_bytes(self, k: int) -> int:
        return padded_k(k) * self.bits // 8

    def stored_rows(self, n: int) -> int:
        return tiled_rows(n) if self.tiled else n

    def packed_shape(self, n: int, k: int) -> Tuple[int, int]:
        """Shape of the packed tensor: (n, row_bytes), or (tiles, 16 * row_bytes)."""
        if self.tiled:
            return tiled_rows(n) // ROW_TILE, ROW_TILE * self.row_bytes(k)
        return n, self.row_bytes(k)

    def weight_nbytes(self, n: int, k: int) -> int:
        """Packed weight bytes of an (n, k) layer: rows * ceil(k/64)*64 * bits / 8, with
        rows = n rounded up to a tile of 16 for the tiled formats."""
        return self.stored_rows(n) * self.row_bytes(k)

    # ---- codes
    def quantize(self, W: np.ndarray, per_channel: bool | None = None):
        """Float weights -> (signed codes (n, k), scale float32 (1,) or (n,))."""
        W = np.asarray(W, dtype=np.float32)
        pc = self.per_channel_default if per_channel is None else per_channel
        return self.quantize_fn(W, pc)

    def pack(self, codes: np.ndarray) -> np.ndarray:
        """Codes (n, k) -> packed bytes of ``packed_shape(n, k)``, 64-byte aligned."""
        codes = np.asarray(codes)
        return aligned_copy(self.pack_fn(_pad_codes(codes, padded_k(codes.shape[1]))))

    def unpack(self, packed: np.ndarray, n: int, k: int) -> np.ndarray:
        """Packed bytes of an (n, k) layer -> its codes (n, k)."""
        return self.unpack_fn(np.asarray(packed), padded_k(k))[:n, :k]

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

    def ref_acc(self, packed: np.ndarray, n: int, k: int, xq: np.ndarray) -> np.ndarray:
        """int32 accumulators (B, n) of quantized activations with the packed codes."""
        codes = self.unpack(packed, n, k).astype(np.int64)
        return (np.atleast_2d(xq).astype(np.int64) @ codes.T).astype(np.int32)

    def ref_linear(self, packed, scale, bias, n, k, x, act_mode: str = "sign") -> np.ndarray:
        """Float outputs (B, n) exactly as the kernels compute them (reference)."""
        s = np.asarray(scale, dtype=np.float32)
        if self.act == "f32":
            W = self.unpack(packed, n, k).astype(np.float32)
            y = np.atleast_2d(x).astype(np.float32) @ W.T
        else:
            xq, xs = self.quantize_act(x, act_mode)
            acc = self.ref_acc(packed, n, k, xq).astype(np.float32)
            y = acc * (s[None, :] if s.size > 1 else s[0]) * xs[:, None]
        if bias is not None:
            y = y + np.asarray(bias, dtype=np.float32)
        return y.astype(np.float32)


def _offset_fields(bits: int, offset: int):
    def pack(c):
        return _pack_tiles((c.astype(np.int16) + offset).astype(np.uint8), bits)

    def unpack(p, kp):
        return (_unpack_tiles(p, kp, bits).astype(np.int16) - offset).astype(np.int8)

    return pack, unpack


def _pack_q1(c):
    return _pack_tiles((c > 0).astype(np.uint8), 1)


def _unpack_q1(p, kp):
    return (_unpack_tiles(p, kp, 1).astype(np.int8) * 2 - 1).astype(np.int8)


def _pack_q8(c):
    return np.ascontiguousarray(c.astype(np.int8)).view(np.uint8)


def _unpack_q8(p, kp):
    return np.ascontiguousarray(p).view(np.int8)[:, :kp]


def _pack_f16(c):
    return np.ascontiguousarray(c.astype("<f2")).view(np.uint8)


def _unpack_f16(p, kp):
    return np.ascontiguousarray(p).view("<f2")[:, :kp]


def _pack_popcount(c):
    """(n, kp) ternary codes -> (tiles, spans * 128): per span 64 bytes of sign words,
    then 64 of mask words (module doc)."""
    n, kp = c.shape
    tiles, spans = tiled_rows(n) // ROW_TILE, kp // 32
    planes = []
    for plane in (c < 0, c != 0):
        full = np.zeros((tiles * ROW_TILE, kp), dtype=np.uint8)
        full[:n] = plane
        b = _pack_bits(full).reshape(tiles, ROW_TILE, spans, 4).transpose(0, 2, 1, 3)
        planes.append(b.reshape(tiles, spans, 64))
    return np.ascontiguousarray(np.stack(planes, axis=2).reshape(tiles, -1))


def _unpack_popcount(p, kp):
    tiles, spans = p.shape[0], kp // 32
    b = np.asarray(p, dtype=np.uint8).reshape(tiles, spans, 2, ROW_TILE, 4).transpose(2, 0, 3, 1, 4)
    sign, mask = (_unpack_bits(b[i].reshape(tiles * ROW_TILE, kp // 8), kp) for i in range(2))
    return (mask.astype(np.int8) * np.where(sign > 0, -1, 1)).astype(np.int8)


_q2p, _q2u = _offset_fields(2, 2)
_tp, _tu = _offset_fields(2, 1)
_q4p, _q4u = _offset_fields(4, 8)

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
