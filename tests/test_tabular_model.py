"""Real-valued (tabular) data on the model side: activations per layer, exports that take
raw features, regression fine-tuning."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from numpy.testing import assert_allclose

import stackae
from stackae import export
from stackae.config import (
    ACTIVATIONS,
    FinetuneSpec,
    LayerSpec,
    default_layer_settings,
    layer_specs,
)
from stackae.errors import DataError
from stackae.finetuning import (
    EarlyStopping,
    Finetuner,
    finetune,
    make_early_stopping,
    make_finetuner,
    regression_metrics,
)
from stackae.stack import Stack, pretrain

FIXTURES = Path(__file__).parent / "fixtures"


def numpy(v):
    return keras.ops.convert_to_numpy(v)


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


@pytest.fixture
def standardised(rng):
    """600 rows of 8 standardised features with a 3-dimensional structure (float32)."""
    z = rng.normal(size=(600, 3))
    x = z @ rng.normal(size=(3, 8)) + 0.1 * rng.normal(size=(600, 8))
    return ((x - x.mean(axis=0)) / x.std(axis=0)).astype("float32")


# ---------------------------------------------------------------- activations per layer


def test_spec_activations_default_to_the_tutorials_and_are_checked():
    spec = LayerSpec()
    assert (spec.activation, spec.decoder_activation) == ("sigmoid", "sigmoid")
    assert set(ACTIVATIONS) >= {"sigmoid", "linear", "relu", "tanh"}
    for name in ACTIVATIONS:
        LayerSpec(activation=name, decoder_activation=name, loss="squared-error")
    with pytest.raises(ValueError, match=r"^`activation` must be one of .* Received: activation="):
        LayerSpec(activation="swish")
    with pytest.raises(ValueError, match="Received: decoder_activation='softmax'"):
        LayerSpec(decoder_activation="softmax", loss="squared-error")


def test_cross_entropy_with_a_decoder_other_than_sigmoid_is_refused_in_one_line():
    with pytest.raises(ValueError) as err:
        LayerSpec(loss="cross-entropy", decoder_activation="linear")
    message = str(err.value)
    assert "\n" not in message
    assert "needs a sigmoid decoder" in message
    assert "Received: loss='cross-entropy', decoder_activation='linear'" in message
    # The same through layer_specs, and the squared error takes the linear decoder.
    with pytest.raises(ValueError, match="needs a sigmoid decoder"):
        layer_specs((5,), decoder_activation="linear")
    assert layer_specs((5,), decoder_activation="linear", loss="squared-error")[0].loss == (
        "squared-error"
    )


@pytest.mark.parametrize("penalty", ["sparsity", "contraction"])
def test_penalties_written_for_sigmoid_codes_refuse_other_encoders(penalty):
    LayerSpec(**{penalty: 0.1})  # sigmoid: fine
    with pytest.raises(ValueError) as err:
        LayerSpec(activation="relu", **{penalty: 0.1})
    assert "\n" not in str(err.value)
    assert f"Received: {penalty}=0.1, activation='relu'" in str(err.value)
    LayerSpec(activation="relu", **{penalty: 0.0})  # no penalty: any encoder


def test_layer_specs_broadcast_activations():
    specs = layer_specs(
        (6, 4),
        activation=("relu", "relu"),
        decoder_activation=("linear", "relu"),
        loss="squared-error",
    )
    assert [s.activation for s in specs] == ["relu", "relu"]
    assert [s.decoder_activation for s in specs] == ["linear", "relu"]
    specs = layer_specs((6, 4, 2), activation="tanh", loss="squared-error")
    assert [s.activation for s in specs] == ["tanh"] * 3
    with pytest.raises(ValueError, match="2 values for 3 layers"):
        layer_specs((6, 4, 2), activation=("relu", "tanh"))


def test_stack_builds_its_layers_with_the_specs_activations_and_saves_them(tmp_path, rng):
    specs = layer_specs(
        (6, 4), activation=("tanh", "relu"), decoder_activation="linear", loss="squared-error"
    )
    stack = Stack(specs, seed=3)
    stack.build((None, 5))
    x = rng.normal(size=(7, 5)).astype("float32")
    first, second = stack.encoder_layers
    w1, b1, c1 = (numpy(v) for v in (first.kernel, first.bias, first.decoder_bias))
    w2, b2, c2 = (numpy(v) for v in (second.kernel, second.bias, second.decoder_bias))
    h1 = np.tanh(x @ w1 + b1)
    h2 = np.maximum(h1 @ w2 + b2, 0.0)
    assert_allclose(numpy(stack.encode(x)), h2, rtol=1e-5, atol=1e-6)
    decoded = (h2 @ w2.T + c2) @ w1.T + c1  # linear decoders, both
    assert_allclose(numpy(stack.decode(stack.encode(x))), decoded, rtol=1e-5, atol=1e-5)
    stack.save(tmp_path / "stack.keras")
    loaded = keras.saving.load_model(tmp_path / "stack.keras")
    assert loaded.specs == stack.specs
    assert_allclose(numpy(loaded.encode(x)), h2, rtol=1e-5, atol=1e-6)
    # The exported deep autoencoder carries the decoders' activations too.
    deep = export.deep_autoencoder(stack)
    assert_allclose(deep.predict(x, verbose=0), decoded, rtol=1e-5, atol=1e-5)


def test_specs_without_activations_mean_sigmoid_and_sigmoid():
    old = {k: v for k, v in LayerSpec(units=4).__dict__.items()}
    del old["activation"], old["decoder_activation"]
    stack = Stack.from_config({"specs": [old, dict(old, units=3)], "seed": 5})
    for layer in stack.encoder_layers:
        assert layer.activation is keras.activations.sigmoid
        assert layer.decoder_activation is keras.activations.sigmoid
    assert stack.specs == layer_specs((4, 3))


@pytest.mark.parametrize(
    "path",
    [FIXTURES / "stack.keras", *sorted((FIXTURES / "runs").glob("*/stack.keras"))],
    ids=lambda p: str(p.relative_to(FIXTURES)),
)
def test_stack_files_written_before_activations_load_as_sigmoid(path):
    with zipfile.ZipFile(path) as archive:
        saved = json.loads(archive.read("config.json"))
    saved_specs = saved["config"]["specs"]
    assert all("activation" not in spec for spec in saved_specs)  # really an old file
    stack = keras.saving.load_model(path)
    assert [s.activation for s in stack.specs] == ["sigmoid"] * len(saved_specs)
    assert [s.decoder_activation for s in stack.specs] == ["sigmoid"] * len(saved_specs)
    # The layers compute the sigmoid code of their own weights.
    layer = stack.encoder_layers[0]
    x = np.random.default_rng(2).random((4, layer.n_visible)).astype("float32")
    expected = sigmoid(x @ numpy(layer.kernel) + numpy(layer.bias))
    assert_allclose(numpy(layer(x)), expected, rtol=1e-5, atol=1e-6)


def test_default_layer_settings_for_scaled_inputs():
    tutorial = default_layer_settings("none", (8, 4, 2))
    assert tutorial == {
        "activation": ("sigmoid",) * 3,
        "decoder_activation": ("sigmoid",) * 3,
        "loss": ("cross-entropy",) * 3,
        "learning_rate": (0.1,) * 3,
    }
    assert layer_specs((8, 4, 2), **tutorial) == layer_specs((8, 4, 2))  # today's defaults
    assert default_layer_settings("minmax", (5, 5)) == default_layer_settings("none", (5, 5))
    real = default_layer_settings("standard", (500, 4, 2))
    assert real["activation"] == ("sigmoid",) * 3  # codes in [0, 1] for the layers above
    assert real["decoder_activation"] == ("linear", "sigmoid", "sigmoid")
    assert real["loss"] == ("squared-error", "cross-entropy", "cross-entropy")
    assert real["learning_rate"] == (1 / 500, 0.1, 0.1)
    specs = layer_specs((500, 4, 2), **real)  # valid specs
    assert [s.loss for s in specs] == list(real["loss"])
    assert default_layer_settings("standard", (8,))["learning_rate"] == (0.1,)
    with pytest.raises(ValueError, match="Received: layers=()"):
        default_layer_settings("standard", ())


def test_the_default_first_layer_trains_where_the_tutorials_rate_diverges(rng):
    z = rng.normal(size=(600, 5))
    x = z @ rng.normal(size=(5, 50)) + 0.3 * rng.normal(size=(600, 50))
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype("float32")
    settings = default_layer_settings("standard", (500,))
    losses = {}
    for rate in (settings["learning_rate"][0], 0.1):
        keras.utils.set_random_seed(4)
        stack = Stack(layer_specs((500,), epochs=3, **dict(settings, learning_rate=rate)))
        losses[rate] = pretrain(stack, x, verbose=0)[0].history["loss"]
    default = losses[settings["learning_rate"][0]]
    assert np.all(np.isfinite(default)) and default[-1] < default[0]
    assert default[-1] < 50  # the mean predictor's squared error: 50 features
    assert not np.all(np.isfinite(losses[0.1]))


def test_squared_error_is_computed_on_the_linear_decoders_output(rng):
    layer = stackae.TiedAutoEncoderLayer(4, decoder_activation="linear")
    model = stackae.AutoEncoder(layer, loss="squared-error", seed=1)
    x = rng.normal(size=(9, 6)).astype("float32")
    model.build(x.shape)
    cost, _ = model.costs(x, x)
    w, b, c = (numpy(v) for v in (layer.kernel, layer.bias, layer.decoder_bias))
    z = sigmoid(x @ w + b) @ w.T + c
    assert_allclose(float(cost), np.mean(np.sum((x - z) ** 2, axis=1)), rtol=1e-5)


def test_linear_decoder_reconstructs_standardised_data(standardised):
    x = standardised
    keras.utils.set_random_seed(4)
    specs = layer_specs(
        (16,), decoder_activation="linear", loss="squared-error", epochs=30, learning_rate=0.01
    )
    stack = Stack(specs, seed=2)
    (history,) = pretrain(stack, x, verbose=0)
    reconstruction = numpy(stack.decode(stack.encode(x)))
    error = np.mean(np.sum((x - reconstruction) ** 2, axis=1))
    # The mean predictor's squared error is the number of features, 8 (0.47 when written).
    assert error < 0.8, error
    assert history.history["loss"][-1] < 0.8
    negative = x < -0.5
    assert np.mean(reconstruction[negative] < 0) > 0.95
    # A sigmoid decoder cannot: its outputs never go below 0.
    sigmoid_stack = Stack(layer_specs((16,), loss="squared-error", epochs=2), seed=2)
    pretrain(sigmoid_stack, x, verbose=0)
    assert numpy(sigmoid_stack.decode(sigmoid_stack.encode(x))).min() >= 0.0


# ---------------------------------------------------------------- exports that take raw features


def small_stack(n_in=5, sizes=(6, 4)):
    keras.utils.set_random_seed(7)
    stack = Stack(layer_specs(sizes), seed=11)
    stack.build((None, n_in))
    return stack


def reference_codes(stack, x):
    """The stack's top code in NumPy (sigmoid encoders), float64."""
    for layer in stack.encoder_layers:
        x = sigmoid(x @ numpy(layer.kernel).astype("float64") + numpy(layer.bias))
    return x


RAW_OFFSET = np.array([0.0, 5.0, -3.0, 100.0, 1000.0])
RAW_SCALE = np.array([1.0, 2.0, 0.5, 10.0, 250.0])


class Scaler:
    """Stands for stackae.data.scaling.Scaler: only `kind`, `offset` and `scale` are read."""

    def __init__(self, offset, scale, kind="standard"):
        self.kind, self.offset, self.scale = kind, list(offset), list(scale)


def test_exports_with_a_scaler_take_raw_features_and_load_without_stackae(tmp_path, rng):
    stack = small_stack()
    scaler = Scaler(RAW_OFFSET, RAW_SCALE)
    target_offset, target_scale = np.array([250.0, -2.0]), np.array([40.0, 0.25])
    models = {
        "encoder": export.encoder(stack, scaler=scaler),
        "classifier": export.classifier(stack, 3, zero_init=False, scaler=scaler, dropout=0.2),
        "regressor": export.regressor(
            stack, 2, zero_init=False, scaler=scaler, target_scaler=(target_offset, target_scale)
        ),
    }
    assert models["encoder"].layers[0].name == "scaling"
    assert [layer.name for layer in models["regressor"].layers] == [
        "scaling",
        "encoder_1",
        "encoder_2",
        "output",
        "target_scaling",
    ]
    x = (rng.normal(size=(9, 5)) * RAW_SCALE + RAW_OFFSET).astype("float32")
    np.save(tmp_path / "x.npy", x)
    for name, model in models.items():
        model.save(tmp_path / f"{name}.keras")
    code = (
        "import json, sys, numpy as np, keras\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "for name in ('encoder', 'classifier', 'regressor'):\n"
        "    m = keras.saving.load_model(name + '.keras')\n"
        "    np.save(name + '.npy', m.predict(x, verbose=0))\n"
        "assert 'stackae' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    codes = reference_codes(stack, (x.astype("float64") - RAW_OFFSET) / RAW_SCALE)
    assert_allclose(np.load(tmp_path / "encoder.npy"), codes, rtol=1e-5, atol=1e-6)
    softmax = models["classifier"].get_layer("softmax")
    logits = codes @ numpy(softmax.kernel) + numpy(softmax.bias)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    assert_allclose(np.load(tmp_path / "classifier.npy"), probabilities, rtol=1e-5, atol=1e-6)
    output = models["regressor"].get_layer("output")
    scaled = codes @ numpy(output.kernel) + numpy(output.bias)
    expected = scaled * target_scale + target_offset  # back in the targets' units
    assert_allclose(np.load(tmp_path / "regressor.npy"), expected, rtol=1e-5, atol=1e-5)


def test_identity_scalers_add_no_layer_and_bad_scalers_are_refused(rng):
    stack = small_stack()
    plain = [layer.name for layer in export.encoder(stack).layers]
    for identity in (None, Scaler([1.0] * 5, [3.0] * 5, kind="none"), ([0.0] * 5, [1.0] * 5)):
        assert [layer.name for layer in export.encoder(stack, scaler=identity).layers] == plain
    regressor = export.regressor(stack, 1)
    assert regressor.layers[-1].name == "output" and export.target_scale(regressor) is None
    assert np.all(numpy(regressor.get_layer("output").kernel) == 0)  # zero_init
    with pytest.raises(ValueError, match="needs 5 offsets and scales") as err:
        export.encoder(stack, scaler=Scaler([0.0] * 4, [1.0] * 4))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="scales > 0"):
        export.classifier(stack, 2, scaler=Scaler([0.0] * 5, [1.0, 1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="needs 2 offsets"):
        export.regressor(stack, 2, target_scaler=([0.0], [1.0]))
    with pytest.raises(ValueError, match="Received: n_outputs=0"):
        export.regressor(stack, 0)


# ---------------------------------------------------------------- regression fine-tuning


@pytest.fixture
def regression_data(rng):
    """600 rows of 8 raw features and a target y = 40 sin(1.5 x_s . w) + 250 + noise, where
    x_s is the standardised x; split 400 / 100 / 100."""
    x = rng.normal(size=(600, 8)) * np.r_[RAW_SCALE, 1, 3, 7] + np.r_[RAW_OFFSET, 0, -50, 9]
    offset, scale = x.mean(axis=0), x.std(axis=0)
    w = rng.normal(size=8) / np.sqrt(8)
    y = 40 * np.sin(1.5 * ((x - offset) / scale) @ w) + 250 + 2 * rng.normal(size=600)
    x = x.astype("float32")
    parts = [(x[a:b], y[a:b]) for a, b in ((0, 400), (400, 500), (500, 600))]
    return parts, Scaler(offset, scale), Scaler([y[:400].mean()], [y[:400].std()])


def regressor(scaler=None, target_scaler=None, dropout=0.0, n_in=8, sizes=(12, 6)):
    """The same small regressor every call (Glorot top layer, so every layer learns)."""
    keras.utils.set_random_seed(7)
    stack = Stack(layer_specs(sizes), seed=11)
    stack.build((None, n_in))
    return export.regressor(
        stack,
        1,
        zero_init=False,
        dropout=dropout,
        input_dropout=dropout / 2,
        scaler=scaler,
        target_scaler=target_scaler,
    )


REGRESSION = FinetuneSpec(
    task="regression", epochs=3, batch_size=8, learning_rate=0.05, momentum=0.5
)


def test_finetune_spec_task():
    assert FinetuneSpec().task == "classification"
    with pytest.raises(ValueError, match="Received: task='ranking'"):
        FinetuneSpec(task="ranking")


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_regression_grouped_updates_equal_one_batch_per_step(regression_data, dropout):
    (train, _, _), scaler, target_scaler = regression_data
    runs = {}
    for group in (1, 4):
        model = regressor(scaler, target_scaler, dropout)
        history = finetune(model, train, spec=REGRESSION, seed=5, group=group, verbose=0)
        runs[group] = model.get_weights(), history.history
    assert set(runs[1][1]) == {"loss"}
    for a, b in zip(runs[1][0], runs[4][0]):
        assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert_allclose(runs[1][1]["loss"], runs[4][1]["loss"], rtol=1e-5)
    for before, after in zip(regressor(scaler, target_scaler).get_weights(), runs[4][0]):
        assert not np.allclose(before, after)


def test_regression_cost_is_the_squared_error_of_scaled_targets(regression_data):
    (train, _, _), scaler, target_scaler = regression_data
    x, y = train[0][:16], train[1][:16]
    model = regressor(scaler, target_scaler)
    finetuner = make_finetuner(model, REGRESSION, seed=1)
    prediction = model.predict(x, verbose=0)
    scale = target_scaler.scale[0]
    expected = np.mean(((prediction[:, 0] - y) / scale) ** 2)
    assert float(finetuner.cost(y.reshape(-1, 1), prediction)) == pytest.approx(expected, rel=1e-5)
    logs = finetuner.evaluate(x, y.reshape(-1, 1), batch_size=8, verbose=0, return_dict=True)
    assert logs == {"loss": pytest.approx(expected, rel=1e-5)}
    # The model itself is compiled for evaluate in the targets' units.
    plain = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert plain["rmse"] == pytest.approx(np.sqrt(expected) * scale, rel=1e-4)
    restored = Finetuner.from_config(finetuner.get_config())
    assert restored.task == "regression" and restored.target_scale == pytest.approx([scale])


@pytest.mark.slow
def test_regression_beats_the_mean_predictor(regression_data):
    (train, valid, test), scaler, target_scaler = regression_data
    keras.utils.set_random_seed(3)
    sizes = (32, 16)
    stack = Stack(layer_specs(sizes, epochs=10, **default_layer_settings("standard", sizes)))
    scaled = ((train[0] - np.asarray(scaler.offset)) / np.asarray(scaler.scale)).astype("float32")
    pretrain(stack, scaled, verbose=0)
    model = export.regressor(stack, 1, scaler=scaler, target_scaler=target_scaler)
    spec = FinetuneSpec(task="regression", epochs=200, batch_size=20, patience=20, momentum=0.9)
    spec = dataclasses_replace(spec, learning_rate=0.05)
    history = finetune(model, train, valid, spec, seed=2, verbose=0).history
    assert set(history) >= {"loss", "val_loss"} and "val_accuracy" not in history
    metrics = regression_metrics(model, *test)
    mean_predictor = regression_metrics(ConstantModel(train[1].mean()), *test)
    print(f"regression test R2 {metrics['r2']:.3f}, RMSE {metrics['rmse']:.2f}")
    assert mean_predictor["r2"] < 0.05
    assert metrics["r2"] > 0.8, metrics
    assert metrics["rmse"] < 0.5 * mean_predictor["rmse"]
    # Early stopping kept the epoch of the lowest validation loss.
    best = int(np.argmin(history["val_loss"]))
    assert len(history["val_loss"]) < spec.epochs or best == spec.epochs - 1


class ConstantModel:
    """predict() of a constant: the mean predictor."""

    def __init__(self, value):
        self.value = value

    def predict(self, x, batch_size=None, verbose=0):
        return np.full((len(x), 1), self.value)


def dataclasses_replace(spec, **changes):
    import dataclasses

    return dataclasses.replace(spec, **changes)


def test_regression_metrics_equal_scikit_learns(rng):
    from sklearn import metrics

    y = rng.normal(size=(50, 2)) * [3.0, 0.1] + [10.0, -1.0]
    prediction = y + rng.normal(size=(50, 2)) * [1.0, 0.05]
    got = regression_metrics(ConstantModelOf(prediction), np.zeros((50, 3)), y)
    assert got["rmse"] == pytest.approx(metrics.root_mean_squared_error(y, prediction))
    assert got["mae"] == pytest.approx(metrics.mean_absolute_error(y, prediction))
    assert got["r2"] == pytest.approx(metrics.r2_score(y, prediction))
    one = regression_metrics(ConstantModelOf(prediction[:, :1]), np.zeros((50, 3)), y[:, 0])
    assert one["r2"] == pytest.approx(metrics.r2_score(y[:, 0], prediction[:, 0]))


class ConstantModelOf:
    def __init__(self, predictions):
        self.predictions = predictions

    def predict(self, x, batch_size=None, verbose=0):
        return self.predictions


def test_early_stopping_on_a_loss_stops_at_the_lowest_and_resumes():
    class Model:
        stop_training = False

        def __init__(self):
            self.weights = [np.zeros(1)]

        def get_weights(self):
            return self.weights

        def set_weights(self, weights):
            self.weights = weights

    losses = [3.0, 2.0, 2.5, 1.9, 2.2, 2.3, 2.4]
    whole, model = make_early_stopping(dataclasses_replace(REGRESSION, patience=2)), Model()
    assert (whole.monitor, whole.mode) == ("val_loss", "min")
    whole.set_model(model)
    for epoch, loss in enumerate(losses):
        model.weights = [np.array([epoch])]
        whole.on_epoch_end(epoch, {"val_loss": loss})
        if model.stop_training:
            break
    assert (epoch, whole.best_epoch, whole.best) == (5, 3, 1.9)
    whole.on_train_end()
    assert model.weights[0][0] == 3
    # Cut after epoch 2: a new stopper from the JSON state stops at the same epoch.
    cut = EarlyStopping(2, monitor="val_loss")
    cut.set_model(Model())
    for epoch, loss in enumerate(losses[:3]):
        cut.on_epoch_end(epoch, {"val_loss": loss})
    resumed = EarlyStopping(2, monitor="val_loss")
    resumed.set_state(json.loads(json.dumps(cut.get_state())))
    resumed.set_model(Model())
    for epoch, loss in enumerate(losses[3:], start=3):
        resumed.on_epoch_end(epoch, {"val_loss": loss})
        if resumed.model.stop_training:
            break
    assert epoch == 5 and resumed.get_state() == whole.get_state()
    assert EarlyStopping(2).mode == "max"  # accuracy, as before


def test_regression_targets_are_checked_in_one_line(regression_data):
    (train, _, _), scaler, target_scaler = regression_data
    model = regressor(scaler, target_scaler)
    with pytest.raises(DataError, match=r"expected shape \(400, 1\)"):
        finetune(model, (train[0], np.zeros((400, 2))), spec=REGRESSION, verbose=0)
    bad = train[1].copy()
    bad[3] = np.nan
    with pytest.raises(DataError, match="1 NaN or infinite"):
        finetune(model, (train[0], bad), spec=REGRESSION, verbose=0)


@pytest.mark.slow
def test_regression_under_jax(tmp_path):
    script = """
    import json
    import keras
    import numpy as np
    from stackae import export
    from stackae.config import FinetuneSpec
    from stackae.finetuning import finetune, regression_metrics
    from stackae.stack import Stack, layer_specs

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype("float32")
    y = 5 * np.sin(x @ rng.normal(size=6) / 2) + 20
    spec = FinetuneSpec(task="regression", epochs=4, batch_size=8, learning_rate=0.1,
                        momentum=0.5, dropout=0.2)
    out = {}
    for group in (1, 4):
        keras.utils.set_random_seed(7)
        stack = Stack(layer_specs((12, 6)), seed=11)
        stack.build((None, 6))
        model = export.regressor(stack, 1, zero_init=False, dropout=0.2,
                                 target_scaler=([y.mean()], [y.std()]))
        history = finetune(model, (x[:200], y[:200]), (x[200:], y[200:]), spec, seed=3,
                           group=group, verbose=0)
        out[group] = [w.tolist() for w in model.get_weights()], history.history
    print(json.dumps({"backend": keras.backend.backend(), "runs": out,
                      "metrics": regression_metrics(model, x[200:], y[200:])}))
    """
    from tests.processes import run_under

    # With TensorFlow importable: processes.NO_TENSORFLOW puts None in sys.modules, which
    # Keras's preprocessing layers (the target scaling here) take for an imported TensorFlow.
    result = run_under("jax", script, tmp_path)
    assert result["backend"] == "jax"
    (w1, h1), (w4, h4) = result["runs"]["1"], result["runs"]["4"]
    for a, b in zip(w1, w4):
        assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert_allclose(h1["val_loss"], h4["val_loss"], rtol=1e-5)
    assert h1["loss"][-1] < h1["loss"][0]
    assert result["metrics"]["r2"] > 0.0  # better than the mean after 4 epochs
