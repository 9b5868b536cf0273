"""Data for stackae: sources and files -> validated float32 rows in [0, 1] -> batches for Keras.

Modules, in the order data flows: `sources` (named sources and `load`),
`readers` (file formats; `unpickle`, the pickle security boundary, on its own),
`validation` (checks, splits, float32), `pipeline` (batches; the only module that
imports a backend). Importing this package imports no backend: the pipeline's
names load it when first used (PEP 562).
"""

import importlib

from stackae.config import PREDICT_BATCH
from stackae.data.readers import IMAGE_SHAPE
from stackae.data.sources import (
    DEFAULT_VALID,
    FASHION_DIR,
    MNIST_ENV,
    SOURCES,
    default_source,
    load,
)
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
    "DEFAULT_VALID",
    "FASHION_DIR",
    "IMAGE_SHAPE",
    "MNIST_ENV",
    "PREDICT_BATCH",
    "SOURCES",
    "Data",
    "DataError",
    "Split",
    "check_batch",
    "check_labels",
    "check_width",
    "default_source",
    "load",
    "steps_per_epoch",
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
