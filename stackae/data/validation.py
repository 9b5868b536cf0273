"""Checks and conversion: arrays as read -> validated, split, scaled float32 rows for training."""

import math
from dataclasses import dataclass

import numpy as np

from stackae.config import DEFAULTS, LOSSES
from stackae.data import memory, splits
from stackae.data.readers import Deferred
from stackae.data.rows import Rows, raw_blocks
from stackae.data.scaling import KINDS, Scaler, Stats
from stackae.errors import DataError

SCALE_HINT = "use --scale or --loss squared-error"
COLOUR_CHANNELS = 3  # images (rows, h, w, 3) are colour: their image shape keeps the channels
SCALED_HINT = "use minmax scaling or --loss squared-error"
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True, eq=False)
class Split:
    """One split: x (n, n_features) float32 and y (class labels int64 (n,), values float32
    (n,) or (n, k), or None). x is an ndarray, a np.memmap, or a `rows.Rows` that converts
    rows as they are read (data that would not fit in memory as float32)."""

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
    image_shape: tuple | None  # (h, w), or (h, w, 3) for colour images; None for a table
    n_classes: int | None
    # The scaling applied (kind "none" for pixels, which are divided by 255).
    scaler: Scaler | None = None
    # name -> int64 indices into the file's rows (after limit); None: the source's own splits.
    split: dict | None = None
    # "classes" (int labels), "values" (float targets) or None (no targets).
    target_kind: str | None = None
    # Classes for "classes", target columns for "values", None without targets.
    n_outputs: int | None = None
    # A table's feature names (its label column left out), when it names its columns.
    columns: list | None = None
    # Whether a CSV's first line was read as a header (None: not a CSV).
    header: bool | None = None
    # `readers.fingerprint` of the file read (None: a named source or rows in memory).
    fingerprint: dict | None = None

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
        missing = np.flatnonzero(np.isnan(y))
        if missing.size:
            raise DataError(
                f"{name}: label missing (NaN) in row {missing[0]}; every row needs a class"
            )
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size:
            raise DataError(
                f"{name}: labels must be integer classes, found {y.flat[bad[0]]} (row {bad[0]})"
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


def check_args(valid_size, limit, loss, test_size=None, scale=None):
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}. Received: loss={loss!r}")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1
    ):
        raise ValueError(f"`limit` must be an int >= 1 or None. Received: limit={limit!r}")
    splits.check_size("valid_size", valid_size)
    splits.check_size("test_size", test_size)
    scale_kind(scale)


def scale_kind(scale):
    """The scaler kind `scale` asks for: a kind name, True ("global", the old --scale), False."""
    if scale is None or scale is False:
        return "none"
    if scale is True:
        return "global"
    if scale not in KINDS:
        raise ValueError(
            f"`scale` must be one of {KINDS}, True or False. Received: scale={scale!r}"
        )
    return scale


# ---------------------------------------------------------------- arrays -> rows


def image_shape_of(shape):
    """(h, w) of images of shape (rows, h, w) or (rows, h, w, 1), (h, w, 3) of colour images
    (rows, h, w, 3); None for other shapes."""
    dims = tuple(int(d) for d in shape[1:])
    while len(dims) > 2 and dims[-1] == 1:
        dims = dims[:-1]  # a single channel
    if len(dims) == 3 and dims[-1] == COLOUR_CHANNELS:
        return dims
    return dims if len(dims) == 2 else None


def as_rows(x, label, image_shape):
    """x as a 2-d (rows, features) array (images flattened) and the image shape it had."""
    if not isinstance(x, np.ndarray | Deferred):
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
        # Images train as flat rows (row-major: a pixel's channels side by side), reshaped
        # back where a conv layer reads them; other channel counts than 1 and 3 are rows.
        image_shape = image_shape or image_shape_of(x.shape)
        x = x.reshape(x.shape[0], -1)
    return x, image_shape


# ---------------------------------------------------------------- targets


def target_kind(ys):
    """ "values" if any target array is (n, k>1) or holds non-integer numbers, else "classes"."""
    for y in ys:
        if y.ndim == 2 and y.shape[1] > 1:
            return "values"
        if y.dtype.kind == "f":
            finite = y[np.isfinite(y)]
            if (finite != np.round(finite)).any():
                return "values"
    return "classes"


def check_targets(y, n_rows, label):
    """y as read: 1-d, or 2-d (rows, outputs), one per row, numbers."""
    if y.dtype.kind not in "biuf":
        raise DataError(f"{label}: labels must be numbers, found dtype {y.dtype}")
    if y.ndim not in (1, 2):
        raise DataError(f"{label}: labels must be 1-d or (rows, outputs), found shape {y.shape}")
    if len(y) != n_rows:
        raise DataError(f"{label}: {len(y)} labels for {n_rows} rows")


def labels(y, n_rows, label):
    """Class labels as int64 (n_rows,), checked; None stays None."""
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


def values(y, label):
    """Regression targets as float32, (n,) or (n, k) as found; NaN/inf refused."""
    bad = np.flatnonzero(~np.isfinite(y).reshape(len(y), -1).all(axis=1))
    if bad.size:
        raise DataError(f"{label}: targets must be finite, found NaN/inf in row {bad[0]}")
    if np.abs(y).max(initial=0) > FLOAT32_MAX:
        raise DataError(f"{label}: targets do not fit in float32")
    return y.astype(np.float32)


# ---------------------------------------------------------------- reading the rows asked for


def _read(array, ranges):
    """Rows [start, stop) of each range: views of an array, reads of a `Deferred`."""
    if isinstance(array, Deferred):
        asked = [r for r in ranges if r[1] > r[0]]
        found = iter(array.read(asked))
        return [next(found) if stop > start else _empty(array) for start, stop in ranges]
    return [array[start:stop] for start, stop in ranges]


def _empty(array):
    return np.empty((0, *array.shape[1:]), array.dtype)


def _own_splits(arrays, name, default_valid, valid_size, limit):
    """{split: (x, y, label, first row)} of a source split by its makers.

    Validation rows are taken from the end of the training rows (the tutorial's
    layout); `limit` keeps the first rows of each split, and only those are read.
    """
    arrays = dict(arrays)
    if "valid" in arrays and valid_size is not None:
        # A source with its own validation split (the tutorial's pickle) is re-split
        # like MNIST: train and valid together, valid_size rows from the end.
        (xt, yt, label), (xv, yv, _) = arrays["train"], arrays.pop("valid")
        y = None if yt is None or yv is None else np.concatenate([yt, yv])
        arrays["train"] = (np.concatenate([xt, xv]), y, label)
    if "valid" not in arrays:
        valid_size = default_valid if valid_size is None else valid_size
    out = {}
    for key, (x, y, label) in arrays.items():
        n = len(x)
        if key == "train" and valid_size:
            n_valid = splits.count(valid_size, n)
            if n_valid >= n:
                raise DataError(
                    f"{name}: valid_size={valid_size} leaves no training rows (the source has {n})"
                )
            cut = n - n_valid
            ranges = {"train": (0, cut), "valid": (cut, n)} if n_valid else {"train": (0, n)}
        else:
            ranges = {key: (0, n)}
        if limit is not None:
            ranges = {k: (a, min(b, a + limit)) for k, (a, b) in ranges.items()}
        xs = _read(x, list(ranges.values()))
        ys = [None] * len(ranges) if y is None else _read(y, list(ranges.values()))
        for (split, (first, _)), xp, yp in zip(ranges.items(), xs, ys, strict=True):
            out[split] = (xp, yp, label, first)
    return out


# ---------------------------------------------------------------- statistics


def _scan(x, label, first_row=0, part=None, n_parts=1):
    """Per-part `Stats` of x's rows in one pass; refuses NaN/inf, naming how many and the first row.

    `part`: the part (split) of each row, -1 for rows in none; None: one part.
    """
    stats = [Stats(int(x.shape[1])) for _ in range(n_parts)]
    bad, first = 0, None
    for start, block in raw_blocks(x):
        if block.dtype.kind == "f":
            finite = np.isfinite(block)
            if not finite.all():
                rows = np.flatnonzero(~finite.all(axis=1))
                bad += int(block.size - np.count_nonzero(finite))
                first = first if first is not None else start + int(rows[0])
                continue
        if bad:
            continue
        if part is None:
            stats[0].add(block)
        else:
            owner = part[start : start + len(block)]
            for k in range(n_parts):
                stats[k].add(block[owner == k])
    if bad:
        raise DataError(f"{label}: {bad} NaN/inf values, first in row {first + first_row}")
    return stats


# ---------------------------------------------------------------- float32 rows


def _rows(x, rows, convert, plain):
    """x[rows] (x when rows is None) as float32: in memory when it fits, else a `Rows` view.

    `plain`: x needs no conversion when it is float32 already (no scaling, no clipping).
    """
    if rows is not None and len(rows) and (np.diff(rows) == 1).all():
        x, rows = x[int(rows[0]) : int(rows[-1]) + 1], None  # a slice keeps a memmap a memmap
    if isinstance(x, np.memmap):
        if rows is None and plain and x.dtype == np.float32 and x.flags.c_contiguous:
            return x  # already what training reads: stream it from disk
        return Rows(x, rows, convert)
    n = len(x) if rows is None else len(rows)
    n_bytes = n * int(x.shape[1]) * (4 + (0 if rows is None else x.dtype.itemsize))
    if not memory.fits(n_bytes):
        return Rows(x, rows, convert)  # converted batch by batch instead
    if rows is not None:
        x = x[rows]
    if plain:
        return np.asarray(x, dtype=np.float32)
    out = np.empty(x.shape, np.float32)
    for start, block in raw_blocks(x):
        out[start : start + len(block)] = convert(block)
    return out


def _pixels(block):
    return np.divide(block, np.float32(255), dtype=np.float32)


# ---------------------------------------------------------------- assembling


def assemble(
    name,
    raw,
    default_valid,
    valid_size,
    limit,
    *,
    scale,
    loss,
    test_size=None,
    split_seed=123,
    scaler=None,
    split=None,
):
    """A `Data` from what a reader found: rows, targets, splits, range and dtype all checked.

    Sources with splits of their own keep them (`valid_size` rows from the end
    of the training rows); others get a seeded split (`splits.seeded`), or the
    recorded `split` indices. A recorded `scaler` is applied as it is; else one
    of kind `scale` is fitted on the training split (every split for "global").
    """
    kind = scale_kind(scale)
    image_shape = raw.image_shape
    arrays = {}
    for key, (x, y) in raw.splits.items():
        # Errors name the array they are in and its own row numbers.
        label = name if len(raw.splits) == 1 else f"{name} ({key})"
        x, image_shape = as_rows(x, label, image_shape)
        if y is not None:
            check_targets(y, len(x), label)
        arrays[key] = (x, y, label)
    widths = {key: x.shape[1] for key, (x, _, _) in arrays.items()}
    if len(set(widths.values())) > 1:
        raise DataError(f"{name}: splits have different widths {widths}")
    n_features = int(next(iter(widths.values())))

    if raw.own_split:
        if split is not None:
            raise DataError(
                f"{name}: the source has its own splits; recorded split indices apply only "
                "to files without them"
            )
        pieces = _own_splits(arrays, name, default_valid, valid_size, limit)
        ys = {k: None if y is None else np.asarray(y) for k, (_, y, _, _) in pieces.items()}
    else:
        x, y, label = arrays["train"]
        n = len(x) if limit is None else min(limit, len(x))
        x = _read(x, [(0, n)])[0]
        y = None if y is None else np.asarray(_read(y, [(0, n)])[0])
        file_rows = (x, y, label)
    found = [y for y in (ys.values() if raw.own_split else [file_rows[1]]) if y is not None]
    targets = target_kind(found) if found else None

    if not raw.own_split:
        x, y, label = file_rows
        if split is not None:
            index = splits.check_recorded(split, len(x), name)
        else:
            classes = labels(y, len(x), label) if targets == "classes" else None
            index = splits.seeded(
                len(x), classes, valid_size, test_size, split_seed, DEFAULTS.batch_size, name
            )
        part = np.full(len(x), -1, np.int8)
        for k, rows in enumerate(index.values()):
            part[rows] = k
        stats = None if x.dtype == np.uint8 else _scan(x, label, 0, part, len(index))
        pieces = {
            key: (x, None if y is None else y[rows], label, rows) for key, rows in index.items()
        }
        stats = {key: None if stats is None else stats[k] for k, key in enumerate(index)}
    else:
        index = None
        stats = {
            key: None if xp.dtype == np.uint8 else _scan(xp, label, first)[0]
            for key, (xp, _, label, first) in pieces.items()
        }

    pixels = {key: xp.dtype == np.uint8 for key, (xp, _, _, _) in pieces.items()}
    scaler = _scaler(name, scaler, kind, n_features, stats, pixels)
    clip = loss == "cross-entropy" and scaler.kind in ("minmax", "global")
    _check_range(name, pieces, stats, scaler, clip, loss)

    def convert(block):
        return scaler.transform(block, clip=clip)

    out = {}
    for key, (xp, yp, _, where) in pieces.items():
        rows = where if index is not None else None
        if pixels[key]:
            out[key] = (_rows(xp, rows, _pixels, False), yp)
        else:
            out[key] = (_rows(xp, rows, convert, scaler.identity and not clip), yp)

    n_classes, n_outputs = None, None
    if targets == "classes":
        out = {k: (xs, labels(ys, len(xs), f"{name} ({k})")) for k, (xs, ys) in out.items()}
        n_classes = raw.n_classes
        found = [ys for _, ys in out.values() if ys is not None]
        if n_classes is None:
            n_classes = max(int(ys.max()) for ys in found if ys.size) + 1
        for key, (_, ys) in out.items():
            if ys is not None:
                check_labels(ys, n_classes, f"{name} ({key})")
        n_outputs = n_classes
    elif targets == "values":
        out = {
            k: (xs, None if ys is None else values(ys, f"{name} ({k})"))
            for k, (xs, ys) in out.items()
        }
        n_outputs = 1 if found[0].ndim == 1 else int(found[0].shape[1])
    made = {key: Split(xs, ys) for key, (xs, ys) in out.items()}
    return Data(
        name=name,
        origin=raw.origin,
        train=made["train"],
        valid=made.get("valid"),
        test=made.get("test"),
        image_shape=image_shape,
        n_classes=n_classes,
        scaler=scaler,
        split=index,
        target_kind=targets,
        n_outputs=n_outputs,
        columns=raw.columns,
        header=raw.header,
    )


def _scaler(name, given, kind, n_features, stats, pixels):
    if given is not None:
        if not isinstance(given, Scaler):
            raise TypeError(f"`scaler` must be a Scaler. Received: scaler={given!r}")
        if given.n_features != n_features:
            raise DataError(
                f"{name}: the scaler has {given.n_features} features but the data has {n_features}"
            )
        if pixels["train"] and not given.identity:
            raise DataError(
                f"{name}: uint8 pixels are divided by 255, not scaled; "
                f"the recorded scaler ({given.kind}) does not apply to them"
            )
        return given
    if pixels["train"] or kind == "none":
        return Scaler.none(n_features)  # pixels: / 255, whatever `scale` asks
    if kind == "global":
        return Scaler.fit("global", *[s for s in stats.values() if s is not None], where=name)
    return Scaler.fit(kind, stats["train"], where=name)


def _check_range(name, pieces, stats, scaler, clip, loss):
    """Refuse values the loss cannot take (cross-entropy: [0, 1]) or float32 cannot hold."""
    found = [(key, s) for key, s in stats.items() if s is not None and s.n]
    if not found:
        return
    label = pieces[found[0][0]][2]
    if scaler.identity:
        low = min(s.range[0] for _, s in found)
        high = max(s.range[1] for _, s in found)
    else:
        ranges = [scaler.range_after(s.low, s.high) for _, s in found]
        low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if loss == "cross-entropy" and not clip and (low < 0 or high > 1):
        after = "" if scaler.identity else f" after {scaler.kind} scaling"
        hint = SCALE_HINT if scaler.identity else SCALED_HINT
        raise DataError(
            f"{label}: values range from {low:.6g} to {high:.6g}{after} but the cross-entropy "
            f"loss needs [0, 1]; {hint}"
        )
    if not clip and max(-low, high) > FLOAT32_MAX:
        raise DataError(
            f"{label}: values up to {max(-low, high):.6g} do not fit in float32; use --scale"
        )
