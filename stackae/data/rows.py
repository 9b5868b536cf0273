"""Rows converted to float32 as they are read: a view that lets data larger than memory stream.

A `Rows` holds the array as read (a memmap of any dtype, or an array in memory),
the rows of it that a split takes, and the conversion to float32 (uint8 / 255,
a scaler). Training reads it batch by batch (`stackae.data.pipeline`); NumPy
and Keras see a float32 array (`np.asarray`), made when asked for.
"""

import numbers

import numpy as np

from stackae.data.readers import RowReader

# Rows are read and converted this many bytes at a time.
CHUNK_BYTES = 1 << 25


def raw_blocks(x, rows=None, chunk_bytes=CHUNK_BYTES):
    """(first position, rows as stored) blocks of x, or of x[rows], in order, memory bounded."""
    n = len(x) if rows is None else len(rows)
    step = max(1, chunk_bytes // max(1, x.shape[1] * x.dtype.itemsize))
    reader = RowReader.of(x)
    for start in range(0, n, step):
        stop = min(start + step, n)
        if rows is None:
            yield start, reader.read(start, stop) if reader else x[start:stop]
        else:
            part = rows[start:stop]
            yield start, reader.take(part) if reader else x[part]


def streams(x):
    """True when x is read from disk or converted batch by batch rather than held as float32."""
    return isinstance(x, np.memmap | Rows)


class Rows:
    """x[rows] (all of x when rows is None) as float32 rows, converted as they are read.

    Supports `len`, `shape`, `dtype`, `ndim`, indexing with ints, slices, index
    arrays and boolean masks (each returns a new float32 ndarray), `take`, and
    `np.asarray` (the whole view, converted in chunks).
    """

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, base, rows=None, convert=None):
        if np.ndim(base) != 2:
            raise ValueError(f"`base` must be 2-d. Received: shape={np.shape(base)}")
        self.base = base
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.convert = convert or _as_float32
        self.reader = RowReader.of(base)
        n = len(base) if self.rows is None else len(self.rows)
        self.shape = (n, int(base.shape[1]))

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"Rows(shape={self.shape}, from {type(self.base).__name__} {self.base.dtype})"

    def take(self, positions):
        """Float32 rows at positions (any order), shape (len(positions), n_features)."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        index = positions if self.rows is None else self.rows[positions]
        if self.reader is not None:
            raw = self.reader.take(index) if len(index) else self.base[:0]
        else:
            raw = self.base[index]
        return self.convert(raw)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            first, rest = key[0], key[1:]
            out = self[first]
            return out[(slice(None), *rest)] if out.ndim == 2 else out[rest]
        if isinstance(key, numbers.Integral):
            if not -len(self) <= key < len(self):
                raise IndexError(f"row {key} of {len(self)}")
            return self.take([key % len(self)])[0]
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        key = np.asarray(key)
        if key.dtype == bool:
            return self.take(np.flatnonzero(key))
        if key.dtype.kind not in "iu":
            raise IndexError(f"rows must be indexed by ints, slices or masks, not {key.dtype}")
        return self.take(np.arange(len(self))[key.reshape(-1)]).reshape(*key.shape, -1)

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, np.float32)
        for start, block in raw_blocks(self.base, self.rows):
            out[start : start + len(block)] = self.convert(block)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __iter__(self):
        for _, block in raw_blocks(self.base, self.rows):
            yield from self.convert(block)


def _as_float32(block):
    return np.asarray(block, dtype=np.float32)
