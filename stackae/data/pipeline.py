"""Batches for Keras's fit and predict: tf.data under TensorFlow, a keras.utils.PyDataset elsewhere.

The only module of stackae.data that imports a backend. TensorFlow is imported
only when it is Keras's backend, so under JAX this works without TensorFlow
installed. Both paths serve the same elements; the order of an epoch is drawn
from (seed, epoch) by each path's own generator, so a run keeps one backend's
order from start to resume.
"""

import itertools

import keras
import numpy as np

from stackae.callbacks import EpochOrder
from stackae.config import PREDICT_BATCH
from stackae.data.readers import RowReader
from stackae.data.rows import Rows
from stackae.data.validation import check_batch, steps_per_epoch
from stackae.errors import DataError


def training_dataset(
    x, batch_size, *, seed, shuffle=True, group=1, y=None, repeat=False, epochs=None
):
    """One epoch of float32 batches (batch_size, n_features), and its EpochOrder callback.

    Pass both to fit: `fit(ds, epochs=..., initial_epoch=..., callbacks=[order],
    shuffle=False)` (Keras would shuffle a PyDataset's elements itself, with `random`).
    Keras iterates the dataset afresh each epoch; epoch e is served in the
    permutation drawn from the seed (seed, e) alone, so a run resumed at epoch e
    sees the order an uninterrupted run saw. Each epoch is finite (not one long
    stream cut by steps_per_epoch) because Keras runs `steps_per_execution` steps
    per call and would otherwise eat into the next epoch. Rows within a batch are
    in file order; the last partial batch of each epoch is dropped, as the
    tutorial's n // batch_size batches.

    `group` > 1 serves the same batches `group` at a time, as elements of shape
    (group, batch_size, n_features) (the last one of an epoch may hold fewer):
    pass the same `group` to `AutoEncoder.fit` / `Finetuner.fit`, which then
    make one update per batch of a group inside one call, removing the per-step
    cost of the Keras loop. The dataset does not carry the group: fit's argument
    is the one place that says how to read an element.

    With labels `y` (n,), each element is (x, y), y int64 of shape (batch_size,)
    or (group, batch_size), the labels of x's rows.

    `repeat=True` (TensorFlow only; elsewhere the same as False): one stream of
    epoch after epoch, from the epoch at which iteration starts, with the same
    elements each epoch as without it; pass `steps_per_epoch=order.elements` to
    fit, which then keeps one iterator for the whole fit instead of making one
    per epoch (about 10-30 ms each on two CPU cores: most of a small table's
    epoch). Needs steps per call that divide the epoch, as stackae's models choose.
    `epochs`: with `repeat`, the range of epochs the fit reads
    (`range(initial_epoch, epochs)`), when known. Rows in memory whose epochs are
    elements of one shape (`group` 1, or an epoch of at most `group` batches, or a
    multiple of it) and take at most 16 MB in all are then gathered once, up front,
    and served from memory: the same elements, without a pipeline of traced functions,
    which takes 50-100 ms to start (most of a small table's fit: benchmarks/README.md);
    a fit starting at another epoch is refused (`EpochOrder`).

    Under the TensorFlow backend this is a `tf.data.Dataset`; under any other, a
    `keras.utils.PyDataset` that reads a memmap row by row (pread) as tf.data does.
    The two draw their permutations differently.

    An in-memory array of images (n, height, width[, channels]) is served the
    same way, each batch keeping the examples' shape.
    """
    _check_rows(x, "training data")
    _check_size("batch_size", batch_size)
    _check_size("group", group)
    y = _check_y(y, len(x))
    check_batch(len(x), batch_size, "training data")
    order = EpochOrder()
    order.elements = -(-steps_per_epoch(len(x), batch_size) // group)
    if keras.backend.backend() == "tensorflow":
        held = _tf_held_epochs(x, y, batch_size, seed, shuffle, group, epochs) if repeat else None
        if held is not None:
            order.served = epochs
            return held, order
        return _tf_training(x, y, batch_size, seed, shuffle, group, order, repeat), order
    return EpochBatches(x, y, batch_size, seed=seed, shuffle=shuffle, group=group, order=order), (
        order
    )


def batches(x, batch_size=PREDICT_BATCH, y=None):
    """Float32 batches of x in order, the last partial batch kept (predict, encode, evaluate).

    With labels `y`, elements are (x, y) with y int64 (batch,). A `tf.data.Dataset`
    under TensorFlow, a `keras.utils.PyDataset` under other backends.
    """
    _check_rows(x, "data")
    _check_size("batch_size", batch_size)
    y = _check_y(y, len(x))
    if keras.backend.backend() == "tensorflow":
        return _tf_batches(x, y, batch_size)
    return RowBatches(x, y, batch_size)


def _check_rows(x, what):
    # Files (memmaps, Rows views) are read row by row; arrays in memory may hold images.
    in_memory = not isinstance(x, np.memmap | Rows)
    if np.ndim(x) != 2 and not (in_memory and np.ndim(x) > 2):
        raise DataError(f"{what} must be 2-d (rows, features), found shape {np.shape(x)}")


def _check_size(name, value):
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1. Received: {name}={value}")


def _check_y(y, n_rows):
    """Class labels as int64 (n_rows,), or float targets as float32 (n_rows,) / (n_rows, k)."""
    if y is None:
        return None
    y = np.asarray(y)
    if y.dtype.kind == "f" and y.ndim in (1, 2) and len(y) == n_rows:
        return y.astype(np.float32, copy=False)
    if y.ndim != 1 or len(y) != n_rows:
        raise DataError(f"labels: expected shape ({n_rows},) for {n_rows} rows, found {y.shape}")
    if y.dtype.kind not in "iub":
        raise DataError(f"labels must be integers, found dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


# ---------------------------------------------------------------- keras.utils.PyDataset


class _Rows:
    """Rows of x by index as float32: pread for a file-backed memmap, a `Rows` view's own
    reads and conversion, indexing otherwise."""

    def __init__(self, x):
        self.example_shape = tuple(int(d) for d in x.shape[1:])
        self.file = x if isinstance(x, Rows) else RowReader.of(x)
        if self.file is None and not isinstance(x, np.memmap):
            x = np.asarray(x, dtype=np.float32)  # once, not per batch
        self.x = x

    def __call__(self, rows):
        """Rows at int indices of any shape (...,) -> float32 (..., *example_shape)."""
        flat = rows.reshape(-1)
        if self.file is not None:
            out = self.file.take(flat)
        else:
            out = self.x[flat]
        return np.asarray(out, dtype=np.float32).reshape(*rows.shape, *self.example_shape)


class EpochBatches(keras.utils.PyDataset):
    """The elements of `training_dataset` for backends other than TensorFlow."""

    def __init__(self, x, y, batch_size, *, seed, shuffle, group, order, **kwargs):
        super().__init__(**kwargs)
        self.rows, self.y = _Rows(x), y
        self.n, self.batch_size, self.group = len(x), batch_size, group
        self.steps = steps_per_epoch(len(x), batch_size)
        self.seed, self.shuffle, self.order = int(seed), shuffle, order
        self._epoch = (None, None)  # (epoch, its (steps, batch_size) row indices)

    def __len__(self):
        return -(-self.steps // self.group)

    def epoch_rows(self, epoch):
        """Row indices (steps, batch_size) of an epoch's batches, sorted within each batch."""
        rows = np.arange(self.n)
        if self.shuffle:
            # Any int seed (negative too) and the epoch seed one stateless generator.
            rows = np.random.default_rng([self.seed % 2**64, epoch]).permutation(self.n)
        rows = rows[: self.steps * self.batch_size].reshape(self.steps, self.batch_size)
        # Sorted within a batch: the batch is the same set, and a memmap reads it in order.
        return np.sort(rows, axis=1)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"element {index} of an epoch of {len(self)}")
        epoch, rows = self._epoch
        if epoch != self.order.epoch:
            epoch = self.order.epoch
            rows = self.epoch_rows(epoch)
            self._epoch = (epoch, rows)
        if self.group == 1:
            rows = rows[index]  # (batch_size,)
        else:
            rows = rows[index * self.group : (index + 1) * self.group]  # (group, batch_size)
        x = self.rows(rows)
        return x if self.y is None else (x, self.y[rows])


class RowBatches(keras.utils.PyDataset):
    """The elements of `batches` for backends other than TensorFlow."""

    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.rows, self.y = _Rows(x), y
        self.n, self.batch_size = len(x), batch_size

    def __len__(self):
        return -(-self.n // self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        start = index * self.batch_size
        rows = np.arange(start, min(start + self.batch_size, self.n))
        x = self.rows(rows)
        return x if self.y is None else (x, self.y[rows])


# ---------------------------------------------------------------- tf.data


def _epoch_rows(n, batch_size, seed, shuffle):
    """The function of an epoch number (int64 tensor) giving its batches' row indices
    (steps, batch_size), drawn from (seed, epoch); in a graph or eagerly, the same rows."""
    import tensorflow as tf

    steps = steps_per_epoch(n, batch_size)
    seed = tf.constant(int(seed), tf.int64)

    def epoch_rows(epoch):
        rows = tf.range(n, dtype=tf.int64)
        if shuffle:
            rows = tf.random.experimental.stateless_shuffle(rows, seed=tf.stack([seed, epoch]))
        # Sorted within a batch: the batch is the same set, and a memmap reads it in order.
        return tf.sort(tf.reshape(rows[: steps * batch_size], [steps, batch_size]), axis=1)

    return epoch_rows


# Epochs gathered up front (`training_dataset(epochs=...)`) take at most this many bytes.
HELD_EPOCHS_LIMIT = 16 << 20


def _tf_held_epochs(x, y, batch_size, seed, shuffle, group, epochs):
    """The elements of `epochs` (a range), gathered now from rows in memory, as a dataset
    without functions; None where they are not all of one shape, too large, or on file."""
    import tensorflow as tf

    steps = steps_per_epoch(len(x), batch_size)
    one_shape = group == 1 or steps <= group or steps % group == 0
    if epochs is None or not len(epochs) or isinstance(x, np.memmap | Rows) or not one_shape:
        return None
    example = int(np.prod(x.shape[1:])) + (0 if y is None else int(np.prod(y.shape[1:])))
    if len(epochs) * steps * batch_size * example * 4 > HELD_EPOCHS_LIMIT:
        return None
    epoch_rows = _epoch_rows(len(x), batch_size, seed, shuffle)
    rows = tf.stack([epoch_rows(tf.constant(e, tf.int64)) for e in epochs])
    if group == 1 or steps > group:  # an epoch is steps / group elements of group batches
        rows = tf.reshape(rows, [-1, group, batch_size] if group > 1 else [-1, batch_size])
    # The stream's own gathering, run once now on every epoch's rows.
    gather = _with_labels(_grouped(_row_getter(x), tuple(x.shape[1:])), y)
    return tf.data.Dataset.from_tensor_slices(gather(rows))


def _tf_training(x, y, batch_size, seed, shuffle, group, order, repeat=False):
    import tensorflow as tf

    steps = steps_per_epoch(len(x), batch_size)
    epoch_rows = _epoch_rows(len(x), batch_size, seed, shuffle)

    def epoch_batches(epoch):
        rows = epoch_rows(epoch)
        if group == 1:
            return tf.data.Dataset.from_tensor_slices(rows)
        full = steps // group * group
        groups = tf.data.Dataset.from_tensor_slices(
            tf.reshape(rows[:full], [-1, group, batch_size])
        )
        if full < steps:
            groups = groups.concatenate(tf.data.Dataset.from_tensors(rows[full:]))
        return groups

    # The epoch number is read from the callback each time Keras starts iterating; a
    # repeated stream counts on from there.
    epochs = (lambda: itertools.count(order.epoch)) if repeat else (lambda: iter([order.epoch]))
    epoch = tf.data.Dataset.from_generator(epochs, output_signature=tf.TensorSpec((), tf.int64))
    ds = epoch.flat_map(epoch_batches)
    if not repeat:
        ds = ds.apply(tf.data.experimental.assert_cardinality(order.elements))
    ds = ds.map(
        _with_labels(_grouped(_row_getter(x), tuple(x.shape[1:])), y),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return _with_options(ds)


def _tf_batches(x, y, batch_size):
    import tensorflow as tf

    n = len(x)
    gather = _with_labels(_row_getter(x), y)

    def rows(start):
        return gather(tf.range(start, tf.minimum(start + batch_size, n)))

    ds = tf.data.Dataset.range(0, n, batch_size)
    ds = ds.map(rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _with_options(ds)


def _with_options(ds):
    import tensorflow as tf

    options = tf.data.Options()
    # In-memory data has no files to shard by; tf.distribute shards by element.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _row_getter(x):
    """A graph function mapping int64 row indices (sorted) to float32 rows."""
    import tensorflow as tf

    n_features = int(x.shape[1])
    reader = RowReader.of(x) if isinstance(x, np.memmap) else None
    if isinstance(x, Rows):
        # Read and converted (uint8 / 255, a scaler) batch by batch.
        def read(rows):
            return x.take(rows)
    elif reader is None and isinstance(x, np.memmap):
        # A memmap we cannot pread (a view with strides): read via the mapping.
        def read(rows):
            return np.asarray(x[rows], dtype=np.float32)
    elif reader is not None:

        def read(rows):
            return reader.take(rows).astype(np.float32, copy=False)
    else:
        # A float32 tensor is used as it is; an array is copied into one, once.
        table = x if tf.is_tensor(x) else tf.convert_to_tensor(np.asarray(x, dtype=np.float32))

        def gather(rows):
            return tf.gather(table, rows)

        return gather

    def gather_file(rows):
        out = tf.numpy_function(read, [rows], tf.float32, stateful=False)
        out.set_shape([rows.shape[0], n_features])
        return out

    return gather_file


def _grouped(gather, example_shape):
    """`gather` for index arrays of any shape: rows (..., batch) -> (..., batch, *example_shape)."""
    import tensorflow as tf

    def gather_any(rows):
        flat = gather(tf.reshape(rows, [-1]))
        out = tf.reshape(flat, tf.concat([tf.shape(rows), list(example_shape)], 0))
        out.set_shape(rows.shape.concatenate(list(example_shape)))
        return out

    return gather_any


def _with_labels(gather, y):
    """`gather`, or (gather, the labels of the same rows) when there are labels."""
    if y is None:
        return gather
    import tensorflow as tf

    table = tf.constant(y)

    def gather_both(rows):
        return gather(rows), tf.gather(table, rows)

    return gather_both
