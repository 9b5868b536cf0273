"""Data for stackae: sources and files -> validated float32 rows in [0, 1] -> batches for Keras.

Modules, in the order data flows: `sources` (named sources and `load`),
`readers` (file formats; `unpickle`, the pickle security boundary, on its own;
`memory`, what an allocation may take), `validation` (checks, float32),
`splits` (seeded train/valid/test indices), `scaling` (the `Scaler` fitted on the
training rows), `rows` (a view converting rows as they are read), `pipeline`
(batches; the only module that imports a backend). Importing this package
imports no backend: the pipeline's names load it when first used (PEP 562).
"""

import importlib

from stackae.config import PREDICT_BATCH
from stackae.data.readers import IMAGE_SHAPE
from stackae.data.rows import Rows, streams
from stackae.data.scaling import KINDS as SCALE_KINDS
from stackae.data.scaling import Scaler
from stackae.data.sources import (
    DEFAULT_VALID,
    FASHION_DIR,
    MNIST_ENV,
    SOURCES,
    default_source,
    load,
)
from stackae.data.splits import DEFAULT_TEST_FRACTION, DEFAULT_VALID_FRACTION
from stackae.data.validation import (
    Data,
    Split,
    check_batch,
    check_labels,
    check_width,
    steps_per_epoch,
)
from stackae.errors import DataError

_PIPELINE = ("EpochOrder", "batches", "training_dataset")

__all__ = [
    "DEFAULT_TEST_FRACTION",
    "DEFAULT_VALID",
    "DEFAULT_VALID_FRACTION",
    "FASHION_DIR",
    "IMAGE_SHAPE",
    "MNIST_ENV",
    "PREDICT_BATCH",
    "SCALE_KINDS",
    "SOURCES",
    "Data",
    "DataError",
    "Rows",
    "Scaler",
    "Split",
    "check_batch",
    "check_labels",
    "check_width",
    "default_source",
    "load",
    "steps_per_epoch",
    "streams",
    *_PIPELINE,
]


def __getattr__(name):
    if name in _PIPELINE:
        value = getattr(importlib.import_module("stackae.data.pipeline"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'stackae.data' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_PIPELINE})
