"""Supervised fine-tuning of an exported classifier: a fast trainer, early stopping, resume."""

import keras
import numpy as np
from keras import ops

# Modules, not names, as in stackae.autoencoder (any may be the first import).
from stackae import autoencoder, compat, trainers
from stackae import noise as noises
from stackae.config import FINETUNE_DEFAULTS, PREDICT_BATCH


class Finetuner(trainers.Steps, keras.Model):
    """Trains a classifier with labels: many updates per call, dropout from stateless seeds.

    `classifier` is a `keras.Sequential` ending in a softmax (as
    `stackae.export.classifier` makes it); its variables are trained in place
    and it stays a plain Keras model (save it, not the Finetuner). Its
    `keras.layers.Dropout` layers are applied by the trainer: inverted dropout
    whose mask for dropout layer l at optimizer step t is drawn from the
    stateless seed (seed, t * n_dropout + l) alone, so the same seed gives the
    same run and a resumed run (optimizer state restored) sees the masks an
    uninterrupted one saw. Dropout is active in training only: `test_step`,
    `predict` and calling the Finetuner are the classifier's plain forward pass.

    Training data are (x, y) elements: a batch (batch, features) with labels
    (batch,), or, from a dataset whose `group` attribute is > 1, a group
    (group, batch, features) with labels (group, batch), which makes one
    update per batch inside one compiled loop (the same updates, masks and
    logs as the batches one by one, without the per-call cost of the Keras
    loop: see `stackae.data.training_dataset(group=...)` and stackae.trainers).
    The loss is the sparse categorical cross-entropy of the softmax, in
    float32 under mixed precision; logs are `loss` and `accuracy`.

    Checkpoint it with `save_weights` / `load_weights` (classifier weights and
    optimizer state; build the optimizer first with
    `finetuner.optimizer.build(finetuner.trainable_variables)` before loading).
    """

    def __init__(self, classifier, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(classifier, keras.Sequential):
            raise ValueError(
                f"`classifier` must be a keras.Sequential. Received: classifier={classifier!r}"
            )
        self.classifier = classifier
        if seed is None:
            seed = int(keras.random.randint((), 0, 2**31 - 1, seed=None))
        self.seed = int(seed)
        for layer in classifier.layers:
            if _is_dropout(layer) and layer.noise_shape is not None:
                raise ValueError(
                    f"Dropout with a `noise_shape` is not supported. Received: layer {layer.name}"
                )
        self.n_dropout = sum(_is_dropout(layer) for layer in classifier.layers)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

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
            optimizer=optimizer,
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
        self._requested_steps_per_execution = chosen["steps_per_execution"]
        super().compile(**chosen, **kwargs)

    def fit(self, x=None, y=None, batch_size=None, **kwargs):
        """Like `keras.Model.fit` (see stackae.trainers for groups and steps per call)."""
        if not self.built and self.classifier.built:
            # Else Keras's JAX fit builds by calling the model on an element, maybe a group.
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
        h = x
        index = 0
        for layer in self.classifier.layers:
            if not _is_dropout(layer):
                h = layer(h, training=step is not None)
                continue
            if step is not None and layer.rate > 0:
                seed = self.mask_seed(step, index)
                kept = noises.corrupt(h, "masking", layer.rate, seed, jit=jit, part=part)
                h = kept * ops.cast(1.0 / (1.0 - layer.rate), h.dtype)
            index += 1
        return h

    def mask_seed(self, step, index):
        """Stateless seed of dropout layer `index`'s mask at optimizer step `step`."""
        step = ops.cast(step, "int64") * self.n_dropout + index
        return ops.stack([ops.convert_to_tensor(self.seed, "int64"), step])

    def cost(self, y, probabilities):
        """Mean sparse categorical cross-entropy, float32 under mixed precision."""
        probabilities = ops.cast(probabilities, "float32")
        return ops.mean(keras.losses.sparse_categorical_crossentropy(y, probabilities))

    def _track(self, y, probabilities, cost):
        self.loss_tracker.update_state(cost, sample_weight=ops.shape(y)[0])
        self.accuracy_tracker.update_state(y, probabilities)

    # ------------------------------------------------ the hooks of stackae.trainers

    def _batch(self, data):
        """(x, y) of a data element."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        x = ops.convert_to_tensor(x, self.classifier.compute_dtype)
        if not self.built:
            self.build((None, x.shape[-1]))
        return x, ops.convert_to_tensor(y, "int64")

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
        return {**base_config, **config, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["classifier"] = keras.saving.deserialize_keras_object(config["classifier"])
        return cls(**config)


class EarlyStopping(keras.callbacks.Callback):
    """Stops after `patience` epochs without a better `monitor`; restores the best weights.

    Like `keras.callbacks.EarlyStopping(mode="max", restore_best_weights=True)`
    (the tutorial's patience rule keeps its best model the same way), with a
    state that can be saved and restored, so a resumed run stops at the same
    epoch and ends with the same weights: `get_state()` is a JSON-able dict
    (`best`, `best_epoch`, `wait`), `set_state(state)` takes it back, and
    `best_weights` (a list of numpy arrays, the model's `get_weights()` at the
    best epoch, or None) may be read and set. Its state is not reset by `fit`:
    use one instance per run.
    """

    def __init__(self, patience, monitor="val_accuracy"):
        super().__init__()
        self.patience = patience
        self.monitor = monitor
        self.best = None
        self.best_epoch = None
        self.wait = 0
        self.best_weights = None

    def get_state(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def set_state(self, state):
        self.best = None if state["best"] is None else float(state["best"])
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])
        self.wait = int(state["wait"])

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            return
        current = float(current)
        if self.best is None or current > self.best:
            self.best, self.best_epoch, self.wait = current, epoch, 0
            self.best_weights = [np.array(w) for w in self.model.get_weights()]
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def compile_classifier(model, spec=FINETUNE_DEFAULTS, optimizer=None):
    """Compile a classifier for `evaluate`: sparse cross-entropy and accuracy.

    `optimizer` defaults to a fresh one from `spec`; `make_finetuner` passes
    its own, so `model.optimizer` is the one that trained the model.
    """
    model.compile(
        optimizer=optimizer or spec.make_optimizer(),
        loss="sparse_categorical_crossentropy",
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=compat.jit_compile(),
    )
    return model


def make_finetuner(model, spec=FINETUNE_DEFAULTS, seed=None):
    """The compiled `Finetuner` of `model` with `spec`'s optimizer, ready to `fit`.

    To resume, make it with the seed of the interrupted run and restore its
    weights and optimizer state with `load_weights` before passing it to
    `finetune(..., finetuner=...)`. `model` is compiled with the same optimizer
    (`compile_classifier`), so its `optimizer` and `evaluate` reflect training.
    """
    finetuner = Finetuner(model, seed=seed)
    finetuner.compile(optimizer=spec.make_optimizer())
    compile_classifier(model, spec, optimizer=finetuner.optimizer)
    return finetuner


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

    `train` and `valid` are (x, y) pairs. Each epoch visits the full batches of
    `train` (n // batch_size) in an order drawn from (seed, epoch). With a
    validation set, training stops after `spec.patience` epochs without a
    better validation accuracy and the best epoch's weights are restored.
    `spec.lr_decay` < 1 sets the learning rate of epoch e to
    `spec.learning_rate * spec.lr_decay**e`. Returns the Keras History (of the
    epochs run by this call).

    The run is a function of `seed` (None: drawn from Keras's global seed, as
    `keras.utils.set_random_seed` sets it) and can be resumed exactly after
    epoch e: make the trainer with `make_finetuner(model, spec, seed)`, restore
    it with `load_weights` from a checkpoint saved with `save_weights` after
    epoch e, restore an `EarlyStopping(spec.patience)` with `set_state` and its
    `best_weights`, and call `finetune(..., finetuner=..., early_stopping=...,
    initial_epoch=e + 1)`: the batch order, learning rate and dropout masks
    follow the epoch and optimizer step, so the rest of the run is the one an
    uninterrupted run makes. `callbacks` run after the early stopping's (a
    checkpoint callback sees its state of the same epoch).

    `group`: batches per training step (None: 16 on one device, 1 under a
    multi-replica strategy); the results do not depend on it, only the speed.
    """
    from stackae.data import batches, training_dataset
    from stackae.distribute import default_group

    if finetuner is None:
        finetuner = make_finetuner(model, spec, seed)
    x, y = train
    data, order = training_dataset(
        x,
        spec.batch_size,
        seed=finetuner.seed,
        group=group or default_group(autoencoder.DEFAULT_GROUP),
        y=np.asarray(y, dtype="int64"),
    )
    schedule = []
    if spec.lr_decay != 1.0:
        schedule.append(
            keras.callbacks.LearningRateScheduler(
                lambda epoch: spec.learning_rate * spec.lr_decay**epoch
            )
        )
    if valid is not None and early_stopping is None:
        early_stopping = EarlyStopping(spec.patience)
    stopping = [early_stopping] if valid is not None else []
    return finetuner.fit(
        data,
        epochs=spec.epochs,
        initial_epoch=initial_epoch,
        validation_data=None if valid is None else batches(valid[0], PREDICT_BATCH, y=valid[1]),
        callbacks=[order, *schedule, *stopping, *callbacks],
        verbose=verbose,
        shuffle=False,  # the dataset is already in each epoch's order
    )


def _is_dropout(layer):
    # Exactly Dropout: subclasses (spatial dropout) draw other masks, by their own call.
    return type(layer) is keras.layers.Dropout


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
