"""Choosing a strategy by name (tf.distribute or keras.distribution); who writes the run."""

import contextlib

import keras

from stackae import compat
from stackae.config import STRATEGIES

__all__ = ["STRATEGIES", "default_group", "get_strategy", "is_chief", "streams_epochs"]


class LocalDevices:
    """The strategy of one device under a backend without tf.distribute: nothing to set up."""

    num_replicas_in_sync = 1

    def scope(self):
        return contextlib.nullcontext()


def get_strategy(name="auto"):
    """The strategy for `name`; `with get_strategy(name).scope():` builds and trains under it.

    TensorFlow: auto is MirroredStrategy when more than one GPU is visible, else
    the default strategy; multi-worker is MultiWorkerMirroredStrategy from
    TF_CONFIG. JAX: auto is Keras's `keras.distribution.DataParallel` over the
    local devices when there are several, else nothing; the other names need
    tf.distribute and raise BackendError. PyTorch: auto is one device; the
    other names raise BackendError.
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: {name!r}")
    backend = compat.check_backend()
    if backend != "tensorflow":
        return _keras_distribution(name, backend)
    import tensorflow as tf

    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "gpu":
        if not tf.config.list_logical_devices("GPU"):
            from stackae.errors import BackendError

            raise BackendError("strategy 'gpu' was asked for but TensorFlow sees no GPU")
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def _keras_distribution(name, backend):
    from stackae.errors import BackendError

    if backend == "torch":
        if name != "auto":
            raise BackendError(
                f"strategy {name!r} is not available under KERAS_BACKEND=torch (one device); "
                "distribute with tf.distribute under tensorflow or keras.distribution under jax"
            )
        return LocalDevices()
    if name != "auto":
        raise BackendError(
            f"strategy {name!r} needs TensorFlow (tf.distribute); under KERAS_BACKEND={backend} "
            "use 'auto'"
        )
    devices = keras.distribution.list_devices()
    if len(devices) > 1:
        # Its scope() makes it Keras's current distribution (set_distribution).
        return keras.distribution.DataParallel(devices=devices)
    return LocalDevices()


def is_chief(strategy):
    """True where this process should write files: everywhere but non-chief workers."""
    extended = getattr(strategy, "extended", None)
    if extended is not None:  # tf.distribute: the chief, or worker 0 of a cluster without one
        return bool(extended.should_checkpoint)
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index() == 0
    return True


def streams_epochs():
    """Whether training reads one stream of epochs (`training_dataset(repeat=True)`): under
    TensorFlow outside any tf.distribute strategy, where it spares Keras an iterator per
    epoch. Under a strategy (which shards and distributes the dataset) each epoch keeps
    its own finite dataset, as elsewhere."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.distribute.has_strategy()


def default_group(single_device):
    """Batches per training step: `single_device` normally, 1 where the data is split
    over several replicas or devices, which split each element along its first axis
    (the group's, not the batch's)."""
    distribution = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if compat.replicas() > 1 or distribution is not None:
        return 1
    return single_device
