"""Grouped training steps, one class per Keras backend, shared by AutoEncoder and Finetuner.

A model mixes in `Steps` (the class for Keras's backend) before `keras.Model`
and supplies four hooks on one batch (a tuple of tensors, e.g. `(x,)` or
`(x, y)`):

- `_batch(data)`: the batch tuple of a data element (or of one batch of a group);
- `_objective(batch, step, part, jit)`: (the minimised scalar, the arguments of
  `_track`) for a training update at optimizer step `step`; `part` is the
  replica's slice of the global batch, `jit` whether the step is XLA-compiled;
- `_evaluation(batch)`: the arguments of `_track` for the clean evaluation pass;
- `_track(*tracked)` and `_logs()`: the metrics.

Grouping is an argument of `fit`: `fit(data, group=k)` with k > 1 reads each
element of `data` as (up to) k batches stacked on a new first axis (as
`stackae.data.training_dataset(x, ..., group=k)` serves them) and makes one
update per batch inside one call, with the same updates, noise and logs as the
batches one by one. With `group=1` (the default) each element is one batch.
Nothing about the data itself steers this, so `prefetch()`, `take()` or any
other transformation of a dataset trains exactly as the dataset did; an element
whose rank does not fit the group is refused when the step is traced.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from stackae import compat


class _Common:
    """What every backend's steps share: the group of a fit, refusing sample weights."""

    _group = 1

    def fit(self, x=None, *args, group=1, **kwargs):
        """Like `keras.Model.fit`; with `group` > 1 each element of `x` is `group` batches.

        Steps per call divide the epoch (compat.steps_per_call), so Keras's
        progress bar never counts past its total. `sample_weight` and
        `class_weight` are refused: every example weighs the same.
        """
        for name in ("sample_weight", "class_weight"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"{type(self).__name__}.fit takes no `{name}`: every example weighs the same"
                )
        if not isinstance(group, int) or isinstance(group, bool) or group < 1:
            raise ValueError(f"`group` must be a positive integer. Received: group={group!r}")
        if group != self._group:
            self._group = group
            self.train_function = None  # traced for the other kind of element
        callbacks = list(kwargs.get("callbacks") or [])
        shown = kwargs.get("verbose", "auto") != 0
        if group > 1 and shown and not any(isinstance(c, BatchProgress) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, BatchProgress(group)]
        batch_size = kwargs.get("batch_size", args[1] if len(args) > 1 else None)
        compat.fit_steps_per_call(self, x, batch_size, kwargs.get("steps_per_epoch"))
        return super().fit(x, *args, **kwargs)

    # The rank of one batch's (first) input tensor, or None: any rank >= 2 (AutoEncoder
    # reads a (batch, time, features) batch as its rows).
    _batch_rank = None

    def _batches_of(self, data, grouped=False):
        """The data element as a batch tuple, its tensors (group, batch, ...) when `grouped`."""
        _, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError(
                f"{type(self).__name__} takes no sample weights: every example weighs the same"
            )
        batch = self._batch(data)
        self._check_rank(tuple(keras.tree.flatten(batch[0])[0].shape), grouped)
        return batch

    def _check_rank(self, shape, grouped):
        """Refuse (one line) an element whose rank does not fit the group of the fit."""
        name, rank = type(self).__name__, self._batch_rank
        if grouped:
            if len(shape) >= 3 if rank is None else len(shape) == rank + 1:
                return
            raise ValueError(
                f"{name}.fit(group={self._group}) takes elements of {self._group} batches "
                f"stacked on a first axis. Received: an element of shape {shape}"
            )
        if rank is None or len(shape) == rank:
            return
        if len(shape) == rank + 1:
            raise ValueError(
                f"{name} takes one batch of rank {rank} per element; an element of groups of "
                f"batches needs fit(..., group=k). Received: an element of shape {shape}"
            )
        raise ValueError(f"{name} takes batches of rank {rank}. Received: shape {shape}")


class BatchProgress(keras.callbacks.ProgbarLogger):
    """Keras's progress bar of a grouped fit, counting batches rather than groups.

    An epoch of 400 batches served 16 at a time shows `400/400`, not `25/25`.
    Keras counts elements (its `batch` is the element's index); this counts
    `group` batches per element. The last group of an epoch may hold fewer, so
    its count is the updates the optimizer made, shown when the epoch ends
    (and the total from then on); until the first epoch ends the total is
    groups x `group`.
    """

    def __init__(self, group):
        super().__init__()
        self.group = group
        self.elements = None  # Keras's steps (elements) of an epoch
        self.batches = None  # batches of an epoch, once one has ended

    def set_params(self, params):
        super().set_params(params)
        self.elements = self.target
        if self.target is not None:
            self.target = self.batches or self.target * self.group

    def on_epoch_begin(self, epoch, logs=None):
        self.first_update = _updates(self.model)
        super().on_epoch_begin(epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        if self.elements is not None and batch + 1 >= self.elements:
            return  # the last element: its count is known when the epoch ends
        super().on_train_batch_end((batch + 1) * self.group - 1, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.batches = self.target = _updates(self.model) - self.first_update
        if self.progbar is not None:
            self.progbar.target = self.target
        super().on_epoch_end(epoch, logs)


def _updates(model):
    from stackae.callbacks import _updates

    return _updates(model)


class TensorFlowSteps(_Common):
    """train_step / test_step in the shape of Keras's TensorFlow trainer (a GradientTape)."""

    def fit(self, *args, **kwargs):
        if self.built and self.optimizer is not None and not self.optimizer.built:
            # Its slot variables (momentum) made now: made inside the first traced step,
            # TensorFlow traces that step twice (a small fine-tuning: 0.41 s, 0.30 s so).
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)
        return super().fit(*args, **kwargs)

    def train_step(self, data):
        import tensorflow as tf

        batch = self._batches_of(data, grouped=self._group > 1)
        if self._group == 1:
            self._tf_update(batch)
        else:

            def update_with_batch(i):
                self._tf_update(tuple(t[i] for t in batch))
                return (i + 1,)

            count = tf.shape(batch[0])[0]
            tf.while_loop(lambda i: i < count, update_with_batch, (tf.constant(0),))
        return compat.per_replica_logs(self._logs())

    def _tf_update(self, batch):
        import tensorflow as tf

        part = compat.replica_part()
        jit = bool(self.jit_compile) and not self.run_eagerly
        with tf.GradientTape() as tape:
            objective, tracked = self._objective(batch, self.optimizer.iterations, part, jit)
            # Keras sums gradients over replicas, so each replica's share is 1/n.
            objective = self.optimizer.scale_loss(objective / part[1])
        gradients = tape.gradient(objective, self.trainable_weights)
        self.optimizer.apply(gradients, self.trainable_weights)
        self._track(*tracked)

    def test_step(self, data):
        self._track(*self._evaluation(self._batches_of(data)))
        return compat.per_replica_logs(self._logs())

    # Validation rows held in memory as batches of tensors, set by `held_validation` for one
    # fit: Keras's per-epoch validation then runs the traced evaluation step on them,
    # without a tf.data iterator per epoch.
    _held_validation = None
    _held_step = None

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """Keras's evaluate; inside `held_validation`, the fit's validation on held batches."""
        if self._held_validation is not None and kwargs.get("_use_cached_eval_dataset"):
            return self._evaluate_held(kwargs.get("callbacks"))
        return super().evaluate(x, y, *args, **kwargs)

    def _evaluate_held(self, callbacks):
        """What Keras's evaluate returns (a dict of floats), from the same `test_step` on the
        same batches in the same order, traced once per model and XLA setting."""
        import tensorflow as tf

        jit = bool(self.jit_compile)
        if self._held_step is None or self._held_step[0] != jit:
            step = tf.function(self.test_step, jit_compile=jit, reduce_retracing=True)
            self._held_step = (jit, step)
        step = self._held_step[1]
        callbacks.on_test_begin()
        self.reset_metrics()
        logs = {}
        for index, batch in enumerate(self._held_validation):
            callbacks.on_test_batch_begin(index)
            logs = step(batch)
            callbacks.on_test_batch_end(index, logs)
        logs = {name: float(np.asarray(value)) for name, value in self._logs().items()}
        callbacks.on_test_end(logs)
        return logs


def fit_epochs(
    model, data, order, *, streamed, valid_x=None, validation=None, callbacks=(), **kwargs
):
    """`model.fit` over a `stackae.data.training_dataset` and its epoch `order` (a callback,
    first), for AutoEncoder and Finetuner: `steps_per_epoch` where the epochs stream
    (`streamed`), no shuffling (the dataset holds each epoch's order), and the per-epoch
    validation on `validation`, made of the rows `valid_x`, on held batches where it can
    (`held_validation`). kwargs (group, epochs, initial_epoch, verbose) go to `fit`.
    Within `stackae.reuse.reusing()` a twin of `model` with its programs traced by an
    earlier fit trains in its place (`reuse.twin_of`)."""
    from stackae import reuse

    steps = order.elements if streamed else None
    group = kwargs.get("group", 1)
    with (
        reuse.twin_of(model, group=group, steps_per_epoch=steps) as trained,
        held_validation(trained, valid_x, validation, streamed),
    ):
        return trained.fit(
            data,
            steps_per_epoch=steps,
            validation_data=validation,
            callbacks=[order, *callbacks],
            shuffle=False,
            **kwargs,
        )


@contextlib.contextmanager
def held_validation(model, x, validation, streamed, limit=64 << 20):
    """Within it, `model.fit`'s per-epoch validation on `validation` (a dataset of the rows
    `x`) runs the traced evaluation step on its batches held as tensors, when training reads
    one stream of epochs (`streamed`: TensorFlow, no strategy) and `x` is in memory (a NumPy
    array or a tensor, not a memmap or a `Rows` view) of at most `limit` bytes. Elsewhere
    Keras's evaluate runs as usual. Same numbers, same callbacks: only the iterators go."""
    from stackae.data.rows import streams

    held = None
    if streamed and hasattr(x, "shape") and validation is not None and not streams(x):
        if int(np.prod(x.shape)) * 4 <= limit:  # float32 rows
            held = [e if isinstance(e, tuple) else (e,) for e in validation]
    model._held_validation = held
    try:
        yield
    finally:
        model._held_validation = None


class JaxSteps(_Common):
    """train_step / test_step in the stateless shape of Keras's JAX trainer.

    `state` holds the values of the model's variables; each update reads them
    through a `keras.StatelessScope` and returns the new ones, as Keras's own
    JAX `train_step` does with `stateless_call` and `optimizer.stateless_apply`.
    Non-trainable variables (BatchNormalization's moving statistics, say) go
    through the update too: what a layer assigns to them in training is
    carried to the next update, as `stateless_call` returns it. A group runs
    in one `lax.scan`.
    """

    def train_step(self, state, data):
        import jax

        batch = self._batches_of(data, grouped=self._group > 1)
        if self._group == 1:
            state = self._jax_update(state, batch)
        else:
            state = jax.lax.scan(lambda s, b: (self._jax_update(s, b), None), state, batch)[0]
        return self._jax_logs(state[3]), state

    def _jax_update(self, state, batch):
        """One optimizer step: (trainable, non-trainable, optimizer, metrics) values in and out."""
        import jax

        trainable, non_trainable, optimizer_vars, metrics_vars = state
        optimizer_mapping = list(zip(self.optimizer.variables, optimizer_vars))
        with keras.StatelessScope(state_mapping=optimizer_mapping):
            step = ops.convert_to_tensor(self.optimizer.iterations)

        def objective(trainable):
            mapping = [
                *zip(self.trainable_variables, trainable),
                *zip(self.non_trainable_variables, non_trainable),
                *optimizer_mapping,
            ]
            with keras.StatelessScope(state_mapping=mapping) as scope:
                value, tracked = self._objective(batch, step, (0, 1), True)
                value = self.optimizer.scale_loss(value)
            assigned = [scope.get_current_value(v) for v in self.non_trainable_variables]
            updated = [old if new is None else new for old, new in zip(non_trainable, assigned)]
            return value, (tracked, updated)

        gradients, (tracked, non_trainable) = jax.grad(objective, has_aux=True)(trainable)
        trainable, optimizer_vars = self.optimizer.stateless_apply(
            optimizer_vars, gradients, trainable
        )
        metrics_vars = self._jax_track(metrics_vars, tracked)
        return trainable, non_trainable, optimizer_vars, metrics_vars

    def test_step(self, state, data):
        trainable, non_trainable, metrics_vars = state
        batch = self._batches_of(data)
        mapping = [
            *zip(self.trainable_variables, trainable),
            *zip(self.non_trainable_variables, non_trainable),
        ]
        with keras.StatelessScope(state_mapping=mapping):
            tracked = self._evaluation(batch)
        metrics_vars = self._jax_track(metrics_vars, tracked)
        return self._jax_logs(metrics_vars), (trainable, non_trainable, metrics_vars)

    def _jax_track(self, metrics_vars, tracked):
        mapping = list(zip(self.metrics_variables, metrics_vars))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self._track(*tracked)
        return [scope.get_current_value(v) for v in self.metrics_variables]

    def _jax_logs(self, metrics_vars):
        with keras.StatelessScope(state_mapping=list(zip(self.metrics_variables, metrics_vars))):
            return self._logs()


class TorchSteps(_Common):
    """train_step / test_step for Keras's PyTorch trainer: eager autograd, a group in a loop.

    Keras's torch trainer runs one step per call (no steps_per_execution), so
    a group of batches per element is what amortises its per-call cost.
    """

    def train_step(self, data):
        batch = self._batches_of(data, grouped=self._group > 1)
        if self._group == 1:
            self._torch_update(batch)
        else:
            for i in range(int(batch[0].shape[0])):
                self._torch_update(tuple(t[i] for t in batch))
        return self._logs()

    def _torch_update(self, batch):
        import torch

        variables = self.trainable_weights
        objective, tracked = self._objective(batch, self.optimizer.iterations, (0, 1), False)
        objective = self.optimizer.scale_loss(objective)
        gradients = torch.autograd.grad(objective, [v.value for v in variables], allow_unused=True)
        with torch.no_grad():
            self.optimizer.apply(list(gradients), variables)
            self._track(*(t.detach() if torch.is_tensor(t) else t for t in tracked))

    def get_metrics_result(self):
        # Keras's epoch logs re-read each metric's result(), which loses float64
        # under torch (compat.mean_result); the models' _logs keep it.
        return {name: float(ops.convert_to_numpy(value)) for name, value in self._logs().items()}

    def test_step(self, data):
        import torch

        with torch.no_grad():
            self._track(*self._evaluation(self._batches_of(data)))
        return self._logs()


def steps_class(backend=None):
    """The steps of `backend` (Keras's, by default): a mixin to put before `keras.Model`."""
    backend = backend or keras.backend.backend()
    steps = {"tensorflow": TensorFlowSteps, "jax": JaxSteps, "torch": TorchSteps}.get(backend)
    return steps or _Common  # an unsupported backend: the models refuse it on construction


Steps = steps_class()
