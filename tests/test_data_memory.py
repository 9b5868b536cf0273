"""Memory bounded by what was asked: `limit` bounds what is read, large data streams, and an
allocation that cannot fit is refused in one line before it is tried."""

import gzip
import json
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from stackae import data
from stackae.data import DataError, memory

ROWS = 250_000  # of 784 bytes: 196 MB as uint8, 784 MB as float32
MB = 1 << 20


def idx_header(shape):
    return struct.pack(">BBBB", 0, 0, 0x08, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def write_zeros(f, n_bytes):
    block = bytes(16 * MB)
    while n_bytes > 0:
        f.write(block[: min(n_bytes, len(block))])
        n_bytes -= len(block)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """Small files whose headers truthfully declare ROWS images of 28 x 28."""
    folder = tmp_path_factory.mktemp("big")
    paths = {"idx": str(folder / "idx")}
    (folder / "idx").mkdir()
    with gzip.open(folder / "idx" / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(idx_header((ROWS, 28, 28)))
        write_zeros(f, ROWS * 784)
    paths["npz"] = str(folder / "big.npz")
    with zipfile.ZipFile(paths["npz"], "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("x_train.npy", "w", force_zip64=True) as m:
            np.lib.format.write_array_header_1_0(
                m, {"descr": "|u1", "fortran_order": False, "shape": (ROWS, 28, 28)}
            )
            write_zeros(m, ROWS * 784)
    paths["npy"] = str(folder / "big.npy")
    x = np.lib.format.open_memmap(paths["npy"], "w+", np.uint8, (ROWS, 784))
    x[::1000] = 255  # the rest is a sparse file of zeros
    x.flush()
    del x
    for key in ("idx", "npz"):
        size = sum(p.stat().st_size for p in folder.rglob("*") if str(p).startswith(paths[key]))
        assert size < 4 * MB, (key, size)
    return paths


PEAK = """
import json, sys
import numpy as np
from stackae import data


def status(key):  # KiB; VmHWM is this process's peak (ru_maxrss keeps the parent's across exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


kwargs = json.loads(sys.argv[2])
before = status("VmRSS")  # resident now, not the peak of the imports
d = data.load(sys.argv[1], **kwargs)
x = d.train.x
first = np.asarray(x[:1000])
grew = status("VmHWM") - before
print(json.dumps({"shape": list(x.shape), "type": type(x).__name__, "sum": float(first.sum()),
                  "grew_mb": grew / 1024}))
"""


def peak(path, **kwargs):
    result = subprocess.run(
        [sys.executable, "-c", PEAK, path, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["idx", "npz"])
def test_limit_bounds_what_is_read(big, kind):
    # 1,000 rows are 0.8 MB; the file declares 196 MB (784 MB as float32), read before.
    out = peak(big[kind], limit=1000)
    assert out["shape"] == [1000, 784] and out["type"] == "ndarray"
    assert out["grew_mb"] < 100, out  # about 26 MB measured


def test_uint8_npy_streams(big):
    # It used to be converted whole to float32 in memory: 784 MB for this file.
    out = peak(big["npy"], valid_size=0, test_size=0)
    assert out["shape"] == [ROWS, 784] and out["type"] == "Rows"
    assert out["sum"] == 784.0  # row 0 is 255s, divided by 255
    assert out["grew_mb"] < 100, out  # about 26 MB measured


def test_what_cannot_fit_is_refused_before_it_is_tried(big, monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "available", lambda: 50 * MB)
    idx = f"{big['idx']}/train-images-idx3-ubyte.gz"
    with pytest.raises(DataError) as info:
        data.load(big["idx"])
    assert str(info.value) == (
        f"{idx}: reading 196.0 MB of rows needs 196.0 MB of memory, more than the "
        "52.4 MB available; use --limit (or save the data as .npy, which streams)"
    )
    assert len(data.load(big["npz"], limit=1000).train) == 1000
    # Rows that fit as uint8 but not as float32 are converted batch by batch instead.
    monkeypatch.setattr(memory, "available", lambda: 300 * MB)
    d = data.load(big["npz"], valid_size=10)
    assert isinstance(d.train.x, data.Rows) and d.train.x.shape == (ROWS - 10, 784)
    # A pickle is read whole (it has no index): refused up front when it cannot fit.
    path = tmp_path / "big.pkl.gz"
    x = np.zeros((20_000, 784), np.uint8)
    with gzip.open(path, "wb", compresslevel=1) as f:
        pickle.dump(((x, x[:, 0]), (x[:1], x[:1, 0]), (x[:1], x[:1, 0])), f, protocol=4)
    monkeypatch.setattr(memory, "available", lambda: 20 * MB)
    with pytest.raises(DataError, match="unpickling 15.7 MB needs 47.1 MB of memory"):
        data.load(str(path), limit=10)


class Allocate:
    """Unpickles as numpy.ndarray(shape, 'u1'): an allocation the file holds no bytes for."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        return (np.ndarray, (self.shape, "u1"))


def test_a_tiny_pickle_cannot_allocate_gigabytes(tmp_path):
    path = tmp_path / "tiny.pkl"
    y = np.zeros(1, np.int64)
    blob = pickle.dumps(((Allocate((1_000_000, 784)), y), (y, y), (y, y)), protocol=2)
    path.write_bytes(blob)
    assert len(blob) < 400
    with pytest.raises(DataError) as info:
        data.load(str(path))
    assert str(info.value) == (
        f"{path}: the pickle asks for an array of 784000000 bytes, "
        f"more than the {len(blob)} bytes it holds"
    )


def test_available_memory_is_known_and_bounded():
    room = memory.available()
    assert room is None or 0 <= room < 1 << 50
    assert memory.size_text(784_000_000) == "784.0 MB" and memory.size_text(800) == "800 bytes"
