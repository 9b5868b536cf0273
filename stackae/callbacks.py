"""Keras callbacks that tie training to a run: checkpoints, divergence guard, banners, pictures."""

import math
import time

import keras
import numpy as np

from stackae import stopping
from stackae.errors import TrainingDiverged
from stackae.files import check_space, load_weights


def _updates(model):
    # .value: under MultiWorkerMirroredStrategy a MirroredVariable, which int() refuses;
    # its value converts with .numpy() there, a JAX array with numpy.asarray.
    value = model.optimizer.iterations.value
    return int(value.numpy() if hasattr(value, "numpy") else np.asarray(value))


def restore_checkpoint(model, path):
    """Weights and optimizer state from `path` (a checkpoint this run wrote)."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    load_weights(model, path)


def checkpoint_bytes(model):
    """About what a weights-and-optimizer checkpoint of `model` takes on disk."""
    variables = [*model.weights, *(model.optimizer.variables if model.optimizer else [])]
    data = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
    return data + 4096 * len(variables) + (1 << 16)  # HDF5's headers per dataset, and slack


class StopOnRequest(keras.callbacks.Callback):
    """Raises StopRequested between batches once Ctrl-C or SIGTERM asked for a stop.

    Raised from `on_train_batch_end`, before the epoch's end: an epoch cut short
    is never recorded, so the run resumes from its last whole epoch.
    """

    def on_train_begin(self, logs=None):
        stopping.check()

    def on_epoch_begin(self, epoch, logs=None):
        stopping.check()

    def on_train_batch_end(self, batch, logs=None):
        stopping.check()


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training with TrainingDiverged when a logged cost is NaN or infinite."""

    def __init__(self, where):
        super().__init__()
        self.where = where  # "layer 2" or "fine-tuning": names the phase in the message

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.first_update = _updates(self.model)

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            # A Keras "batch" here may be a group of batches: count the updates.
            step = _updates(self.model) - self.first_update
            raise TrainingDiverged(
                f"{self.where}, epoch {self.epoch + 1}: the cost became {float(loss)} "
                f"by step {step}; lower the learning rate. The last good checkpoint is kept."
            )

    def on_epoch_end(self, epoch, logs=None):
        bad = {k: float(v) for k, v in (logs or {}).items() if not math.isfinite(float(v))}
        if bad:
            raise TrainingDiverged(
                f"{self.where}, epoch {epoch + 1}: {bad}; lower the learning rate. "
                "The last good checkpoint is kept."
            )


class BudgetCheckpoint(keras.callbacks.Callback):
    """Checkpoints a training on a time budget; restores the checkpoint first when resuming.

    Like `keras.callbacks.BackupAndRestore` (which saves by epoch or by steps):
    `on_train_begin` loads the checkpoint given as `restore` (weights and
    optimizer state; the caller passes the matching `initial_epoch` to fit).
    A checkpoint is written after each of the first two epochs (the second
    write's time, without the first one's start-up costs, sets the budget),
    after the last one (or the one that stops training, or once Ctrl-C or
    SIGTERM asked for a stop), and in between once the time since the last
    one is at least `ratio` times what writing the last one took, or `every`
    seconds, whichever comes first: epochs of milliseconds (a small table's)
    no longer pay a checkpoint each (the writes stay about 1/`ratio` of the
    run's time), long epochs still get one each. The run records the
    checkpoint's epoch count and the history up to it, so a resume restarts
    after the last checkpointed epoch and re-runs, exactly, the epochs after it.

    Subclasses write with `write(epoch, logs, seconds, earlier)`: `earlier` holds
    the logs of the epochs run since the last checkpoint, `seconds` counts them too.
    """

    EVERY, RATIO = 10.0, 10.0  # the defaults of `every` and `ratio`

    def __init__(self, run, restore=None, every=None, ratio=None):
        super().__init__()
        self.run = run
        self.restore = restore
        self.every = self.EVERY if every is None else every
        self.ratio = self.RATIO if ratio is None else ratio

    def on_train_begin(self, logs=None):
        if self.restore is not None:
            restore_checkpoint(self.model, self.restore)
        self.pending = []  # (logs, seconds) of epochs run since the last checkpoint
        self.written, self.write_seconds = 0, None  # checkpoints so far, the last one's time
        self.since = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def _due(self, epoch):
        if self.written < 2 or self.model.stop_training or stopping.requested():
            return True  # a stop asked for now keeps the epochs run so far
        if epoch + 1 >= (self.params or {}).get("epochs", epoch + 1):
            return True
        waited = time.perf_counter() - self.since
        return waited >= min(self.every, self.ratio * self.write_seconds)

    def on_epoch_end(self, epoch, logs=None):
        self.pending.append((dict(logs or {}), time.perf_counter() - self.started))
        if not self._due(epoch):
            return
        started = time.perf_counter()
        *earlier, (last, _) = self.pending
        seconds = sum(seconds for _, seconds in self.pending)
        self.write(epoch, last, seconds, [logs for logs, _ in earlier])
        self.pending = []
        self.since = time.perf_counter()
        self.write_seconds = self.since - started
        self.written += 1

    def write(self, epoch, logs, seconds, earlier):
        raise NotImplementedError


class LayerCheckpoint(BudgetCheckpoint):
    """Checkpoints layer k of a run's pretraining (see `BudgetCheckpoint`)."""

    def __init__(self, run, k, restore=None, every=None, ratio=None):
        super().__init__(run, restore=restore, every=every, ratio=ratio)
        self.k = k

    def write(self, epoch, logs, seconds, earlier):
        check_space(self.run.path, checkpoint_bytes(self.model), f"layer {self.k + 1}'s checkpoint")
        self.run.record_epoch(
            self.k,
            epoch,
            logs,
            seconds,
            lambda path: self.model.save_weights(path),
            earlier=earlier,
        )


class FinetuneCheckpoint(BudgetCheckpoint):
    """Checkpoints fine-tuning: trainer weights, optimizer, early stopping (see `BudgetCheckpoint`).

    `stopper` is the early-stopping callback (with get_state/set_state and
    best_weights); its state goes in the manifest and its best weights in a
    file of their own, written when they changed since the last checkpoint.
    """

    def __init__(self, run, stopper=None, restore=None, every=None, ratio=None):
        super().__init__(run, restore=restore, every=every, ratio=ratio)
        self.stopper = stopper
        self.best_epoch = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best_epoch = self._best_epoch()

    def _best_epoch(self):
        if self.stopper is None:
            return None
        return (self.stopper.get_state() or {}).get("best_epoch")

    def write(self, epoch, logs, seconds, earlier):
        save_best = None
        best_epoch = self._best_epoch()
        if best_epoch is not None and best_epoch != self.best_epoch:
            self.best_epoch = best_epoch
            weights = self.stopper.best_weights

            def save_best(path):
                np.savez(path, *weights)

        check_space(self.run.path, checkpoint_bytes(self.model), "the fine-tuning checkpoint")
        self.run.record_finetune_epoch(
            epoch,
            logs,
            seconds,
            self.stopper.get_state() if self.stopper is not None else None,
            lambda path: self.model.save_weights(path),
            save_best,
            earlier=earlier,
        )


class Banner(keras.callbacks.Callback):
    """Prints which phase is training above Keras's progress bar, and where the job stands."""

    def __init__(self, text):
        super().__init__()
        self.text = text

    def on_train_begin(self, logs=None):
        print(self.text, flush=True)


class FilterImages(keras.callbacks.Callback):
    """Logs the first 100 filters of an AutoEncoder's layer to TensorBoard after every epoch.

    TensorBoard's image summaries are TensorFlow's: on another backend this
    callback is not made (the workflow says so in one line).
    """

    def __init__(self, logdir, image_shape):
        super().__init__()
        self.logdir = str(logdir)
        self.image_shape = image_shape

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        from stackae.images import filters_image

        picture = filters_image(
            keras.ops.convert_to_numpy(self.model.layer.kernel), self.image_shape
        )
        writer = tf.summary.create_file_writer(self.logdir)
        with writer.as_default():
            tf.summary.image(
                "filters",
                picture[None, ..., None] if picture.ndim == 2 else picture[None],
                step=epoch,
            )
        writer.close()


class EarlyStopping(keras.callbacks.Callback):
    """Stops after `patience` epochs without a better `monitor`; restores the best weights.

    Like `keras.callbacks.EarlyStopping(restore_best_weights=True)` (the
    tutorial's patience rule keeps its best model the same way): `mode` "max"
    (higher is better), "min", or "auto": "min" for a monitor whose name ends
    in "loss", else "max". `make_early_stopping(spec)` picks the monitor of
    the spec's task. It has a
    state that can be saved and restored, so a resumed run stops at the same
    epoch and ends with the same weights: `get_state()` is a JSON-able dict
    (`best`, `best_epoch`, `wait`), `set_state(state)` takes it back, and
    `best_weights` (a list of numpy arrays, the model's `get_weights()` at the
    best epoch, or None) may be read and set. Its state is not reset by `fit`:
    use one instance per run.
    """

    def __init__(self, patience, monitor="val_accuracy", mode="auto", tie_monitor=None):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"`mode` must be 'auto', 'min' or 'max'. Received: mode={mode!r}")
        if mode == "auto":
            mode = "min" if monitor.endswith("loss") else "max"
        self.patience = patience
        self.monitor = monitor
        self.mode = mode
        # A loss that breaks ties of `monitor` (lower wins): on a small validation set the
        # accuracy may reach its best early and stay there while the model still improves.
        self.tie_monitor = tie_monitor
        self.best = None
        self.best_tie = None
        self.best_epoch = None
        self.wait = 0
        self.best_weights = None

    def get_state(self):
        state = {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}
        return state | ({"tie": self.best_tie} if self.tie_monitor else {})

    def set_state(self, state):
        self.best = None if state["best"] is None else float(state["best"])
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])
        self.wait = int(state["wait"])
        tie = state.get("tie")  # absent from states saved before ties were broken
        self.best_tie = None if tie is None else float(tie)

    def _improves(self, current, tie):
        if self.best is None:
            return True
        if current != self.best:
            return current < self.best if self.mode == "min" else current > self.best
        return tie is not None and self.best_tie is not None and tie < self.best_tie

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        current = logs.get(self.monitor)
        if current is None:
            return
        current = float(current)
        tie = logs.get(self.tie_monitor) if self.tie_monitor else None
        tie = None if tie is None else float(tie)
        if self._improves(current, tie):
            self.best, self.best_tie, self.best_epoch, self.wait = current, tie, epoch, 0
            self.best_weights = [np.array(w) for w in self.model.get_weights()]
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class EpochOrder(keras.callbacks.Callback):
    """Tells a `training_dataset` which epoch Keras starts, so it serves that epoch's order.

    A dataset whose epochs were gathered up front (`served`: their range) cannot follow:
    a fit that starts at another epoch, or runs past them, is refused.
    """

    def __init__(self, epoch=0):
        super().__init__()
        self.epoch = epoch
        self.served = None
        self._first = True

    def on_train_begin(self, logs=None):
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        served = self.served
        if served is not None and (epoch >= served.stop or self._first and epoch != served.start):
            raise ValueError(
                f"This training dataset holds epochs {served.start} to {served.stop - 1}; "
                f"the fit reached epoch {epoch}"
            )
        self._first = False
        self.epoch = epoch
