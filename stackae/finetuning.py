"""Supervised fine-tuning of an exported classifier or regressor: a fast trainer, early
stopping, resume, evaluation."""

import keras
import numpy as np
from keras import ops

# Modules, not names, as in stackae.autoencoder (any may be the first import).
from stackae import autoencoder, compat, export, trainers
from stackae import noise as noises
from stackae.callbacks import EarlyStopping
from stackae.config import FINETUNE_DEFAULTS, PREDICT_BATCH, TASKS
from stackae.errors import DataError

# What early stopping watches, per task: higher accuracy, lower squared error.
MONITORS = {"classification": "val_accuracy", "regression": "val_loss"}


class Finetuner(trainers.Steps, keras.Model):
    """Trains a classifier with labels: many updates per call, dropout from stateless seeds.

    `classifier` is any Keras model (Sequential or functional: the exported
    encoder inside a model of one's own, with a skip connection, several
    inputs, nested models) with one output, a softmax for classification (as
    `stackae.export.classifier` makes it); its variables are trained in place
    and it stays a plain Keras model (save it, not the Finetuner). Layers that
    draw their own random numbers in training (GaussianNoise, SpatialDropout,
    a Dropout with a `noise_shape`, ...) are refused, naming the layer. Its
    `keras.layers.Dropout` layers are applied by the trainer: inverted dropout
    whose mask for dropout layer l at optimizer step t is drawn from the
    stateless seed (seed, t * n_dropout + l) alone, so the same seed gives the
    same run and a resumed run (optimizer state restored) sees the masks an
    uninterrupted one saw. Dropout is active in training only: `test_step`,
    `predict` and calling the Finetuner are the classifier's plain forward pass.

    Training data are (x, y) elements: a batch (batch, features) with labels
    (batch,), or, with `fit(..., group=k)`, a group of k batches
    (k, batch, features) with labels (k, batch), which makes one
    update per batch inside one compiled loop (the same updates, masks and
    logs as the batches one by one, without the per-call cost of the Keras
    loop: see `stackae.data.training_dataset(group=...)` and stackae.trainers).
    The loss is the sparse categorical cross-entropy of the softmax, in
    float32 under mixed precision; logs are `loss` and `accuracy`.

    With `task="regression"` the model is a regressor (`stackae.export.regressor`)
    and the labels are float targets (batch, n_outputs) in their own units. The
    loss is the squared error of the scaled targets, averaged over outputs:
    `mean(((prediction - y) / scale) ** 2)`, with the scales of the model's
    "target_scaling" layer (1 without one), which is the squared error of the
    linear layer's output against `(y - offset) / scale`; logs are `loss` only.

    Checkpoint it with `save_weights` / `load_weights` (classifier weights and
    optimizer state; build the optimizer first with
    `finetuner.optimizer.build(finetuner.trainable_variables)` before loading).
    """

    def __init__(self, classifier, seed=None, task="classification", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(classifier, keras.Model):
            raise ValueError(
                f"`classifier` must be a Keras model. Received: classifier={classifier!r}"
            )
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
        self.classifier = classifier
        self.task = task
        # Per-output scales of the targets (a float32 array), or None: no scaling.
        self.target_scale = export.target_scale(classifier) if task == "regression" else None
        if seed is None:
            seed = int(keras.random.randint((), 0, 2**31 - 1, seed=None))
        self.seed = int(seed)
        layers = list(_all_layers(classifier))
        for layer in layers:
            _check_layer(layer)
        if classifier.built and len(classifier.outputs) != 1:
            raise ValueError(
                f"`classifier` must have one output. Received: model '{classifier.name}' "
                f"with {len(classifier.outputs)}"
            )
        self.n_dropout = sum(_is_dropout(layer) for layer in layers)
        # The model with its Dropout layers drawing the Finetuner's masks, sharing every
        # other layer (and so every weight) with `classifier`; held outside Keras's
        # tracking so that the weights are not counted twice.
        self._masks = _MaskStep()
        self._training = _Untracked(_with_seeded_dropout(classifier, self._masks))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = None
        if task == "classification":
            self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        if classifier.built:  # built as its classifier is: its state is there before a fit
            self.build(classifier.input_shape)

    @property
    def _batch_rank(self):
        # The rank of the model's (first) input: 2 for rows; None before it is built.
        inputs = getattr(self.classifier, "inputs", None) if self.classifier.built else None
        return len(inputs[0].shape) if inputs else None

    @property
    def metrics(self):
        return [self.loss_tracker, *([self.accuracy_tracker] if self.accuracy_tracker else [])]

    def build(self, input_shape):
        if not self.classifier.built:
            self.classifier.build(input_shape)

    def call(self, inputs):
        return self.classifier(inputs, training=False)

    def compile(self, optimizer=None, jit_compile=None, steps_per_execution=None, **kwargs):
        """Like `keras.Model.compile`, defaulting to SGD(0.1) and to XLA with many steps per call.

        `jit_compile` and `steps_per_execution` default to what the active
        tf.distribute strategy can take (stackae/compat.py says why), with as
        many steps per call as pretraining. The loss and metrics are the
        Finetuner's own: pass neither.
        """
        chosen = compat.compile_defaults(
            autoencoder.DEFAULT_STEPS_PER_EXECUTION,
            model=self,
            optimizer=optimizer,
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
        self._requested_steps_per_execution = chosen["steps_per_execution"]
        super().compile(**chosen, **kwargs)

    def fit(self, x=None, y=None, batch_size=None, **kwargs):
        """Like `keras.Model.fit` (see stackae.trainers for groups and steps per call)."""
        if not self.built and self.classifier.built:
            # Built after this Finetuner was made. Else Keras's JAX fit builds by calling
            # the model on an element, maybe a group.
            self.build(self.classifier.input_shape)
        return super().fit(x, y, batch_size, **kwargs)

    # ------------------------------------------------------------ backend-neutral parts

    def probabilities(self, x, step=None, part=(0, 1), jit=False):
        """The classifier's output for `x`; with `step`, the training pass with its dropout.

        `step` is the optimizer step whose masks to draw (a scalar tensor);
        `part` is the replica's slice of the global batch and `jit` whether
        the caller is XLA-compiled, as `noise.corrupt`'s (XLA draws its masks
        with another generator).
        """
        if step is None:
            return self.classifier(x, training=False)
        self._masks.set(self, step, part, jit)
        try:
            return self._training.model(x, training=True)
        finally:
            self._masks.set(None)

    def mask_seed(self, step, index):
        """Stateless seed of dropout layer `index`'s mask at optimizer step `step`."""
        step = ops.cast(step, "int64") * self.n_dropout + index
        return ops.stack([ops.convert_to_tensor(self.seed, "int64"), step])

    def cost(self, y, probabilities):
        """The batch's loss, float32 under mixed precision.

        Classification: the mean sparse categorical cross-entropy of the
        probabilities. Regression (`probabilities` are then the predictions):
        the mean over rows and outputs of the squared error in units of each
        target's scale (see the class docstring).
        """
        probabilities = ops.cast(probabilities, "float32")
        if self.task == "classification":
            return ops.mean(keras.losses.sparse_categorical_crossentropy(y, probabilities))
        error = probabilities - ops.reshape(ops.cast(y, "float32"), ops.shape(probabilities))
        if self.target_scale is not None:
            error = error / ops.convert_to_tensor(self.target_scale)
        return ops.mean(ops.square(error))

    def _track(self, y, probabilities, cost):
        self.loss_tracker.update_state(cost, sample_weight=ops.shape(y)[0])
        if self.accuracy_tracker is not None:
            self.accuracy_tracker.update_state(y, probabilities)

    # ------------------------------------------------ the hooks of stackae.trainers

    def _batch(self, data):
        """(x, y) of a data element."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        dtype = self.classifier.compute_dtype
        x = keras.tree.map_structure(lambda t: ops.convert_to_tensor(t, dtype), x)
        if not self.built:
            self.build((None, *x.shape[1:]))
        return x, ops.convert_to_tensor(y, "int64" if self.task == "classification" else "float32")

    def _objective(self, batch, step, part, jit):
        x, y = batch
        probabilities = self.probabilities(x, step=step, part=part, jit=jit)
        cost = self.cost(y, probabilities)
        total = cost
        if self.losses:
            total = total + ops.cast(ops.sum(self.losses), cost.dtype)
        return total, (y, probabilities, cost)

    def _evaluation(self, batch):
        x, y = batch
        probabilities = self.classifier(x, training=False)
        return y, probabilities, self.cost(y, probabilities)

    def _logs(self):
        return {m.name: m.result() for m in self.metrics}

    def get_config(self):
        base_config = super().get_config()
        config = {"classifier": keras.saving.serialize_keras_object(self.classifier)}
        return {**base_config, **config, "seed": self.seed, "task": self.task}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["classifier"] = keras.saving.deserialize_keras_object(config["classifier"])
        return cls(**config)


def make_early_stopping(spec=FINETUNE_DEFAULTS):
    """The EarlyStopping of `spec`: its patience, on `val_accuracy` (ties broken by the
    lower `val_loss`) or, for regression, on `val_loss`."""
    if spec.task == "classification":
        return EarlyStopping(spec.patience, monitor="val_accuracy", tie_monitor="val_loss")
    return EarlyStopping(spec.patience, monitor=MONITORS[spec.task])


def compile_classifier(model, spec=FINETUNE_DEFAULTS, optimizer=None, jit_compile=None):
    """Compile a classifier for `evaluate`: sparse cross-entropy and accuracy.

    `optimizer` defaults to a fresh one from `spec`; `make_finetuner` passes
    its own, so `model.optimizer` is the one that trained the model.
    """
    model.compile(
        optimizer=optimizer or spec.make_optimizer(),
        loss="sparse_categorical_crossentropy",
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=compat.jit_compile(model) if jit_compile is None else jit_compile,
    )
    return model


def compile_regressor(model, spec=FINETUNE_DEFAULTS, optimizer=None, jit_compile=None):
    """Compile a regressor for `evaluate`: squared error, RMSE and MAE in the targets' units."""
    model.compile(
        optimizer=optimizer or spec.make_optimizer(),
        loss="mean_squared_error",
        metrics=[
            keras.metrics.RootMeanSquaredError(name="rmse"),
            keras.metrics.MeanAbsoluteError(name="mae"),
        ],
        jit_compile=compat.jit_compile(model) if jit_compile is None else jit_compile,
    )
    return model


def make_finetuner(model, spec=FINETUNE_DEFAULTS, seed=None, jit_compile=None):
    """The compiled `Finetuner` of `model` with `spec`'s optimizer and task, ready to `fit`.

    To resume, make it with the seed of the interrupted run and restore its
    weights and optimizer state with `load_weights` before passing it to
    `finetune(..., finetuner=...)`. `model` is compiled with the same optimizer
    (`compile_classifier`, or `compile_regressor` for regression), so its
    `optimizer` and `evaluate` reflect training. `jit_compile` goes to both
    compiles (None: XLA where it runs; False saves its compile time on small data).
    """
    finetuner = Finetuner(model, seed=seed, task=spec.task)
    finetuner.compile(optimizer=spec.make_optimizer(), jit_compile=jit_compile)
    compile_model = compile_classifier if spec.task == "classification" else compile_regressor
    compile_model(model, spec, optimizer=finetuner.optimizer, jit_compile=jit_compile)
    return finetuner


def task_model(stack, spec, n_outputs, targets=None):
    """The model `spec.task` fine-tunes on `stack`, with `spec`'s dropout.

    Classification: `stackae.export.classifier` of `n_outputs` classes.
    Regression: `stackae.export.regressor` of `n_outputs` outputs whose
    targets are standardised by the mean and spread of `targets` (the training
    targets, (n,) or (n, n_outputs); a spread of 1 where one is constant).
    The command line's jobs and the scikit-learn estimators make their models here.
    """
    if spec.task == "classification":
        return export.classifier(
            stack, n_outputs, dropout=spec.dropout, input_dropout=spec.input_dropout
        )
    from stackae.data.scaling import Scaler

    targets = np.asarray(targets)
    return export.regressor(
        stack,
        n_outputs,
        dropout=spec.dropout,
        input_dropout=spec.input_dropout,
        target_scaler=Scaler.fit("standard", targets.reshape(len(targets), -1)),
    )


def prepare(
    model,
    spec=FINETUNE_DEFAULTS,
    *,
    seed=None,
    validation=True,
    jit_compile=None,
    finetuner=None,
    early_stopping=None,
):
    """(finetuner, early stopping) that fine-tune `model` with `spec`: the one setup of
    `finetune`, the command line's jobs and the scikit-learn estimators.

    The finetuner is `make_finetuner(model, spec, seed, jit_compile)` unless
    one is given (its task must be the spec's); making it makes `spec`'s
    optimizer, so an optimizer name Keras does not know is refused here
    (ParameterError). The early stopping is `make_early_stopping(spec)` unless
    one is given (restored, to resume), and None without `validation` rows.
    """
    if finetuner is None:
        finetuner = make_finetuner(model, spec, seed, jit_compile)
    if finetuner.task != spec.task:
        raise ValueError(
            f"The finetuner's task is {finetuner.task!r}, the spec's {spec.task!r}. "
            f"Received: spec.task={spec.task!r}"
        )
    if not validation:
        return finetuner, None
    if early_stopping is None:
        early_stopping = make_early_stopping(spec)
    return finetuner, early_stopping


def finetune(
    model,
    train,
    valid=None,
    spec=FINETUNE_DEFAULTS,
    *,
    callbacks=(),
    verbose="auto",
    seed=None,
    initial_epoch=0,
    group=None,
    finetuner=None,
    early_stopping=None,
):
    """Train every layer of `model` with labels; keep the weights of the best validation epoch.

    `train` and `valid` are (x, y) pairs: y class labels (n,) for
    `spec.task="classification"`, float targets (n,) or (n, n_outputs) in
    their own units for "regression" (`model` then comes from
    `stackae.export.regressor`; see `Finetuner` for its loss). Each epoch
    visits the full batches of `train` (n // batch_size) in an order drawn
    from (seed, epoch). With a validation set, training stops after
    `spec.patience` epochs without a better validation accuracy
    (classification) or a lower validation loss (regression), and the best
    epoch's weights are restored. `spec.lr_decay` < 1 sets the learning rate
    of epoch e to `spec.learning_rate * spec.lr_decay**e`. Returns the Keras
    History (of the epochs run by this call).

    The run is a function of `seed` (None: drawn from Keras's global seed, as
    `keras.utils.set_random_seed` sets it) and can be resumed exactly after
    epoch e: make the trainer with `make_finetuner(model, spec, seed)`, restore
    it with `load_weights` from a checkpoint saved with `save_weights` after
    epoch e, restore a `make_early_stopping(spec)` with `set_state` and its
    `best_weights`, and call `finetune(..., finetuner=..., early_stopping=...,
    initial_epoch=e + 1)`: the batch order, learning rate and dropout masks
    follow the epoch and optimizer step, so the rest of the run is the one an
    uninterrupted run makes. `callbacks` run after the early stopping's (a
    checkpoint callback sees its state of the same epoch).

    `group`: batches per training step (None: 16 on one device, 1 under a
    multi-replica strategy); the results do not depend on it, only the speed.
    """
    from stackae.data import batches, training_dataset
    from stackae.distribute import default_group, streams_epochs

    finetuner, early_stopping = prepare(
        model,
        spec,
        seed=seed,
        validation=valid is not None,
        finetuner=finetuner,
        early_stopping=early_stopping,
    )
    x, y = train
    group = group or default_group(autoencoder.DEFAULT_GROUP)
    repeat = streams_epochs()
    if spec.task == "classification":
        data, order = training_dataset(
            x,
            spec.batch_size,
            seed=finetuner.seed,
            group=group,
            y=np.asarray(y, dtype="int64"),
            repeat=repeat,
            epochs=range(initial_epoch, spec.epochs),
        )
        validation = None if valid is None else batches(valid[0], PREDICT_BATCH, y=valid[1])
    else:
        n_outputs = model.output_shape[-1]
        targets = _targets(y, len(x), n_outputs, "training targets")
        data, order = training_dataset(
            x,
            spec.batch_size,
            seed=finetuner.seed,
            group=group,
            y=targets,
            repeat=repeat,
            epochs=range(initial_epoch, spec.epochs),
        )
        validation = None
        if valid is not None:
            targets = _targets(valid[1], len(valid[0]), n_outputs, "validation targets")
            validation = batches(valid[0], PREDICT_BATCH, y=targets)
    schedule = []
    if spec.lr_decay != 1.0:
        schedule.append(
            keras.callbacks.LearningRateScheduler(
                lambda epoch: spec.learning_rate * spec.lr_decay**epoch
            )
        )
    stopping = [early_stopping] if early_stopping is not None else []
    return trainers.fit_epochs(
        finetuner,
        data,
        order,
        streamed=repeat,
        valid_x=None if valid is None else valid[0],
        validation=validation,
        callbacks=[*schedule, *stopping, *callbacks],
        group=group,
        epochs=spec.epochs,
        initial_epoch=initial_epoch,
        verbose=verbose,
    )


def _targets(y, n_rows, n_outputs, what):
    """Regression targets as float32 (n_rows, n_outputs); DataError (one line) if they are not."""
    try:
        y = np.asarray(y, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be numbers") from None
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape != (n_rows, n_outputs):
        raise DataError(
            f"{what}: expected shape ({n_rows}, {n_outputs}) for {n_rows} rows and "
            f"{n_outputs} outputs, found {np.shape(y)}"
        )
    if not np.all(np.isfinite(y)):
        raise DataError(f"{what} hold {int(np.sum(~np.isfinite(y)))} NaN or infinite values")
    return y


def _is_dropout(layer):
    # Exactly Dropout: subclasses (spatial dropout) draw other masks, by their own call.
    return type(layer) is keras.layers.Dropout


def _all_layers(model):
    """The layers of `model`, those of nested models included, in the model's order."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def _check_layer(layer):
    """Refuse (one line, naming it) a layer whose training draws its own random numbers."""
    what = None
    if _is_dropout(layer) and layer.noise_shape is not None:
        what = "a Dropout with a `noise_shape`"
    elif not _is_dropout(layer) and any(
        isinstance(value, keras.random.SeedGenerator) for value in vars(layer).values()
    ):
        what = f"a {type(layer).__name__}, which draws its own random numbers"
    if what:
        raise ValueError(
            f"Fine-tuning draws its random numbers from the run's seed (keras.layers.Dropout's "
            f"masks) and cannot train layer '{layer.name}', {what}"
        )


class _Untracked:
    """Holds a model out of Keras's tracking (an attribute that is not a layer)."""

    def __init__(self, model):
        self.model = model


class _MaskStep:
    """Where the seeded Dropout layers find the optimizer step of the update being traced."""

    def __init__(self):
        self.set(None)

    def set(self, finetuner, step=None, part=(0, 1), jit=False):
        self.finetuner, self.step, self.part, self.jit = finetuner, step, part, jit


class _SeededDropout(keras.layers.Layer):
    """A Dropout layer's place in the training model: the Finetuner's mask `index`."""

    def __init__(self, rate, index, masks, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.index, self.masks = rate, index, masks

    def call(self, inputs, training=False):
        masks = self.masks
        if not training or masks.finetuner is None or self.rate == 0:
            return inputs
        seed = masks.finetuner.mask_seed(masks.step, self.index)
        kept = noises.corrupt(inputs, "masking", self.rate, seed, jit=masks.jit, part=masks.part)
        return kept * ops.cast(1.0 / (1.0 - self.rate), inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


def _with_seeded_dropout(model, masks):
    """`model` with each Dropout layer l replaced by a `_SeededDropout` drawing mask l."""
    count = iter(range(1 << 30))

    def replace(layer):
        if not _is_dropout(layer):
            return layer  # shared: the same weights
        return _SeededDropout(layer.rate, next(count), masks, name=f"{layer.name}_seeded")

    return keras.models.clone_model(model, clone_function=replace, recursive=True)


def predict_classes(model, x, batch_size=PREDICT_BATCH):
    return np.argmax(model.predict(x, batch_size=batch_size, verbose=0), axis=-1)


def error_rate(model, x, y, batch_size=PREDICT_BATCH):
    """Fraction of rows of `x` whose predicted class is not `y`."""
    return float(np.mean(predict_classes(model, x, batch_size) != np.asarray(y)))


def confusion_counts(model, x, y, n_classes, batch_size=PREDICT_BATCH):
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y), predict_classes(model, x, batch_size)), 1)
    return counts


def regression_metrics(model, x, y, batch_size=PREDICT_BATCH):
    """RMSE, MAE and R² of `model`'s predictions of `y` (n,) or (n, n_outputs), in y's units.

    A dict of floats {"rmse", "mae", "r2"}: each computed per output, then
    averaged over outputs (scikit-learn's "uniform_average"). R² is
    1 - sum (y - prediction)^2 / sum (y - mean y)^2: 0 for the mean predictor, 1 for a
    perfect one; a constant target gives 1 if predicted exactly, else 0 (as
    scikit-learn's `r2_score`).
    """
    predictions = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(predictions.shape)
    error = predictions - y
    residual = np.sum(np.square(error), axis=0)
    total = np.sum(np.square(y - y.mean(axis=0)), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(total > 0, 1.0 - residual / total, np.where(residual == 0, 1.0, 0.0))
    return {
        "rmse": float(np.mean(np.sqrt(np.mean(np.square(error), axis=0)))),
        "mae": float(np.mean(np.mean(np.abs(error), axis=0))),
        "r2": float(np.mean(r2)),
    }
