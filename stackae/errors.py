"""The error types stackae raises for expected failures; str() of each is one line."""


class Param:
    """A caller's parameter named in an error message, e.g. as the remedy.

    The library spells it as a keyword (`overwrite=True`), or with `job` as the
    call that does it (`pretrain_job('runs/a', resume=True)`); a front end
    spells it its own way (`StackaeError.spelled`): the command line as an
    option (`--overwrite`) or a command.
    """

    def __init__(self, name, value=True, *, job=None, run=None):
        self.name, self.value, self.job, self.run = name, value, job, run

    def __str__(self):
        # value None: the parameter itself is named, not a value to give it
        keyword = self.name if self.value is None else f"{self.name}={self.value!r}"
        if self.job is None:
            return keyword
        return f"{self.job}_job({str(self.run)!r}, {keyword})"


class StackaeError(Exception):
    """An expected failure: bad data, a bad run directory, a diverging cost.

    The message is folded onto one line, so a command line can print it as it is.
    It is made of text and `Param`s, joined by spaces.
    """

    def __init__(self, *parts):
        self.parts = parts
        super().__init__(self.spelled(str))

    def spelled(self, spell):
        """The message with each Param as `spell(param)` writes it (str: the library's)."""
        text = " ".join(
            spell(part) if isinstance(part, Param) else str(part) for part in self.parts
        )
        return " ".join(text.split())


class DataError(StackaeError, ValueError):
    """Bad or unreadable data, named with its file or source and the problem."""


class RunError(StackaeError):
    """A run directory (or a file in it) that cannot be used as asked."""


class CheckpointError(RunError):
    """A checkpoint that is missing, damaged, or does not fit the model it is loaded into."""


class BadOption(StackaeError, ValueError):
    """An option that cannot be used as given (a usage error: the command line exits 2)."""


class ParameterError(BadOption):
    """A parameter whose value cannot be used; `param` names it as the library does.

    `param` is a spec field or a job's keyword (`learning_rate`, `layer`), or
    None where no one parameter is to blame (two that do not go together). A
    front end blames its own name for it: the command line, the option
    (`--lr`); the scikit-learn estimators, their parameter.
    """

    def __init__(self, *parts, param=None):
        super().__init__(*parts)
        self.param = param


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
