"""Shared test set-up: quiet TensorFlow, small reproducible data."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist.npz")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def small_x(rng):
    """64 rows of 30 values in [0, 1], float32."""
    return rng.random((64, 30)).astype("float32")
