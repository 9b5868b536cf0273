"""Data sources -> validated float32 arrays in [0, 1] -> tf.data pipelines."""

import csv
import glob
import gzip
import importlib.resources
import io
import math
import os
import pickle
import re
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from stackae.losses import LOSSES

MNIST_ENV = "STACKAE_MNIST"
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
SAMPLE_RESOURCE = "mnist_sample.npz"
SOURCES = ("mnist", "mnist-sample", "fashion-mnist")
# Rows taken from the end of the training set for validation, as the tutorial does.
DEFAULT_VALID = {"mnist": 10_000, "mnist-sample": 2_000, "fashion-mnist": 10_000}
IMAGE_SHAPE = (28, 28)
SCALE_HINT = "use --scale or --loss squared-error"

# Everything reading a damaged file can throw; turned into one DataError line.
READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    struct.error,
    zlib.error,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
    MemoryError,
)
# Validation reads this many bytes at a time, so a file larger than RAM streams.
CHUNK_BYTES = 1 << 25


class DataError(ValueError):
    """Bad or unreadable data. str(err) is ONE line naming the file/source and the problem."""

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True, eq=False)
class Split:
    """One split: x (n, n_features) float32 in [0, 1], maybe a np.memmap; y (n,) int64 or None."""

    x: np.ndarray
    y: np.ndarray | None

    def __len__(self):
        return len(self.x)


@dataclass(frozen=True, eq=False)
class Data:
    """A loaded source: its splits and what is known about it."""

    name: str
    origin: str
    train: Split
    valid: Split | None
    test: Split | None
    image_shape: tuple | None
    n_classes: int | None

    @property
    def n_features(self) -> int:
        return int(self.train.x.shape[1])


@dataclass
class _Raw:
    """What a reader found, before splitting and validation: split name -> (x, y)."""

    splits: dict
    origin: str
    image_shape: tuple | None = None
    n_classes: int | None = None


# ---------------------------------------------------------------- public checks


def check_width(x, n_features, name):
    """Refuse data whose rows do not have the width a run (or a pretrained stack) expects."""
    width = int(np.shape(x)[1]) if np.ndim(x) >= 2 else None
    if width != n_features:
        raise DataError(f"{name}: data has {width} features but the run expects {n_features}")


def check_labels(y, n_classes, name):
    """Refuse labels that are not integers in [0, n_classes)."""
    y = np.asarray(y)
    if y.size == 0:
        return
    if y.dtype.kind not in "biuf":
        raise DataError(f"{name}: labels must be integers, found dtype {y.dtype}")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size:
            raise DataError(
                f"{name}: labels must be integers, found {y.flat[bad[0]]} (row {bad[0]})"
            )
    negative = np.flatnonzero(y < 0)
    if negative.size:
        raise DataError(
            f"{name}: labels must be >= 0, found {y.flat[negative[0]]} (row {negative[0]})"
        )
    if n_classes is not None:
        high = np.flatnonzero(y >= n_classes)
        if high.size:
            raise DataError(
                f"{name}: label {y.flat[high[0]]} (row {high[0]}) is out of range "
                f"for {n_classes} classes"
            )


def check_batch(n_rows, batch_size, name):
    """Refuse a training set too small for one batch (an epoch would have no steps)."""
    if n_rows < batch_size:
        raise DataError(
            f"{name}: only {n_rows} training rows, fewer than one batch of {batch_size}"
        )


# ---------------------------------------------------------------- sources


def _keras_cache():
    return os.path.join(
        os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"),
        "datasets",
    )


def _local_mnist():
    """Path of a full MNIST found without downloading, or None."""
    explicit = os.environ.get(MNIST_ENV)
    if explicit:
        return explicit
    cached = os.path.join(_keras_cache(), "mnist.npz")
    return cached if os.path.isfile(cached) else None


def default_source() -> tuple[str, str]:
    """(source name, one line saying which data is used and how to get the other)."""
    path = _local_mnist()
    if path is not None:
        return "mnist", f"Using full MNIST from {path}."
    return "mnist-sample", (
        "Using mnist-sample (10,000 training images shipped with stackae); for full MNIST "
        f"set {MNIST_ENV}=/path/to/mnist.npz or run once online."
    )


def _keras_layout(arrays, origin):
    """Splits of an npz in Keras's layout (x_train, y_train, x_test, y_test)."""
    splits = {"train": (arrays["x_train"], arrays.get("y_train"))}
    if "x_test" in arrays:
        splits["test"] = (arrays["x_test"], arrays.get("y_test"))
    return _Raw(splits, origin)


def _read_mnist():
    path = _local_mnist()
    if path is not None:
        if not os.path.isfile(path):
            raise DataError(f"mnist: {MNIST_ENV}={path} does not exist")
        raw = _keras_layout(_read_npz(path), path)
    else:
        try:
            (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
        except Exception as err:  # noqa: BLE001 - any failure means "no MNIST here"
            raise DataError(
                f"mnist: MNIST could not be found or downloaded ({type(err).__name__}: {err}); "
                f"use the source mnist-sample, or set {MNIST_ENV}=/path/to/mnist.npz"
            ) from err
        raw = _Raw(
            {"train": (x_train, y_train), "test": (x_test, y_test)},
            os.path.join(_keras_cache(), "mnist.npz"),
        )
    raw.image_shape, raw.n_classes = IMAGE_SHAPE, 10
    return raw


def _read_sample():
    resource = importlib.resources.files("stackae") / "resources" / SAMPLE_RESOURCE
    with importlib.resources.as_file(resource) as path:
        raw = _keras_layout(_read_npz(str(path)), str(path))
    raw.image_shape, raw.n_classes = IMAGE_SHAPE, 10
    return raw


def _read_fashion():
    cached = os.path.join(_keras_cache(), "fashion-mnist")
    for folder in (FASHION_DIR, cached):
        if _idx_files(folder):
            raw = _read_idx_folder(folder)
            break
    else:
        try:
            (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
        except Exception as err:  # noqa: BLE001 - any failure means "no Fashion-MNIST here"
            raise DataError(
                "fashion-mnist: Fashion-MNIST could not be found or downloaded "
                f"({type(err).__name__}: {err}); install it with "
                "`apt-get install dataset-fashion-mnist` or run once online"
            ) from err
        raw = _Raw({"train": (x_train, y_train), "test": (x_test, y_test)}, cached)
    raw.image_shape, raw.n_classes = IMAGE_SHAPE, 10
    return raw


# ---------------------------------------------------------------- file readers


def _read_npz(path):
    """All arrays of an .npz, read now (np.load is lazy), pickles refused."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {key: f[key] for key in f.files}
    except READ_ERRORS as err:
        raise DataError(f"{path}: cannot read as .npz ({_why(err)})") from err


def _read_npz_file(path):
    arrays = _read_npz(path)
    if "x_train" in arrays:
        return _keras_layout(arrays, path)
    if "x" in arrays:
        return _Raw({"train": (arrays["x"], arrays.get("y"))}, path)
    if len(arrays) == 1:
        return _Raw({"train": (next(iter(arrays.values())), None)}, path)
    raise DataError(
        f"{path}: expected arrays x (and y) or x_train/y_train/x_test/y_test, "
        f"found {sorted(arrays) or 'none'}"
    )


def _read_npy(path):
    try:
        # Memory-mapped, so a file larger than RAM is read only as needed.
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except READ_ERRORS as err:
        raise DataError(f"{path}: cannot read as .npy ({_why(err)})") from err
    return _Raw({"train": (x, None)}, path)


def _read_csv(path, label_column):
    try:
        with open(path, newline="") as f:
            first = next(csv.reader(f), None)
    except READ_ERRORS as err:
        raise DataError(f"{path}: cannot read as .csv ({_why(err)})") from err
    if not first:
        raise DataError(f"{path}: the file is empty")
    header = [cell.strip() for cell in first] if not all(map(_is_number, first)) else None
    table = _parse_csv(path, skip=1 if header else 0)
    if label_column is None:
        return _Raw({"train": (table, None)}, path)
    column = _label_index(path, label_column, header, table.shape[1])
    y = table[:, column]
    x = np.delete(table, column, axis=1)
    return _Raw({"train": (x, y)}, path)


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_csv(path, skip):
    try:
        with warnings.catch_warnings():
            # An empty table is refused just below, in one line.
            warnings.filterwarnings("ignore", "loadtxt: input contained no data")
            table = np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float64, ndmin=2)
    except READ_ERRORS as err:
        # numpy's parser is fast but vague; rescan to name the row at fault.
        raise DataError(f"{path}: {_csv_problem(path, skip) or _why(err)}") from err
    if table.size == 0:
        raise DataError(f"{path}: no data rows")
    return table


def _csv_problem(path, skip):
    """The first ragged or non-numeric row of a CSV, as a message, or None."""
    try:
        with open(path, newline="") as f:
            width = None
            for number, row in enumerate(csv.reader(f), start=1):
                if number <= skip or not row:
                    continue
                if width is None:
                    width = len(row)
                if len(row) != width:
                    return f"line {number} has {len(row)} columns, expected {width}"
                for cell in row:
                    if not _is_number(cell):
                        return f"line {number}: {cell.strip()[:40]!r} is not a number"
    except READ_ERRORS:
        return None
    return None


def _label_index(path, label_column, header, width):
    if isinstance(label_column, str) and header is not None and label_column in header:
        return header.index(label_column)
    if isinstance(label_column, int) and -width <= label_column < width:
        return label_column % width
    if isinstance(label_column, str) and label_column.lstrip("-").isdigit():
        return _label_index(path, int(label_column), header, width)
    columns = f"columns {header}" if header else f"{width} unnamed columns"
    raise DataError(f"{path}: no label column {label_column!r} (the file has {columns})")


IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_PATTERN = re.compile(r"^(.*?)[-.]?(images|labels)[-.]idx[13]-ubyte(\.gz)?$")


def _idx_files(folder):
    """{(prefix, "images"|"labels"): path} of the IDX files in a folder."""
    found = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), "*idx*-ubyte*"))):
        match = IDX_PATTERN.match(os.path.basename(path))
        if match:
            found.setdefault((match.group(1).lower(), match.group(2)), path)
    return found


def _read_idx(path):
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except READ_ERRORS as err:
        raise DataError(f"{path}: cannot read ({_why(err)})") from err
    if len(data) < 4 or data[0] or data[1] or data[2] not in IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(IDX_TYPES[data[2]]), data[3]
    start = 4 + 4 * ndim
    if len(data) < start:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:start])
    expected = start + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path}: IDX file has {len(data)} bytes, its header says {expected}")
    array = np.frombuffer(data, dtype, math.prod(shape), start).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _read_idx_folder(folder):
    files = _idx_files(folder)
    prefixes = sorted({prefix for prefix, kind in files if kind == "images"})
    if not prefixes:
        raise DataError(f"{folder}: no IDX files (*-images-idx3-ubyte[.gz]) in the folder")
    train = [p for p in prefixes if p.startswith("train")] or [
        p for p in prefixes if not p.startswith(("t10k", "test"))
    ]
    test = [p for p in prefixes if p.startswith(("t10k", "test"))]
    if not train:
        raise DataError(f"{folder}: no training images (train-images-idx3-ubyte[.gz])")
    splits = {}
    for split, found in (("train", train), ("test", test)):
        if found:
            images = _read_idx(files[(found[0], "images")])
            labels = files.get((found[0], "labels"))
            splits[split] = (images, None if labels is None else _read_idx(labels))
    return _Raw(splits, folder, image_shape=tuple(splits["train"][0].shape[1:]) or None)


# The only globals a pickle of numpy arrays and tuples needs; anything else is refused.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Protocol 5 rebuilds arrays from buffers; Python 3's protocol <= 2 encodes bytes.
    ("numpy.core.numeric", "_frombuffer"): np.ndarray.__reduce_ex__(np.zeros(1), 5)[0],
    ("numpy._core.numeric", "_frombuffer"): np.ndarray.__reduce_ex__(np.zeros(1), 5)[0],
    ("_codecs", "encode"): __import__("codecs").encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and tuples and nothing else."""

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays are allowed"
            ) from None


def _read_pickle(path):
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            # latin1: the tutorial's file was pickled by Python 2.
            content = _ArrayUnpickler(io.BufferedReader(f), encoding="latin1").load()
    except (*READ_ERRORS, AttributeError, RecursionError) as err:
        raise DataError(f"{path}: cannot read as a pickle of arrays ({_why(err)})") from err
    names = ("train", "valid", "test")
    if not (
        isinstance(content, tuple | list)
        and len(content) == 3
        and all(isinstance(pair, tuple | list) and len(pair) == 2 for pair in content)
    ):
        raise DataError(f"{path}: expected a tuple (train, valid, test) of (x, y) pairs")
    splits = {name: tuple(pair) for name, pair in zip(names, content, strict=True)}
    for name, (x, y) in splits.items():
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            raise DataError(f"{path}: the {name} split is not a pair of numpy arrays")
    width = splits["train"][0].shape[-1] if splits["train"][0].ndim else None
    return _Raw(splits, path, image_shape=IMAGE_SHAPE if width == 784 else None)


def _read_path(path, label_column):
    if os.path.isdir(path):
        return _read_idx_folder(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder")
    lower = path.lower()
    if lower.endswith(".npz"):
        return _read_npz_file(path)
    if lower.endswith(".npy"):
        return _read_npy(path)
    if lower.endswith(".csv"):
        return _read_csv(path, label_column)
    if lower.endswith((".pkl", ".pkl.gz", ".pickle")):
        return _read_pickle(path)
    raise DataError(
        f"{path}: unknown file type; expected .npz, .npy, .csv, .pkl[.gz] or a folder of IDX files"
    )


def _why(err):
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


# ---------------------------------------------------------------- validation


def _as_rows(x, label, image_shape):
    """x as a 2-d (rows, features) array (images flattened) and the image shape it had."""
    if not isinstance(x, np.ndarray):
        raise DataError(f"{label}: expected an array, found {type(x).__name__}")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{label}: values must be numbers, found dtype {x.dtype}")
    if x.ndim < 2:
        raise DataError(
            f"{label}: expected a 2-d array (rows, features) or images, found shape {x.shape}"
        )
    if x.shape[0] == 0:
        raise DataError(f"{label}: no rows")
    if math.prod(x.shape[1:]) == 0:
        raise DataError(f"{label}: rows have no features (shape {x.shape})")
    if x.ndim > 2:
        image_shape = image_shape or tuple(int(d) for d in x.shape[1:])
        x = x.reshape(x.shape[0], -1)
    return x, image_shape


def _labels(y, n_rows, label):
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{label}: labels must be 1-d, found shape {y.shape}")
    if len(y) != n_rows:
        raise DataError(f"{label}: {len(y)} labels for {n_rows} rows")
    check_labels(y, None, label)
    if y.size and y.max() >= 2**31:
        raise DataError(f"{label}: label {y.max()} is too large for a class index")
    return y.astype(np.int64)


def _chunks(x):
    """(first row, rows) blocks of x, small enough to keep memory bounded."""
    step = max(1, CHUNK_BYTES // max(1, x.shape[1] * x.dtype.itemsize))
    reader = _RowReader.of(x)
    for start in range(0, len(x), step):
        stop = min(start + step, len(x))
        yield start, reader.read(start, stop) if reader else x[start:stop]


def _scan(x, label, row_offset):
    """(min, max) of x; refuses NaN/inf, naming how many and the first row."""
    bad, first, low, high = 0, None, math.inf, -math.inf
    for start, block in _chunks(x):
        if block.dtype.kind == "f":
            finite = np.isfinite(block)
            if not finite.all():
                rows = np.flatnonzero(~finite.all(axis=1))
                bad += int(block.size - np.count_nonzero(finite))
                first = first if first is not None else start + int(rows[0])
                continue
        low, high = min(low, float(block.min())), max(high, float(block.max()))
    if bad:
        raise DataError(f"{label}: {bad} NaN/inf values, first in row {first + row_offset}")
    return low, high


def _to_float32(x, label, scale, low, high, loss):
    """x as float32 rows in [0, 1] (uint8 / 255, min-max scaled if asked), or DataError."""
    if x.dtype == np.uint8:
        return np.divide(x, np.float32(255), dtype=np.float32)
    if scale:
        span = high / 2 - low / 2  # halves: a span of +-float64 max must not overflow
        x = np.asarray(x, dtype=np.float64)
        if span == 0:
            return np.zeros(x.shape, np.float32)
        return np.clip((x / 2 - low / 2) / span, 0.0, 1.0).astype(np.float32)
    if loss == "cross-entropy" and (low < 0 or high > 1):
        raise DataError(
            f"{label}: values range from {low:.6g} to {high:.6g} but the cross-entropy loss "
            f"needs [0, 1]; {SCALE_HINT}"
        )
    limit = float(np.finfo(np.float32).max)
    if max(-low, high) > limit:
        raise DataError(
            f"{label}: values up to {max(-low, high):.6g} do not fit in float32; use --scale"
        )
    if x.dtype == np.float32 and isinstance(x, np.memmap) and x.flags.c_contiguous:
        return x  # already what training reads: stream it from disk
    return np.asarray(x, dtype=np.float32)


def _check_args(valid_size, limit, loss):
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}. Received: loss={loss!r}")
    for arg, value, low in (("valid_size", valid_size, 0), ("limit", limit, 1)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low
        ):
            raise ValueError(f"`{arg}` must be an int >= {low} or None. Received: {arg}={value!r}")


def _split(arrays, name, valid_size):
    """{split: (x, y, label, first row)}, validation rows taken from the end of train."""
    arrays = dict(arrays)
    if "valid" in arrays and valid_size is not None:
        # A source with its own validation split (the tutorial's pickle) is re-split
        # like MNIST: train and valid together, valid_size rows from the end.
        (xt, yt, label), (xv, yv, _) = arrays["train"], arrays.pop("valid")
        y = None if yt is None or yv is None else np.concatenate([yt, yv])
        arrays["train"] = (np.concatenate([xt, xv]), y, label)
    if "valid" not in arrays:
        valid_size = DEFAULT_VALID.get(name) if valid_size is None else valid_size
    out = {key: (x, y, label, 0) for key, (x, y, label) in arrays.items()}
    if valid_size:
        x, y, label = arrays["train"]
        if valid_size >= len(x):
            raise DataError(
                f"{name}: valid_size={valid_size} leaves no training rows (the source has {len(x)})"
            )
        cut = len(x) - valid_size
        out["train"] = (x[:cut], None if y is None else y[:cut], label, 0)
        out["valid"] = (x[cut:], None if y is None else y[cut:], label, cut)
    return out


def load(
    source=None,
    *,
    valid_size=None,
    limit=None,
    label_column=None,
    scale=None,
    loss="cross-entropy",
) -> Data:
    """Load a data source as validated float32 rows in [0, 1].

    Args:
        source: "mnist", "mnist-sample", "fashion-mnist", a path (.npz, .npy,
            .csv, .pkl[.gz], or a folder of IDX files), or None for
            `default_source()`.
        valid_size: rows taken from the end of the training rows for
            validation (0: none). Default: 10,000 for MNIST and Fashion-MNIST,
            2,000 for mnist-sample, the file's own split for the tutorial's
            pickle, none for other files.
        limit: keep only the first `limit` rows of each split.
        label_column: name or index of the label column of a CSV.
        scale: min-max scale non-uint8 data into [0, 1], over the whole source.
            uint8 is always divided by 255.
        loss: the loss the data is for; "cross-entropy" needs values in [0, 1].

    Raises:
        DataError: the source is missing, unreadable or holds data the loss cannot take.
    """
    _check_args(valid_size, limit, loss)
    if source is None:
        source, _ = default_source()
    source = os.fspath(source)
    name = source.replace("_", "-") if source.replace("_", "-") in SOURCES else source
    if name == "mnist":
        raw = _read_mnist()
    elif name == "mnist-sample":
        raw = _read_sample()
    elif name == "fashion-mnist":
        raw = _read_fashion()
    else:
        raw = _read_path(source, label_column)
    return _assemble(name, raw, valid_size, limit, scale, loss)


def _assemble(name, raw, valid_size, limit, scale, loss):
    image_shape = raw.image_shape
    arrays = {}
    for key, (x, y) in raw.splits.items():
        # Errors name the array they are in and its own row numbers.
        label = name if len(raw.splits) == 1 else f"{name} ({key})"
        x, image_shape = _as_rows(x, label, image_shape)
        arrays[key] = (x, _labels(y, len(x), label), label)
    widths = {key: x.shape[1] for key, (x, _, _) in arrays.items()}
    if len(set(widths.values())) > 1:
        raise DataError(f"{name}: splits have different widths {widths}")
    pieces = {}
    for split, (x, y, label, offset) in _split(arrays, name, valid_size).items():
        if limit is not None:
            x, y = x[:limit], None if y is None else y[:limit]
        pieces[split] = (x, y, label, _scan(x, label, offset))
    low = min(stats[0] for _, _, _, stats in pieces.values())
    high = max(stats[1] for _, _, _, stats in pieces.values())
    splits = {
        split: Split(_to_float32(x, label, scale, low, high, loss), y)
        for split, (x, y, label, _) in pieces.items()
    }
    n_classes = raw.n_classes
    labels = [s.y for s in splits.values() if s.y is not None]
    if n_classes is None and labels:
        n_classes = max(int(y.max()) for y in labels) + 1
    for split, s in splits.items():
        if s.y is not None:
            check_labels(s.y, n_classes, f"{name} ({split})")
    return Data(
        name=name,
        origin=raw.origin,
        train=splits["train"],
        valid=splits.get("valid"),
        test=splits.get("test"),
        image_shape=image_shape,
        n_classes=n_classes,
    )


# ---------------------------------------------------------------- tf.data


class _RowReader:
    """Reads rows of a float memmap with pread: bounded memory, unlike touching the mapping.

    Pages of a mapping that were read stay in the process's resident set; reading
    through the file instead leaves them in the page cache only.
    """

    def __init__(self, path, offset, row_bytes, dtype, n_features):
        self.path, self.offset, self.row_bytes = path, offset, row_bytes
        self.dtype, self.n_features = dtype, n_features
        self.fd = os.open(path, os.O_RDONLY)

    @classmethod
    def of(cls, x):
        """A reader for x when x is a C-contiguous 2-d view of a file-backed memmap, else None."""
        if not isinstance(x, np.memmap) or x.ndim != 2 or not x.flags.c_contiguous:
            return None
        root = x
        while isinstance(root.base, np.ndarray):
            root = root.base
        if not isinstance(root, np.memmap) or not getattr(root, "filename", None):
            return None
        offset = root.offset + (x.ctypes.data - root.ctypes.data)
        row_bytes = x.shape[1] * x.dtype.itemsize
        return cls(root.filename, offset, row_bytes, x.dtype, x.shape[1])

    def __del__(self):
        fd, self.fd = getattr(self, "fd", None), None
        if fd is not None:
            os.close(fd)

    def read(self, start, stop):
        """Rows start..stop-1, as a new array."""
        size = (stop - start) * self.row_bytes
        data = os.pread(self.fd, size, self.offset + start * self.row_bytes)
        if len(data) != size:
            raise DataError(f"{self.path}: file is shorter than its header says")
        return np.frombuffer(data, self.dtype).reshape(stop - start, self.n_features)

    def take(self, rows):
        """Rows at sorted indices `rows`, reading each run of consecutive rows at once."""
        out = np.empty((len(rows), self.n_features), self.dtype)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
            out[lo:hi] = self.read(int(rows[lo]), int(rows[hi - 1]) + 1)
        return out


def _with_options(ds):
    options = tf.data.Options()
    # In-memory data has no files to shard by; tf.distribute shards by element.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _row_getter(x):
    """A graph function mapping int64 row indices (sorted) to float32 rows."""
    n_features = int(x.shape[1])
    reader = _RowReader.of(x) if isinstance(x, np.memmap) else None
    if reader is None and isinstance(x, np.memmap):
        # A memmap we cannot pread (a view with strides): read via the mapping.
        def read(rows):
            return np.asarray(x[rows], dtype=np.float32)
    elif reader is not None:

        def read(rows):
            return reader.take(rows).astype(np.float32, copy=False)
    else:
        # A float32 tensor is used as it is; an array is copied into one, once.
        table = x if tf.is_tensor(x) else tf.convert_to_tensor(np.asarray(x, dtype=np.float32))

        def gather(rows):
            return tf.gather(table, rows)

        return gather

    def gather_file(rows):
        out = tf.numpy_function(read, [rows], tf.float32, stateful=False)
        out.set_shape([rows.shape[0], n_features])
        return out

    return gather_file


def steps_per_epoch(n_rows, batch_size):
    """Full batches per epoch: the tutorial's n // batch_size (the remainder is dropped)."""
    return n_rows // batch_size


class EpochOrder(keras.callbacks.Callback):
    """Tells a `training_dataset` which epoch Keras starts, so it serves that epoch's order."""

    def __init__(self, epoch=0):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


def training_dataset(x, batch_size, *, seed, shuffle=True, group=1):
    """One epoch of float32 batches (batch_size, n_features), and its EpochOrder callback.

    Pass both to fit: `fit(ds, epochs=..., initial_epoch=..., callbacks=[order])`.
    Keras iterates the dataset afresh each epoch; epoch e is served in the
    permutation drawn from the stateless seed (seed, e) alone, so a run resumed
    at epoch e sees the order an uninterrupted run saw. Each epoch is a finite
    dataset (not one long stream cut by steps_per_epoch) because Keras runs
    `steps_per_execution` steps per call and would otherwise eat into the next
    epoch. Rows within a batch are in file order; the last partial batch of each
    epoch is dropped, as the tutorial's n // batch_size batches.

    `group` > 1 serves the same batches `group` at a time, as elements of shape
    (group, batch_size, n_features) (the last one of an epoch may hold fewer):
    `AutoEncoder.train_step` makes one update per batch of a group inside one
    call, which removes the per-step cost of the Keras loop.
    """
    if np.ndim(x) != 2:
        raise DataError(f"training data must be 2-d (rows, features), found shape {np.shape(x)}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
    n = len(x)
    check_batch(n, batch_size, "training data")
    steps = steps_per_epoch(n, batch_size)
    seed = tf.constant(int(seed), tf.int64)
    order = EpochOrder()

    def epoch_batches(epoch):
        rows = tf.range(n, dtype=tf.int64)
        if shuffle:
            rows = tf.random.experimental.stateless_shuffle(rows, seed=tf.stack([seed, epoch]))
        # Sorted within a batch: the batch is the same set, and a memmap reads it in order.
        rows = tf.sort(tf.reshape(rows[: steps * batch_size], [steps, batch_size]), axis=1)
        if group == 1:
            return tf.data.Dataset.from_tensor_slices(rows)
        full = steps // group * group
        groups = tf.data.Dataset.from_tensor_slices(
            tf.reshape(rows[:full], [-1, group, batch_size])
        )
        if full < steps:
            groups = groups.concatenate(tf.data.Dataset.from_tensors(rows[full:]))
        return groups

    # The epoch number is read from the callback each time Keras starts iterating.
    epoch = tf.data.Dataset.from_generator(
        lambda: iter([order.epoch]), output_signature=tf.TensorSpec((), tf.int64)
    )
    elements = -(-steps // group)
    ds = epoch.flat_map(epoch_batches).apply(tf.data.experimental.assert_cardinality(elements))
    ds = ds.map(
        _grouped(_row_getter(x), x.shape[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return _with_options(ds), order


def _grouped(gather, n_features):
    """`gather` for index arrays of any shape: rows (..., batch) -> (..., batch, n_features)."""

    def gather_any(rows):
        flat = gather(tf.reshape(rows, [-1]))
        out = tf.reshape(flat, tf.concat([tf.shape(rows), [n_features]], 0))
        out.set_shape(rows.shape.concatenate([n_features]))
        return out

    return gather_any


def batches(x, batch_size):
    """Float32 batches of x in order, the last partial batch kept (predict, encode, evaluate)."""
    if np.ndim(x) != 2:
        raise DataError(f"data must be 2-d (rows, features), found shape {np.shape(x)}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
    n = len(x)
    gather = _row_getter(x)

    def rows(start):
        return gather(tf.range(start, tf.minimum(start + batch_size, n)))

    ds = tf.data.Dataset.range(0, n, batch_size)
    ds = ds.map(rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _with_options(ds)
