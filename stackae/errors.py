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


class BadOption(StackaeError, ValueError):
    """An option that cannot be used as given (a usage error: the command line exits 2)."""


class OptionConflict(BadOption):
    """Options given to resume a run that contradict what the run recorded."""


class TrainingDiverged(StackaeError, RuntimeError):
    """The cost became NaN or infinite; the message names layer, epoch and step."""


class BackendError(StackaeError):
    """A feature the current Keras backend does not have (tf.distribute under JAX, say)."""


def first_line(err):
    """The first line of an exception's message (whole: never cut mid-sentence)."""
    text = str(err).strip().splitlines()
    return text[0].strip() if text else type(err).__name__
