"""The error types stackae raises for expected failures; str() of each is one line."""


class StackaeError(Exception):
    """An expected failure: bad data, a bad run directory, a diverging cost.

    The message is folded onto one line, so a command line can print it as it is.
    """

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


class DataError(StackaeError, ValueError):
    """Bad or unreadable data, named with its file or source and the problem."""


class RunError(StackaeError):
    """A run directory (or a file in it) that cannot be used as asked."""


class CheckpointError(RunError):
    """A checkpoint that is missing, damaged, or does not fit the model it is loaded into."""


class TrainingDiverged(StackaeError, RuntimeError):
    """The cost became NaN or infinite; the message names layer, epoch and step."""


class BackendError(StackaeError):
    """A feature the current Keras backend does not have (tf.distribute under JAX, say)."""
