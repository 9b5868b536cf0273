"""Workarounds for the Keras version stackae is tested with, each with why it exists.

Every function here stands for a behaviour of Keras 3.15 (with TensorFlow 2.21,
JAX 0.10 or PyTorch 2.13) that stackae works around. tests/test_backends.py fails when the
installed Keras leaves TESTED_KERAS, so that someone re-checks each premise
and deletes what a newer Keras made unnecessary.
"""

import math

import keras

# Keras versions whose behaviour the workarounds below were measured on: [low, high).
TESTED_KERAS = ((3, 15), (3, 16))
BACKENDS = ("tensorflow", "jax", "torch")


def keras_version():
    return tuple(int(part) for part in keras.__version__.split(".")[:2])


def check_backend():
    """Raise BackendError (one line) under a Keras backend stackae cannot train on."""
    from stackae.errors import BackendError

    backend = keras.backend.backend()
    if backend not in BACKENDS:
        raise BackendError(
            f"stackae trains under KERAS_BACKEND=tensorflow, jax or torch; {backend!r} is not "
            "supported yet"
        )
    return backend


def replicas():
    """Replicas of the current tf.distribute strategy; 1 outside one and under other backends."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync if tf.distribute.has_strategy() else 1


def steps_per_execution(single_device):
    """`single_device` steps per call, 1 under a multi-replica tf.distribute strategy or torch.

    Why: Keras 3.15's multi-step loop fails under MirroredStrategy and
    MultiWorkerMirroredStrategy ("You must feed a value for placeholder tensor"),
    and its torch trainer has none ("`steps_per_execution` must be 1 with the
    PyTorch backend").
    """
    if keras.backend.backend() == "torch":
        return 1
    return 1 if replicas() > 1 else single_device


def jit_compile(model=None):
    """XLA, except for several tf.distribute replicas on CPUs, or for a `model` holding a
    convolution on CPUs; eager under torch.

    Why: with several replicas XLA reads a replica's variables from the wrong
    device ("Trying to access resource ... located in device CPU:1 from device
    CPU:0"). XLA's CPU convolutions made a tied conv layer's pretraining epoch
    2-8x slower than the same program without XLA, and stackae's own epoch 7-8x
    (benchmarks/README.md, conv_speed.py). Under torch, Keras's jit_compile is
    `torch.compile`, which made the grouped step no faster on CPU and breaks its
    graph at each update's noise seed (benchmarks/README.md, backends.py).
    """
    if keras.backend.backend() == "torch":
        return False
    if replicas() == 1 and (model is None or not has_convolution(model)):
        return True
    return _has_gpu()


def _has_gpu():
    try:
        return bool(keras.distribution.list_devices("gpu"))
    except (RuntimeError, ValueError):  # JAX: no GPU backend
        return False


def has_convolution(layer):
    """Whether `layer` (a model: its layers, nested models included) holds a convolution."""
    from stackae.conv_layer import TiedConv2DAutoEncoderLayer

    kinds = (
        keras.layers.Conv1D,
        keras.layers.Conv2D,
        keras.layers.Conv3D,
        keras.layers.Conv1DTranspose,
        keras.layers.Conv2DTranspose,
        keras.layers.Conv3DTranspose,
        keras.layers.DepthwiseConv2D,
        keras.layers.SeparableConv2D,
        TiedConv2DAutoEncoderLayer,
    )
    if isinstance(layer, kinds):
        return True
    return any(has_convolution(sub) for sub in getattr(layer, "layers", ()) if sub is not layer)


def replica_part():
    """(this replica, replicas) under tf.distribute: which slice of the global batch a step sees."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    replica = 0 if context is None else context.replica_id_in_sync_group
    return replica, tf.distribute.get_strategy().num_replicas_in_sync


def compile_defaults(single_device_steps, model=None, **given):
    """`compile` keyword arguments with stackae's defaults for those not `given` (or None).

    SGD(0.1) (the tutorial's), XLA, and `single_device_steps` steps per call,
    except where the active tf.distribute strategy or `model`'s convolutions on
    a CPU cannot take them (`jit_compile(model)`, `steps_per_execution()`).
    """
    defaults = {
        "optimizer": lambda: keras.optimizers.SGD(learning_rate=0.1),
        "jit_compile": lambda: jit_compile(model),
        "steps_per_execution": lambda: steps_per_execution(single_device_steps),
    }
    chosen = {name: value for name, value in given.items() if value is not None}
    return {**{name: make() for name, make in defaults.items() if name not in chosen}, **chosen}


def steps_per_call(requested, steps_per_epoch):
    """The divisor of `steps_per_epoch` nearest `requested` (`requested` when the epoch is unknown).

    Why: Keras 3.15 runs whole calls of steps_per_execution steps. When that
    does not divide the steps of an epoch, each epoch runs extra steps on the
    next epoch's batches (with steps_per_epoch), or the progress bar counts
    past its total (`64/25` with a finite dataset of 25 elements).
    """
    if not steps_per_epoch or requested <= 1:
        return requested
    return min(_divisors(int(steps_per_epoch)), key=lambda d: abs(math.log(d / requested)))


def epoch_steps(x, batch_size=None, steps_per_epoch=None):
    """Steps in one epoch of fit's `x` where that is known without iterating: else None."""
    if steps_per_epoch:
        return int(steps_per_epoch)
    if isinstance(x, keras.utils.PyDataset):
        try:
            return len(x)
        except TypeError:  # a PyDataset may have no length (num_batches None)
            return None
    if hasattr(x, "cardinality") and keras.backend.backend() == "tensorflow":
        count = int(x.cardinality())
        return count if count > 0 else None  # INFINITE (-1) and UNKNOWN (-2)
    if hasattr(x, "shape") and len(x.shape) and x.shape[0]:
        return -(-int(x.shape[0]) // (batch_size or 32))  # arrays: Keras's default batch is 32
    return None


def fit_steps_per_call(model, x, batch_size=None, steps_per_epoch=None):
    """Set `model.steps_per_execution` for a fit on `x` (see `steps_per_call`).

    The number asked for at compile time is kept in `_requested_steps_per_execution`
    (stackae's models set it in `compile`); the train function is traced again
    when the number changes.
    """
    requested = getattr(model, "_requested_steps_per_execution", model.steps_per_execution)
    chosen = steps_per_call(requested, epoch_steps(x, batch_size, steps_per_epoch))
    if chosen != model.steps_per_execution:
        model.steps_per_execution = chosen
        model.train_function = None  # traced with the old number of steps


def mean(x, axis=None):
    """`keras.ops.mean` that keeps float64 as float64 under every backend.

    Why: Keras 3.15's JAX and torch `ops.mean` sum in `result_type(dtype,
    "float32")`, which is float32 for float64 input: a float64 cost came out
    with float32's 7 digits.
    """
    if keras.backend.backend() == "tensorflow":
        return keras.ops.mean(x, axis=axis)
    x = keras.ops.convert_to_tensor(x)
    count = math.prod(x.shape) if axis is None else x.shape[axis]  # static under JAX and torch
    return keras.ops.sum(x, axis=axis) / keras.ops.cast(count, x.dtype)


def matmul(a, b):
    """`keras.ops.matmul` that keeps float64 as float64 under every backend.

    Why: Keras 3.15's torch `matmul` computes in `result_type(a, b)`, which
    maps 64-bit dtypes to 32-bit ones: a float64 layer multiplied in float32.
    """
    if keras.backend.backend() == "torch":
        import torch

        a, b = keras.ops.convert_to_tensor(a), keras.ops.convert_to_tensor(b)
        if a.dtype == b.dtype == torch.float64:
            return torch.matmul(a, b)
    return keras.ops.matmul(a, b)


def mean_result(metric):
    """`metric.result()` of a `keras.metrics.Mean`, in the metric's dtype under every backend.

    Why: Keras 3.15's torch `divide_no_nan` computes in
    `result_type(dtype, dtype, float)`, float32 for float64: a float64 cost
    came out of its Mean with float32's 7 digits.
    """
    if keras.backend.backend() != "torch":
        return metric.result()
    count = keras.ops.convert_to_tensor(metric.count)
    safe = keras.ops.where(count == 0, keras.ops.ones_like(count), count)
    return keras.ops.where(count == 0, keras.ops.zeros_like(count), metric.total / safe)


def per_replica_logs(logs):
    """Logs a custom train_step can return under the current tf.distribute strategy.

    Why: under MultiWorkerMirroredStrategy Keras 3.15 reduces logs over workers
    along axis 0, which a scalar lacks ("Invalid reduction dimension 0 for input
    with 0 dimensions"); shape-[1] values go through.
    """
    if keras.backend.backend() != "tensorflow":
        return logs
    import tensorflow as tf

    if not isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return logs
    return {name: keras.ops.reshape(value, (1,)) for name, value in logs.items()}


def compile_from_config(model, config):
    """What `Model.compile_from_config` does, for a model with its own compile().

    Why: Keras 3.15 skips compiling (with a warning) when compile() is
    overridden, so a loaded model would come back without its optimizer state.
    """
    model.compile(**keras.saving.deserialize_keras_object(config))
    if model.built:
        model.optimizer.build(model.trainable_variables)


def _divisors(n):
    """The divisors of n >= 1, ascending."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))
