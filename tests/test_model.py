"""Torch-free runtime and model bundles."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from edgeqmoe.kernels import KernelChoiceError, available_variants, resolve_variant
from edgeqmoe.kernels.formats import FORMATS
from edgeqmoe.model import BundleError, Head, LayerNorm, PackedLinear, ReLU, load_bundle, load_head, save_head

EMB = {"id": "test", "version": "1", "sample_rate": 16000, "dim": 48}


def paper_like_steps(rng, fmt, dims=(48, 40, 24, 10)):
    steps = []
    for i in range(len(dims) - 1):
        W = rng.standard_normal((dims[i + 1], dims[i])).astype(np.float32) * 0.2
        steps.append(PackedLinear.from_float(W, rng.standard_normal(dims[i + 1]).astype(np.float32) * 0.1, fmt))
        if i < len(dims) - 2:
            steps += [LayerNorm(np.ones(dims[i + 1], np.float32), np.zeros(dims[i + 1], np.float32)), ReLU()]
    return steps


@pytest.fixture
def bundle_path(tmp_path, rng):
    steps = paper_like_steps(rng, "q4")
    return save_head(tmp_path / "m.eqm", steps, [f"c{i}" for i in range(10)], EMB,
                     norm_mean=rng.standard_normal(48).astype(np.float32),
                     norm_std=(rng.random(48) + 0.5).astype(np.float32), extra={"note": "test"})


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_roundtrip_every_format(tmp_path, rng, fmt):
    steps = paper_like_steps(rng, fmt)
    p = save_head(tmp_path / f"{fmt}.eqm", steps, [f"c{i}" for i in range(10)], EMB)
    x = rng.standard_normal((4, 48)).astype(np.float32)
    want = Head(steps, kernel="ref")(x)
    for kernel in ["ref"] + available_variants():
        got = load_head(p, kernel=kernel)(x)
        np.testing.assert_allclose(got, want, atol=1e-3 * max(1.0, np.abs(want).max()))
    b = load_bundle(p)
    # packed tensors on disk are exactly their formula
    for d in b.meta["graph"]["steps"]:
        if d["op"] == "linear":
            assert b.tensors[d["w"]].nbytes == FORMATS[fmt].weight_nbytes(d["out"], d["in"])


def test_load_maps_without_copying(bundle_path):
    b = load_bundle(bundle_path)
    for name, arr in b.tensors.items():
        assert not arr.flags.owndata and not arr.flags.writeable, name
    head = load_head(b)
    lin = head.steps[0]
    # the layer's packed weights are the very bytes of the mapping
    assert np.shares_memory(lin.packed, b.tensors["s0.w"])


def test_metadata(bundle_path):
    b = load_bundle(bundle_path)
    assert b.classes == [f"c{i}" for i in range(10)]
    assert b.embedder["id"] == "test"
    assert b.meta["format_version"] == 1 and b.meta["note"] == "test"
    assert len(b.meta["data_sha256"]) == 64


def test_truncated_bundle(tmp_path, bundle_path):
    data = open(bundle_path, "rb").read()
    for cut in (0, 5, 100, len(data) // 2, len(data) - 1):
        p = tmp_path / f"cut{cut}.eqm"
        p.write_bytes(data[:cut])
        with pytest.raises(BundleError) as e:
            load_head(p)
        assert str(p) in str(e.value)
        assert any(w in e.value.problem for w in ("truncated", "corrupt", "not a bundle"))


def test_corrupt_bundle(tmp_path, bundle_path):
    data = bytearray(open(bundle_path, "rb").read())
    data[-10] ^= 0xFF
    p = tmp_path / "flip.eqm"
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_head(p)
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(BundleError, match="corrupt header"):
        load_bundle(p)


def test_newer_version(tmp_path, bundle_path):
    data = open(bundle_path, "rb").read()
    hlen = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + hlen])
    meta = json.loads(header["__metadata__"]["edgeqmoe"])
    meta["format_version"] = 99
    header["__metadata__"]["edgeqmoe"] = json.dumps(meta)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    p = tmp_path / "new.eqm"
    p.write_bytes(struct.pack("<Q", len(h)) + h + data[8 + hlen:])
    with pytest.raises(BundleError, match="newer edgeqmoe"):
        load_head(p)


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="file not found"):
        load_head(tmp_path / "nope.eqm")


def test_runs_without_torch(bundle_path):
    code = (
        "import sys, numpy as np\n"
        "from edgeqmoe.model import load_head\n"
        f"h = load_head({str(bundle_path)!r})\n"
        "y = h.predict_proba(np.ones((2, 48), np.float32))\n"
        "assert y.shape == (2, 10) and abs(y.sum() - 2) < 1e-4\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_variant_choice(monkeypatch):
    avail = available_variants()
    monkeypatch.delenv("EDGEQMOE_KERNEL", raising=False)
    monkeypatch.delenv("EDGEQMOE_ISA", raising=False)
    assert resolve_variant() == (avail[0] if avail[0] != "generic" else "generic")
    assert resolve_variant("ref") == "ref"
    assert resolve_variant("generic") == "generic"
    monkeypatch.setenv("EDGEQMOE_KERNEL", "generic")
    assert resolve_variant() == "generic"
    assert resolve_variant("simd") != "ref"
    monkeypatch.setenv("EDGEQMOE_KERNEL", "ref")
    assert resolve_variant() == "ref"
    if "avx512" in avail:
        monkeypatch.setenv("EDGEQMOE_ISA", "avx2")
        assert resolve_variant("simd") == "avx2"
    with pytest.raises(KernelChoiceError, match="not available"):
        resolve_variant("sve9000")
    monkeypatch.setenv("EDGEQMOE_ISA", "mmx")
    with pytest.raises(KernelChoiceError, match="EDGEQMOE_ISA"):
        resolve_variant("simd")


def test_packed_weights_are_64_byte_aligned(tmp_path, rng):
    """In memory and in the mapped file: a vector load across two cache lines costs two."""
    for fmt in ("q4", "popcount", "q8"):
        steps_f = paper_like_steps(rng, fmt, dims=(100, 33, 17, 10))
        for s in steps_f:
            if isinstance(s, PackedLinear):
                assert s.packed.ctypes.data % 64 == 0
        p = save_head(tmp_path / f"{fmt}.eqm", steps_f, [f"c{i}" for i in range(10)], EMB)
        b = load_bundle(p)
        for d in b.meta["graph"]["steps"]:
            if d["op"] == "linear":
                assert b.tensors[d["w"]].ctypes.data % 64 == 0, (fmt, d["w"])
