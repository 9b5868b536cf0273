"""AutoEncoder's train_step/test_step against the NumPy reference, noise, saving, fit.

Backend-neutral where the test says nothing about TensorFlow: test_backends.py
runs those tests again under KERAS_BACKEND=jax, test_torch.py under torch.
"""

import re

import keras
import numpy as np
import pytest
from numpy.testing import assert_allclose

import stackae
from stackae.noise import corrupt
from tests import reference as ref


def draw(x, kind, level, seed, jit=False):
    """corrupt() run the way the model runs it: inside an XLA program when jit."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        seed = tf.constant(seed, "int64")
        fn = tf.function(lambda x: corrupt(x, kind, level, seed, jit=jit), jit_compile=jit)
    elif keras.backend.backend() == "jax":
        import jax

        seed = np.asarray(seed, "int32")
        fn = jax.jit(lambda x: corrupt(x, kind, level, seed, jit=True))
    else:  # torch: eager, as its trainer runs
        seed = keras.ops.convert_to_tensor(seed, "int64")
        fn = lambda x: corrupt(x, kind, level, seed)  # noqa: E731
    return keras.ops.convert_to_numpy(fn(keras.ops.convert_to_tensor(x)))


LR = 0.125  # exact in float32, the dtype of the optimizer's learning rate


def make_model(dtype, units=7, **kwargs):
    layer = stackae.TiedAutoEncoderLayer(units, dtype=dtype)
    model = stackae.AutoEncoder(layer, seed=5, dtype=dtype, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(LR))
    return model


def weights(model):
    return [keras.ops.convert_to_numpy(v).astype("float64") for v in model.layer.trainable_weights]


def one_step_against_reference(x, dtype, rtol, **kwargs):
    model = make_model(dtype, **kwargs)
    model.build(x.shape)
    W, b, bp = weights(model)
    corruption = kwargs.get("corruption", 0.0)
    # The noise of the first step is drawn from the stateless seed (seed, step 0).
    x_tilde = draw(x.astype(dtype), "masking", corruption, [5, 0], jit=True).astype("float64")
    x64 = x.astype("float64")
    cost_fn = (
        ref.cross_entropy_cost
        if kwargs.get("loss", "cross-entropy") == "cross-entropy"
        else ref.squared_error_cost
    )
    penalty_kwargs = {
        "l2": kwargs.get("l2", 0.0),
        "beta": kwargs.get("sparsity", 0.0),
        "lam": kwargs.get("contraction", 0.0),
    }
    expected_cost = cost_fn(x64, x_tilde, W, b, bp)
    expected_penalty = ref.penalty(x_tilde, W, b, **penalty_kwargs)
    grads = ref.gradients(
        x64, x_tilde, W, b, bp, loss=kwargs.get("loss", "cross-entropy"), **penalty_kwargs
    )

    history = model.fit(x, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert_allclose(history.history["loss"][0], expected_cost, rtol=rtol)
    if any(penalty_kwargs.values()):
        assert_allclose(history.history["penalty"][0], expected_penalty, rtol=rtol)
    for got, before, g in zip(weights(model), (W, b, bp), grads):
        assert_allclose(got, before - LR * g, rtol=rtol, atol=rtol * 1e-2)


CASES = [
    {},
    {"corruption": 0.3},
    {"loss": "squared-error"},
    {"loss": "squared-error", "corruption": 0.2},
    {"l2": 0.01},
    {"sparsity": 0.5, "sparsity_target": 0.05},
    {"contraction": 0.1},
    {"l2": 0.001, "sparsity": 0.1, "contraction": 0.05, "corruption": 0.1},
]


@pytest.mark.parametrize(
    "kwargs", CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "plain"
)
def test_one_sgd_step_float64(small_x, kwargs):
    one_step_against_reference(small_x, "float64", 1e-10, **kwargs)


@pytest.mark.parametrize("kwargs", CASES[:3] + CASES[-1:], ids=str)
def test_one_sgd_step_float32(small_x, kwargs):
    one_step_against_reference(small_x, "float32", 1e-5, **kwargs)


def test_test_step_is_clean_cost(small_x):
    model = make_model("float64", corruption=0.5)
    model.build(small_x.shape)
    W, b, bp = weights(model)
    x = small_x.astype("float64")
    result = model.evaluate(small_x, batch_size=len(small_x), verbose=0, return_dict=True)
    assert_allclose(result["loss"], ref.cross_entropy_cost(x, x, W, b, bp), rtol=1e-10)


@pytest.mark.parametrize("jit", [True, False])
def test_masking_zeroes_fraction_without_rescaling(jit):
    p = 0.3
    x = np.full((400, 500), 0.7, "float32")  # 200,000 inputs
    out = draw(x, "masking", p, [1, 2], jit=jit)
    zeroed = np.mean(out == 0)
    # Binomial(200000, 0.3): standard deviation ~0.001, so 0.01 is ten of them.
    assert abs(zeroed - p) < 0.01
    assert set(np.unique(out)) == {0.0, np.float32(0.7)}
    again = draw(x, "masking", p, [1, 2], jit=jit)
    assert np.array_equal(out, again)
    other = draw(x, "masking", p, [1, 3], jit=jit)
    assert not np.array_equal(out, other)


def test_salt_and_pepper_and_gaussian():
    x = np.full((400, 500), 0.5, "float32")
    sp = draw(x, "salt-and-pepper", 0.2, [3, 4])
    assert abs(np.mean(sp == 0) - 0.1) < 0.01 and abs(np.mean(sp == 1) - 0.1) < 0.01
    assert abs(np.mean(sp == 0.5) - 0.8) < 0.01
    g = draw(x, "gaussian", 0.1, [3, 4], jit=True)
    assert abs(np.std(g - 0.5) - 0.1) < 0.005 and abs(np.mean(g - 0.5)) < 0.005


def test_fit_lowers_cost_and_same_seed_reproduces(small_x):
    x = np.tile(small_x, (4, 1))
    results = []
    for _ in range(2):
        keras.utils.set_random_seed(1)
        model = make_model("float32", corruption=0.2)
        history = model.fit(x, batch_size=16, epochs=5, shuffle=False, verbose=0)
        results.append((history.history["loss"], weights(model)))
    losses = results[0][0]
    assert losses[-1] < losses[0] - 1.0
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        assert np.array_equal(a, b)


def _train(x, corruption, **compile_kwargs):
    keras.utils.set_random_seed(2)
    model = stackae.AutoEncoder(9, corruption=corruption, seed=3)
    model.compile(optimizer=keras.optimizers.SGD(LR), **compile_kwargs)
    history = model.fit(x, batch_size=16, epochs=3, shuffle=False, verbose=0)
    return history.history["loss"], weights(model)


def test_xla_and_steps_per_execution_match_plain(small_x):
    x = np.tile(small_x, (4, 1))
    plain = _train(x, 0.0, jit_compile=False, steps_per_execution=1)
    fast = _train(x, 0.0, jit_compile=True, steps_per_execution=8)
    assert_allclose(fast[0], plain[0], rtol=1e-5)
    for a, b in zip(fast[1], plain[1]):
        assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # With noise, XLA draws from another RNG than plain graphs, so compare XLA with
    # XLA: one step per call and eight steps per call see the same noise.
    one = _train(x, 0.3, jit_compile=True, steps_per_execution=1)
    eight = _train(x, 0.3, jit_compile=True, steps_per_execution=8)
    assert_allclose(eight[0], one[0], rtol=1e-5)
    for a, b in zip(eight[1], one[1]):
        assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_save_and_load_trained_model(tmp_path, small_x):
    model = make_model("float32", corruption=0.2, sparsity=0.1)
    model.fit(small_x, batch_size=16, epochs=2, verbose=0)
    path = tmp_path / "ae.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe mode, no custom_objects
    assert isinstance(loaded, stackae.AutoEncoder)
    assert loaded.corruption == 0.2 and loaded.sparsity == 0.1 and loaded.seed == 5
    assert_allclose(
        keras.ops.convert_to_numpy(loaded.encode(small_x)),
        keras.ops.convert_to_numpy(model.encode(small_x)),
        rtol=1e-6,
    )
    assert_allclose(
        loaded.predict(small_x, verbose=0), model.predict(small_x, verbose=0), rtol=1e-6
    )
    # Training goes on after loading.
    loaded.fit(small_x, batch_size=16, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"noise": "pink"}, "noise"),
        ({"corruption": 1.0}, "corruption"),
        ({"corruption": -0.1}, "corruption"),
        ({"loss": "hinge"}, "loss"),
        ({"l2": -1.0}, "l2"),
        ({"sparsity_target": 1.5}, "sparsity_target"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        stackae.AutoEncoder(5, **kwargs)


def test_cross_entropy_needs_sigmoid_decoder():
    with pytest.raises(ValueError, match="sigmoid"):
        stackae.AutoEncoder(stackae.TiedAutoEncoderLayer(5, decoder_activation="linear"))
    stackae.AutoEncoder(
        stackae.TiedAutoEncoderLayer(5, decoder_activation="linear"), loss="squared-error"
    )


def test_fit_with_steps_per_epoch_stays_inside_each_epoch(small_x):
    # 5 steps an epoch from an endless stream: 64 steps per call would run into the next epoch.
    import tensorflow as tf

    stream = tf.data.Dataset.from_tensor_slices(small_x).batch(8).repeat()
    model = stackae.AutoEncoder(4, seed=1)
    model.compile()
    history = model.fit(stream, epochs=3, steps_per_epoch=5, verbose=0)
    assert int(model.optimizer.iterations) == 15
    assert len(history.history["loss"]) == 3


@pytest.fixture
def mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy("float32")


def test_mixed_float16_pretrains_grouped_and_fine_tunes(small_x, mixed_float16):
    from stackae import export
    from stackae.finetuning import finetune

    stack = stackae.Stack(stackae.layer_specs((8, 6), corruption=0.2, epochs=2, batch_size=5))
    stack.build((None, 30))
    before = stack.encoder_layers[1].kernel.numpy().copy()
    histories = stackae.pretrain(stack, small_x, verbose=0, group=4)
    for history in histories:
        assert all(np.isfinite(history.history["loss"]))
    assert not np.allclose(before, stack.encoder_layers[1].kernel.numpy())
    for layer in stack.encoder_layers:
        assert keras.backend.standardize_dtype(layer.kernel.dtype) == "float32"
    assert keras.backend.standardize_dtype(stack.encode(small_x).dtype) == "float16"
    model = export.classifier(stack, 3)
    y = (small_x[:, 0] * 3).astype("int64").clip(0, 2)
    history = finetune(model, (small_x, y), spec=stackae.FinetuneSpec(epochs=2, batch_size=8))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert all(np.isfinite(history.history["loss"]))
    assert keras.backend.standardize_dtype(model(small_x).dtype) == "float32"  # the softmax


class Batches(keras.utils.PyDataset):
    """The rows of `x` in order, `group` batches of `batch` rows per element."""

    def __init__(self, x, batch, group):
        super().__init__()
        self.x, self.batch, self.group = x, batch, group

    def __len__(self):
        return -(-len(self.x) // (self.batch * self.group))

    def __getitem__(self, i):
        rows = self.x[i * self.batch * self.group : (i + 1) * self.batch * self.group]
        if self.group == 1:
            return rows
        return rows.reshape(-1, self.batch, rows.shape[-1])  # (group, batch, features)


def _train_grouped(x, group, epochs=2, run_eagerly=False):
    keras.utils.set_random_seed(4)
    model = stackae.AutoEncoder(6, corruption=0.3, sparsity=0.1, seed=9)
    model.compile(optimizer=keras.optimizers.SGD(LR), run_eagerly=run_eagerly)
    history = model.fit(Batches(x, 8, group), group=group, epochs=epochs, shuffle=False, verbose=0)
    return history.history, weights(model), int(model.optimizer.iterations)


def test_grouped_updates_equal_one_batch_per_step(small_x):
    x = np.tile(small_x, (2, 1))  # 128 rows: 16 batches of 8, 4 groups of 4
    one, grouped = _train_grouped(x, 1), _train_grouped(x, 4)
    assert one[2] == grouped[2] == 32  # one update per batch either way
    for name in ("loss", "penalty"):
        assert_allclose(grouped[0][name], one[0][name], rtol=1e-5)
    for a, b in zip(grouped[1], one[1]):
        assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_grouped_updates_run_eagerly(small_x):
    # Keras's run_eagerly=True (for debugging) takes the same grouped step, uncompiled.
    x = np.tile(small_x, (2, 1))
    one, grouped = (_train_grouped(x, group, run_eagerly=True) for group in (1, 4))
    assert one[2] == grouped[2] == 32
    assert_allclose(grouped[0]["loss"], one[0]["loss"], rtol=1e-5)
    for a, b in zip(grouped[1], one[1]):
        assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def progress_counts(out):
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # without colours
    return [
        (int(done), int(total)) for done, total in re.findall(r"(?<!Epoch )\b(\d+)/(\d+) ", out)
    ]


def test_progress_bar_never_counts_past_the_epoch(small_x, capsys):
    # 5 grouped elements of 8 batches an epoch: 64 steps per call would print "64/5".
    model = stackae.AutoEncoder(4, seed=1)
    model.compile()
    model.fit(Batches(np.tile(small_x, (5, 1)), 8, 8), group=8, epochs=2, verbose=1)
    counts = progress_counts(capsys.readouterr().out)
    assert counts and all(done <= total == 40 for done, total in counts), counts  # batches
    # Keras's torch trainer runs one step per call; the others run the whole epoch in one.
    assert model.steps_per_execution == (1 if keras.backend.backend() == "torch" else 5)


def test_progress_counts_batches_of_the_batch_size_when_pretraining_and_fine_tuning(capsys):
    from stackae.finetuning import finetune

    # 130 rows at batch 5: 26 batches an epoch, served in groups of 4 (the last of 2).
    x = np.random.default_rng(0).random((130, 6)).astype("float32")
    stack = stackae.Stack(stackae.layer_specs((3,), epochs=2, batch_size=5))
    stackae.pretrain(stack, x, group=4, verbose=1)
    pretraining = progress_counts(capsys.readouterr().out)
    model = stackae.export.classifier(stack, 2)
    spec = stackae.FinetuneSpec(epochs=2, batch_size=5)
    finetune(model, (x, (x[:, 0] > 0.5).astype("int64")), spec=spec, group=4, verbose=1)
    fine_tuning = progress_counts(capsys.readouterr().out)
    for counts in (pretraining, fine_tuning):
        # Until the first epoch ends (under torch, one group per call) the total is
        # 7 groups x 4; each epoch ends on the batches it trained.
        assert counts and all(done <= total in (26, 28) for done, total in counts), counts
        assert counts[-1] == (26, 26) and (26, 26) in counts[: len(counts) // 2 + 1]
    assert stackae.pretrain(stack, x, group=4, verbose=0) and capsys.readouterr().out == ""


@pytest.mark.parametrize("loss", ["cross-entropy", "squared-error"])
@pytest.mark.parametrize(
    "penalties",
    [
        {},
        {"l2": 0.3},
        {"beta": 0.5, "rho": 0.2},
        {"lam": 0.7},
        {"l2": 0.1, "beta": 0.2, "lam": 0.3},
    ],
    ids=lambda p: ",".join(p) or "none",
)
def test_reference_gradients_equal_numeric_gradients(rng, loss, penalties):
    # The hand-derived gradients the update tests rely on, against central differences.
    x = rng.random((6, 5))
    x_tilde = x * (rng.random(x.shape) > 0.3)
    W, b, bp = rng.uniform(-1, 1, (5, 3)), rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 5)
    cost = ref.cross_entropy_cost if loss == "cross-entropy" else ref.squared_error_cost

    def objective():
        return cost(x, x_tilde, W, b, bp) + ref.penalty(x_tilde, W, b, **penalties)

    numeric = ref.numeric_grad(objective, [W, b, bp])
    derived = ref.gradients(x, x_tilde, W, b, bp, loss=loss, **penalties)
    for name, got, want in zip(("W", "b", "b'"), derived, numeric):
        assert_allclose(got, want, rtol=1e-6, atol=1e-8, err_msg=name)


def test_resumed_training_equals_uninterrupted(small_x, tmp_path):
    # Noise from (seed, optimizer step): weights and optimizer state saved after
    # epoch 2 and loaded into a new model continue the same run.
    def model():
        ae = stackae.AutoEncoder(
            stackae.TiedAutoEncoderLayer(6, decoder_bias_regularizer="l2"), corruption=0.3, seed=8
        )
        ae.compile(optimizer=keras.optimizers.SGD(LR, momentum=0.5))
        ae.build(small_x.shape)
        ae.layer.set_weights([np.full(w.shape, 0.1, "float32") for w in ae.layer.weights])
        return ae

    whole = model()
    history = whole.fit(small_x, batch_size=16, epochs=4, shuffle=False, verbose=0).history
    first = model()
    first.fit(small_x, batch_size=16, epochs=2, shuffle=False, verbose=0)
    first.save_weights(tmp_path / "after2.weights.h5")
    resumed = model()
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(tmp_path / "after2.weights.h5")
    rest = resumed.fit(
        small_x, batch_size=16, epochs=4, initial_epoch=2, shuffle=False, verbose=0
    ).history
    assert "penalty" in rest  # the decoder bias's regularizer counts
    assert_allclose(rest["loss"], history["loss"][2:], rtol=1e-6)
    for a, b in zip(weights(resumed), weights(whole)):
        assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_sequences_train_as_their_rows_flattened(small_x):
    # (batch, time, features): each step's rows are its sequences' steps, the same batches.
    sequences = small_x.reshape(16, 4, 30)  # 16 sequences of 4 steps

    def fit(x, batch_size):
        model = stackae.AutoEncoder(5, corruption=0.3, sparsity=0.1, seed=2)
        model.compile(optimizer=keras.optimizers.SGD(LR))
        model.build((None, 30))
        model.layer.set_weights([np.full(w.shape, 0.05, "float32") for w in model.layer.weights])
        history = model.fit(x, batch_size=batch_size, epochs=2, shuffle=False, verbose=0)
        return history.history, weights(model)

    as_sequences, as_rows = fit(sequences, 4), fit(small_x, 16)
    for name in ("loss", "penalty"):
        assert_allclose(as_sequences[0][name], as_rows[0][name], rtol=1e-6)
    for a, b in zip(as_sequences[1], as_rows[1]):
        assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_sample_weight_is_refused_in_one_line(small_x):
    model = stackae.AutoEncoder(4, seed=1)
    model.compile()
    with pytest.raises(ValueError, match="no `sample_weight`") as info:
        model.fit(small_x, sample_weight=np.ones(len(small_x)), verbose=0)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="no sample weights"):
        model.fit(_Weighted(small_x), epochs=1, verbose=0)


class _Weighted(keras.utils.PyDataset):
    """(x, y, sample_weight) elements: weights that a fit must not silently drop."""

    def __init__(self, x):
        super().__init__()
        self.x = x

    def __len__(self):
        return 2

    def __getitem__(self, i):
        rows = self.x[i * 32 : (i + 1) * 32]
        return rows, rows, np.ones(len(rows), "float32")
