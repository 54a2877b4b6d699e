"""Packed formats: round trips, padding, bit order, sizes, and C/Python agreement."""
import numpy as np
import pytest

from edgeqmoe.kernels import _ckernels
from edgeqmoe.kernels.formats import FORMATS, ROW_ALIGN, ROW_TILE, padded_k, tiled_rows

SHAPES = [(1, 1), (3, 7), (5, 33), (4, 100), (2, 1023), (3, 1024), (2, 1536), (640, 1024)]


def random_codes(f, n, k, rng):
    W = rng.standard_normal((n, k)).astype(np.float32)
    return f.quantize(W)


@pytest.mark.parametrize("name", FORMATS)
def test_pack_unpack_exact(name, rng):
    f = FORMATS[name]
    for n, k in SHAPES:
        codes, scale = random_codes(f, n, k, rng)
        packed = f.pack(codes)
        assert packed.dtype == np.uint8 and packed.shape == f.packed_shape(n, k)
        np.testing.assert_array_equal(f.unpack(packed, n, k), codes)
        rows = tiled_rows(n) if f.tiled else n
        assert packed.nbytes == f.weight_nbytes(n, k) == rows * padded_k(k) * f.bits // 8


@pytest.mark.parametrize("name", FORMATS)
def test_padding_bits_are_zero(name, rng):
    f = FORMATS[name]
    for n, k in ((3, 1), (3, 7), (17, 33), (3, 100), (5, 1023)):
        codes, _ = random_codes(f, n, k, rng)
        packed = f.pack(codes)
        # padding columns (and a tiled format's padding rows) pack as explicit zero
        # codes would: compare to packing the same rows with zero codes appended
        kp = padded_k(k)
        padded = np.zeros((n, kp), dtype=codes.dtype)
        padded[:, :k] = codes
        np.testing.assert_array_equal(f.pack_fn(padded), packed)
        if f.name in ("q1", "q8", "f16", "popcount"):
            # stored padding itself must be zero bits
            full = f.pack_fn(np.zeros((n, kp), dtype=codes.dtype))
            assert not full.any()
        if f.tiled:
            # every stored field beyond the real rows and columns holds unsigned 0
            # (q1: bit 0) or the format's zero code (the offset)
            u = f.unpack_fn(packed, kp).astype(int)
            u = (u + 1) // 2 if name == "q1" else u + f.offset
            zero_u = 0 if name == "q1" else f.offset
            assert (u[n:] == 0).all() and (u[:n, k:] == zero_u).all()


def tiled_position(f, r, j):
    """(tile, byte in the tile, bit shift) of row r, column j (formats module doc)."""
    per = 8 // f.bits
    span = 4 * per
    s, col = divmod(j, span)
    field, c = divmod(col, 4)
    return r // ROW_TILE, 64 * s + 4 * (r % ROW_TILE) + c, f.bits * field


@pytest.mark.parametrize("name", ["q1", "q2", "q4", "ternary", "q8", "popcount"])
def test_one_hot_pins_bit_order(name):
    """A single non-zero code at (row, column) lands at exactly the documented bit."""
    f = FORMATS[name]
    n, k = 35, 1536
    kp = padded_k(k)
    for r in (0, 5, 15, 16, 34):
        for j in (0, 1, 3, 4, 7, 15, 16, 31, 32, 63, 64, 100, 511, 512, 1023, 1024, 1535):
            codes = np.zeros((n, k), np.int8)
            if name == "q1":
                codes[:] = -1
            codes[r, j] = 1
            packed = f.pack(codes)
            np.testing.assert_array_equal(f.unpack(packed, n, k), codes)
            if f.tiled and f.act == "int8":
                t, byte, shift = tiled_position(f, r, j)
                want_u = 1 if name == "q1" else 1 + f.offset
                zero_u = 0 if name == "q1" else f.offset
                assert (packed[t, byte] >> shift) & ((1 << f.bits) - 1) == want_u
                # every other field of the tensor holds the zero code
                u = f.unpack_fn(packed, kp).astype(int)
                u = (u + 1) // 2 if name == "q1" else u + f.offset
                u[r, j] = zero_u
                assert (u[:n, :k] == zero_u).all()
            elif name == "q8":
                assert packed[r, j] == 1 and packed.sum() == 1
            else:  # popcount: the mask plane's bit set, the sign plane clear
                c = j % 32
                byte = 128 * (j // 32) + 64 + 4 * (r % ROW_TILE) + c // 8
                assert packed[r // ROW_TILE, byte] == 1 << (c % 8)
                assert packed.sum() == 1 << (c % 8)


def test_c_and_python_agree_on_layout_constants():
    assert _ckernels.ROW_ALIGN == ROW_ALIGN
    assert _ckernels.ROW_TILE == ROW_TILE
    for f in FORMATS.values():
        assert _ckernels.FMT_BITS[f.code] == f.bits, f.name
        assert _ckernels.FMT_OFFSET[f.code] == f.offset, f.name
    assert sorted(f.code for f in FORMATS.values()) == list(range(len(FORMATS)))


def test_formula_for_paper_layer():
    # q1 of a 1024x640 layer is 1024 * 640 / 8 bytes (plus its one scale)
    n, k = 640, 1024
    assert FORMATS["q1"].weight_nbytes(n, k) == n * k // 8
    assert FORMATS["q4"].weight_nbytes(n, k) == n * k // 2
    assert FORMATS["q8"].weight_nbytes(n, k) == n * k
    assert FORMATS["f16"].weight_nbytes(n, k) == n * k * 2
    assert FORMATS["popcount"].weight_nbytes(n, k) == n * k // 4
    # a tiled format's last tile is filled up: 5 rows store as 16
    assert FORMATS["q1"].weight_nbytes(5, k) == 16 * k // 8


def test_kbit_quantizer_follows_eq2(rng):
    W = rng.standard_normal((64, 100)).astype(np.float32) + 0.3
    for bits, name in ((2, "q2"), (4, "q4"), (8, "q8")):
        codes, s = FORMATS[name].quantize(W)
        qmax = 2 ** (bits - 1) - 1
        assert s.shape == (1,)
        np.testing.assert_allclose(s[0], np.abs(W - W.mean()).max() / qmax, rtol=1e-6)
        np.testing.assert_array_equal(codes, np.clip(np.rint(W / s[0]), -qmax - 1, qmax))
        pc_codes, pc_s = FORMATS[name].quantize(W, per_channel=True)
        assert pc_s.shape == (64,)
    codes, s = FORMATS["q1"].quantize(W)
    np.testing.assert_array_equal(codes, np.where(W - W.mean() >= 0, 1, -1))
    np.testing.assert_allclose(s[0], np.abs(W - W.mean()).mean(), rtol=1e-6)
    t, alpha = FORMATS["ternary"].quantize(W)
    assert set(np.unique(t)) <= {-1, 0, 1} and alpha.shape == (64,)
    p, a = FORMATS["popcount"].quantize(W)
    assert set(np.unique(p)) <= {-1, 0, 1}
    kept = np.abs(W) > 0.05 * np.abs(W).max()
    np.testing.assert_array_equal(p != 0, kept)
