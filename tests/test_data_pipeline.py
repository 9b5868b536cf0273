"""stackae.data's pipelines: tf.data under TensorFlow, keras.utils.PyDataset under JAX."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from numpy.testing import assert_array_equal

import stackae
from stackae import data
from stackae.data import DataError


def rows_of(batches, x):
    """Row indices of each batch of rows of x (rows of x are distinct)."""
    lookup = {row.tobytes(): i for i, row in enumerate(np.asarray(x))}
    return [[lookup[row.tobytes()] for row in batch] for batch in batches]


def take(ds):
    return list(ds.as_numpy_iterator())


X = np.arange(23 * 3, dtype=np.float32).reshape(23, 3) / 100


def epochs_of(x, batch_size, seed, epochs, shuffle=True):
    """The batches a training_dataset serves for each epoch in `epochs`, as Keras would ask."""
    ds, order = data.training_dataset(x, batch_size, seed=seed, shuffle=shuffle)
    out = []
    for e in epochs:
        order.on_epoch_begin(e)
        out.extend(take(ds))
    return out


def test_each_epoch_is_a_permutation_of_full_batches():
    out = epochs_of(X, 5, 3, range(3))
    assert len(out) == 3 * 4 and all(b.shape == (5, 3) and b.dtype == np.float32 for b in out)
    epochs = [sorted(sum(rows_of(out[e * 4 : (e + 1) * 4], X), [])) for e in range(3)]
    for rows in epochs:
        assert len(set(rows)) == 20  # 23 // 5 batches, no row twice
    orders = [sum(rows_of(out[e * 4 : (e + 1) * 4], X), []) for e in range(3)]
    assert orders[0] != orders[1]
    assert epochs_of(X, 5, 4, [0])[0].tolist() != out[0].tolist()


def test_epoch_order_depends_only_on_seed_and_epoch():
    full = epochs_of(X, 5, 9, range(4))
    resumed = epochs_of(X, 5, 9, [2, 3])
    assert len(resumed) == 8
    for a, b in zip(full[8:], resumed, strict=True):
        assert_array_equal(a, b)


def test_no_shuffle_keeps_order_and_batches_keeps_the_rest():
    out = epochs_of(X, 5, 0, range(2), shuffle=False)
    assert_array_equal(np.concatenate(out[:4]), X[:20])
    assert_array_equal(np.concatenate(out[4:]), X[:20])
    out = take(data.batches(X, 5))
    assert [len(b) for b in out] == [5, 5, 5, 5, 3]
    assert_array_equal(np.concatenate(out), X)
    with pytest.raises(DataError, match="only 23 training rows, fewer than one batch of 50"):
        data.training_dataset(X, 50, seed=0)


def test_memmap_streams_the_same_values(tmp_path):
    np.save(tmp_path / "x.npy", X)
    d = data.load(str(tmp_path / "x.npy"), valid_size=0, test_size=0)
    assert isinstance(d.train.x, np.memmap)
    from_file = epochs_of(d.train.x, 4, 1, range(2))
    in_memory = epochs_of(np.array(d.train.x), 4, 1, range(2))
    for a, b in zip(from_file, in_memory, strict=True):
        assert_array_equal(a, b)
    # Rows drawn at random (a seeded split) and scaled rows stream through a Rows view.
    for scale in ("none", "standard"):
        d = data.load(str(tmp_path / "x.npy"), valid_size=3, scale=scale, loss="squared-error")
        assert isinstance(d.train.x, data.Rows) and isinstance(d.valid.x, data.Rows)
        from_file = epochs_of(d.train.x, 4, 1, range(2))
        in_memory = epochs_of(np.array(d.train.x), 4, 1, range(2))
        for a, b in zip(from_file, in_memory, strict=True):
            assert_array_equal(a, b)
        expected = d.scaler.transform(X[d.split["valid"]])
        assert_array_equal(np.concatenate(take(data.batches(d.valid.x, 2))), expected)


@pytest.mark.parametrize("source", ["array", "memmap"])
def test_groups_serve_the_same_batches_in_the_same_order(tmp_path, source):
    # 23 rows at batch 2: 11 batches an epoch, served 4 at a time: 4 + 4 + 3.
    x = X
    if source == "memmap":
        np.save(tmp_path / "x.npy", X)
        x = data.load(str(tmp_path / "x.npy"), valid_size=0, test_size=0).train.x
        assert isinstance(x, np.memmap)
    single = epochs_of(x, 2, 5, range(2))
    ds, order = data.training_dataset(x, 2, seed=5, group=4)
    assert ds.element_spec.shape.as_list() == [None, 2, 3]
    grouped = []
    for e in range(2):
        order.on_epoch_begin(e)
        groups = take(ds)
        assert [g.shape for g in groups] == [(4, 2, 3), (4, 2, 3), (3, 2, 3)]
        grouped.extend(batch for g in groups for batch in g)
    assert len(grouped) == len(single) == 22
    for a, b in zip(grouped, single, strict=True):
        assert_array_equal(a, b)


def test_a_transformed_grouped_dataset_trains_as_the_dataset_did():
    # The group is fit's argument, not the dataset's: prefetch() and take() keep training.
    x = np.random.default_rng(0).random((200, 6)).astype(np.float32)

    def train(transform):
        keras.utils.set_random_seed(1)
        model = stackae.AutoEncoder(4, corruption=0.3, seed=5)
        model.compile()
        ds, order = data.training_dataset(x, 10, seed=3, group=4)  # 5 groups of 4 batches
        model.fit(transform(ds), group=4, epochs=2, callbacks=[order], verbose=0, shuffle=False)
        return int(model.optimizer.iterations), model.get_weights()

    plain = train(lambda ds: ds)
    for transform in (lambda ds: ds.prefetch(2), lambda ds: ds.take(5).prefetch(1)):
        steps, weights = train(transform)
        assert steps == plain[0] == 40
        for a, b in zip(weights, plain[1], strict=True):
            assert_array_equal(a, b)


def test_grouped_elements_without_their_group_are_refused():
    from stackae.finetuning import Finetuner

    x = np.random.default_rng(0).random((80, 6)).astype(np.float32)
    y = np.arange(80) % 3
    ds, order = data.training_dataset(x, 10, seed=3, group=4, y=y)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
    finetuner = Finetuner(model, seed=1)
    finetuner.compile()
    message = r"needs fit\(\.\.\., group=k\)\. Received: an element of shape \(4, 10, 6\)"
    with pytest.raises(ValueError, match=message):
        finetuner.fit(ds, epochs=1, callbacks=[order], verbose=0, shuffle=False)
    assert int(finetuner.optimizer.iterations) == 0
    autoencoder = stackae.AutoEncoder(4, seed=5)
    autoencoder.compile()
    flat, order = data.training_dataset(x, 10, seed=3)
    with pytest.raises(ValueError, match=r"fit\(group=4\) takes elements of 4 batches"):
        autoencoder.fit(flat, group=4, epochs=1, callbacks=[order], verbose=0, shuffle=False)


@pytest.mark.parametrize("group", [4, 7, 50])
def test_grouped_steps_train_exactly_like_single_batches(group):
    # 1,003 rows at batch 20: 50 updates an epoch (7 leaves a group of 1, 50 is one group).
    x = np.random.default_rng(0).random((1003, 30)).astype(np.float32)

    def train(group):
        model = stackae.AutoEncoder(12, corruption=0.3, seed=5)
        model.build((None, 30))
        model.compile()
        ds, order = data.training_dataset(x, 20, seed=3, group=group)
        history = model.fit(ds, group=group, epochs=3, callbacks=[order], verbose=0, shuffle=False)
        return model, history.history["loss"]

    keras.utils.set_random_seed(1)
    initial = stackae.AutoEncoder(12, seed=5)
    initial.build((None, 30))
    keras.utils.set_random_seed(1)
    one, one_loss = train(1)
    keras.utils.set_random_seed(1)
    many, many_loss = train(group)
    assert int(many.optimizer.iterations) == int(one.optimizer.iterations) == 150
    # Same batches, same noise (drawn from the update count), same updates.
    assert many_loss == pytest.approx(one_loss, rel=1e-6)
    for a, b in zip(many.get_weights(), one.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(one.layer.kernel.numpy(), initial.layer.kernel.numpy())


@pytest.mark.parametrize("steps_per_execution", [1, 3, 64])
def test_fit_runs_exactly_one_epoch_per_epoch(steps_per_execution):
    # 70 rows at batch 16: 4 steps an epoch, not a multiple of 3 nor of 64.
    x = np.random.default_rng(0).random((70, 8)).astype(np.float32)
    model = stackae.AutoEncoder(3, seed=1)
    model.compile(steps_per_execution=steps_per_execution)
    ds, order = data.training_dataset(x, 16, seed=2)
    # shuffle=False: Keras would otherwise shuffle a PyDataset's elements with `random`.
    history = model.fit(ds, epochs=3, initial_epoch=1, callbacks=[order], shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2
    assert int(model.optimizer.iterations) == 2 * 4
    assert order.epoch == 2


# ---------------------------------------------------------------- labels, tf.data


def test_tf_epochs_are_the_stateless_shuffle_of_seed_and_epoch():
    # The order TensorFlow runs have always used: a resumed or repeated TF run is bit-identical.
    import tensorflow as tf

    out = epochs_of(X, 5, 7, [0, 3])
    for k, e in enumerate([0, 3]):
        rows = tf.random.experimental.stateless_shuffle(
            tf.range(23, dtype=tf.int64), seed=tf.constant([7, e], tf.int64)
        ).numpy()[:20]
        expected = np.sort(rows.reshape(4, 5), axis=1)
        assert rows_of(out[k * 4 : (k + 1) * 4], X) == expected.tolist()


@pytest.mark.parametrize("group", [1, 3])
def test_tf_labels_follow_their_rows(group):
    y = (np.arange(23) * 7) % 23  # distinct, not the row number
    ds, order = data.training_dataset(X, 4, seed=2, group=group, y=y)
    for e in range(2):
        order.on_epoch_begin(e)
        elements = take(ds)
        xs = [b for x, _ in elements for b in (x if group > 1 else [x])]
        ys = [b for _, yb in elements for b in (yb if group > 1 else [yb])]
        assert all(yb.dtype == np.int64 and yb.shape == (4,) for yb in ys)
        assert [list(y[rows]) for rows in rows_of(xs, X)] == [list(b) for b in ys]
        assert len(xs) == 5  # 23 // 4, the partial batch dropped
    unlabelled = epochs_of(X, 4, 2, [1])
    for a, b in zip(unlabelled, xs, strict=True):
        assert_array_equal(a, b)  # labels change nothing in the order of x

    out = take(data.batches(X, 10, y=y))
    assert_array_equal(np.concatenate([x for x, _ in out]), X)
    assert_array_equal(np.concatenate([yb for _, yb in out]), y)
    with pytest.raises(DataError, match="labels: expected shape .23,. for 23 rows"):
        data.training_dataset(X, 4, seed=2, y=y[:5])


def streamed(x, batch_size, seed, group, epochs, y=None):
    """The elements a repeated stream serves for `epochs`, read as Keras reads them."""
    ds, order = data.training_dataset(x, batch_size, seed=seed, group=group, y=y, repeat=True)
    order.on_epoch_begin(epochs.start)
    return ds.take(len(epochs) * order.elements), order


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data's repeated stream")
@pytest.mark.parametrize(
    "batch_size, group, held",
    [(5, 1, True), (5, 4, True), (5, 8, True), (2, 5, True), (5, 3, False)],
    ids=["one-batch-elements", "an-epoch-a-group", "fewer-than-a-group", "groups", "a-rest"],
)
def test_epochs_held_in_memory_are_the_streams_elements(batch_size, group, held):
    # 23 rows: 4 batches of 5 an epoch (groups of 1, 4 or 8: elements of one shape; of 3:
    # 3 + 1, streamed); 21 rows: 10 batches of 2, two groups of 5 an epoch.
    x, y = (X[:21], np.arange(21) % 4) if group == 5 else (X, np.arange(23) % 4)
    epochs = range(2, 5)
    ds, order = data.training_dataset(
        x, batch_size, seed=6, group=group, y=y, repeat=True, epochs=epochs
    )
    assert (order.served == epochs) is held and (order.served is None) is not held
    expected, _ = streamed(x, batch_size, 6, group, epochs, y=y)
    if not held:  # the stream itself, without end
        order.on_epoch_begin(epochs.start)
        ds = ds.take(len(epochs) * order.elements)
    got, want = take(ds), take(expected)
    assert len(got) == len(want) == len(epochs) * order.elements
    for (a, ya), (b, yb) in zip(got, want, strict=True):
        assert_array_equal(a, b)
        assert_array_equal(ya, yb)
        assert a.dtype == np.float32 and ya.dtype == np.int64
    if held:  # Keras's epochs, told to the order as a fit would: within the range, or refused
        order.on_epoch_begin(2)
        with pytest.raises(ValueError, match="holds epochs 2 to 4; the fit reached epoch 5"):
            order.on_epoch_begin(5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data's repeated stream")
def test_held_epochs_train_as_the_stream_does_and_refuse_another_start():
    x = np.random.default_rng(0).random((60, 8)).astype(np.float32)

    def fit(epochs, initial_epoch=0):
        model = stackae.AutoEncoder(3, seed=1)
        model.compile(jit_compile=False)
        model.build((None, 8))
        model.set_weights([np.full(w.shape, 0.1, np.float32) for w in model.get_weights()])
        ds, order = data.training_dataset(x, 16, seed=2, group=16, repeat=True, epochs=epochs)
        history = model.fit(
            ds,
            epochs=4,
            initial_epoch=initial_epoch,
            steps_per_epoch=order.elements,
            callbacks=[order],
            shuffle=False,
            verbose=0,
            group=16,
        )
        return history.history["loss"], model.get_weights(), order

    held_losses, held_weights, order = fit(range(0, 4))
    assert order.served == range(0, 4)
    stream_losses, stream_weights, order = fit(None)
    assert order.served is None
    assert held_losses == stream_losses
    for a, b in zip(held_weights, stream_weights, strict=True):
        assert_array_equal(a, b)
    with pytest.raises(ValueError, match="holds epochs 0 to 3; the fit reached epoch 1"):
        fit(range(0, 4), initial_epoch=1)


def test_batches_defaults_to_the_predict_batch():
    x = np.zeros((data.PREDICT_BATCH + 3, 2), np.float32)
    assert [len(b) for b in take(data.batches(x))] == [data.PREDICT_BATCH, 3]


# ---------------------------------------------------------------- PyDataset, JAX, no TensorFlow

JAX_CHECK = textwrap.dedent(
    """
    import sys

    sys.modules["tensorflow"] = None  # any import of TensorFlow fails
    import keras
    import numpy as np

    from stackae import data
    from stackae.data.pipeline import EpochBatches, RowBatches

    assert keras.backend.backend() == "jax"
    x = np.arange(23 * 3, dtype=np.float32).reshape(23, 3) / 100
    y = (np.arange(23) * 7) % 23
    lookup = {row.tobytes(): i for i, row in enumerate(x)}

    def rows(batch):
        return [lookup[r.tobytes()] for r in np.asarray(batch, np.float32)]

    def epochs(x, batch_size, seed, epochs, group=1, shuffle=True, y=None):
        ds, order = data.training_dataset(
            x, batch_size, seed=seed, group=group, shuffle=shuffle, y=y
        )
        assert isinstance(ds, EpochBatches) and isinstance(ds, keras.utils.PyDataset)
        out = []
        for e in epochs:
            order.on_epoch_begin(e)
            out.append([ds[i] for i in range(len(ds))])
        return out

    # Shapes, and each epoch a permutation of full batches drawn from (seed, epoch).
    full = epochs(x, 5, 9, range(4))
    for epoch in full:
        assert [b.shape for b in epoch] == [(5, 3)] * 4
        assert all(b.dtype == np.float32 for b in epoch)
        seen = sum((rows(b) for b in epoch), [])
        assert len(set(seen)) == 20 and all(rows(b) == sorted(rows(b)) for b in epoch)
    assert rows(full[0][0]) + rows(full[0][1]) != rows(full[1][0]) + rows(full[1][1])
    resumed = epochs(x, 5, 9, [2, 3])
    for a, b in zip(sum(full[2:], []), sum(resumed, []), strict=True):
        np.testing.assert_array_equal(a, b)
    assert rows(epochs(x, 5, 10, [0])[0][0]) != rows(full[0][0])
    ordered = epochs(x, 5, 0, [0, 1], shuffle=False)
    np.testing.assert_array_equal(np.concatenate(ordered[1]), x[:20])

    # Groups: the same batches, (group, batch, features), the last group shorter.
    single = epochs(x, 2, 5, range(2))
    grouped = epochs(x, 2, 5, range(2), group=4)
    for e in range(2):
        assert [g.shape for g in grouped[e]] == [(4, 2, 3), (4, 2, 3), (3, 2, 3)]
        flat = [b for g in grouped[e] for b in g]
        for a, b in zip(flat, single[e], strict=True):
            np.testing.assert_array_equal(a, b)

    # Labels: int64 (batch,) or (group, batch), the labels of x's rows.
    for group in (1, 3):
        for epoch in epochs(x, 4, 2, [0, 1], group=group, y=y):
            for xb, yb in epoch:
                assert yb.dtype == np.int64 and yb.shape == xb.shape[:-1]
                for xs, ys in zip(xb.reshape(-1, 4, 3), yb.reshape(-1, 4), strict=True):
                    assert list(y[rows(xs)]) == list(ys)

    # batches: in order, the last partial batch kept, labels alongside.
    out = data.batches(x, 5, y=y)
    assert isinstance(out, RowBatches) and len(out) == 5
    assert [len(out[i][0]) for i in range(5)] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([out[i][0] for i in range(5)]), x)
    np.testing.assert_array_equal(np.concatenate([out[i][1] for i in range(5)]), y)

    # A memmap streams through pread, and serves what the array in memory serves.
    np.save(sys.argv[1], x)
    mm = data.load(sys.argv[1], valid_size=0, test_size=0).train.x
    assert isinstance(mm, np.memmap)
    view = data.load(sys.argv[1], valid_size=3, scale="minmax").train.x
    assert isinstance(view, data.Rows)
    for streamed in (mm, view):
        ds, _ = data.training_dataset(streamed, 4, seed=1, group=2)
        assert ds.rows.file is not None
        assert data.batches(streamed, 3).rows.file is not None
        for a, b in zip(sum(epochs(streamed, 4, 1, [0, 1], group=2), []),
                        sum(epochs(np.array(streamed), 4, 1, [0, 1], group=2), []), strict=True):
            np.testing.assert_array_equal(a, b)

    # Keras's fit drives the epoch order through the callback, resumed at epoch 1.
    ds, order = data.training_dataset(x, 5, seed=3, y=y % 10)
    served, read = [], ds.rows
    ds.rows = lambda r: (served.append((order.epoch, r.tolist())), read(r))[1]
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(10)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # shuffle=False: Keras would otherwise shuffle a PyDataset's elements with `random`.
    history = model.fit(
        ds, epochs=3, initial_epoch=1, callbacks=[order], shuffle=False, verbose=0
    )
    assert len(history.history["loss"]) == 2 and order.epoch == 2
    for e in (1, 2):
        assert [r for epoch, r in served if epoch == e] == ds.epoch_rows(e).tolist()
    assert model.predict(data.batches(x, 5), verbose=0).shape == (23, 10)
    assert not [name for name in sys.modules if name.startswith("tensorflow.")]
    print("jax pipeline ok")
    """
)


def test_pydataset_under_jax_without_tensorflow(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run(
        [sys.executable, "-c", JAX_CHECK, str(tmp_path / "x.npy")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "jax pipeline ok" in result.stdout
