"""The integer mn04 (edgeqmoe/embed/mn04_int8.py, the C engine in eq_cnn*.c): every
kernel variant this CPU runs equals the numpy reference of the integer arithmetic bit
for bit on real windows, and the integer network stays close to fp32."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeqmoe.kernels import available_variants

from conftest import MODELS, ROOT, US8K, need

WEIGHTS = os.path.join(MODELS, "mn04_as_mAP_432.pt")


@pytest.fixture(scope="module")
def int8_net():
    need(WEIGHTS, "mn04 weights")
    from edgeqmoe.embed import mn04_int8 as M
    from edgeqmoe.embed.ptfile import read_state_dict

    net = M.layers(read_state_dict(WEIGHTS))
    return net, M.quantize(net, M.load_calibration())


@pytest.fixture(scope="module")
def real_mels():
    need(US8K, "UrbanSound8K clips")
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from calibrate_mn04 import mels_of

    from edgeqmoe.audio.datasets import read_dataset

    return mels_of(read_dataset(US8K).clips, every=180)


def test_every_variant_equals_the_integer_reference(int8_net, real_mels):
    from edgeqmoe.embed import mn04_int8 as M

    _, q = int8_net
    mel = real_mels[:6]
    ref_e, ref_l = M.int_forward(q, mel)
    for variant in available_variants():
        e, lg = M.Engine.of(q, variant).forward_mel(mel)
        assert np.array_equal(e, ref_e) and np.array_equal(lg, ref_l), variant
    # samples that are not finite count as 0, in the engine as in the reference
    bad = mel[:2].copy()
    bad[0, 5, 7], bad[0, 90, 33], bad[1, 0, 0] = np.nan, np.inf, -np.inf
    ref_bad = M.int_forward(q, np.nan_to_num(bad, nan=0.0, posinf=0.0, neginf=0.0))
    for variant in available_variants():
        e, lg = M.Engine.of(q, variant).forward_mel(bad)
        assert np.array_equal(e, ref_bad[0]) and np.array_equal(lg, ref_bad[1]) and np.isfinite(e).all(), variant
    # another window length builds its own engine and still agrees; a few lengths are kept
    eng = M.Engine.of(q, "generic")
    e2, _ = eng.forward_mel(mel[:2, :, :57])
    assert np.array_equal(e2, M.int_forward(q, mel[:2, :, :57])[0])
    for t in range(60, 60 + 2 * M.Engine.MAX_ENGINES):
        eng.forward_mel(mel[:1, :, :t])
    assert len(eng._by_frames) == M.Engine.MAX_ENGINES


def test_saturated_gates_and_maps_agree(int8_net, real_mels):
    """Gates of exactly one (2^15, which the SIMD kernels cannot hold in 16 bits) and of
    zero, and maps clamped at both ends of their codes: real windows never reach them, so
    some channels' excitation biases are pushed to the table's ends and some windows are
    far louder than any clip."""
    import copy

    from edgeqmoe.embed import mn04_int8 as M

    q = copy.deepcopy(int8_net[1])
    for qb in q["blocks"]:
        if "se" in qb:
            b2 = qb["se"]["b2"]
            b2[0::3], b2[1::3] = 100.0, -100.0
    mel = np.concatenate([real_mels[:3], 40 * real_mels[3:5], -40 * real_mels[5:6]])  # and maps far past their range
    ref_e, ref_l = M.int_forward(q, mel)
    for variant in available_variants():
        e, lg = M.Engine.of(q, variant).forward_mel(mel)
        assert np.array_equal(e, ref_e) and np.array_equal(lg, ref_l), variant


def test_the_integer_network_stays_close_to_fp32(int8_net, real_mels):
    from edgeqmoe.embed import mn04_int8 as M

    net, q = int8_net
    ref_e, ref_l = M.float_forward(net, real_mels)
    e, lg = M.Engine.of(q, available_variants()[0]).forward_mel(real_mels)
    cos = (e * ref_e).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(ref_e, axis=1)
    top1 = float((lg.argmax(1) == ref_l.argmax(1)).mean())
    print(f"\n{len(e)} windows: cosine mean {cos.mean():.4f} min {cos.min():.4f}, top-1 {100 * top1:.1f}%")
    assert cos.mean() > 0.99 and cos.min() > 0.95 and top1 > 0.8


def test_bad_operation_lists_are_refused_with_what_is_wrong(int8_net):
    from edgeqmoe.embed import mn04_int8 as M
    from edgeqmoe.kernels import _ckernels

    _, q = int8_net
    ops = M.engine_ops(q)
    # an operation left out: the one after it is named, with why
    with pytest.raises(ValueError, match=r"Cnn op 3 \(dw\): cin is not the channel count of the src map"):
        _ckernels.Cnn("generic", 128, 100, ops[:3] + ops[4:], q["gate"])
    bad = [dict(op) for op in ops]
    bad[1]["stride"] = 0
    with pytest.raises(ValueError, match=r"Cnn op 1 \(dw\): k must be odd and stride positive"):
        _ckernels.Cnn("generic", 128, 100, bad, q["gate"])
    with pytest.raises(ValueError, match=r"Cnn op \d+ \(dense\): a dense layer before the pooling"):
        _ckernels.Cnn("generic", 128, 100, [op for op in ops if op["kind"] != "pool"], q["gate"])
    i = next(j for j, o in enumerate(ops) if o["kind"] == "pw")
    bad = [dict(o) for o in ops]
    bad[i]["corr"] = bad[i]["corr"][:-1]
    with pytest.raises(ValueError, match=rf"op {i} \(pw\): corr must hold"):
        _ckernels.Cnn("generic", 128, 100, bad, q["gate"])
    bad = [dict(o) for o in ops]
    bad[i]["w"] = bad[i]["w"].astype(np.int16)
    with pytest.raises(TypeError, match="int8"):
        _ckernels.Cnn("generic", 128, 100, bad, q["gate"])
    with pytest.raises(ValueError, match="not available"):
        _ckernels.Cnn("no-such-variant", 128, 100, ops, q["gate"])


def test_the_daemon_runs_on_the_integer_embedder(tmp_path):
    """The stable profile runs mn04 on the integer kernels (`model.embedder_runtime:
    int8`): it hears the dog bark, says so in its start record, and loads none of the
    heavy libraries it does not need: neither torch nor ONNX Runtime, nor scipy or librosa,
    nor pydantic (typer from 0.29 imports it at every start, +13.6 MB resident) or ssl."""
    import subprocess

    from edgeqmoe.daemon.sinks import read_jsonl

    need(WEIGHTS, "mn04 weights")
    need(US8K, "UrbanSound8K clips")
    clip = os.path.join(US8K, "fold1", "101415-3-0-2.flac")
    code = ("import sys\nfrom edgeqmoe.cli import app\n"
            "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "print('loaded:', sorted(m for m in ('torch', 'onnxruntime', 'scipy', 'librosa', 'pydantic', 'ssl') if m in sys.modules))\nsys.exit(code)\n")
    env = {**os.environ, "EDGEQMOE_WEIGHTS_DIR": MODELS, "EDGEQMOE_CACHE_DIR": str(tmp_path / "cache")}
    for run in (1, 2):  # the first start converts the weights once, the second loads the bundle
        logs = tmp_path / f"logs{run}"
        r = subprocess.run([sys.executable, "-c", code, "run", "--profile", "stable", "--source", f"file:{clip}",
                            "--fast", "--log-dir", str(logs)], capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr
        assert "loaded: []" in r.stdout, r.stdout
        assert ("for the integer kernels (once)" in r.stderr) == (run == 1), r.stderr
        daemon = list(read_jsonl(logs / "daemon.jsonl"))
        start = next(d for d in daemon if d["event"] == "start")
        assert start["embedder"]["runtime"] == "int8" and start["embedder"]["version"] == "2-int8"
        assert any(d["event"] == "embedder_converted" for d in daemon) == (run == 1)
        assert [e["class"] for e in read_jsonl(logs / "events.jsonl")] == ["dog_bark"]
    assert len(list((tmp_path / "cache" / "embedders").glob("mn04-int8-*.safetensors"))) == 1


def test_the_bundle_is_made_once_checked_and_named_when_damaged(tmp_path, monkeypatch, real_mels):
    """The converter writes the engine's operations with the weights' and calibration's
    sha256; loading it gives the same embeddings as building from the weights; a file
    from other weights, or a damaged one, is refused with its path and what to do."""
    from edgeqmoe.embed import WeightsError
    from edgeqmoe.embed import mn04_int8 as M
    from edgeqmoe.embed.weights import sha256_of

    need(WEIGHTS, "mn04 weights")
    monkeypatch.setenv("EDGEQMOE_CACHE_DIR", str(tmp_path))
    said = []
    first = M.MN04Int8Embedder(weights=MODELS, kernel="generic", say=said.append)
    assert first.converted and len(said) == 1 and "once" in said[0] and first.model_path in said[0]
    second = M.MN04Int8Embedder(weights=MODELS, kernel="generic", say=said.append)
    assert not second.converted and len(said) == 1 and second.model_path == first.model_path
    mel = real_mels[:3]
    assert np.array_equal(first.forward_mel(mel)[0], second.forward_mel(mel)[0])
    # the numpy reference (built from the weights, not the bundle) agrees with the bundle's engine
    assert np.array_equal(M.MN04Int8Embedder(weights=MODELS, kernel="ref").forward_mel(mel)[1],
                          second.forward_mel(mel)[1])
    # a safetensors file that safetensors itself reads, every tensor 64-byte aligned in it,
    # loaded as read-only views of the file memory-mapped
    from safetensors import safe_open

    raw = open(first.model_path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__")
    assert len(header) > 100 and all((8 + n + d["data_offsets"][0]) % 64 == 0 for k, d in header.items()
                                     if not k.startswith("__pad."))
    ops, gate = M.load_bundle(first.model_path, sha256_of(WEIGHTS), M.calibration_sha256())
    with safe_open(first.model_path, framework="numpy") as f:
        assert np.array_equal(f.get_tensor("op1.w"), ops[1]["w"]) and np.array_equal(f.get_tensor("gate"), gate)
    assert isinstance(ops[1]["w"].base, np.memmap) and not ops[1]["w"].flags.writeable
    path = tmp_path / "other.safetensors"
    M.save_bundle(ops, gate, path, "0" * 64, M.calibration_sha256())
    with pytest.raises(WeightsError, match="other weights.*delete it"):
        M.load_bundle(path, sha256_of(WEIGHTS), M.calibration_sha256())
    before = second.forward_mel(mel)[0]
    data = open(first.model_path, "rb").read()
    with open(first.model_path, "wb") as f:  # in place: first's and second's mappings are cut too
        f.write(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"cannot be read.*delete it") as e:
        M.load_bundle(first.model_path, sha256_of(WEIGHTS), M.calibration_sha256())
    assert first.model_path in str(e.value)
    # the embedder, which has the weights, converts anew and says why
    said = []
    third = M.MN04Int8Embedder(weights=MODELS, kernel="generic", say=said.append)
    assert third.converted and "cannot be read" in said[0] and "anew" in said[0]
    assert np.array_equal(third.forward_mel(mel)[0], before)
    # a bundle of an older version beside it goes when the bundle is made anew
    older = Path(first.model_path.replace(f"-v{M.BUNDLE_VERSION}.", "-v1."))
    older.write_bytes(b"old")
    Path(first.model_path).unlink()
    M.MN04Int8Embedder(weights=MODELS, kernel="generic")
    assert Path(first.model_path).is_file() and not older.exists()


def test_weights_convert_writes_the_int8_bundle(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from edgeqmoe.cli import app

    need(WEIGHTS, "mn04 weights")
    monkeypatch.setenv("EDGEQMOE_WEIGHTS_DIR", MODELS)
    out = tmp_path / "mn04-int8.safetensors"
    res = CliRunner().invoke(app, ["weights", "convert", "--to", "int8", "--out", str(out)])
    assert res.exit_code == 0 and out.stat().st_size > 500_000 and "int8: wrote" in res.output, res.output
    res = CliRunner().invoke(app, ["weights", "convert", "--out", str(out)])
    assert res.exit_code == 2 and "--to int8 or --to onnx" in res.output


def test_calibration_tool_runs_and_measures_fewer_pointwise_bits():
    """A tiny run of tools/calibrate_mn04.py with the shipped calibration: 8-bit and 4-bit
    pointwise weights against fp32 (4 bits costs accuracy: docs/int8.md has the full run)."""
    import re
    import subprocess

    need(WEIGHTS, "mn04 weights")
    need(US8K, "UrbanSound8K clips")
    means = {}
    for bits in (8, 4):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "calibrate_mn04.py"), "--data", US8K,
                            "--weights", MODELS, "--calibrate", "none", "--every", "300", "--threads", "1",
                            "--pointwise-bits", str(bits)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        m = re.search(rf"pointwise weights {bits} bits, 16 bits in [^)]*\) against fp32 on (\d+) windows.*cosine mean ([\d.]+)", r.stdout)
        assert m and int(m.group(1)) >= 20, r.stdout
        means[bits] = float(m.group(2))
    assert means[8] > 0.99 and means[4] < means[8], means


def test_python_tables_agree_with_the_c_contract(int8_net):
    """What Python mirrors of C (format ids, bits and offsets; head steps; CNN operation
    kinds and activation codes; the gate table) is what the C module says it is."""
    from edgeqmoe.embed import mn04_int8 as M
    from edgeqmoe.kernels import FORMATS, _ckernels

    c = _ckernels.CONTRACT
    assert set(c["formats"]) == set(FORMATS)
    for name, f in FORMATS.items():
        assert (f.code, f.bits, f.offset) == (c["formats"][name]["id"], c["formats"][name]["bits"],
                                              c["formats"][name]["offset"]), name
    assert set(c["steps"]) == {"linear", "layernorm", "relu"}  # the step names runtime.py gives Program
    assert M.ACT_CODE == {None: c["cnn_acts"]["none"], "RE": c["cnn_acts"]["relu"], "HS": c["cnn_acts"]["hardswish"]}
    assert (M.GATE_STEPS, M.GATE_RANGE) == (c["gate_steps"], c["gate_range"])
    assert len(M.gate_table()) == c["gate_n"] == _ckernels.CNN_GATE_N
    kinds = {op["kind"] for op in M.engine_ops(int8_net[1])}
    assert kinds == set(c["cnn_kinds"])
