import os

import numpy as np
import pytest

DATA = os.path.join(os.path.dirname(__file__), "data")


def data_path(name):
    return os.path.join(DATA, name)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# the command line turns JAX's persistent compilation cache on; in tests it goes to a temporary folder
os.environ.setdefault("GSPREP_COMPILE_CACHE", os.path.join(__import__("tempfile").mkdtemp(prefix="gsprep-jax-"), "jax"))
