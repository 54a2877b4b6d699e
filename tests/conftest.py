import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("EDGEQMOE_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
