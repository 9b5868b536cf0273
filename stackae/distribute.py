"""Choosing a tf.distribute strategy by name, and who writes the run directory."""

import tensorflow as tf

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multi-worker")


def get_strategy(name="auto"):
    """The tf.distribute strategy for `name`.

    auto: MirroredStrategy when more than one GPU is visible, else the default
    strategy. multi-worker: MultiWorkerMirroredStrategy from TF_CONFIG.
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: {name!r}")
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "gpu":
        if not tf.config.list_logical_devices("GPU"):
            raise ValueError("strategy 'gpu' was asked for but TensorFlow sees no GPU")
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy):
    """True where this process should write files: everywhere but non-chief workers."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    )


def default_steps_per_execution(single_device):
    """Steps per call: `single_device` normally, 1 under a multi-replica strategy.

    Keras 3.15's multi-step loop fails under MirroredStrategy and
    MultiWorkerMirroredStrategy ("You must feed a value for placeholder tensor"),
    measured here with 2 logical CPUs and in NOTES.md.
    """
    return 1 if _replicas() > 1 else single_device


def default_group(single_device):
    """Batches per training step: `single_device` normally, 1 under a
    multi-replica strategy, which splits each element along its first axis
    (the group's, not the batch's)."""
    return 1 if _replicas() > 1 else single_device


def _replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync if tf.distribute.has_strategy() else 1


def default_jit_compile():
    """XLA, except for several replicas on CPUs, where XLA reads a replica's
    variables from the wrong device ("Trying to access resource ... located in
    device CPU:1 from device CPU:0", measured here with 2 logical CPUs)."""
    return not (_replicas() > 1 and not tf.config.list_logical_devices("GPU"))
