"""Torch-free runtime and model bundles."""
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from edgeqmoe.kernels import KernelChoiceError, available_variants, resolve_variant
from edgeqmoe.kernels.formats import FORMATS
from edgeqmoe.model import BundleError, Head, LayerNorm, PackedLinear, ReLU, load_bundle, load_model, save_head
from edgeqmoe.model.bundle import BUNDLE_FORMAT_VERSION

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
        got = load_model(p, kernel=kernel).logits(x)
        np.testing.assert_allclose(got, want, atol=1e-3 * max(1.0, np.abs(want).max()))
    b = load_bundle(p)
    # packed tensors on disk are exactly their formula
    for d in b.meta["graph"]["steps"]:
        if d["op"] == "linear":
            assert b.tensors[d["w"]].nbytes == FORMATS[fmt].weight_nbytes(d["out"], d["in"])


def test_load_reads_one_private_aligned_copy(bundle_path):
    b = load_bundle(bundle_path)
    for name, arr in b.tensors.items():
        assert not arr.flags.owndata and not arr.flags.writeable, name
    head = load_model(b).head
    lin = head.steps[0]
    # the layer's packed weights are the very bytes of the bundle's one buffer, not a copy of their own
    assert np.shares_memory(lin.packed, b.tensors["s0.w"])
    open(bundle_path, "r+b").truncate(0)  # the file changes: the loaded bundle does not
    assert b.tensors["s0.w"].nbytes > 0 and head.forward(np.zeros((1, 48), np.float32)).shape == (1, 10)


def test_metadata(bundle_path):
    b = load_bundle(bundle_path)
    assert b.classes == [f"c{i}" for i in range(10)]
    assert b.embedder["id"] == "test"
    assert b.meta["format_version"] == BUNDLE_FORMAT_VERSION and b.meta["note"] == "test"
    assert len(b.meta["data_sha256"]) == 64


def test_truncated_bundle(tmp_path, bundle_path):
    data = open(bundle_path, "rb").read()
    for cut in (0, 5, 100, len(data) // 2, len(data) - 1):
        p = tmp_path / f"cut{cut}.eqm"
        p.write_bytes(data[:cut])
        with pytest.raises(BundleError) as e:
            load_model(p)
        assert str(p) in str(e.value)
        assert any(w in e.value.problem for w in ("truncated", "corrupt", "not a bundle"))


def test_corrupt_bundle(tmp_path, bundle_path):
    data = bytearray(open(bundle_path, "rb").read())
    data[-10] ^= 0xFF
    p = tmp_path / "flip.eqm"
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_model(p)
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(BundleError, match="corrupt header"):
        load_bundle(p)


def with_format_version(src, dst, version):
    """A copy of bundle ``src`` whose metadata claims another format version."""
    data = open(src, "rb").read()
    hlen = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + hlen])
    meta = json.loads(header["__metadata__"]["edgeqmoe"])
    meta["format_version"] = version
    header["__metadata__"]["edgeqmoe"] = json.dumps(meta)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    dst.write_bytes(struct.pack("<Q", len(h)) + h + data[8 + hlen:])
    return dst


def test_newer_version(tmp_path, bundle_path):
    p = with_format_version(bundle_path, tmp_path / "new.eqm", 99)
    with pytest.raises(BundleError, match="newer edgeqmoe"):
        load_model(p)


def legacy_pack(fmt, codes):
    """Bundle format 1 layouts (row-major blocks; popcount planes per row), written
    independently of edgeqmoe.model.upgrade so that its decoder is checked."""
    n, k = codes.shape
    kp = -(-k // 64) * 64
    c = np.zeros((n, kp), np.int16)
    c[:, :k] = codes
    if fmt == "popcount":
        return np.concatenate([np.packbits(c < 0, axis=1, bitorder="little"),
                               np.packbits(c != 0, axis=1, bitorder="little")], axis=1)
    bits, big, offset = {"q1": (1, 512, 0), "q2": (2, 256, 2), "ternary": (2, 256, 1), "q4": (4, 128, 8)}[fmt]
    u = ((c + 1) // 2 if fmt == "q1" else c + offset).astype(np.uint8)
    per, out, pos = 8 // bits, [], 0
    while pos < kp:
        bsz = big if kp - pos >= big else 64
        blk = u[:, pos:pos + bsz].reshape(n, per, bsz // per)
        out.append(sum((blk[:, j] << (bits * j)).astype(np.uint8) for j in range(per)).astype(np.uint8))
        pos += bsz
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("fmt", ["q1", "q2", "q4", "ternary", "popcount"])
def test_format1_bundle_is_refused_then_upgraded(tmp_path, rng, fmt):
    from edgeqmoe.model import upgrade

    steps = paper_like_steps(rng, fmt, dims=(48, 40, 24, 10))
    x = rng.standard_normal((4, 48)).astype(np.float32)
    want = Head(steps, kernel="ref")(x)
    # the same model as bundle format 1 would have stored it
    legacy = []
    for s in steps:
        if isinstance(s, PackedLinear):
            codes = FORMATS[fmt].unpack(s.packed, s.out_features, s.in_features)
            np.testing.assert_array_equal(upgrade._v1_codes(fmt, legacy_pack(fmt, codes), s.out_features,
                                                            s.in_features), codes)
            s = PackedLinear(fmt, s.in_features, s.out_features, legacy_pack(fmt, codes), s.scale, s.bias,
                             s.act_mode)
        legacy.append(s)
    p = save_head(tmp_path / "v2.eqm", legacy, [f"c{i}" for i in range(10)], EMB)
    old = with_format_version(p, tmp_path / "v1.eqm", 1)
    with pytest.raises(BundleError, match="upgrade") as e:
        load_model(old)
    assert str(old) in str(e.value)
    assert upgrade.main([str(old), str(tmp_path / "up.eqm")]) == 0
    np.testing.assert_allclose(load_model(tmp_path / "up.eqm", kernel="ref").logits(x), want, rtol=0, atol=1e-6)
    assert upgrade.main([str(tmp_path / "up.eqm")]) == 2  # already current: says so


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="file not found"):
        load_model(tmp_path / "nope.eqm")


def test_runs_without_torch(bundle_path):
    code = (
        "import sys, numpy as np\n"
        "from edgeqmoe.model import load_model\n"
        f"h = load_model({str(bundle_path)!r})\n"
        "y = h.predict(np.ones((2, 48), np.float32)).proba\n"
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
