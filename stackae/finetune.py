"""Supervised fine-tuning of an exported classifier, with early stopping on validation error."""

import keras
import numpy as np

from stackae.autoencoder import DEFAULT_STEPS_PER_EXECUTION
from stackae.config import FINETUNE_DEFAULTS
from stackae.distribute import default_jit_compile, default_steps_per_execution


def compile_classifier(model, spec=FINETUNE_DEFAULTS):
    model.compile(
        optimizer=spec.make_optimizer(),
        loss="sparse_categorical_crossentropy",
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=default_jit_compile(),
        steps_per_execution=default_steps_per_execution(DEFAULT_STEPS_PER_EXECUTION),
    )
    return model


def finetune(model, train, valid=None, spec=FINETUNE_DEFAULTS, *, callbacks=(), verbose="auto"):
    """Train every layer of `model` with labels; keep the weights of the best validation epoch.

    `train` and `valid` are (x, y) pairs. With a validation set, training stops
    after `spec.patience` epochs without a better validation accuracy and the
    best epoch's weights are restored (the tutorial's patience rule keeps its
    best model the same way). `spec.lr_decay` < 1 shrinks the learning rate
    each epoch. Returns the Keras History.
    """
    compile_classifier(model, spec)
    callbacks = list(callbacks)
    if spec.lr_decay != 1.0:
        callbacks.append(
            keras.callbacks.LearningRateScheduler(
                lambda epoch: spec.learning_rate * spec.lr_decay**epoch
            )
        )
    if valid is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy",
                mode="max",
                patience=spec.patience,
                restore_best_weights=True,
            )
        )
    x, y = train
    return model.fit(
        x,
        y,
        batch_size=spec.batch_size,
        epochs=spec.epochs,
        validation_data=valid,
        callbacks=callbacks,
        verbose=verbose,
    )


def predict_classes(model, x, batch_size=1024):
    return np.argmax(model.predict(x, batch_size=batch_size, verbose=0), axis=-1)


def error_rate(model, x, y, batch_size=1024):
    """Fraction of rows of `x` whose predicted class is not `y`."""
    return float(np.mean(predict_classes(model, x, batch_size) != np.asarray(y)))


def confusion_counts(model, x, y, n_classes, batch_size=1024):
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y), predict_classes(model, x, batch_size)), 1)
    return counts
