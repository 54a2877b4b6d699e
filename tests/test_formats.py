"""Packed formats: round trips, padding, bit order, sizes, and C/Python agreement."""
import numpy as np
import pytest

from edgeqmoe.kernels import _ckernels
from edgeqmoe.kernels.formats import FORMATS, ROW_ALIGN, block_sizes, padded_k

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
        assert packed.dtype == np.uint8 and packed.shape == (n, f.row_bytes(k))
        np.testing.assert_array_equal(f.unpack(packed, k), codes)
        assert packed.nbytes == f.weight_nbytes(n, k) == n * padded_k(k) * f.bits // 8


@pytest.mark.parametrize("name", FORMATS)
def test_padding_bits_are_zero(name, rng):
    f = FORMATS[name]
    for k in (1, 7, 33, 100, 1023):
        codes, _ = random_codes(f, 3, k, rng)
        packed = f.pack(codes)
        # a row of all-padding codes packs to zero bytes, and the padding region of a
        # real row holds whatever zero-valued padding packs to: compare to packing the
        # same row with explicit zero codes appended
        kp = padded_k(k)
        padded = np.zeros((3, kp), dtype=codes.dtype)
        padded[:, :k] = codes
        np.testing.assert_array_equal(f.pack_fn(padded), packed)
        if f.name in ("q1", "q8", "f16", "popcount"):
            # stored padding itself must be zero bits
            bits = np.unpackbits(packed, axis=1, bitorder="little")
            full = np.unpackbits(f.pack_fn(np.zeros((3, kp), dtype=codes.dtype)), axis=1, bitorder="little")
            assert not full.any()
        # the unsigned fields of the padding are the format's zero code (offset)
        if f.name in ("q2", "q4", "ternary"):
            u = FORMATS[name].unpack_fn(packed, kp)[:, k:]
            assert (u == 0).all()


@pytest.mark.parametrize("name", ["q1", "q2", "q4", "ternary", "q8", "popcount"])
def test_one_hot_pins_bit_order(name):
    """A single non-zero code at column j lands at exactly the documented bit."""
    f = FORMATS[name]
    k = 1536
    kp = padded_k(k)
    for j in (0, 1, 7, 63, 64, 100, 511, 512, 1023, 1024, 1535):
        codes = np.zeros((1, k), np.int8)
        if name == "q1":
            codes[:] = -1
        codes[0, j] = 1
        packed = f.pack(codes)
        np.testing.assert_array_equal(f.unpack(packed, k), codes)
        if name in ("q1", "q2", "q4", "ternary"):
            big = {"q1": 512, "q2": 256, "ternary": 256, "q4": 128}[name]
            pos = 0
            for bsz in block_sizes(kp, big):
                if pos <= j < pos + bsz:
                    break
                pos += bsz
            per = 8 // f.bits
            nb = bsz // per
            field, byte = divmod(j - pos, nb)
            byte_index = pos * f.bits // 8 + byte
            shift = f.bits * field
            want_u = (1 - (-1)) // 2 if name == "q1" else 1 + f.offset
            want_zero_u = 0 if name == "q1" else f.offset
            row = packed[0]
            assert (row[byte_index] >> shift) & ((1 << f.bits) - 1) == want_u
            # every other field holds the zero code
            u = f.unpack_fn(packed, kp).astype(int)
            u = (u + 1) // 2 if name == "q1" else u + f.offset
            assert (np.delete(u[0], j)[: k - 1] == want_zero_u).all()
        elif name == "q8":
            assert packed[0, j] == 1 and packed[0].sum() == 1
        else:  # popcount: mask plane bit j set, sign plane clear
            half = kp // 8
            assert packed[0, half + j // 8] == 1 << (j % 8)
            assert packed[0, :half].sum() == 0 and packed[0, half:].sum() == 1 << (j % 8)


def test_c_and_python_agree_on_layout_constants():
    assert _ckernels.ROW_ALIGN == ROW_ALIGN
    assert (_ckernels.Q1_BIG, _ckernels.Q2_BIG, _ckernels.Q4_BIG) == (512, 256, 128)
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
