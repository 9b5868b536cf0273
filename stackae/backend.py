"""Starting Keras and its backend for a job: quietly, once, with one line when it cannot start."""

import contextlib
import importlib.util
import os
import sys

from stackae.errors import BackendError, first_line


@contextlib.contextmanager
def quiet_stderr(enabled=True):
    """Silence fd 2 while a backend starts: TensorFlow's C++ start-up lines bypass Python."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def start(verbose=False, strategy=None):
    """Import Keras and its backend (quietly unless `verbose`); BackendError (one line) if not.

    With `strategy` (a name from stackae.config.STRATEGIES), returns the
    distribution strategy, made before the backend's devices start:
    TensorFlow's MultiWorkerMirroredStrategy must configure TensorFlow first.
    Under a backend other than TensorFlow an
    installed TensorFlow is imported too, quietly: Keras's data adapters import
    it during `fit` on any backend, and its start-up lines would reach the
    terminal then.
    """
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = None
    with quiet_stderr(not verbose):
        try:
            import keras
        except (ImportError, ValueError) as err:  # KERAS_BACKEND unknown or not installed
            raise BackendError(f"Keras could not start: {first_line(err)}") from None
        from stackae.compat import check_backend

        check_backend()  # one line under a backend stackae does not train on
        from stackae.distribute import get_strategy

        chosen = get_strategy(strategy) if strategy else None
        name = keras.backend.backend()
        if name == "tensorflow" or importlib.util.find_spec("tensorflow") is not None:
            import tensorflow as tf

            if name == "tensorflow":
                tf.config.list_logical_devices()  # device start-up logs, silenced here too
    if tf is not None and not verbose:
        tf.get_logger().setLevel("ERROR")
    return chosen
