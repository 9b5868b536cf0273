"""File readers (.npz, .npy, .csv, IDX, the tutorial's pickle): arrays as found, memory bounded.

Every reader refuses special files (FIFOs, devices) before opening them, and a
reader that inflates checks the size its file declares before reading the body,
so a small compressed file cannot fill memory. Failures are one-line DataErrors
naming the file.
"""

import csv
import glob
import gzip
import io
import math
import os
import pickle
import re
import stat
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from stackae.data import unpickle
from stackae.errors import DataError

# MNIST's images; the tutorial's pickle holds them as rows of 784.
IMAGE_SHAPE = (28, 28)

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
# DEFLATE's best case is 1032 bytes out per byte in: a header declaring more is a lie.
MAX_DEFLATE_RATIO = 1032
READ_BYTES = 1 << 24


@dataclass
class Raw:
    """What a reader found, before splitting and validation: split name -> (x, y)."""

    splits: dict
    origin: str
    image_shape: tuple | None = None
    n_classes: int | None = None


def why(err):
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_regular(path):
    """Refuse anything but a regular file or a folder, without opening it (a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise DataError(f"{path}: cannot read ({why(err)})") from err
    for test, kind in _SPECIAL:
        if test(mode):
            raise DataError(f"{path}: is {kind}, not a regular file")


def read_path(path, label_column):
    """A file or a folder of IDX files, by its name; DataError if missing or unknown."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder")
    check_regular(path)
    if os.path.isdir(path):
        return read_idx_folder(path)
    lower = path.lower()
    if lower.endswith(".npz"):
        return read_npz_file(path)
    if lower.endswith(".npy"):
        return _read_npy(path)
    if lower.endswith(".csv"):
        return _read_csv(path, label_column)
    if lower.endswith((".pkl", ".pkl.gz", ".pickle")):
        return _read_pickle(path)
    raise DataError(
        f"{path}: unknown file type; expected .npz, .npy, .csv, .pkl[.gz] or a folder of IDX files"
    )


# ---------------------------------------------------------------- .npz, .npy


def keras_layout(arrays, origin):
    """Splits of an npz in Keras's layout (x_train, y_train, x_test, y_test)."""
    splits = {"train": (arrays["x_train"], arrays.get("y_train"))}
    if "x_test" in arrays:
        splits["test"] = (arrays["x_test"], arrays.get("y_test"))
    return Raw(splits, origin)


def read_npz(path):
    """All arrays of an .npz, read now (np.load is lazy), pickles refused.

    Each member's .npy header is checked against the member's size first: np.load
    reads only what a header declares, but returns a member that is not an array
    as bytes, inflated whole.
    """
    check_regular(path)
    try:
        _check_npz_members(path)
        with np.load(path, allow_pickle=False) as f:
            return {key: f[key] for key in f.files}
    except DataError:
        raise
    except READ_ERRORS as err:
        raise DataError(f"{path}: cannot read as .npz ({why(err)})") from err


def _check_npz_members(path):
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                except ValueError:
                    raise DataError(f"{path}: member {info.filename} is not a .npy array") from None
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                else:  # 3.0 differs from 2.0 only in the header's text encoding
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                if dtype.hasobject:
                    continue  # np.load refuses it (allow_pickle=False)
                declared = member.tell() + math.prod(shape) * dtype.itemsize
            if info.file_size != declared:
                raise DataError(
                    f"{path}: member {info.filename} holds {info.file_size} bytes, "
                    f"its header says {declared}"
                )


def read_npz_file(path):
    arrays = read_npz(path)
    if "x_train" in arrays:
        return keras_layout(arrays, path)
    if "x" in arrays:
        return Raw({"train": (arrays["x"], arrays.get("y"))}, path)
    if len(arrays) == 1:
        return Raw({"train": (next(iter(arrays.values())), None)}, path)
    raise DataError(
        f"{path}: expected arrays x (and y) or x_train/y_train/x_test/y_test, "
        f"found {sorted(arrays) or 'none'}"
    )


def _read_npy(path):
    try:
        # Memory-mapped, so a file larger than RAM is read only as needed.
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except READ_ERRORS as err:
        raise DataError(f"{path}: cannot read as .npy ({why(err)})") from err
    return Raw({"train": (x, None)}, path)


# ---------------------------------------------------------------- .csv


def _read_csv(path, label_column):
    try:
        with open(path, newline="") as f:
            first = next(csv.reader(f), None)
    except READ_ERRORS as err:
        raise DataError(f"{path}: cannot read as .csv ({why(err)})") from err
    if not first:
        raise DataError(f"{path}: the file is empty")
    header = [cell.strip() for cell in first] if not all(map(_is_number, first)) else None
    table = _parse_csv(path, skip=1 if header else 0)
    if label_column is None:
        return Raw({"train": (table, None)}, path)
    column = _label_index(path, label_column, header, table.shape[1])
    y = table[:, column]
    x = np.delete(table, column, axis=1)
    return Raw({"train": (x, y)}, path)


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
        raise DataError(f"{path}: {_csv_problem(path, skip) or why(err)}") from err
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


# ---------------------------------------------------------------- IDX

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_PATTERN = re.compile(r"^(.*?)[-.]?(images|labels)[-.]idx[13]-ubyte(\.gz)?$")


def idx_files(folder):
    """{(prefix, "images"|"labels"): path} of the IDX files in a folder."""
    found = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), "*idx*-ubyte*"))):
        match = IDX_PATTERN.match(os.path.basename(path))
        if match:
            found.setdefault((match.group(1).lower(), match.group(2)), path)
    return found


def _read_idx(path):
    """An IDX array; the header is read and checked first, then exactly the body it declares."""
    check_regular(path)
    try:
        size = os.path.getsize(path)
        compressed = path.endswith(".gz")
        with (gzip.open if compressed else open)(path, "rb") as f:
            return _read_idx_stream(path, f, size, compressed)
    except DataError:
        raise
    except READ_ERRORS as err:
        raise DataError(f"{path}: cannot read ({why(err)})") from err


def _read_idx_stream(path, f, size, compressed):
    magic = f.read(4)
    if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(IDX_TYPES[magic[2]]), magic[3]
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", dims)
    body = math.prod(shape) * dtype.itemsize
    declared = 4 + 4 * ndim + body
    if not compressed and size != declared:
        raise DataError(f"{path}: IDX file has {size} bytes, its header says {declared}")
    if compressed and declared > MAX_DEFLATE_RATIO * size + READ_BYTES:
        raise DataError(
            f"{path}: its header says {declared} bytes, more than a gzip file "
            f"of {size} bytes can hold"
        )
    array = np.empty(math.prod(shape), dtype)
    filled = _read_into(f, array.view(np.uint8))
    if filled < body:
        raise DataError(
            f"{path}: IDX file has {4 + 4 * ndim + filled} bytes, its header says {declared}"
        )
    if f.read(1):
        raise DataError(f"{path}: IDX file holds more than the {declared} bytes its header says")
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def _read_into(f, buffer):
    """Fill a uint8 array from a binary file, in bounded reads; the byte count read."""
    view, filled = memoryview(buffer), 0
    while filled < len(view):
        n = f.readinto(view[filled : filled + READ_BYTES])
        if not n:
            break
        filled += n
    return filled


def read_idx_folder(folder):
    files = idx_files(folder)
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
    # The image shape is taken from the arrays' own shape when they are validated.
    return Raw(splits, folder)


# ---------------------------------------------------------------- the tutorial's pickle


class _Capped(io.RawIOBase):
    """A binary stream that refuses to give more than `limit` bytes (a decompression bomb)."""

    def __init__(self, f, limit, message):
        self.f, self.left, self.message = f, limit, message

    def readable(self):
        return True

    def readinto(self, buffer):
        view = memoryview(buffer).cast("B")
        n = self.f.readinto(view[: self.left + 1])
        if n > self.left:
            raise DataError(self.message)
        self.left -= n
        return n


def _gzip_size(path, size):
    """The inflated size a gzip file's trailer declares (ISIZE: the size modulo 4 GiB)."""
    if size < 4:
        return 0
    with open(path, "rb") as f:
        f.seek(size - 4)
        return int.from_bytes(f.read(4), "little")


def _read_pickle(path):
    try:
        size = os.path.getsize(path)
        if path.endswith(".gz"):
            # Pickles hold no size of their own; the gzip trailer does (modulo 4 GiB, so a
            # .pkl.gz inflating past 4 GiB is refused: save such data as .npy, which streams).
            limit = _gzip_size(path, size)
            message = f"{path}: inflates past the {limit} bytes its gzip trailer declares"
            opener = gzip.open
        else:
            limit, message, opener = size, f"{path}: grew while it was read", open
        with opener(path, "rb") as f:
            content = unpickle.load_arrays(io.BufferedReader(_Capped(f, limit, message)))
    except DataError:
        raise
    except (*READ_ERRORS, AttributeError, RecursionError) as err:
        raise DataError(f"{path}: cannot read as a pickle of arrays ({why(err)})") from err
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
    return Raw(splits, path, image_shape=IMAGE_SHAPE if width == 784 else None)


# ---------------------------------------------------------------- rows of a memmap


class RowReader:
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
        """Rows at indices `rows`, reading each run of consecutive rows at once."""
        out = np.empty((len(rows), self.n_features), self.dtype)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
            out[lo:hi] = self.read(int(rows[lo]), int(rows[hi - 1]) + 1)
        return out
