"""File readers (.npz, .npy, .csv, IDX, the tutorial's pickle): arrays as found, memory bounded.

Every reader refuses special files (FIFOs, devices) before opening them, and a
reader that inflates checks the size its file declares before reading the body,
so a small compressed file cannot fill memory. Failures are one-line DataErrors
naming the file.
"""

import csv
import glob
import gzip
import hashlib
import io
import logging
import math
import os
import pickle
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from stackae.data import memory, unpickle
from stackae.data.memory import size_text
from stackae.errors import DataError, Param

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
# What the data layer decided on a guess (a header, a split cut short) goes here, one line each.
log = logging.getLogger("stackae.data")


@dataclass
class Raw:
    """What a reader found, before splitting and validation: split name -> (x, y).

    x and y are arrays (maybe memmaps) or `Deferred` arrays whose rows are read
    only when `validation.assemble` knows which ones it needs. `own_split`:
    the source comes split (train/test, ...); otherwise it gets a seeded split.
    """

    splits: dict
    origin: str
    image_shape: tuple | None = None
    n_classes: int | None = None
    own_split: bool = False
    # A table's feature names (its label column left out) when the table names its
    # columns; whether a CSV's first line was read as a header.
    columns: list | None = None
    header: bool | None = None


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


def read_path(path, label_column, limit=None, n_features=None, columns=None, header=None):
    """A file or a folder of IDX files, by its name; DataError if missing or unknown.

    `limit`: a file without splits of its own is read only up to that row.
    `n_features`: the width a run expects; a table that already has it is read
    without its label column (new rows to encode need no labels).
    `columns`: the feature names a run recorded; a table naming its columns has
    them matched by name (any order), a missing or an extra one refused.
    `header`: whether a CSV's first line names its columns; None: `csv_header`'s rule.
    """
    if not os.path.exists(path):
        from stackae.files import link_problem

        raise DataError(f"{path}: {link_problem(path) or 'no such file or folder'}")
    check_regular(path)
    lower = path.lower()
    is_table = lower.endswith((".csv", ".parquet")) and not os.path.isdir(path)
    if label_column is not None and not is_table:
        raise DataError(
            f"{path}:",
            Param("label_column", None),
            "applies to tables (.csv, .parquet); this source holds its labels in an array "
            "of their own (y, y_train, labels)",
        )
    if os.path.isdir(path):
        return read_idx_folder(path)
    if lower.endswith(".npz"):
        return read_npz_file(path)
    if lower.endswith(".npy"):
        return _read_npy(path)
    if lower.endswith(".csv"):
        return _read_csv(path, label_column, limit, n_features, columns, header)
    if lower.endswith(".parquet"):
        return _read_parquet(path, label_column, limit, n_features, columns)
    if lower.endswith((".pkl", ".pkl.gz", ".pickle")):
        return _read_pickle(path, limit)
    raise DataError(
        f"{path}: unknown file type; expected .npz, .npy, .csv, .parquet, .pkl[.gz] "
        "or a folder of IDX files"
    )


# ---------------------------------------------------------------- arrays read when asked


class Deferred:
    """An array in a file (an IDX body, an .npz member) whose rows are read only when asked.

    `open_body()` opens a binary stream at the array's first byte. Reading rows
    n..m of a compressed stream inflates and drops the rows before n, a bounded
    buffer at a time, so memory holds only the rows asked for.
    """

    def __init__(self, path, shape, dtype, open_body, *, seekable=False, check_end=None):
        self.path, self.shape, self.dtype = path, tuple(int(d) for d in shape), np.dtype(dtype)
        self.open_body, self.seekable, self.check_end = open_body, seekable, check_end

    @property
    def ndim(self):
        return len(self.shape)

    def __len__(self):
        return self.shape[0]

    def reshape(self, *shape):
        """Only what `as_rows` asks for: (rows, -1), the trailing dimensions flattened."""
        rows = self.shape[0]
        width = math.prod(self.shape[1:])
        if len(shape) == 1 and isinstance(shape[0], tuple):
            shape = shape[0]
        if tuple(shape) not in ((rows, -1), (rows, width)):
            raise ValueError(f"Deferred arrays only flatten rows; asked for {shape}")
        return Deferred(
            self.path,
            (rows, width),
            self.dtype,
            self.open_body,
            seekable=self.seekable,
            check_end=self.check_end,
        )

    def read(self, ranges):
        """Rows [start, stop) for each of `ranges` (sorted, not overlapping), in one pass."""
        row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        wanted = sum(stop - start for start, stop in ranges) * row_bytes
        memory.check_fits(wanted, f"{self.path}: reading {size_text(wanted)} of rows")
        out = []
        try:
            with self.open_body() as f:
                at = 0
                for start, stop in ranges:
                    _skip(f, (start - at) * row_bytes, self.seekable)
                    array = np.empty((stop - start, *self.shape[1:]), self.dtype)
                    filled = _read_into(f, array.reshape(-1).view(np.uint8))
                    if filled < array.nbytes and self.check_end is not None:
                        self.check_end(start * row_bytes + filled, short=True)
                    if filled < array.nbytes:
                        raise DataError(f"{self.path}: the file is shorter than its header says")
                    out.append(array.astype(self.dtype.newbyteorder("="), copy=False))
                    at = stop
                if ranges and at == self.shape[0] and self.check_end is not None and f.read(1):
                    self.check_end(None, short=False)
        except DataError:
            raise
        except READ_ERRORS as err:
            raise DataError(f"{self.path}: cannot read ({why(err)})") from err
        return out


def _skip(f, n_bytes, seekable):
    if n_bytes <= 0:
        return
    if seekable:
        f.seek(n_bytes, os.SEEK_CUR)
        return
    while n_bytes > 0:
        chunk = f.read(min(n_bytes, READ_BYTES))
        if not chunk:
            return  # the short read that follows says how short the file is
        n_bytes -= len(chunk)


def read_all(x):
    """x as an in-memory array (a Deferred read whole)."""
    return x.read([(0, len(x))])[0] if isinstance(x, Deferred) else x


# ---------------------------------------------------------------- .npz, .npy


def keras_layout(arrays, origin):
    """Splits of an npz in Keras's layout (x_train, y_train, x_test, y_test)."""
    splits = {"train": (arrays["x_train"], arrays.get("y_train"))}
    if "x_test" in arrays:
        splits["test"] = (arrays["x_test"], arrays.get("y_test"))
    return Raw(splits, origin, own_split=True)


def read_npz(path):
    """The arrays of an .npz by name, as `Deferred` (read when asked), pickles refused.

    Each member's .npy header is checked against the member's size first: a
    member holds exactly what its header declares, so nothing inflates past it.
    """
    check_regular(path)
    try:
        return _npz_members(path)
    except DataError:
        raise
    except READ_ERRORS as err:
        raise DataError(f"{path}: cannot read as .npz ({why(err)})") from err


def _npz_members(path):
    found = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                except ValueError:
                    raise DataError(f"{path}: member {info.filename} is not a .npy array") from None
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                else:  # 3.0 differs from 2.0 only in the header's text encoding
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                if dtype.hasobject:
                    raise DataError(f"{path}: member {info.filename} holds Python objects")
                header = member.tell()
            declared = header + math.prod(shape) * dtype.itemsize
            if info.file_size != declared:
                raise DataError(
                    f"{path}: member {info.filename} holds {info.file_size} bytes, "
                    f"its header says {declared}"
                )
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if fortran and len(shape) > 1:
                shape = shape[::-1]  # read as its transpose, rows are columns

            def open_body(info=info, header=header):
                archive = zipfile.ZipFile(path)
                member = archive.open(info)
                member.read(header)
                return _Closing(member, archive)

            array = Deferred(path, shape, dtype, open_body)
            # Fortran order: rows are not contiguous in the file, so it is read whole.
            found[key] = read_all(array).T if fortran and len(shape) > 1 else array
    return found


class _Closing(io.RawIOBase):
    """A zip member's stream that closes its archive too."""

    def __init__(self, member, archive):
        self.member, self.archive = member, archive

    def readable(self):
        return True

    def readinto(self, buffer):
        return self.member.readinto(buffer)

    def close(self):
        self.member.close()
        self.archive.close()
        super().close()


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


# ---------------------------------------------------------------- tables: .csv, .parquet, DataFrame

# Cells that mean "no value" in CSV files as people write them.
MISSING = {"", "na", "n/a", "nan", "null", "none", "?", "-"}
CSV_CHUNK = 8192


def csv_header(path, first, header=None):
    """Whether a CSV's first line names its columns (a UTF-8 byte order mark is never a name).

    `header` True or False is taken as given. None: the line is a header when
    one of its cells is a name, neither empty, a number nor a missing-value
    mark (NA, ?, ...). A line of numbers only is read as data, and since that
    is a guess (a header of years, 2019,2020,..., looks the same) it is said
    in one line on the "stackae.data" logger.
    """
    if header is not None:
        return bool(header)
    if any(_is_name(cell) for cell in first):
        return True
    log.warning(
        "%s: line 1 read as data, not as column names (it holds only numbers); "
        "--header reads it as names",
        path,
    )
    return False


def _is_name(cell):
    text = cell.strip()
    return bool(text) and not _is_number(text) and text.lower() not in MISSING


def _read_csv(path, label_column, limit, n_features, columns=None, header=None):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            first = next(reader, None)
            while first is not None and not any(cell.strip() for cell in first):
                first = next(reader, None)
            if first is None:
                raise DataError(f"{path}: the file is empty")
            has_header = csv_header(path, first, header)
            names = [cell.strip() for cell in first] if has_header else None
            width = len(first)
            pick = _pick(path, names, width, label_column, n_features, columns)
            shown = names or [str(i) for i in range(width)]
            label = pick[1]
            chunks = []
            rows = [] if has_header else [_numbers(path, first, reader.line_num, shown, label)]
            for row in reader:
                if limit is not None and len(chunks) * CSV_CHUNK + len(rows) >= limit:
                    break
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != width:
                    raise DataError(
                        f"{path}: line {reader.line_num} has {len(row)} columns, expected {width}"
                    )
                rows.append(_numbers(path, row, reader.line_num, shown, label))
                if len(rows) == CSV_CHUNK:
                    chunks.append(np.array(rows, np.float64))
                    rows = []
    except DataError:
        raise
    except (*READ_ERRORS, csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read as .csv ({why(err)})") from err
    if rows or not chunks:
        chunks.append(np.array(rows, np.float64).reshape(len(rows), width))
    table = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    if limit is not None:
        table = table[:limit]
    if len(table) == 0:
        raise DataError(f"{path}: no data rows")
    raw = _split_label(path, table, pick)
    raw.header = has_header
    return raw


def _numbers(path, row, line, names, label=None):
    out = []
    for column, cell in enumerate(row):
        text = cell.strip()
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is not None and math.isfinite(value):
            out.append(value)
            continue
        # "NaN" parses as a float but is a missing value too, as pandas writes one.
        if text.lower() in MISSING or (value is not None and math.isnan(value)):
            raise DataError(f"{path}: line {line}: missing value in column {names[column]!r}")
        if value is not None:
            raise DataError(f"{path}: line {line}: infinite value in column {names[column]!r}")
        if column == label:
            raise DataError(
                f"{path}: label column {names[column]!r} holds text ({text[:40]!r} in line "
                f"{line}); labels must be integer classes: write them as 0, 1, 2, ..."
            )
        raise DataError(
            f"{path}: column {names[column]!r} holds text, not numbers "
            f"({text[:40]!r} in line {line})"
        )
    return out


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _label_index(path, label_column, header, width, n_features=None):
    """The label column's index, or None (none asked, or a file already as wide as the run)."""
    if label_column is None or (n_features is not None and width == n_features):
        return None
    if isinstance(label_column, str) and header is not None and label_column in header:
        return header.index(label_column)
    if isinstance(label_column, int | np.integer) and -width <= label_column < width:
        return int(label_column) % width
    if isinstance(label_column, str) and label_column.strip().lstrip("-").isdigit():
        return _label_index(path, int(label_column), header, width, n_features)
    columns = f"columns {header}" if header else f"{width} unnamed columns"
    if n_features is not None:
        raise DataError(
            f"{path}: the file has {columns}: neither the run's {n_features} features "
            f"nor those and the label column {label_column!r}"
        )
    raise DataError(f"{path}: no label column {label_column!r} (the file has {columns})")


def _pick(where, names, width, label_column, n_features=None, columns=None):
    """(feature indices, label index or None, feature names or None).

    `names`: the table's column names (None: unnamed, matched by position).
    `columns`: the feature names a run recorded; a named table must hold each
    of them (in any order) and nothing else but its label column: the column
    `label_column` names, or, for a label column given by index, the one
    column that is not a feature (the index is the run's file's, not this one's).
    """
    if names is not None:
        seen = {}
        for j, name in enumerate(names):
            if name in seen:
                raise DataError(
                    f"{where}: column name {name!r} appears twice (columns {seen[name]} and {j}); "
                    "columns must have different names"
                )
            seen[name] = j
    if names is not None and columns is not None:
        label = None  # rows to encode need no labels
        others = [j for j, name in enumerate(names) if name not in columns]
        if isinstance(label_column, str) and label_column in seen:
            label = seen[label_column]
        elif _is_index(label_column) and len(others) == 1:
            label = others[0]
        missing = [name for name in columns if name not in seen]
        if missing:
            raise DataError(
                f"{where}: no column {missing[0]!r}, one of the run's {len(columns)} features "
                f"(the file has columns {names})"
            )
        extra = [name for j, name in enumerate(names) if name not in columns and j != label]
        if extra and isinstance(label_column, str) and label_column not in seen:
            raise DataError(
                f"{where}: no label column {label_column!r}, and column {extra[0]!r} is not "
                f"one of the run's features {list(columns)}"
            )
        if extra:
            raise DataError(
                f"{where}: column {extra[0]!r} is neither one of the run's features "
                f"{list(columns)} nor its label column"
            )
        return [seen[name] for name in columns], label, list(columns)
    label = _label_index(where, label_column, names, width, n_features)
    features = [j for j in range(width) if j != label]
    return features, label, None if names is None else [names[j] for j in features]


def _is_index(label_column):
    if isinstance(label_column, int | np.integer):
        return True
    return isinstance(label_column, str) and label_column.strip().lstrip("-").isdigit()


def _split_label(path, table, pick):
    features, label, names = pick
    x = table if features == list(range(table.shape[1])) else table[:, features]
    y = None if label is None else table[:, label]
    return Raw({"train": (x, y)}, path, columns=names)


def read_columns(where, columns, label_column, limit=None, n_features=None, recorded=None):
    """A table given as {name: 1-d array} (a DataFrame's, a Parquet file's) as a Raw.

    `recorded`: the feature names a run recorded, matched by name.
    """
    names = [str(name) for name in columns]
    arrays = list(columns.values())
    if not arrays:
        raise DataError(f"{where}: the table has no columns")
    pick = _pick(where, names, len(names), label_column, n_features, recorded)
    n_rows = len(arrays[0]) if limit is None else min(limit, len(arrays[0]))
    memory.check_fits(8 * n_rows * len(arrays), f"{where}: the table")
    table = np.empty((n_rows, len(arrays)), np.float64)
    for j, (name, values) in enumerate(zip(names, arrays, strict=True)):
        values = np.asarray(values[:n_rows])
        if values.dtype.kind not in "biuf":
            if j == pick[1]:
                raise DataError(
                    f"{where}: label column {name!r} holds {values.dtype}, not numbers; "
                    "labels must be integer classes: write them as 0, 1, 2, ..."
                )
            raise DataError(f"{where}: column {name!r} holds {values.dtype}, not numbers")
        missing = np.flatnonzero(np.isnan(values)) if values.dtype.kind == "f" else []
        if len(missing):
            raise DataError(f"{where}: missing value in row {missing[0]}, column {name!r}")
        table[:, j] = values
    if n_rows == 0:
        raise DataError(f"{where}: no data rows")
    return _split_label(where, table, pick)


def _read_parquet(path, label_column, limit, n_features, recorded=None):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
        if limit is not None:
            table = table.slice(0, limit)
        columns = {name: table.column(name).to_numpy() for name in table.column_names}
    except Exception as err:  # noqa: BLE001 - pyarrow's errors have no common base
        raise DataError(f"{path}: cannot read as .parquet ({why(err)})") from err
    if len(columns) != len(table.column_names):
        raise DataError(f"{path}: two columns have the same name; columns must differ")
    return read_columns(path, columns, label_column, None, n_features, recorded)


def read_frame(frame, label_column, limit=None, n_features=None, recorded=None):
    """A pandas DataFrame (numeric columns; the label column by name) as a Raw."""
    names = [str(name) for name in frame.columns]
    if len(set(names)) != len(names):
        _pick("<DataFrame>", names, len(names), None)  # names the repeated column
    columns = {}
    for j, name in enumerate(frame.columns):
        column = frame.iloc[:, j]
        if column.hasnans and column.dtype.kind not in "f":
            row = int(np.flatnonzero(column.isna().to_numpy())[0])
            raise DataError(f"<DataFrame>: missing value in row {row}, column {str(name)!r}")
        columns[name] = column.to_numpy()
    return read_columns("<DataFrame>", columns, label_column, limit, n_features, recorded)


# ---------------------------------------------------------------- fingerprints

# Files up to this size are hashed whole; larger ones by FINGERPRINT_BLOCKS sampled blocks.
FINGERPRINT_WHOLE = 1 << 25
FINGERPRINT_BLOCKS = 64
FINGERPRINT_BLOCK = 1 << 16


def fingerprint(path):
    """A cheap record of a data file's contents: {"size", "sha256", "sampled", "mtime_ns"}.

    A file up to 32 MiB is hashed whole; a larger one by 64 blocks of 64 KiB
    spread evenly over it (its first and last included) and its size. A folder
    (IDX files) is the hash of its files' fingerprints. `mtime_ns` is kept to
    tell, not compared: a copy of the same bytes is the same data.
    """
    try:
        if os.path.isdir(path):
            digest, size = hashlib.sha256(), 0
            for name in sorted(os.listdir(path)):
                file = os.path.join(path, name)
                if os.path.isfile(file) and "idx" in name:
                    found = fingerprint(file)
                    size += found["size"]
                    digest.update(f"{name}:{found['size']}:{found['sha256']};".encode())
            return {"size": size, "sha256": digest.hexdigest(), "sampled": True, "mtime_ns": None}
        info = os.stat(path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            if info.st_size <= FINGERPRINT_WHOLE:
                for chunk in iter(lambda: f.read(READ_BYTES), b""):
                    digest.update(chunk)
            else:
                last = info.st_size - FINGERPRINT_BLOCK
                for k in range(FINGERPRINT_BLOCKS):
                    f.seek(k * last // (FINGERPRINT_BLOCKS - 1))
                    digest.update(f.read(FINGERPRINT_BLOCK))
    except OSError as err:
        raise DataError(f"{path}: cannot read ({why(err)})") from err
    return {
        "size": int(info.st_size),
        "sha256": digest.hexdigest(),
        "sampled": info.st_size > FINGERPRINT_WHOLE,
        "mtime_ns": int(info.st_mtime_ns),
    }


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
    """An IDX array as a `Deferred`: the header is read and checked now, the rows when asked."""
    check_regular(path)
    try:
        size = os.path.getsize(path)
        compressed = path.endswith(".gz")
        opener = gzip.open if compressed else open
        with opener(path, "rb") as f:
            shape, dtype, header = _read_idx_header(path, f, size, compressed)
    except DataError:
        raise
    except READ_ERRORS as err:
        raise DataError(f"{path}: cannot read ({why(err)})") from err
    declared = header + math.prod(shape) * dtype.itemsize

    def open_body():
        f = opener(path, "rb")
        f.read(header)
        return f

    def check_end(at, short):
        if short:
            raise DataError(f"{path}: IDX file has {header + at} bytes, its header says {declared}")
        raise DataError(f"{path}: IDX file holds more than the {declared} bytes its header says")

    return Deferred(path, shape, dtype, open_body, seekable=not compressed, check_end=check_end)


def _read_idx_header(path, f, size, compressed):
    magic = f.read(4)
    if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(IDX_TYPES[magic[2]]), magic[3]
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", dims)
    header = 4 + 4 * ndim
    declared = header + math.prod(shape) * dtype.itemsize
    if not compressed and size != declared:
        raise DataError(f"{path}: IDX file has {size} bytes, its header says {declared}")
    if compressed and declared > MAX_DEFLATE_RATIO * size + READ_BYTES:
        raise DataError(
            f"{path}: its header says {declared} bytes, more than a gzip file "
            f"of {size} bytes can hold"
        )
    return shape, dtype, header


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
    return Raw(splits, folder, own_split=True)


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


# Unpickling holds a pickle's bytes up to three times (text, bytes, array) at its peak.
PICKLE_COPIES = 3
# A pickle has no index: it is read whole, whatever `limit` asks. With a limit, one
# that inflates past this is refused before it is inflated (the tutorial's inflates to
# about 220 MB): a few rows of it must not cost gigabytes.
PICKLE_LIMITED_BYTES = 1 << 30


def _read_pickle(path, limit_rows=None):
    # A pickle has no index: it is read whole, whatever `limit` asks (.npy and IDX are not).
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
        if limit_rows is not None and limit > PICKLE_LIMITED_BYTES:
            raise DataError(
                f"{path}: a pickle is read whole whatever",
                Param("limit", None),
                f"asks, and this one inflates to {size_text(limit)} (about "
                f"{size_text(PICKLE_COPIES * limit)} of memory); save the data as .npy or .npz, "
                "which",
                Param("limit", None),
                "reads in part",
            )
        memory.check_fits(PICKLE_COPIES * limit, f"{path}: unpickling {size_text(limit)}")
        with opener(path, "rb") as f:
            stream = io.BufferedReader(_Capped(f, limit, message))
            content = unpickle.load_arrays(stream, max_bytes=limit, where=path)
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
    shape = IMAGE_SHAPE if width == 784 else None
    return Raw(splits, path, image_shape=shape, own_split=True)


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
