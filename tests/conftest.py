import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("EDGEQMOE_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
MODELS = os.path.join(SHARED, "models")
US8K = os.path.join(SHARED, "data", "us8k16k")
IN_CI = os.environ.get("CI") == "true"


def pytest_configure(config):
    """Converted embedders go to a folder of this session's own (never the user's cache);
    mn04 is converted for ONNX Runtime once here, so that no daemon run of a test is the
    first one (which says so on the terminal)."""
    import tempfile

    if "EDGEQMOE_CACHE_DIR" not in os.environ:
        os.environ["EDGEQMOE_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgeqmoe-test-cache-")
        config._edgeqmoe_cache = os.environ["EDGEQMOE_CACHE_DIR"]
    try:
        from edgeqmoe.embed.mn04_onnx import convert, converted_path, onnxruntime_available
        from edgeqmoe.embed.weights import sha256_of
    except ImportError:
        return
    weights = os.path.join(MODELS, "mn04_as_mAP_432.pt")
    if onnxruntime_available() and os.path.exists(weights) and not converted_path(sha256_of(weights)).is_file():
        convert(weights)


def pytest_unconfigure(config):
    import shutil

    folder = getattr(config, "_edgeqmoe_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def need(path: str, what: str):
    """Skip (fail in CI, which always has ../shared) when shared data is missing."""
    if not os.path.exists(path):
        if IN_CI:
            pytest.fail(f"{what} missing at {path}: CI must have ../shared")
        pytest.skip(f"{what} not at {path}")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def golden():
    with np.load(need(os.path.join(MODELS, "mn04_golden.npz"), "mn04 golden outputs")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture
def weights_dir(monkeypatch):
    need(os.path.join(MODELS, "mn04_as_mAP_432.pt"), "mn04 weights")
    monkeypatch.setenv("EDGEQMOE_WEIGHTS_DIR", MODELS)
    return MODELS


@pytest.fixture(scope="session")
def mn04():
    need(os.path.join(MODELS, "mn04_as_mAP_432.pt"), "mn04 weights")
    from edgeqmoe.embed.mn04 import MN04Embedder

    return MN04Embedder(weights=MODELS)


@pytest.fixture
def us8k():
    return need(US8K, "UrbanSound8K clips")


def one_clip_per_class(root=US8K):
    """A small fixed subset: the first clip of each class in metadata order."""
    from edgeqmoe.audio.datasets import read_dataset

    ds = read_dataset(root)
    seen, out = set(), []
    for c in ds.clips:
        if c.label not in seen:
            seen.add(c.label)
            out.append(c)
    return ds, sorted(out, key=lambda c: c.label)


@pytest.fixture(scope="session")
def virtual_mic(tmp_path_factory):
    """The project's virtual microphone (tools/virtual_mic.sh), a sound server of this
    test session's own (two sessions on one machine never stop each other's): returns
    the environment that subprocesses need; sounddevice in this process sees it too."""
    import shutil
    import subprocess

    if not shutil.which("pulseaudio"):
        if IN_CI:
            pytest.fail("CI must install pulseaudio (tools/setup.sh --dev)")
        pytest.skip("pulseaudio not installed")
    script = os.path.join(ROOT, "tools", "virtual_mic.sh")
    own = {"EDGEQMOE_VMIC_DIR": str(tmp_path_factory.mktemp("vmic"))}
    out = subprocess.run([script, "up"], capture_output=True, text=True, timeout=60, env={**os.environ, **own})
    if out.returncode != 0:
        pytest.fail(f"virtual microphone did not start: {out.stderr}")
    env = dict(own)
    for part in out.stdout.strip().split("\n")[-1].replace("export ", "").split():
        k, _, v = part.partition("=")
        env[k] = v
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    subprocess.run([script, "down"], capture_output=True, timeout=30)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
