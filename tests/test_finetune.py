"""Fine-tuning: grouped updates, dropout from stateless seeds, resume, the saved classifier."""

import json
import re
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from numpy.testing import assert_allclose

import stackae.finetuning
from stackae import export
from stackae.config import FinetuneSpec
from stackae.finetuning import (
    EarlyStopping,
    Finetuner,
    error_rate,
    finetune,
    make_finetuner,
)
from stackae.stack import Stack, layer_specs

N_CLASSES = 3


def numpy(v):
    return keras.ops.convert_to_numpy(v)


@pytest.fixture
def labelled(rng):
    """72 rows of 30 values in [0, 1] and labels that depend on them (learnable)."""
    x = rng.random((72, 30)).astype("float32")
    y = (x[:, :3].sum(axis=1) > 1.5).astype("int64") + (x[:, 3] > 0.8)
    return x, y


def classifier(dropout=0.0, input_dropout=0.0):
    """The same small 30-12-6-3 classifier every call (Glorot softmax, so all layers learn)."""
    keras.utils.set_random_seed(7)
    stack = Stack(layer_specs((12, 6)), seed=11)
    stack.build((None, 30))
    return export.classifier(
        stack, N_CLASSES, zero_init=False, dropout=dropout, input_dropout=input_dropout
    )


def weights(model):
    return [w.copy() for w in model.get_weights()]


def assert_same_weights(a, b, rtol=1e-5, atol=1e-6):
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert_allclose(p, q, rtol=rtol, atol=atol)


SPEC = FinetuneSpec(epochs=3, batch_size=8, learning_rate=0.3, momentum=0.5)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_grouped_updates_equal_one_batch_per_step(labelled, dropout):
    runs = {}
    for group in (1, 4):
        model = classifier(dropout, input_dropout=dropout / 2)
        history = finetune(model, labelled, spec=SPEC, seed=5, group=group, verbose=0)
        runs[group] = weights(model), history.history["loss"]
    assert_same_weights(runs[1][0], runs[4][0])
    assert_allclose(runs[1][1], runs[4][1], rtol=1e-5)
    # Training moved every layer (so the comparison above compares something).
    for before, after in zip(weights(classifier(dropout)), runs[4][0]):
        assert not np.allclose(before, after)


def test_dropout_changes_training_and_the_seed_picks_the_masks(labelled):
    def trained(dropout, seed):
        model = classifier(dropout, input_dropout=dropout)
        spec = FinetuneSpec(epochs=1, batch_size=8, learning_rate=0.3)
        finetune(model, labelled, spec=spec, seed=seed, group=9, verbose=0)
        return weights(model)

    plain, dropped, other = trained(0.0, 5), trained(0.3, 5), trained(0.3, 6)
    assert not np.allclose(plain[0], dropped[0])
    assert not np.allclose(dropped[0], other[0])


def test_dropout_masks_are_inverted_dropout_at_the_layer_rate(rng):
    model = classifier(dropout=0.25, input_dropout=0.1)
    finetuner = make_finetuner(model, SPEC, seed=3)
    x = np.ones((400, 30), "float32")
    # The input dropout alone: the first layer sees x * mask / (1 - rate).
    first = keras.Sequential([model.layers[0]])
    masked = numpy(Finetuner(first, seed=3).probabilities(x, step=0))
    assert_allclose(np.unique(masked), [0.0, 1 / 0.9], rtol=1e-6)
    assert abs(np.mean(masked == 0) - 0.1) < 0.01
    # Different steps, different masks; the same step, the same masks.
    a, b = finetuner.probabilities(x, step=0), finetuner.probabilities(x, step=0)
    assert_allclose(numpy(a), numpy(b))
    assert not np.allclose(numpy(a), numpy(finetuner.probabilities(x, step=1)))


def test_dropout_is_active_in_training_only(labelled):
    x, y = labelled
    model = classifier(dropout=0.5, input_dropout=0.2)
    plain = classifier()
    finetuner = make_finetuner(model, SPEC, seed=1)
    expected = numpy(plain(x))
    # evaluate, predict and the call are the plain forward pass of the same weights.
    assert_allclose(finetuner.predict(x, verbose=0), expected, atol=1e-6)
    assert_allclose(numpy(finetuner(x)), expected, atol=1e-6)
    logs = finetuner.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    cross_entropy = -np.mean(np.log(expected[np.arange(len(y)), y]))
    assert logs["loss"] == pytest.approx(cross_entropy, rel=1e-5)
    assert logs["accuracy"] == pytest.approx(np.mean(expected.argmax(1) == y))
    assert not np.allclose(numpy(finetuner.probabilities(x, step=0)), expected, atol=1e-3)


def test_one_update_equals_numpy_sgd(labelled):
    """The first update of a batch, against the SGD step of the network written in NumPy."""
    x, y = labelled
    x, y = x[:8], y[:8]
    model = classifier()
    before = weights(model)
    finetuner = make_finetuner(model, FinetuneSpec(learning_rate=0.5), seed=1)
    finetuner.train_on_batch(x, y)
    (w1, b1, w2, b2, w3, b3) = [w.astype("float64") for w in before]
    h1 = 1 / (1 + np.exp(-(x @ w1 + b1)))
    h2 = 1 / (1 + np.exp(-(h1 @ w2 + b2)))
    z = h2 @ w3 + b3
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = (p - np.eye(N_CLASSES)[y]) / len(y)  # d(mean cross-entropy)/dz
    dh2 = dz @ w3.T * h2 * (1 - h2)
    dh1 = dh2 @ w2.T * h1 * (1 - h1)
    grads = [x.T @ dh1, dh1.sum(0), h1.T @ dh2, dh2.sum(0), h2.T @ dz, dz.sum(0)]
    expected = [w - 0.5 * g for w, g in zip((w1, b1, w2, b2, w3, b3), grads)]
    assert_same_weights(weights(model), expected, rtol=1e-4, atol=1e-6)


def test_saved_classifier_is_plain_keras_and_predicts_as_trained(labelled, tmp_path):
    x, y = labelled
    model = classifier(dropout=0.2, input_dropout=0.1)
    finetune(model, labelled, (x, y), spec=SPEC, seed=2, verbose=0)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "classifier.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        assert "stackae" not in archive.read("config.json").decode().lower()
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np, keras\n"
        f"m = keras.saving.load_model({str(path)!r})\n"
        f"np.save({str(tmp_path / 'p.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r})))\n"
        "assert 'stackae' not in sys.modules\n"
        "print(type(m).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert done.stdout.split()[-1] == "Sequential"
    assert_allclose(np.load(tmp_path / "p.npy"), expected, rtol=1e-6, atol=1e-7)


class Interrupt(keras.callbacks.Callback):
    """After `epoch`: saves what a checkpoint keeps, then stops as a kill would."""

    def __init__(self, epoch, stopper, folder):
        super().__init__()
        self.epoch, self.stopper, self.folder = epoch, stopper, folder

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.save_weights(self.folder / "trainer.weights.h5")
            (self.folder / "stopper.json").write_text(json.dumps(self.stopper.get_state()))
            np.savez(self.folder / "best.npz", *self.stopper.best_weights)
            self.model.stop_training = True


RESUME_SPEC = FinetuneSpec(
    epochs=8,
    batch_size=8,
    learning_rate=0.5,
    momentum=0.5,
    lr_decay=0.7,
    patience=3,
    dropout=0.2,
    input_dropout=0.1,
)


def test_resume_ends_as_an_uninterrupted_run(labelled, rng, tmp_path):
    x, y = labelled
    valid = (rng.random((40, 30)).astype("float32"), rng.integers(0, N_CLASSES, 40))

    def fresh():
        return classifier(RESUME_SPEC.dropout, RESUME_SPEC.input_dropout)

    whole = fresh()
    history = finetune(whole, labelled, valid, RESUME_SPEC, seed=9, verbose=0).history
    stopped_at = len(history["loss"])
    for cut in (0, 2):
        model = fresh()
        stopper = EarlyStopping(RESUME_SPEC.patience)
        interrupt = Interrupt(cut, stopper, tmp_path)
        first = finetune(
            model,
            labelled,
            valid,
            RESUME_SPEC,
            seed=9,
            verbose=0,
            early_stopping=stopper,
            callbacks=[interrupt],
        ).history
        # A new process: a new model, the trainer and the stopper restored from the files.
        model = fresh()
        finetuner = make_finetuner(model, RESUME_SPEC, seed=9)
        finetuner.build((None, 30))
        finetuner.optimizer.build(finetuner.trainable_variables)
        finetuner.load_weights(tmp_path / "trainer.weights.h5")
        stopper = EarlyStopping(RESUME_SPEC.patience)
        stopper.set_state(json.loads((tmp_path / "stopper.json").read_text()))
        with np.load(tmp_path / "best.npz") as best:
            stopper.best_weights = [best[f"arr_{i}"] for i in range(len(best.files))]
        rest = finetune(
            model,
            labelled,
            valid,
            RESUME_SPEC,
            verbose=0,
            initial_epoch=cut + 1,
            finetuner=finetuner,
            early_stopping=stopper,
        ).history
        assert len(first["loss"]) + len(rest["loss"]) == stopped_at
        for key, values in history.items():
            assert_allclose(first[key] + rest[key], values, rtol=1e-5, err_msg=key)
        assert_same_weights(weights(model), weights(whole))
    assert stopped_at < RESUME_SPEC.epochs  # early stopping did stop (at the same epoch)


def test_early_stopping_state_is_json_and_restores_the_best_weights(labelled, rng):
    x, y = labelled
    valid = (x[:40], y[:40])
    model = classifier()
    stopper = EarlyStopping(2)
    spec = FinetuneSpec(epochs=6, batch_size=8, learning_rate=0.3)
    history = finetune(model, labelled, valid, spec, seed=4, verbose=0, early_stopping=stopper)
    state = json.loads(json.dumps(stopper.get_state()))
    accuracy = history.history["val_accuracy"]
    assert state["best_epoch"] == int(np.argmax(accuracy))
    assert state["best"] == pytest.approx(max(accuracy))
    assert_same_weights(model.get_weights(), stopper.best_weights, rtol=0, atol=0)
    assert error_rate(model, *valid) == pytest.approx(1 - max(accuracy))


def test_learning_rate_decay_reaches_the_optimizer(labelled):
    model = classifier()
    spec = FinetuneSpec(epochs=3, batch_size=8, learning_rate=0.2, lr_decay=0.5)
    finetuner = make_finetuner(model, spec, seed=1)
    history = finetune(model, labelled, spec=spec, finetuner=finetuner, verbose=0)
    assert_allclose(history.history["learning_rate"], [0.2, 0.1, 0.05], rtol=1e-6)
    assert float(numpy(finetuner.optimizer.learning_rate)) == pytest.approx(0.05)
    assert model.optimizer is finetuner.optimizer  # model.evaluate / model.optimizer see it


def test_mixed_precision_keeps_softmax_and_loss_in_float32(labelled):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = classifier(dropout=0.2)
        finetuner = make_finetuner(model, SPEC, seed=1)
        history = finetune(model, labelled, spec=SPEC, finetuner=finetuner, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(finetuner.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.all(np.isfinite(history.history["loss"]))
    assert keras.backend.standardize_dtype(finetuner.probabilities(labelled[0], 0).dtype) == (
        "float32"
    )


@pytest.mark.parametrize(("rows", "group", "requested"), [(72, 2, 64), (96, 1, 5), (56, 3, 64)])
def test_progress_never_counts_past_its_total(labelled, capsys, rows, group, requested):
    x, y = np.resize(labelled[0], (rows, 30)), np.resize(labelled[1], rows)
    model = classifier()
    finetuner = make_finetuner(model, SPEC, seed=1)
    finetuner.compile(optimizer=SPEC.make_optimizer(), steps_per_execution=requested)
    finetune(model, (x, y), spec=SPEC, finetuner=finetuner, group=group, verbose=1)
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    counts = [(int(a), int(b)) for a, b in re.findall(r"(?<!Epoch )\b(\d+)/(\d+)\b", out)]
    batches = rows // SPEC.batch_size  # counted in batches, whatever the group
    assert counts and all(b == batches for _, b in counts)
    assert all(1 <= a <= b for a, b in counts)


def test_progress_of_a_fit_on_arrays_never_counts_past_its_total(labelled, capsys):
    finetuner = make_finetuner(classifier(), SPEC, seed=1)
    finetuner.fit(*labelled, batch_size=8, epochs=1, verbose=1)  # 9 steps, 64 asked per call
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    counts = [(int(a), int(b)) for a, b in re.findall(r"(?<!Epoch )\b(\d+)/(\d+)\b", out)]
    assert counts and all(a <= b == 9 for a, b in counts)


def test_finetuner_refuses_what_it_cannot_train_naming_the_layer():
    with pytest.raises(ValueError, match="must be a Keras model"):
        Finetuner(keras.layers.Dense(2))
    shaped = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dropout(0.5, noise_shape=(1, 4), name="shaped")]
    )
    with pytest.raises(ValueError, match="layer 'shaped', a Dropout with a `noise_shape`"):
        Finetuner(shaped)
    inputs = keras.Input((4,))
    noisy = keras.layers.GaussianNoise(0.1, name="noisy")(keras.layers.Dense(3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(noisy))
    with pytest.raises(ValueError, match="layer 'noisy', a GaussianNoise, which draws its own"):
        Finetuner(model)
    two_heads = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(1)(inputs)])
    with pytest.raises(ValueError, match="one output"):
        Finetuner(two_heads)


def functional_around_the_encoder(stack, dropout=0.2):
    """A model of one's own: the exported encoder, a skip connection around it, dropout."""
    inputs = keras.Input((30,))
    encoder = export.encoder(stack)
    code = keras.layers.Dropout(dropout)(encoder(inputs))
    joined = keras.layers.Concatenate()([code, keras.layers.Dense(4, activation="relu")(inputs)])
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(joined))


@pytest.mark.parametrize("group", [1, 4])
def test_a_functional_model_around_the_exported_encoder_fine_tunes(labelled, group):
    stack = stackae.Stack(stackae.layer_specs((12, 6)), seed=2)
    stack.build((None, 30))
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(3)
        model = functional_around_the_encoder(stack)
        before = [np.array(w) for w in model.get_weights()]
        history = finetune(model, labelled, spec=SPEC, seed=5, group=group, verbose=0)
        runs.append((history.history["loss"], model.get_weights()))
        assert all(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
    # The same seed, the same dropout masks: the run repeats exactly.
    assert runs[0][0] == runs[1][0]
    assert runs[0][0][-1] < runs[0][0][0]


def test_a_functional_model_trains_as_the_same_sequential_one(labelled):
    # Dense, Dropout, Dense either way: the same masks (seed, step, layer), the same run.
    def train(functional):
        keras.utils.set_random_seed(3)
        layers = [
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(3, activation="softmax"),
        ]
        if functional:
            inputs = keras.Input((30,))
            h = inputs
            for layer in layers:
                h = layer(h)
            model = keras.Model(inputs, h)
        else:
            model = keras.Sequential([keras.Input((30,)), *layers])
        history = finetune(model, labelled, spec=SPEC, seed=5, group=4, verbose=0)
        return history.history["loss"], model.get_weights()

    (seq_loss, seq_weights), (fun_loss, fun_weights) = train(False), train(True)
    assert_allclose(fun_loss, seq_loss, rtol=1e-6)
    for a, b in zip(fun_weights, seq_weights, strict=True):
        assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_early_stopping_breaks_accuracy_ties_by_validation_loss():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    stopper = stackae.finetuning.make_early_stopping(FinetuneSpec(patience=2))
    stopper.set_model(model)
    for epoch, (accuracy, loss) in enumerate([(0.9, 0.5), (0.9, 0.4), (0.9, 0.45), (0.8, 0.1)]):
        stopper.on_epoch_end(epoch, {"val_accuracy": accuracy, "val_loss": loss})
    assert stopper.get_state() == {"best": 0.9, "best_epoch": 1, "wait": 2, "tie": 0.4}
    assert model.stop_training
    again = stackae.finetuning.make_early_stopping(FinetuneSpec(patience=2))
    again.set_state(stopper.get_state())
    assert again.get_state() == stopper.get_state()
    old = stackae.finetuning.make_early_stopping(FinetuneSpec(patience=2))
    old.set_state({"best": 0.9, "best_epoch": 1, "wait": 0})  # saved before ties were broken
    assert old.get_state()["tie"] is None


def test_validation_in_fit_gives_keras_evaluate_s_numbers(labelled):
    """The per-epoch validation (rows held in memory under TensorFlow) is Keras's evaluate."""
    x, y = labelled
    valid = (x[:40], y[:40])
    model = classifier(dropout=0.2)
    stopper = EarlyStopping(10)
    spec = FinetuneSpec(epochs=4, batch_size=8, learning_rate=0.3, momentum=0.5, dropout=0.2)
    history = finetune(model, labelled, valid, spec, seed=4, verbose=0, early_stopping=stopper)
    best = stopper.get_state()["best_epoch"]
    finetuner = make_finetuner(model, spec, seed=4)
    found = finetuner.evaluate(*valid, batch_size=len(valid[0]), verbose=0, return_dict=True)
    assert found["loss"] == pytest.approx(history.history["val_loss"][best], rel=1e-6)
    assert found["accuracy"] == history.history["val_accuracy"][best]


def test_the_optimizer_s_slots_exist_before_the_first_traced_step(labelled):
    # Made inside the first traced step, TensorFlow traces that step twice (issue 29).
    seen = []

    class Look(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append((self.model.optimizer.built, len(self.model.optimizer.variables)))

    model = classifier()
    spec = FinetuneSpec(epochs=1, batch_size=8, momentum=0.9, learning_rate=0.01)
    finetune(model, labelled, spec=spec, seed=0, verbose=0, callbacks=[Look()])
    n_weights = len(model.trainable_weights)
    assert seen == [(True, 2 + n_weights)]  # iterations, learning rate, one momentum each
