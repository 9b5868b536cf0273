"""Checks and conversion: arrays as read -> validated float32 rows in [0, 1], split for training."""

import math
from dataclasses import dataclass

import numpy as np

from stackae.config import LOSSES
from stackae.data.readers import RowReader
from stackae.errors import DataError

SCALE_HINT = "use --scale or --loss squared-error"
# Validation reads this many bytes at a time, so a file larger than RAM streams.
CHUNK_BYTES = 1 << 25


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


def steps_per_epoch(n_rows, batch_size):
    """Full batches per epoch: the tutorial's n // batch_size (the remainder is dropped)."""
    return n_rows // batch_size


def check_args(valid_size, limit, loss):
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}. Received: loss={loss!r}")
    for arg, value, low in (("valid_size", valid_size, 0), ("limit", limit, 1)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low
        ):
            raise ValueError(f"`{arg}` must be an int >= {low} or None. Received: {arg}={value!r}")


# ---------------------------------------------------------------- arrays -> rows


def image_shape_of(shape):
    """(h, w) of images of shape (rows, h, w) or (rows, h, w, 1); None for other shapes."""
    dims = tuple(int(d) for d in shape[1:])
    while len(dims) > 2 and dims[-1] == 1:
        dims = dims[:-1]  # a single channel
    return dims if len(dims) == 2 else None


def as_rows(x, label, image_shape):
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
        # Several channels train as flat rows; pictures then use square tiles.
        image_shape = image_shape or image_shape_of(x.shape)
        x = x.reshape(x.shape[0], -1)
    return x, image_shape


def labels(y, n_rows, label):
    """y as int64 (n_rows,), checked; None stays None."""
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
    reader = RowReader.of(x)
    for start in range(0, len(x), step):
        stop = min(start + step, len(x))
        yield start, reader.read(start, stop) if reader else x[start:stop]


def scan(x, label, row_offset):
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


def to_float32(x, label, scale, low, high, loss):
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


# ---------------------------------------------------------------- splits


def _split(arrays, name, default_valid, valid_size):
    """{split: (x, y, label, first row)}, validation rows taken from the end of train."""
    arrays = dict(arrays)
    if "valid" in arrays and valid_size is not None:
        # A source with its own validation split (the tutorial's pickle) is re-split
        # like MNIST: train and valid together, valid_size rows from the end.
        (xt, yt, label), (xv, yv, _) = arrays["train"], arrays.pop("valid")
        y = None if yt is None or yv is None else np.concatenate([yt, yv])
        arrays["train"] = (np.concatenate([xt, xv]), y, label)
    if "valid" not in arrays:
        valid_size = default_valid if valid_size is None else valid_size
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


def assemble(name, raw, default_valid, valid_size, limit, *, scale, loss):
    """A `Data` from what a reader found: rows, labels, splits, range and dtype all checked."""
    image_shape = raw.image_shape
    arrays = {}
    for key, (x, y) in raw.splits.items():
        # Errors name the array they are in and its own row numbers.
        label = name if len(raw.splits) == 1 else f"{name} ({key})"
        x, image_shape = as_rows(x, label, image_shape)
        arrays[key] = (x, labels(y, len(x), label), label)
    widths = {key: x.shape[1] for key, (x, _, _) in arrays.items()}
    if len(set(widths.values())) > 1:
        raise DataError(f"{name}: splits have different widths {widths}")
    pieces = {}
    for split, (x, y, label, offset) in _split(arrays, name, default_valid, valid_size).items():
        if limit is not None:
            x, y = x[:limit], None if y is None else y[:limit]
        pieces[split] = (x, y, label, scan(x, label, offset))
    low = min(stats[0] for _, _, _, stats in pieces.values())
    high = max(stats[1] for _, _, _, stats in pieces.values())
    splits = {
        split: Split(to_float32(x, label, scale, low, high, loss), y)
        for split, (x, y, label, _) in pieces.items()
    }
    n_classes = raw.n_classes
    found = [s.y for s in splits.values() if s.y is not None]
    if n_classes is None and found:
        n_classes = max(int(y.max()) for y in found) + 1
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
