"""mn04 without torch: the checkpoint read by our own reader, the ONNX graph written
from it, ONNX Runtime's numbers against torch's and the golden outputs, and the daemon
run in an environment where torch does not exist."""
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from edgeqmoe.daemon.sinks import read_jsonl

from conftest import MODELS, US8K, need

WEIGHTS = os.path.join(MODELS, "mn04_as_mAP_432.pt")


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def onnx_mn04(tmp_path_factory):
    need(WEIGHTS, "mn04 weights")
    pytest.importorskip("onnxruntime")
    from edgeqmoe.embed.mn04_onnx import MN04OnnxEmbedder

    said = []
    before = os.environ.get("EDGEQMOE_CACHE_DIR")
    os.environ["EDGEQMOE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))  # a first conversion, here
    try:
        e = MN04OnnxEmbedder(weights=MODELS, say=said.append)
    finally:
        if before is None:
            del os.environ["EDGEQMOE_CACHE_DIR"]
        else:
            os.environ["EDGEQMOE_CACHE_DIR"] = before
    assert e.converted and said and "once" in said[0]
    return e


def test_the_checkpoint_reader_gives_what_torch_loads():
    need(WEIGHTS, "mn04 weights")
    torch = pytest.importorskip("torch")
    from edgeqmoe.embed.ptfile import read_state_dict

    ours = read_state_dict(WEIGHTS)
    theirs = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert list(ours) == list(theirs) and len(ours) == 312
    for k, v in theirs.items():
        assert ours[k].shape == tuple(v.shape) and ours[k].dtype == v.numpy().dtype and np.array_equal(ours[k], v.numpy())


def test_a_checkpoint_that_wants_to_run_code_is_refused(tmp_path):
    from edgeqmoe.embed.ptfile import CheckpointError, read_state_dict

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="posix.system|os.system"):
        read_state_dict(path)
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        read_state_dict(tmp_path / "junk.pt")


def test_onnxruntime_matches_the_golden_outputs_and_torch(onnx_mn04, golden, us8k):
    """The golden mel and waves of the model's specification, then real windows of the
    shared clips (every 20th clip) against the torch module: cosine >= 0.9999 and the
    same AudioSet top-1."""
    emb, logits = onnx_mn04.forward_mel(golden["mel"])
    assert cosine(emb, golden["embedding"]).min() >= 0.9999
    for i in range(len(emb)):
        assert list(np.argsort(-logits[i])[:5]) == list(np.argsort(-golden["logits"][i])[:5])
    e2 = onnx_mn04.embed_batch(golden["wave32k"], 32000)
    assert cosine(e2, golden["embedding"]).min() >= 0.9999
    torch_mn04 = pytest.importorskip("edgeqmoe.embed.mn04").MN04Embedder(weights=MODELS)
    from edgeqmoe.audio.datasets import read_dataset
    from edgeqmoe.audio.io import load
    from edgeqmoe.audio.windowing import frame

    cos, same, n = [], 0, 0
    for c in read_dataset(US8K).clips[::20]:
        w = frame(load(c.path, 16000), 32000, 16000)
        e1, l1 = onnx_mn04.embed_with_logits(w, 16000)
        e2, l2 = torch_mn04.embed_with_logits(w, 16000)
        cos.append(cosine(e1, e2))
        same += int((l1.argmax(1) == l2.argmax(1)).sum())
        n += len(w)
    cos = np.concatenate(cos)
    print(f"\nONNX Runtime vs torch on {n} windows: cosine mean {cos.mean():.7f}, min {cos.min():.7f}; "
          f"AudioSet top-1 agreement {same}/{n}")
    assert cos.min() >= 0.9999 and same == n


def test_a_converted_file_of_other_weights_is_refused(onnx_mn04, tmp_path, monkeypatch):
    """A converted file whose recorded source is not the weights in use is never run."""
    import shutil

    from edgeqmoe.embed.mn04_onnx import MN04OnnxEmbedder, build_model, converted_path
    from edgeqmoe.embed.ptfile import read_state_dict
    from edgeqmoe.embed.weights import WeightsError, sha256_of

    monkeypatch.setenv("EDGEQMOE_CACHE_DIR", str(tmp_path))
    path = converted_path(sha256_of(WEIGHTS))
    path.parent.mkdir(parents=True)
    path.write_bytes(build_model(read_state_dict(WEIGHTS), "0" * 64))
    with pytest.raises(WeightsError, match="converted from other weights"):
        MN04OnnxEmbedder(weights=MODELS)
    path.write_bytes(b"damaged")
    with pytest.raises(WeightsError, match="delete it"):
        MN04OnnxEmbedder(weights=MODELS)
    shutil.copy(onnx_mn04.model_path, path)
    assert not MN04OnnxEmbedder(weights=MODELS).converted


def _venv_without_torch(root):
    """A virtual environment holding everything of this one but torch (its packages
    linked, torch's left out): ``import torch`` fails there."""
    import sysconfig

    env = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    ours = sysconfig.get_paths()["purelib"]
    theirs = subprocess.run([str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                             "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    skip = ("torch", "functorch", "torchgen", "nvidia", "triton")
    for name in os.listdir(ours):
        if name.lower().startswith(skip):
            continue
        os.symlink(os.path.join(ours, name), os.path.join(theirs, name))  # as if pip-installed, but torch
    return env / "bin" / "python"


def test_the_daemon_runs_where_torch_does_not_exist(tmp_path, us8k):
    """`edgeqmoe run` of the accuracy profile (mn04 in fp32) in a virtual environment
    without torch: the weights are converted once, the windows are classified, the
    start record says ONNX Runtime; a second start converts nothing."""
    need(WEIGHTS, "mn04 weights")
    pytest.importorskip("onnxruntime")
    py = _venv_without_torch(tmp_path)
    probe = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    env = {**os.environ, "EDGEQMOE_WEIGHTS_DIR": MODELS, "EDGEQMOE_CACHE_DIR": str(tmp_path / "cache")}
    clip = os.path.join(US8K, "fold1", "101415-3-0-2.flac")
    for run in (1, 2):
        logs = tmp_path / f"logs{run}"
        r = subprocess.run([str(py), "-m", "edgeqmoe.cli", "run", "--profile", "accuracy", "--source", f"file:{clip}",
                            "--fast", "--log-dir", str(logs)], capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr
        assert ("converting the mn04 weights" in r.stderr) == (run == 1), r.stderr
        start = next(d for d in read_jsonl(logs / "daemon.jsonl") if d["event"] == "start")
        assert start["embedder"]["runtime"] == "onnxruntime-fp32"
        events = list(read_jsonl(logs / "events.jsonl"))
        assert [e["class"] for e in events] == ["dog_bark"]


def test_int8_study_runs(us8k):
    """tools/int8_study.py on a handful of clips, so that it never rots: it prints each
    configuration's figures and the sensitivity ranking."""
    need(WEIGHTS, "mn04 weights")
    pytest.importorskip("torch")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "tools", "int8_study.py"), "--data", US8K, "--weights",
                        MODELS, "--every", "500", "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "all int8, per-channel input scales" in r.stdout and "features.0.0" in r.stdout
    neither = next(line for line in r.stdout.splitlines() if line.startswith("weights int16, inputs int16"))
    assert "cosine mean 1.0000" in neither  # 16-bit everything: no loss, so the simulation itself is exact


def test_a_cache_folder_that_cannot_be_written_still_runs(tmp_path, monkeypatch):
    """No writable place for the converted file: the network is converted in memory, said,
    and runs (the daemon keeps running instead of falling back)."""
    need(WEIGHTS, "mn04 weights")
    pytest.importorskip("onnxruntime")
    from edgeqmoe.embed.mn04_onnx import MN04OnnxEmbedder

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("EDGEQMOE_CACHE_DIR", str(blocker))
    said = []
    e = MN04OnnxEmbedder(weights=MODELS, say=said.append)
    assert e.model_path is None and "in memory at every start" in said[0] and str(blocker) in said[0]
    emb = e.embed(np.zeros(16000, np.float32) + 0.01, 16000)
    assert emb.shape == (384,) and np.isfinite(emb).all()
