"""Embedders: mn04 reproduces the golden outputs, weights are resolved and checked,
the weight-free embedder is what its docstring says, bundles refuse other embedders."""
import os
import subprocess
import sys

import numpy as np
import pytest

from edgeqmoe.embed import EMBEDDERS, embedder_info, get_embedder
from edgeqmoe.embed.stats import STATS_MEL, LogMelStatsEmbedder
from edgeqmoe.embed.weights import MN04_WEIGHTS, WeightsError, fetch_command, resolve

COSINE_MIN = 0.9999


def cosine(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_mn04_reproduces_golden(mn04, golden):
    emb, logits = mn04.forward_mel(golden["mel"])
    assert emb.shape == (7, 384) and logits.shape == (7, 527)
    assert cosine(emb, golden["embedding"]).min() >= COSINE_MIN
    for i in range(7):
        assert list(np.argsort(-logits[i])[:5]) == list(np.argsort(-golden["logits"][i])[:5])
    # from the waveform, through our front end
    e2 = mn04.embed_batch(golden["wave32k"], 32000)
    assert cosine(e2, golden["embedding"]).min() >= COSINE_MIN
    e3, l3 = mn04.embed_with_logits(golden["wave32k"][:2], 32000)
    assert cosine(e3, golden["embedding"][:2]).min() >= COSINE_MIN


def test_mn04_eager_equals_scripted(golden, weights_dir):
    from edgeqmoe.embed.mn04 import MN04Embedder

    eager = MN04Embedder(script=False)
    e, _ = eager.forward_mel(golden["mel"][:2])
    assert cosine(e, golden["embedding"][:2]).min() >= COSINE_MIN


def test_mn04_declares_itself(mn04):
    assert mn04.info == embedder_info("mn04")
    assert (mn04.info.id, mn04.info.sample_rate, mn04.info.dim) == ("mn04", 32000, 384)


def test_weights_resolution_order(tmp_path, monkeypatch, weights_dir):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve(MN04_WEIGHTS) == __import__("pathlib").Path(weights_dir) / MN04_WEIGHTS.filename
    explicit = os.path.join(weights_dir, MN04_WEIGHTS.filename)
    assert str(resolve(MN04_WEIGHTS, explicit)) == explicit
    assert str(resolve(MN04_WEIGHTS, weights_dir)) == explicit


def test_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEQMOE_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(WeightsError) as e:
        resolve(MN04_WEIGHTS)
    msg = str(e.value)
    assert MN04_WEIGHTS.filename in msg and MN04_WEIGHTS.sha256 in msg
    assert str(tmp_path / "cache" / "edgeqmoe" / "weights") in msg
    assert fetch_command(MN04_WEIGHTS) in msg and "EDGEQMOE_WEIGHTS_DIR" in msg
    with pytest.raises(WeightsError, match="does not exist"):
        resolve(MN04_WEIGHTS, str(tmp_path / "nope.pt"))


def test_wrong_weights_message(tmp_path, monkeypatch):
    bad = tmp_path / MN04_WEIGHTS.filename
    bad.write_bytes(b"not the weights")
    monkeypatch.setenv("EDGEQMOE_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError) as e:
        get_embedder("mn04")
    msg = str(e.value)
    assert str(bad) in msg and MN04_WEIGHTS.sha256 in msg and fetch_command(MN04_WEIGHTS) in msg


def test_stats_embedder_is_documented_statistics(rng):
    s = LogMelStatsEmbedder()
    x = (rng.standard_normal(16000) * 0.1).astype(np.float32)
    e = s.embed(x, 16000)
    assert e.shape == (320,) and e.dtype == np.float32 and s.info.dim == 320
    from edgeqmoe.audio.frontend import log_mel

    m = log_mel(x, STATS_MEL)
    np.testing.assert_allclose(e[:64], m.mean(1), rtol=1e-5)
    np.testing.assert_allclose(e[64:128], m.std(1), rtol=1e-5)
    np.testing.assert_allclose(e[128:192], m.min(1), rtol=1e-5)
    np.testing.assert_allclose(e[192:256], m.max(1), rtol=1e-5)
    np.testing.assert_allclose(e[256:], np.abs(np.diff(m, axis=1)).mean(1), rtol=1e-5)
    # another input rate is resampled to 16 kHz first
    e32 = s.embed(np.repeat(x, 2), 32000)
    assert e32.shape == (320,)
    np.testing.assert_array_equal(s.embed(x, 16000), e)


def test_stats_embedder_needs_neither_weights_nor_torch():
    code = ("import sys, numpy as np\n"
            "from edgeqmoe.embed import get_embedder\n"
            "e = get_embedder('logmel-stats')\n"
            "print(e.embed(np.zeros(16000, np.float32), 16000).shape, 'torch' in sys.modules)\n")
    env = dict(os.environ, EDGEQMOE_WEIGHTS_DIR="/nonexistent")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(320,) False"


def test_unknown_embedder():
    with pytest.raises(ValueError, match="unknown embedder"):
        get_embedder("vggish")
    assert set(EMBEDDERS) == {"mn04", "logmel-stats"}


def test_bundle_refuses_other_embedder(tmp_path, rng):
    from edgeqmoe.model import BundleError, PackedLinear, load_model, save_head

    W = rng.standard_normal((10, 320)).astype(np.float32)
    p = save_head(tmp_path / "m.eqm", [PackedLinear.from_float(W, None, "q4")], [str(i) for i in range(10)],
                  LogMelStatsEmbedder.info.as_dict())
    h = load_model(p, embedder=LogMelStatsEmbedder.info)
    assert h.embedder["id"] == "logmel-stats"
    with pytest.raises(BundleError, match="trained on embedder 'logmel-stats'.*cannot run on 'mn04'"):
        load_model(p, embedder=embedder_info("mn04"))
