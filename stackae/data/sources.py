"""Named data sources (mnist, mnist-sample, fashion-mnist) and `load`, which reads any source."""

import dataclasses
import importlib.resources
import os

import numpy as np

from stackae.config import DEFAULT_SEED
from stackae.data import readers, validation
from stackae.data.readers import IMAGE_SHAPE
from stackae.errors import DataError, Param

MNIST_ENV = "STACKAE_MNIST"
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
SAMPLE_RESOURCE = "mnist_sample.npz"
SOURCES = ("mnist", "mnist-sample", "fashion-mnist")
# Rows taken from the end of the training set for validation, as the tutorial does.
DEFAULT_VALID = {"mnist": 10_000, "mnist-sample": 2_000, "fashion-mnist": 10_000}


def load(
    source=None,
    *,
    valid_size=None,
    limit=None,
    label_column=None,
    scale="none",
    loss="cross-entropy",
    test_size=None,
    split_seed=DEFAULT_SEED,
    scaler=None,
    split=None,
    columns=None,
    header=None,
):
    """Load a data source as validated float32 rows, split and scaled.

    Args:
        source: "mnist", "mnist-sample", "fashion-mnist", a path (.npz, .npy,
            .csv, .parquet, .pkl[.gz], or a folder of IDX files), a pandas
            DataFrame, a NumPy array of rows or a pair (x, y) of arrays, or
            None for `default_source()`.
        valid_size, test_size: an int count of rows or a float fraction. Sources
            with splits of their own (MNIST, Fashion-MNIST, IDX folders, npz
            files with x_train/x_test, the tutorial's pickle) keep their test
            split, and `valid_size` rows are taken from the end of their
            training rows (default: 10,000 for MNIST and Fashion-MNIST, 2,000
            for mnist-sample, the pickle's own validation split, none for
            other files); `test_size` does not apply to them. Other data is
            split at random (seeded by `split_seed`, stratified by class
            labels): default 10 % validation, 10 % test, at least one batch
            of training rows left where fractions allow.
        limit: a source with splits keeps the first `limit` rows of each; other
            data uses its first `limit` rows before splitting them. Only those
            rows are read where the format allows (not from a pickle).
        label_column: name or index of the label column of a table (CSV,
            Parquet, DataFrame); refused for other sources, whose labels are
            arrays of their own. A file already as wide as a recorded
            `scaler` is read without it (new rows to encode need no labels).
        scale: "none", "minmax" (per feature into [0, 1]), "standard" (zero
            mean, unit variance), both fitted on the training split, or
            "global" (one min and max over all splits, what `scale=True`
            meant before: True still means "global", False "none"). uint8
            pixels are always divided by 255 and never scaled.
        loss: the loss the data is for; "cross-entropy" needs values in [0, 1]
            (minmax-scaled rows outside the training range are clipped to it).
        scaler: a recorded `scaling.Scaler` to apply instead of fitting one.
        split: recorded split indices ({"train": ..., "valid": ..., "test":
            ...} into the rows after `limit`), to use instead of drawing them.
        columns: the feature names a run recorded: a table that names its
            columns has them matched by name, in any order; a missing or an
            extra column is refused, naming it.
        header: whether a CSV's first line names its columns; None decides
            by `readers.csv_header`'s rule and says so when it guessed.

    Returns:
        A `Data`. Images (rows, h, w) or (rows, h, w, 1) are flattened to rows
        and their (h, w) kept as `image_shape`.

    Raises:
        DataError: the source is missing, unreadable or holds data the loss cannot take.
    """
    validation.check_args(valid_size, limit, loss, test_size, scale)
    if source is None:
        source, _ = default_source()
    n_features = None if scaler is None else scaler.n_features
    raw = _in_memory(source, label_column, limit, n_features, columns)
    found = None
    if raw is not None:
        name = raw.origin
    else:
        source = os.fspath(source)
        name = source.replace("_", "-") if source.replace("_", "-") in SOURCES else source
        if name in SOURCES and label_column is not None:
            raise DataError(
                f"{name}:", Param("label_column", None), f"applies to tables; {name} has its labels"
            )
        if name == "mnist":
            raw = _read_mnist()
        elif name == "mnist-sample":
            raw = _read_sample()
        elif name == "fashion-mnist":
            raw = _read_fashion()
        else:
            raw = readers.read_path(source, label_column, limit, n_features, columns, header)
            found = readers.fingerprint(source)  # after the reader refused special files
    data = validation.assemble(
        name,
        raw,
        DEFAULT_VALID.get(name),
        valid_size,
        limit,
        scale=scale,
        loss=loss,
        test_size=test_size,
        split_seed=split_seed,
        scaler=scaler,
        split=split,
    )
    return dataclasses.replace(data, fingerprint=found)


def _in_memory(source, label_column, limit, n_features, columns=None):
    """A Raw for a DataFrame, an array or an (x, y) pair; None for names and paths."""
    if type(source).__module__.split(".")[0] == "pandas" and hasattr(source, "columns"):
        return readers.read_frame(source, label_column, limit, n_features, columns)
    if isinstance(source, np.ndarray | tuple) and label_column is not None:
        raise DataError("<array>: label_column applies to tables; give the labels as (x, y)")
    if isinstance(source, np.ndarray):
        return readers.Raw({"train": (source, None)}, "<array>")
    if isinstance(source, tuple) and len(source) == 2:
        x, y = (np.asarray(a) if a is not None else None for a in source)
        return readers.Raw({"train": (x, y)}, "<array>")
    return None


def default_source() -> tuple[str, str]:
    """(source name, one line saying which data is used and how to get the other)."""
    path = _local_mnist()
    if path is not None:
        return "mnist", f"Using full MNIST from {path}."
    return "mnist-sample", (
        "Using mnist-sample (10,000 training images shipped with stackae); for full MNIST "
        f"set {MNIST_ENV}=/path/to/mnist.npz or run once online."
    )


def _keras_cache():
    return os.path.join(
        os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"),
        "datasets",
    )


def _local_mnist():
    """Path of a full MNIST found without downloading, or None."""
    explicit = os.environ.get(MNIST_ENV)
    if explicit:
        # Absolute, so what a run records of it works from any directory.
        return os.path.abspath(explicit)
    cached = os.path.join(_keras_cache(), "mnist.npz")
    return cached if os.path.isfile(cached) else None


def _download(what, load_data, hint):
    try:
        (x_train, y_train), (x_test, y_test) = load_data()
    except Exception as err:  # noqa: BLE001 - any failure means "not here, not downloadable"
        raise DataError(
            f"{what} could not be found or downloaded ({type(err).__name__}: {err}); {hint}"
        ) from err
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def _read_mnist():
    path = _local_mnist()
    if path is not None:
        if not os.path.exists(path):
            raise DataError(f"mnist: {MNIST_ENV}={path} does not exist")
        raw = readers.keras_layout(readers.read_npz(path), path)
    else:
        import keras  # only to download: the rest of this package needs no backend

        splits = _download(
            "mnist: MNIST",
            keras.datasets.mnist.load_data,
            f"use the source mnist-sample, or set {MNIST_ENV}=/path/to/mnist.npz",
        )
        raw = readers.Raw(splits, os.path.join(_keras_cache(), "mnist.npz"))
    raw.image_shape, raw.n_classes, raw.own_split = IMAGE_SHAPE, 10, True
    return raw


def _read_sample():
    resource = importlib.resources.files("stackae") / "resources" / SAMPLE_RESOURCE
    with importlib.resources.as_file(resource) as path:
        raw = readers.keras_layout(readers.read_npz(str(path)), str(path))
    raw.image_shape, raw.n_classes, raw.own_split = IMAGE_SHAPE, 10, True
    return raw


def _read_fashion():
    import stackae.data  # FASHION_DIR is read there, where a test or a user may set it

    cached = os.path.join(_keras_cache(), "fashion-mnist")
    for folder in (stackae.data.FASHION_DIR, cached):
        if readers.idx_files(folder):
            raw = readers.read_idx_folder(folder)
            break
    else:
        import keras  # only to download

        splits = _download(
            "fashion-mnist: Fashion-MNIST",
            keras.datasets.fashion_mnist.load_data,
            "install it with `apt-get install dataset-fashion-mnist` or run once online",
        )
        raw = readers.Raw(splits, cached)
    raw.image_shape, raw.n_classes, raw.own_split = IMAGE_SHAPE, 10, True
    return raw
