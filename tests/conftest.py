import os

import numpy as np
import pytest

DATA = os.path.join(os.path.dirname(__file__), "data")


def data_path(name):
    return os.path.join(DATA, name)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
