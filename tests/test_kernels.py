"""Every format x every kernel variant: int32 accumulators bit-exact against the numpy
reference, dequantized outputs within named tolerances, quantizers exact."""
import numpy as np
import pytest

from edgeqmoe.kernels import _ckernels, available_variants
from edgeqmoe.kernels.formats import (ACT_INT8_HALF_STEP, FORMATS, TOL_F16_VS_FLOAT, TOL_KERNEL_VS_REF,
                                      quantize_act_int8, quantize_act_popcount)

VARIANTS = available_variants()
IN_SIZES = [1, 7, 33, 100, 1023, 1024, 1536]
OUT_SIZES = [1, 5, 17, 640]
BATCHES = [1, 3, 64]
INT_FORMATS = [n for n, f in FORMATS.items() if f.act != "f32"]


def make_layer(f, n, k, rng, per_channel=None):
    W = (rng.standard_normal((n, k)) * 0.05 + rng.standard_normal() * 0.01).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) * 0.1
    codes, scale = f.quantize(W, per_channel)
    packed = f.pack(codes)
    return W, b, codes, np.ascontiguousarray(scale, np.float32), packed


@pytest.mark.parametrize("k", IN_SIZES)
@pytest.mark.parametrize("name", INT_FORMATS)
def test_accumulators_bit_exact(name, k, rng):
    f = FORMATS[name]
    for n in OUT_SIZES:
        _, _, _, scale, packed = make_layer(f, n, k, rng)
        layer = _ckernels.Layer(f.code, n, k, packed, scale, None)
        for batch in BATCHES:
            x = rng.standard_normal((batch, k)).astype(np.float32)
            xq, _ = f.quantize_act(x)
            xq = np.ascontiguousarray(xq)
            ref = f.ref_acc(packed, n, k, xq)
            for v in VARIANTS:
                out = np.full((batch, n), 12345, np.int32)
                _ckernels.acc(v, layer, xq, out, batch)
                np.testing.assert_array_equal(out, ref, err_msg=f"{name} {v} n={n} k={k} batch={batch}")


def test_accumulators_extreme_values(rng):
    """Saturating codes and activations (+-127, -128 weights) stay exact."""
    for name in INT_FORMATS:
        f = FORMATS[name]
        n, k = 33, 1536
        lo, hi = {"q1": (-1, 1), "q2": (-2, 1), "q4": (-8, 7), "q8": (-128, 127), "ternary": (-1, 1),
                  "popcount": (-1, 1)}[name]
        codes = rng.choice([lo, hi], size=(n, k)).astype(np.int8)
        packed = f.pack(codes)
        layer = _ckernels.Layer(f.code, n, k, packed, np.ones(1, np.float32), None)
        vals = [-1, 1] if f.act == "binary" else [-127, 127]
        xq = rng.choice(vals, size=(2, k)).astype(np.int8)
        xq[1] = vals[0]
        ref = f.ref_acc(packed, n, k, xq)
        for v in VARIANTS:
            out = np.zeros((2, n), np.int32)
            _ckernels.acc(v, layer, xq, out, 2)
            np.testing.assert_array_equal(out, ref, err_msg=f"{name} {v}")


@pytest.mark.parametrize("name", list(FORMATS))
def test_outputs_match_reference_and_float(name, rng):
    f = FORMATS[name]
    for k in (7, 100, 1024, 1536):
        for n in (5, 640):
            for per_channel in ((None, True) if name in ("q2", "q4", "q8") else (None,)):
                W, b, codes, scale, packed = make_layer(f, n, k, rng, per_channel)
                layer = _ckernels.Layer(f.code, n, k, packed, scale, b)
                x = rng.standard_normal((3, k)).astype(np.float32)
                ref = f.ref_linear(packed, scale, b, n, k, x)
                Wd = f.dequantize(codes, scale)
                for v in VARIANTS:
                    prog = _ckernels.Program(v, [("linear", layer)])
                    y = np.empty((3, n), np.float32)
                    prog.run(x, y, 3)
                    np.testing.assert_allclose(y, ref, rtol=0, atol=TOL_KERNEL_VS_REF * np.abs(ref).max(),
                                               err_msg=f"{name} {v} vs ref")
                    if f.act == "int8":
                        # against a float matmul of the dequantized weights: activation
                        # rounding is the only difference, bounded per output
                        yf = x @ Wd.T + b
                        bound = ACT_INT8_HALF_STEP * np.abs(x).max(1, keepdims=True) * np.abs(Wd).sum(1)[None, :]
                        assert (np.abs(y - yf) <= bound * 1.001 + 1e-5).all(), f"{name} {v}"
                    elif f.act == "binary":
                        xb, xs = quantize_act_popcount(x)
                        yf = (xb * xs[:, None]) @ Wd.T + b
                        np.testing.assert_allclose(y, yf, rtol=0, atol=1e-4 * np.abs(yf).max())
                    else:
                        yf = x @ Wd.T + b
                        np.testing.assert_allclose(y, yf, rtol=0, atol=TOL_F16_VS_FLOAT * np.abs(x).sum(1).max())


@pytest.mark.parametrize("variant", VARIANTS)
def test_activation_quantizers_exact(variant, rng):
    for k in (1, 7, 33, 100, 1023, 1024, 1536):
        for scale in (1e-3, 1.0, 300.0):
            x = (rng.standard_normal(k) * scale).astype(np.float32)
            x[rng.integers(0, k)] = 0.5 * scale  # exact ties appear after scaling too
            q = np.empty(k, np.int8)
            s, qsum = _ckernels.quantize(variant, x, False, q)
            rq, rs = quantize_act_int8(x)
            np.testing.assert_array_equal(q, rq[0])
            assert qsum == int(rq[0].astype(np.int64).sum())
            np.testing.assert_allclose(s, rs[0], rtol=1e-7)
            sgn = np.empty(k, np.int8)
            s2, _ = _ckernels.quantize(variant, x, True, sgn)
            rb, rbs = quantize_act_popcount(x)
            np.testing.assert_array_equal(sgn, rb[0])
            np.testing.assert_allclose(s2, rbs[0], rtol=1e-5)
    zeros = np.zeros(100, np.float32)
    q = np.empty(100, np.int8)
    _ckernels.quantize(variant, zeros, False, q)
    assert not q.any()


def test_head_program_matches_reference(rng):
    from edgeqmoe.model import Head, LayerNorm, PackedLinear, ReLU

    for name in FORMATS:
        dims = [100, 64, 33, 10]
        steps = []
        for i in range(3):
            W = rng.standard_normal((dims[i + 1], dims[i])).astype(np.float32) * 0.1
            steps.append(PackedLinear.from_float(W, rng.standard_normal(dims[i + 1]).astype(np.float32), name))
            if i < 2:
                steps += [LayerNorm(rng.random(dims[i + 1]).astype(np.float32) + 0.5,
                                    rng.standard_normal(dims[i + 1]).astype(np.float32)), ReLU()]
        x = rng.standard_normal((64, 100)).astype(np.float32)
        ref = Head(steps, kernel="ref")(x)
        for v in VARIANTS:
            y = Head(steps, kernel=v)(x)
            # LayerNorm in float32 can flip an int8 rounding of the next layer: compare
            # decisions and allow a small share of scores to move by one step
            assert (y.argmax(1) == ref.argmax(1)).mean() >= 0.95, (name, v)
            np.testing.assert_allclose(np.median(np.abs(y - ref)), 0, atol=1e-3)


def test_program_rejects_bad_shapes(rng):
    f = FORMATS["q4"]
    _, _, _, scale, packed = make_layer(f, 8, 64, rng)
    with pytest.raises(ValueError, match="needs"):
        _ckernels.Layer(f.code, 8, 65, packed, scale, None)
    layer = _ckernels.Layer(f.code, 8, 64, packed, scale, None)
    prog = _ckernels.Program(VARIANTS[-1], [("linear", layer)])
    with pytest.raises(ValueError, match="x needs"):
        prog.run(np.zeros((1, 63), np.float32), np.zeros((1, 8), np.float32), 1)
    with pytest.raises(ValueError, match="takes 64 inputs but receives 8"):
        _ckernels.Program(VARIANTS[-1], [("linear", layer), ("linear", layer)])
    with pytest.raises(ValueError, match="not available"):
        _ckernels.Program("no-such-isa", [("linear", layer)])


@pytest.mark.parametrize("name", INT_FORMATS)
def test_unaligned_weights_give_the_same_results(name, rng):
    """Bundles from other writers may map weights off the 64-byte boundary."""
    f = FORMATS[name]
    n, k = 40, 300
    _, b, _, scale, packed = make_layer(f, n, k, rng)
    buf = np.empty(packed.nbytes + 64 + 3, np.uint8)
    start = (-buf.ctypes.data) % 64 + 3
    odd = buf[start:start + packed.nbytes].reshape(packed.shape)
    odd[...] = packed
    x = rng.standard_normal((2, k)).astype(np.float32)
    for v in VARIANTS:
        ys = []
        for w in (packed, odd):
            prog = _ckernels.Program(v, [("linear", _ckernels.Layer(f.code, n, k, w, scale, b))])
            y = np.empty((2, n), np.float32)
            prog.run(x, y, 2)
            ys.append(y)
        np.testing.assert_array_equal(ys[0], ys[1], err_msg=f"{name} {v}")


# --------------------------------------------------------------------------- the Python/C contract

@pytest.mark.parametrize("kernel,isa", [("generic", ""), ("simd", "avx2")])
def test_one_kernel_choice_reaches_every_c_path(tmp_path, kernel, isa, weights_dir, us8k):
    """The profile's model.kernel (or EDGEQMOE_ISA's cap on simd) picks the head, the
    integer embedder and the log-mel front end alike, through the daemon end to end."""
    import json
    import os

    from conftest import US8K
    from helpers import run_cli

    from edgeqmoe.kernels import available_variants

    if isa and isa not in available_variants():
        pytest.skip(f"this CPU does not run {isa}")
    want = kernel if kernel != "simd" else isa
    prof = tmp_path / "p.yaml"
    prof.write_text(f"version: 1\nmodel: {{bundle: stable.eqm, kernel: {kernel}, embedder_runtime: int8}}\n"
                    "audio: {window: 2.0, hop: 1.0}\n")
    logs = tmp_path / "logs"
    r = run_cli(["run", "--profile", prof, "--source", f"file:{os.path.join(US8K, 'fold1', '101415-3-0-2.flac')}",
                 "--fast", "--log-dir", logs], env={"EDGEQMOE_ISA": isa})
    assert r.returncode == 0, r.stderr
    start = next(r for r in map(json.loads, (logs / "daemon.jsonl").read_text().splitlines()) if r["event"] == "start")
    assert start["kernels"] == {"head": want, "embedder": want, "front_end": want}, start["kernels"]
    assert f"kernel {want}" in r.stderr
