"""Every CLI verb under KERAS_BACKEND=jax with TensorFlow blocked; SIGKILL and --resume there."""

import json
import os
import signal

import keras
import numpy as np
import pytest

from stackae import runs
from tests.processes import blocked_cli, run_ok, signal_when

ARGS = ["--layers", "24,12", "--data", "mnist-sample", "--limit", "1000", "--epochs", "3"]
ARGS += ["--corruption", "0.2,0.3", "-q"]
ENV = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")


stackae = blocked_cli("tensorflow")


def run_cli(*args):
    return run_ok(stackae(*args), ENV)


def layers_done(out):
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return [layer["epochs_done"] for layer in manifest["layers"]]


def stack_weights(out):
    return [
        keras.ops.convert_to_numpy(w) for w in keras.saving.load_model(out / "stack.keras").weights
    ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax") / "run"
    run_cli("pretrain", *ARGS, "--out", out)
    return out


@pytest.mark.slow
def test_killed_and_resumed_under_jax_ends_with_the_same_weights(uninterrupted, tmp_path):
    out = tmp_path / "run"
    for layer, epochs in ((0, 1), (1, 1)):
        extra = ("--resume",) if out.exists() else ()

        def ready(layer=layer, epochs=epochs):
            done = layers_done(out)
            return bool(done) and done[layer] >= epochs

        command = stackae("pretrain", *ARGS, "--out", out, *extra)
        code, _ = signal_when(command, ready, signal.SIGKILL, env=ENV)
        assert code == -signal.SIGKILL
        runs.Run.open(out)
    run_cli("pretrain", *ARGS, "--out", out, "--resume")
    assert runs.Run.open(out).backend == "jax"
    for got, want in zip(stack_weights(out), stack_weights(uninterrupted)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # a second backend's whole-CLI check; faster ones stay in the default run
def test_every_verb_runs_under_jax_without_tensorflow(uninterrupted, tmp_path):
    out = tmp_path / "run"
    run_cli("pretrain", *ARGS, "--out", out)
    assert "test error" in run_cli("finetune", out, "--epochs", "2", "-q")
    assert "reconstruction cost" in run_cli("evaluate", out)
    run_cli("encode", out, "--data", "mnist-sample", "--limit", "5", "--out", tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz") as codes:
        assert codes["train"].shape == (5, 12)
    run_cli("filters", out, "--out", tmp_path / "f.png")
    run_cli("reconstruct", out, "--n", "3", "--out", tmp_path / "r.png")
    assert "backend: jax" in run_cli("info", out)
    assert (tmp_path / "f.png").stat().st_size > 0 and (tmp_path / "r.png").stat().st_size > 0
