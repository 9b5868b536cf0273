"""Smoke test of examples/mnist_da.py on a small random npz in Keras's MNIST layout."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def tiny_mnist(path, n_train, seed):
    """A random npz in Keras's MNIST layout: n_train training and 100 test images."""
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n_train, 28, 28), dtype="uint8"),
        y_train=rng.integers(0, 10, n_train, dtype="uint8"),
        x_test=rng.integers(0, 256, (100, 28, 28), dtype="uint8"),
        y_test=rng.integers(0, 10, 100, dtype="uint8"),
    )
    return path


def test_mnist_da_runs_and_writes_filters(tmp_path):
    npz = tiny_mnist(tmp_path / "mnist.npz", 2500, seed=0)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(EXAMPLES, "mnist_da.py"),
            "--data",
            str(npz),
            "--epochs",
            "1",
            "--limit",
            "2000",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    assert re.fullmatch(r"Training epoch 0, cost \d+\.\d+", lines[0])
    assert re.fullmatch(r"The no corruption code ran for \d+\.\d\dm", lines[1])
    assert re.fullmatch(r"Training epoch 0, cost \d+\.\d+", lines[2])
    assert re.fullmatch(r"The 30% corruption code ran for \d+\.\d\dm", lines[3])
    for name in ("filters_corruption_0.png", "filters_corruption_30.png"):
        with Image.open(out / name) as image:
            assert image.size == (289, 289)


@pytest.mark.slow
def test_mnist_sda_runs_and_prints_the_table(tmp_path):
    npz = tiny_mnist(tmp_path / "mnist.npz", 400, seed=1)
    out = tmp_path / "out"
    # The tutorial's network shrunk to 20-10 hidden units and one epoch of each phase.
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(EXAMPLES, "mnist_sda.py"),
            "--data",
            str(npz),
            "--layers",
            "20,10",
            "--corruption",
            "0.1,0.2",
            "--valid-size",
            "100",
            "--pretrain-epochs",
            "1",
            "--finetune-epochs",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "MNIST: 300 train / 100 validation / 100 test rows"
    for layer in (0, 1):
        assert any(
            re.fullmatch(rf"Pre-training layer {layer}, epoch 0, cost \d+\.\d+", line)
            for line in lines
        ), result.stdout
    assert any(re.fullmatch(r"The pretraining code ran for \d+\.\d\dm", ln) for ln in lines)
    row = r"\| {} \| \d+\.\d\d \| \d+\.\d\d \| 1 \(1\) \| \d+\.\d min \|"
    assert re.fullmatch(row.format("pretrained"), lines[-2]), result.stdout
    assert re.fullmatch(row.format("random"), lines[-1]), result.stdout
    for name in ("filters_pretrained.png", "filters_finetuned.png", "deep_reconstructions.png"):
        assert (out / name).is_file()
    for name in ("stack.keras", "classifier.keras", "histories.json"):
        assert (out / name).is_file()
