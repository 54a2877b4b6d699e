import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("EDGEQMOE_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
MODELS = os.path.join(SHARED, "models")
US8K = os.path.join(SHARED, "data", "us8k16k")
IN_CI = os.environ.get("CI") == "true"


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
