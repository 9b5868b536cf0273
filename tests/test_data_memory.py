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
        "52.4 MB available; use limit (or save the data as .npy, which streams)"
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


# Issue 30, 14. The estimate counts more than weights, and is checked before anything is
# written, by the command line and the estimators.
def test_the_training_estimate_counts_activations_optimizer_state_and_codes():
    sizes, batch = [4, 10**8], [20]
    weights = 4 * (4 * 10**8 + 4 + 10**8)
    found = memory.training_bytes(150, sizes, batch)
    assert found >= 4 * weights + 4 * 20 * 10**8 * 2  # state of each weight, a batch's units
    # A layer below the top hands the codes of every row up.
    low = memory.training_bytes(10**6, [4, 1000, 2], [20, 20])
    assert low >= 4 * 10**6 * 1000 > memory.training_bytes(10**6, [4, 1000], [20])


def tiny_table(path):
    rows = np.random.default_rng(0).random((150, 4))
    np.savetxt(path, np.column_stack([rows, np.arange(150) % 3]), delimiter=",", fmt="%g")
    return path


def test_a_huge_layer_on_a_small_table_is_refused_before_a_run_is_made(tmp_path):
    from click.testing import CliRunner

    from stackae_cli.main import cli

    table = tiny_table(tmp_path / "t.csv")
    out = tmp_path / "run"
    args = ["pretrain", "--data", table, "--label-column", "4", "--layers", "100000000"]
    args += ["--out", out, "-q"]
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "GiB" in lines[0] and "activations" in lines[0], result.output
    assert not out.exists()


def test_the_estimators_check_memory_before_training():
    from stackae.errors import StackaeError
    from stackae.sklearn import StackedDenoisingAutoencoder

    x = np.random.default_rng(0).random((150, 4))
    with pytest.raises(StackaeError, match="GiB"):
        StackedDenoisingAutoencoder(layers=(10**8,)).fit(x)


# Issue 30, 15. Rows held in memory are copied once more by the training pipeline: that
# copy is counted before a run is made, not found missing after.
def test_the_training_copy_of_rows_in_memory_is_counted(monkeypatch):
    from stackae import workflows
    from stackae.config import LayerSpec
    from stackae.errors import RunError

    x = np.zeros((20_000, 784), np.float32)  # 62.7 MB in memory
    loaded = data.Data(
        name="rows",
        origin="memory",
        train=data.Split(x, None),
        valid=None,
        test=None,
        image_shape=None,
        n_classes=None,
    )
    specs = [LayerSpec(units=10, batch_size=20)]
    without = memory.training_bytes(len(x), [784, 10], [20])
    assert memory.training_bytes(len(x), [784, 10], [20], x.nbytes) == without + x.nbytes
    monkeypatch.setattr(memory, "available", lambda: without + x.nbytes // 2)
    with pytest.raises(RunError, match="the training copy of the rows"):
        workflows.check_pretraining(specs, loaded)
    monkeypatch.setattr(memory, "available", lambda: without + 2 * x.nbytes)
    workflows.check_pretraining(specs, loaded)


# Issue 30, 16. With --limit, a pickle inflating to gigabytes is refused, with its size,
# before it is inflated: it has no index, so a few rows of it would cost all of it.
def test_a_large_pickle_with_a_limit_is_refused_before_inflating(tmp_path, monkeypatch):
    from stackae.data import readers, unpickle

    path = tmp_path / "big.pkl.gz"
    x = np.zeros((20_000, 784), np.uint8)  # 15.7 MB inflated, a few kB on disk
    with gzip.open(path, "wb", compresslevel=1) as f:
        pickle.dump(((x, x[:, 0]), (x[:1], x[:1, 0]), (x[:1], x[:1, 0])), f, protocol=4)
    monkeypatch.setattr(readers, "PICKLE_LIMITED_BYTES", 10 * MB)
    inflated = []
    real = unpickle.load_arrays
    monkeypatch.setattr(
        unpickle, "load_arrays", lambda *a, **k: inflated.append(1) or real(*a, **k)
    )
    with pytest.raises(DataError, match=r"inflates to 15\.7 MB .*\.npy or \.npz"):
        data.load(str(path), limit=1000)
    assert not inflated
    assert len(data.load(str(path)).train) == 20_000  # read whole when whole is asked for
