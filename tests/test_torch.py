"""The PyTorch backend: the NumPy-reference updates, TensorFlow's costs, grouping, noise
streams, .keras files across all three backends, every CLI verb, SIGKILL and --resume.

The backend is fixed when Keras is imported, so torch runs in subprocesses (with
TensorFlow and JAX blocked where it says); torch's own threads are limited to
one, as on a shared 2-core machine its two spin against each other
(benchmarks/README.md).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from numpy.testing import assert_allclose

from stackae import runs
from tests.processes import DEADLINE, blocked_cli, run_ok, run_under, signal_when
from tests.test_backends import FINETUNE, FIT_TWO_EPOCHS

ROOT = Path(__file__).parent.parent
THREADS = {"OMP_NUM_THREADS": "1"}
NO_TF_NO_JAX = 'import sys\nsys.modules["tensorflow"] = None\nsys.modules["jax"] = None\n'
ENV = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3", **THREADS)


def under_torch(script, tmp_path):
    return run_under("torch", NO_TF_NO_JAX + script, tmp_path, env=THREADS)


def test_reference_updates_and_grouping_pass_under_torch():
    # The same tests and tolerances as under TensorFlow and JAX (test_backends.py).
    selection = "one_sgd_step or clean_cost or masking or salt or grouped_updates or progress"
    selection += " or resumed or sequence or sample_weight"
    command = [sys.executable, "-m", "pytest", "tests/test_autoencoder.py", "-q"]
    command += ["-o", "addopts=", "-p", "no:cacheprovider", "-k", selection]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert done.returncode == 0, done.stdout[-3000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) >= 20, done.stdout[-1000:]


# Under torch: the layer in a functional model, the noise streams, a model of each kind saved.
MAKE_FILES = """
import json
import keras
import numpy as np
import stackae
from stackae import export
from stackae.noise import corrupt

backend = keras.backend.backend()
x = np.load("x.npy")
result = {"backend": backend}
if backend == "torch":
    inputs = keras.Input((30,))
    tied = stackae.TiedAutoEncoderLayer(4)
    model = keras.Model(inputs, tied(tied(inputs), reverse=True))
    result["functional"] = list(model(x[:2]).shape)
    ones = keras.ops.ones((200, 500))
    masks = {}
    for pair in ((1, 2), (2, 1), (0, 3), (1, 3)):  # equal sums: Keras's torch seeds would collide
        seed = keras.ops.convert_to_tensor(pair, "int64")
        masks[pair] = keras.ops.convert_to_numpy(corrupt(ones, "masking", 0.3, seed)) == 0
    result["zeroed"] = float(masks[(1, 2)].mean())
    result["repeatable"] = bool(np.array_equal(
        masks[(1, 2)],
        keras.ops.convert_to_numpy(corrupt(ones, "masking", 0.3, keras.ops.convert_to_tensor(
            (1, 2), "int64"))) == 0,
    ))
    pairs = list(masks)
    result["distinct"] = all(
        not np.array_equal(masks[a], masks[b]) for i, a in enumerate(pairs) for b in pairs[i + 1:]
    )
stack = stackae.Stack(stackae.layer_specs((9, 5), corruption=0.2, epochs=2, batch_size=8), seed=3)
result["losses"] = [h.history["loss"] for h in stackae.pretrain(stack, x, verbose=0)]
ae = stack.autoencoder(0)
stack.save(f"{backend}_stack.keras")
ae.save(f"{backend}_ae.keras")
export.classifier(stack, 3, zero_init=False).save(f"{backend}_classifier.keras")
print(json.dumps(result))
"""


def combined(**scripts):
    """One process running scripts that each print a JSON line: {name: that line's value}.

    Each starts in a fresh namespace; one process saves the start-up of another Keras.
    """
    body = "".join(
        f"with contextlib.redirect_stdout(io.StringIO()) as _out:\n"
        f"    exec({script!r}, {{'__name__': '__main__'}})\n"
        f"_results[{name!r}] = json.loads(_out.getvalue().strip().splitlines()[-1])\n"
        for name, script in scripts.items()
    )
    return f"import contextlib, io, json\n_results = {{}}\n{body}print(json.dumps(_results))\n"


# Each backend loads every backend's files (the classifier without stackae) and predicts.
LOAD_FILES = """
import json
import keras
import numpy as np

x = np.load("x.npy")
out = {}
for maker in ("tensorflow", "jax", "torch"):
    classifier = keras.saving.load_model(f"{maker}_classifier.keras")  # no stackae import
    import stackae  # registers its classes for the rest

    stack = keras.saving.load_model(f"{maker}_stack.keras")
    ae = keras.saving.load_model(f"{maker}_ae.keras")
    out[maker] = {
        "codes": keras.ops.convert_to_numpy(stack.encode(x)).tolist(),
        "reconstruction": ae.predict(x, verbose=0).tolist(),
        "probabilities": classifier.predict(x, verbose=0).tolist(),
        "types": [type(stack).__name__, type(ae).__name__],
    }
print(json.dumps(out))
"""


@pytest.mark.slow  # test_reference_updates_and_grouping_pass_under_torch covers the steps
def test_torch_trains_equals_tensorflow_and_keras_files_cross_all_three_backends(tmp_path):
    # One process per backend makes the files and runs the comparison; then each loads all.
    x = np.random.default_rng(2).random((64, 30)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    script = combined(made=MAKE_FILES, fit=FIT_TWO_EPOCHS, tune=FINETUNE)
    tf_runs = run_under("tensorflow", script, tmp_path)
    torch_runs = under_torch(script, tmp_path)
    torch_made = torch_runs["made"]
    run_under("jax", MAKE_FILES, tmp_path, without_tensorflow=True)

    assert torch_made["functional"] == [2, 30]
    assert abs(torch_made["zeroed"] - 0.3) < 0.01  # 100,000 draws: sd 0.0015
    assert torch_made["repeatable"] and torch_made["distinct"]
    for losses in torch_made["losses"]:
        assert len(losses) == 2 and losses[1] < losses[0]

    # The same batches give TensorFlow's costs (corruption 0 for the fit, no dropout
    # for the plain fine-tuning), and groups give one batch per step's updates.
    tf_fit, torch_fit = tf_runs["fit"], torch_runs["fit"]
    assert torch_fit["backend"] == "torch" and torch_fit["steps"] == tf_fit["steps"] == 24
    for name in ("loss", "penalty"):
        assert_allclose(torch_fit["history"][name], tf_fit["history"][name], rtol=1e-4)
    for a, b in zip(torch_fit["weights"], tf_fit["weights"]):
        assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    for name in ("loss", "accuracy"):
        assert_allclose(
            torch_runs["tune"]["plain"][name], tf_runs["tune"]["plain"][name], rtol=1e-4
        )
    (one, one_weights), (four, four_weights) = torch_runs["tune"]["grouped"]
    assert_allclose(four, one, rtol=1e-5)  # dropout masks from (seed, step) either way
    for a, b in zip(four_weights, one_weights):
        assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    loaded = {
        "tensorflow": run_under("tensorflow", LOAD_FILES, tmp_path),
        "jax": run_under("jax", LOAD_FILES, tmp_path, without_tensorflow=True),
        "torch": under_torch(LOAD_FILES, tmp_path),
    }
    for maker in loaded:
        reference = loaded[maker][maker]  # what the maker itself predicts from its files
        for reader in loaded:
            got = loaded[reader][maker]
            assert got["types"] == ["Stack", "AutoEncoder"]
            for name in ("codes", "reconstruction", "probabilities"):
                assert_allclose(got[name], reference[name], rtol=1e-5, atol=1e-6, err_msg=name)


# ------------------------------------------------------------------ the CLI under torch

PRETRAIN = ["--layers", "24,12", "--data", "mnist-sample", "--limit", "600", "--epochs", "3"]
PRETRAIN += ["--corruption", "0.2,0.3", "-q"]
TUNE = ["--epochs", "4", "--patience", "3", "--dropout", "0.2", "--input-dropout", "0.1"]
TUNE += ["--momentum", "0.5", "-q"]


stackae = blocked_cli("tensorflow", "jax")


def run_cli(*args):
    return run_ok(stackae(*args), ENV)


def manifest(out):
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def killed_twice_then_resumed(out, verb, args, progress, stages):
    """Run `verb`, SIGKILL it when `progress(manifest)` reaches each of `stages`, then --resume."""
    for i, stage in enumerate(stages):
        extra = ("--resume",) if i else ()

        def ready(stage=stage):
            record = manifest(out)
            return record is not None and progress(record, stage)

        code, _ = signal_when(stackae(verb, *args, *extra), ready, signal.SIGKILL, env=ENV)
        assert code == -signal.SIGKILL
        runs.Run.open(out)  # still a valid run
    return run_cli(verb, *args, "--resume")


def weights(path):
    return [keras.ops.convert_to_numpy(w) for w in keras.saving.load_model(path).weights]


def assert_same_weights(a, b):
    for got, want in zip(weights(a), weights(b)):
        assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch") / "run"
    run_cli("pretrain", *PRETRAIN, "--out", out)
    return out


@pytest.mark.slow  # a second backend's whole-CLI check; faster ones stay in the default run
def test_every_verb_runs_under_torch_without_tensorflow_or_jax(uninterrupted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    assert "test error" in run_cli("finetune", out, "--epochs", "2", "-q")
    assert "reconstruction cost" in run_cli("evaluate", out)
    run_cli("encode", out, "--data", "mnist-sample", "--limit", "5", "--out", tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz") as codes:
        assert codes["train"].shape == (5, 12)
    run_cli("filters", out, "--out", tmp_path / "f.png")
    run_cli("reconstruct", out, "--n", "3", "--out", tmp_path / "r.png")
    assert "backend: torch" in run_cli("info", out)
    assert (tmp_path / "f.png").stat().st_size > 0 and (tmp_path / "r.png").stat().st_size > 0
    refused = subprocess.run(
        stackae("pretrain", *PRETRAIN, "--out", tmp_path / "m", "--strategy", "mirrored"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=DEADLINE,
    )
    assert refused.returncode != 0 and "tf.distribute" in refused.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_killed_and_resumed_under_torch_ends_with_the_same_weights(uninterrupted, tmp_path):
    out = tmp_path / "run"

    def layer_epochs(record, stage):
        layer, epochs = stage
        return record["layers"][layer]["epochs_done"] >= epochs

    killed_twice_then_resumed(
        out, "pretrain", [*PRETRAIN, "--out", out], layer_epochs, [(0, 1), (1, 1)]
    )
    assert runs.Run.open(out).backend == "torch"
    assert_same_weights(out / "stack.keras", uninterrupted / "stack.keras")

    whole = tmp_path / "whole"
    shutil.copytree(uninterrupted, whole)
    run_cli("finetune", whole, *TUNE)

    def tuned_epochs(record, epochs):
        return ((record.get("finetune") or {}).get("epochs_done") or 0) >= epochs

    killed_twice_then_resumed(out, "finetune", [out, *TUNE], tuned_epochs, [1, 2])
    assert_same_weights(out / "classifier.keras", whole / "classifier.keras")
    ours, theirs = runs.Run.open(out).finetune, runs.Run.open(whole).finetune
    assert ours.epochs_done == theirs.epochs_done
    for key in theirs.history:
        assert_allclose(ours.history[key], theirs.history[key], rtol=1e-5)
