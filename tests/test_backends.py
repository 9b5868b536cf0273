"""Keras backends: JAX trains as TensorFlow does, .keras files cross over, the Keras version.

The PyTorch backend's tests are in test_torch.py.

The backend is fixed when Keras is imported, so each backend runs in a
subprocess of its own (KERAS_BACKEND set, TensorFlow blocked where it says).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from numpy.testing import assert_allclose

import stackae
from stackae import compat
from stackae.distribute import get_strategy
from stackae.errors import BackendError
from tests.processes import run_under

ROOT = Path(__file__).parent.parent
TIMEOUT = 300


def test_keras_version_is_the_tested_one():
    # Fails on a new Keras on purpose: re-check each premise in stackae/compat.py,
    # delete the workarounds it made unnecessary, then move TESTED_KERAS (and pyproject).
    low, high = compat.TESTED_KERAS
    assert low <= compat.keras_version() < high, (
        f"Keras {keras.__version__} is outside the tested range {low} to {high}: "
        "re-check the workarounds in stackae/compat.py"
    )
    pyproject = (ROOT / "pyproject.toml").read_text()
    pinned = re.search(r'"keras>=([\d.]+),<([\d.]+)"', pyproject)
    assert pinned, "pyproject.toml states the tested Keras range"
    bounds = tuple(tuple(int(p) for p in v.split(".")[:2]) for v in pinned.groups())
    assert bounds == compat.TESTED_KERAS


def test_unsupported_backend_raises_one_line(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    with pytest.raises(BackendError, match="'numpy' is not supported yet") as info:
        stackae.AutoEncoder(4)
    assert "\n" not in str(info.value)
    with pytest.raises(BackendError, match="not supported yet"):
        get_strategy("auto")


@pytest.mark.slow  # test_fit_costs_equal_under_tensorflow_and_jax runs by default
def test_reference_updates_and_grouping_pass_under_jax():
    # The same tests, tolerances included, as under TensorFlow; float64 needs JAX's x64.
    selection = "one_sgd_step or clean_cost or masking or salt or grouped_updates or progress"
    selection += " or resumed"
    command = [sys.executable, "-m", "pytest", "tests/test_autoencoder.py", "-q"]
    command += ["-o", "addopts=", "-p", "no:cacheprovider", "-k", selection]
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_ENABLE_X64="1")
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) >= 18, done.stdout[-1000:]


# Two epochs of AutoEncoder.fit from weights and batches both backends share.
FIT_TWO_EPOCHS = """
import json
import keras
import numpy as np
import stackae

rng = np.random.default_rng(0)
x = rng.random((96, 30)).astype("float32")
model = stackae.AutoEncoder(8, sparsity=0.1, l2=0.001, seed=4)
model.compile(optimizer=keras.optimizers.SGD(0.1))
model.build((None, 30))
for variable in model.layer.weights:
    variable.assign(rng.uniform(-0.3, 0.3, variable.shape).astype("float32"))
history = model.fit(x, batch_size=8, epochs=2, shuffle=False, verbose=0)
result = {
    "backend": keras.backend.backend(),
    "history": history.history,
    "weights": [keras.ops.convert_to_numpy(w).tolist() for w in model.layer.weights],
    "steps": int(model.optimizer.iterations),
}
print(json.dumps(result))
"""


def test_fit_costs_equal_under_tensorflow_and_jax(tmp_path):
    tf_run = run_under("tensorflow", FIT_TWO_EPOCHS, tmp_path)
    jax_run = run_under("jax", FIT_TWO_EPOCHS, tmp_path, without_tensorflow=True)
    assert (tf_run["backend"], jax_run["backend"]) == ("tensorflow", "jax")
    assert tf_run["steps"] == jax_run["steps"] == 24
    for name in ("loss", "penalty"):
        assert_allclose(jax_run["history"][name], tf_run["history"][name], rtol=1e-4)
    for a, b in zip(jax_run["weights"], tf_run["weights"]):
        assert_allclose(a, b, rtol=1e-3, atol=1e-5)


# Under JAX with no TensorFlow: load the TensorFlow stack, pretrain a stack, export, save.
JAX_SIDE = """
import json
import sys
import keras
import numpy as np
import stackae
from stackae import export
from stackae.distribute import get_strategy, is_chief
from stackae.errors import BackendError

x = np.load("x.npy")
loaded = keras.saving.load_model("tf_stack.keras")
np.save("tf_stack_codes_under_jax.npy", keras.ops.convert_to_numpy(loaded.encode(x)))

strategy = get_strategy("auto")
try:
    get_strategy("mirrored")
    refused = None
except BackendError as err:
    refused = str(err)
with strategy.scope():
    stack = stackae.Stack(stackae.layer_specs((12, 6), corruption=0.2, epochs=2, batch_size=8))
    histories = stackae.pretrain(stack, x, verbose=0)
classifier = export.classifier(stack, 3, zero_init=False)
stack.save("jax_stack.keras")
classifier.save("jax_classifier.keras")
np.save("jax_codes.npy", keras.ops.convert_to_numpy(stack.encode(x)))
np.save("jax_predictions.npy", classifier.predict(x, verbose=0))
print(json.dumps({
    "tensorflow_imported": sys.modules["tensorflow"] is not None
    or any(name.startswith("tensorflow.") for name in sys.modules),
    "losses": [h.history["loss"] for h in histories],
    "strategy": type(strategy).__name__,
    "chief": is_chief(strategy),
    "refused": refused,
}))
"""

TF_SIDE = """
import json
import keras
import numpy as np
import stackae  # registers its classes, so the stack loads (the classifier needs no stackae)

x = np.load("x.npy")
stack = keras.saving.load_model("jax_stack.keras")
classifier = keras.saving.load_model("jax_classifier.keras")
np.save("codes_under_tf.npy", keras.ops.convert_to_numpy(stack.encode(x)))
np.save("predictions_under_tf.npy", classifier.predict(x, verbose=0))
print(json.dumps({"backend": keras.backend.backend(), "stack": type(stack).__name__}))
"""


def test_jax_without_tensorflow_pretrains_and_files_cross_backends(tmp_path):
    x = np.random.default_rng(2).random((120, 30)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    tf_stack = stackae.Stack(stackae.layer_specs((9,)), seed=1)
    tf_stack.build((None, 30))
    tf_stack.save(tmp_path / "tf_stack.keras")  # made under this process's backend

    result = run_under("jax", JAX_SIDE, tmp_path, without_tensorflow=True)
    assert not result["tensorflow_imported"]
    assert result["strategy"] == "LocalDevices" and result["chief"]
    assert "needs TensorFlow" in result["refused"]
    for losses in result["losses"]:
        assert len(losses) == 2 and losses[1] < losses[0]
    assert_allclose(
        np.load(tmp_path / "tf_stack_codes_under_jax.npy"),
        keras.ops.convert_to_numpy(tf_stack.encode(x)),
        rtol=1e-5,
        atol=1e-6,
    )

    loaded = run_under("tensorflow", TF_SIDE, tmp_path)
    assert loaded == {"backend": "tensorflow", "stack": "Stack"}
    for name in ("codes", "predictions"):
        assert_allclose(
            np.load(tmp_path / f"{name}_under_tf.npy"),
            np.load(tmp_path / f"jax_{name}.npy"),
            rtol=1e-5,
            atol=1e-6,
        )


# Fine-tuning: the same weights and batches on both backends, and groups equal batches.
FINETUNE = """
import json
import keras
import numpy as np
import stackae
from stackae import export
from stackae.config import FinetuneSpec
from stackae.finetuning import Finetuner, finetune

rng = np.random.default_rng(0)
x = rng.random((96, 30)).astype("float32")
y = (x[:, 0] * 3).astype("int64").clip(0, 2)


def classifier(**dropout):
    stack = stackae.Stack(stackae.layer_specs((12, 6)), seed=2)
    stack.build((None, 30))
    model = export.classifier(stack, 3, zero_init=False, **dropout)
    draw = np.random.default_rng(1)
    shapes = [w.shape for w in model.get_weights()]
    model.set_weights([draw.uniform(-0.5, 0.5, shape).astype("float32") for shape in shapes])
    return model


finetuner = Finetuner(classifier(), seed=5)
finetuner.compile(optimizer=keras.optimizers.SGD(0.1))
plain = finetuner.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
grouped = []
for group in (1, 4):
    model = classifier(dropout=0.3, input_dropout=0.1)
    spec = FinetuneSpec(epochs=2, batch_size=8)
    history = finetune(model, (x, y), spec=spec, seed=5, group=group, verbose=0).history
    grouped.append([history["loss"], [w.tolist() for w in model.get_weights()]])
print(json.dumps({"plain": plain, "grouped": grouped}))
"""


def test_finetuning_under_jax_equals_tensorflow_and_groups_equal_batches(tmp_path):
    tf_run = run_under("tensorflow", FINETUNE, tmp_path)
    jax_run = run_under("jax", FINETUNE, tmp_path, without_tensorflow=True)
    for name in ("loss", "accuracy"):
        assert_allclose(jax_run["plain"][name], tf_run["plain"][name], rtol=1e-4)
    (one, one_weights), (four, four_weights) = jax_run["grouped"]
    assert_allclose(four, one, rtol=1e-5)  # dropout masks from (seed, step) either way
    for a, b in zip(four_weights, one_weights):
        assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# A head with BatchNormalization: its moving statistics train the same on every backend.
BATCH_NORM = """
import json
import keras
import numpy as np
import stackae
from stackae.config import FinetuneSpec

rng = np.random.default_rng(0)
x = rng.random((40, 6)).astype("float32")
y = (x[:, 0] * 3).astype("int64").clip(0, 2)
model = keras.Sequential([
    keras.Input((6,)),
    keras.layers.Dense(5),
    keras.layers.BatchNormalization(),
    keras.layers.Dense(3, activation="softmax"),
])
draw = np.random.default_rng(1)
model.set_weights([
    w if i in (4, 5) else draw.uniform(-0.5, 0.5, w.shape).astype("float32")  # moving stats
    for i, w in enumerate(model.get_weights())
])
# One batch of all rows an epoch, so that each backend's order of batches cannot differ.
spec = FinetuneSpec(epochs=3, batch_size=40)
stackae.finetune(model, (x, y), spec=spec, seed=5, verbose=0)
norm = model.layers[1]
stats = [norm.moving_mean, norm.moving_variance, model.layers[2].kernel]
print(json.dumps([keras.ops.convert_to_numpy(v).tolist() for v in stats]))
"""


def test_batch_normalization_in_a_fine_tuned_head_updates_alike_on_every_backend(tmp_path):
    tf_mean, tf_var, tf_kernel = run_under("tensorflow", BATCH_NORM, tmp_path)
    assert not np.allclose(tf_mean, 0) and not np.allclose(tf_var, 1)  # the statistics moved
    for backend in ("jax", "torch"):
        mean, var, kernel = run_under(backend, BATCH_NORM, tmp_path, without_tensorflow=True)
        assert_allclose(mean, tf_mean, rtol=1e-5, atol=1e-7, err_msg=backend)
        assert_allclose(var, tf_var, rtol=1e-5, err_msg=backend)
        assert_allclose(kernel, tf_kernel, rtol=1e-5, atol=1e-7, err_msg=backend)
