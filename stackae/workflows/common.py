"""What every job shares: opening a run and its stack, refusals before a job starts, and the
examples a run's stack reads."""

import shlex

import numpy as np

from stackae import runs
from stackae.errors import BackendError, OptionConflict, Param, ParameterError, RunError
from stackae.runs import Run


def open_run(path, write=False):
    """An existing run, checked; with `write`, locked before its manifest is read."""
    return Run.open(path, write=write)


def load_stack(run):
    """The run's Stack, checked against its manifest (RunError, one line)."""
    from stackae.stack import Stack

    stack = run.load_model(runs.STACK)
    if not isinstance(stack, Stack):
        raise RunError(f"{run.file(runs.STACK)}: not a stackae stack")
    if list(stack.specs) != list(run.specs):
        raise RunError(
            f"{run.file(runs.STACK)}: its layer settings differ from the manifest's "
            "(was the manifest edited?)"
        )
    return stack


def stop_hint(verb, path):
    """What is true of the run at `path` now that `verb` was stopped: a command, or None."""
    try:
        run = Run.open(path, verify=False)
    except RunError:
        return None
    quoted = shlex.quote(str(path))
    if verb == "pretrain" and run.status == "pretraining":
        return f"stackae pretrain --resume --out {quoted}"
    record = run.finetune
    if verb == "finetune" and record is not None and not record.finished:
        return f"stackae finetune {quoted} --resume"
    return None


def check_backend_matches(recorded, what):
    """BackendError (one line) unless this is the backend `what` was `recorded` under."""
    import keras

    current = keras.backend.backend()
    if recorded != current:
        raise BackendError(
            f"{what} was made under {recorded} and this is {current}: another backend draws "
            f"other batches and noise, so the result would differ; resume it with "
            f"KERAS_BACKEND={recorded}"
        )


def refuse_conflicts(found, what):
    """OptionConflict (one line) listing the options `found` to differ from the recorded `what`."""
    if found:
        raise OptionConflict(
            Param("resume"),
            f"continues the recorded {what}; these options differ from it: " + "; ".join(found),
        )


def check_optimizer(spec):
    """ParameterError (a usage error) for an optimizer name Keras does not know."""
    spec.make_optimizer()


def check_layer(layer, n_layers):
    """ParameterError (one line) unless `layer` is one of the run's layers, 1 to `n_layers`."""
    if not 1 <= layer <= n_layers:
        raise ParameterError(
            f"`layer` must be between 1 and {n_layers}. Received: layer={layer}", param="layer"
        )


def as_input(x, shape):
    """Rows `x` as examples of `shape` (a view: images keep their pixels' order)."""
    if len(shape) == 1:
        return x
    if not isinstance(x, np.ndarray):  # rows converted as they are read: in memory here
        x = np.asarray(x[:])
    elif isinstance(x, np.memmap):  # images are read in memory (pages of the file, no copy)
        x = np.asarray(x)
    return x.reshape(len(x), *shape)
