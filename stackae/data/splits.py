"""Seeded train / validation / test splits for data that has none, stratified by class.

A split is a dict name -> sorted int64 indices into the file's rows (after
`limit`). Runs record the indices themselves: NumPy's generators may change
their streams between versions, the recorded indices do not.
"""

import logging
import numbers

import numpy as np

from stackae.config import check_split_size
from stackae.errors import DataError

log = logging.getLogger("stackae.data")

NAMES = ("train", "valid", "test")
# Fractions of the rows of a file without splits of its own.
DEFAULT_VALID_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1


def check_size(name, value):
    """A size is None, an int count >= 0 or a float fraction in [0, 1) (the one rule:
    stackae.config.is_split_size); NumPy scalars are taken as Python numbers."""
    if isinstance(value, np.generic) and not isinstance(value, np.bool_):
        value = value.item()
    check_split_size(name, value)


def count(size, n_rows):
    """Rows a size asks for out of n_rows: a count as it is, a fraction rounded down."""
    if isinstance(size, numbers.Integral):
        return int(size)
    return int(np.floor(float(size) * n_rows))


def seeded(n_rows, classes, valid_size, test_size, seed, min_train, where):
    """{"train", "valid", "test": sorted indices}; valid/test left out when empty.

    Counts are taken as given (DataError if they leave no training row);
    fractions give way, test first, so that at least min(n_rows, min_train)
    rows are left to train on. A split so cut is said in one line on the
    "stackae.data" logger, and a fraction the user gave cut to no row is
    refused. A class left with no training row is said too. With class labels
    `classes`, each class is split in proportion: rows are shuffled, ordered
    by class, and every k-th one taken.
    """
    sizes = {
        "valid": DEFAULT_VALID_FRACTION if valid_size is None else valid_size,
        "test": DEFAULT_TEST_FRACTION if test_size is None else test_size,
    }
    asked = {name: count(size, n_rows) for name, size in sizes.items()}
    counts = dict(asked)
    excess = counts["valid"] + counts["test"] - (n_rows - min(n_rows, min_train))
    for name in ("test", "valid"):
        if excess > 0 and not isinstance(sizes[name], numbers.Integral):
            cut = min(excess, counts[name])
            counts[name] -= cut
            excess -= cut
    if counts["valid"] + counts["test"] >= n_rows:
        given = ", ".join(f"{k}_size={sizes[k]}" for k in counts if counts[k])
        raise DataError(f"{where}: {given} leaves no training rows (the data has {n_rows})")
    chosen = {"valid": valid_size is not None, "test": test_size is not None}
    for name in ("test", "valid"):
        _say_cut(where, name, sizes, asked, counts, n_rows, chosen[name])
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_rows)
    if classes is not None:
        order = order[np.argsort(np.asarray(classes)[order], kind="stable")]
    out = {}
    rest = order
    for name in ("valid", "test"):
        chosen = _every(len(rest), counts[name])
        if chosen.any():
            out[name] = np.sort(rest[chosen])
        rest = rest[~chosen]
    split = {"train": np.sort(rest), **out}
    if classes is not None:
        _say_untrained(where, np.asarray(classes), split)
    return split


def _say_cut(where, name, sizes, asked, counts, n_rows, chosen):
    """Refuse a split the user sized that others left empty; say so when one shrank or is empty.

    `chosen`: the user gave this split's size (else it is the default fraction).
    """
    size, other = sizes[name], "valid" if name == "test" else "test"
    kind = "validation" if name == "valid" else "test"
    if asked[name] and not counts[name] and chosen:
        raise DataError(
            f"{where}: {name}_size={size} gets no rows: {other}_size={sizes[other]} and the "
            f"training rows take all {n_rows}; ask for fewer {other} rows"
        )
    if size and not counts[name]:
        log.warning(
            "%s: no %s split (%s_size=%s gives no row of %d%s); figures are of other rows",
            where,
            kind,
            name,
            size,
            n_rows,
            ", the rest is for training" if asked[name] else "",
        )
    elif counts[name] < asked[name]:
        log.warning(
            "%s: %s_size=%s gives %d %s rows, not %d, to leave rows to train on",
            where,
            name,
            size,
            counts[name],
            kind,
            asked[name],
        )


def _say_untrained(where, classes, split):
    """One line for each class that has rows but none among the training rows."""
    trained = set(np.unique(classes[split["train"]]).tolist())
    for name in ("valid", "test"):
        if name not in split:
            continue
        for value in np.unique(classes[split[name]]).tolist():
            if value not in trained:
                n = int(np.count_nonzero(classes == value))
                log.warning(
                    "%s: class %s has %d row%s, all in the %s split: the model never trains on it",
                    where,
                    value,
                    n,
                    "" if n == 1 else "s",
                    "validation" if name == "valid" else "test",
                )


def _every(m, k):
    """A mask of k of m positions, evenly spread (each class gets its share of them)."""
    i = np.arange(m, dtype=np.int64)
    return (i + 1) * k // max(m, 1) > i * k // max(m, 1)


def check_recorded(split, n_rows, where):
    """Recorded split indices as sorted int64 arrays; DataError naming `where` if they cannot be."""
    if not isinstance(split, dict) or "train" not in split:
        raise DataError(f"{where}: split must map 'train' (and 'valid', 'test') to row indices")
    unknown = sorted(set(split) - set(NAMES))
    if unknown:
        raise DataError(f"{where}: unknown split names {unknown} (expected {list(NAMES)})")
    out, seen = {}, np.zeros(n_rows, bool)
    for name in NAMES:
        if split.get(name) is None:
            continue
        rows = np.asarray(split[name])
        if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
            raise DataError(f"{where}: split {name} is not a list of row indices")
        rows = rows.astype(np.int64)
        if name == "train" and rows.size == 0:
            raise DataError(f"{where}: split train has no rows")
        bad = rows[(rows < 0) | (rows >= n_rows)]
        if bad.size:
            raise DataError(
                f"{where}: split {name} has row {int(bad[0])} but the data has {n_rows} rows"
            )
        rows = np.sort(rows)
        if rows.size and (np.diff(rows) == 0).any() or seen[rows].any():
            raise DataError(f"{where}: split {name} repeats a row")
        seen[rows] = True
        if rows.size:
            out[name] = rows
    return out
