"""stackae.data against files that would exhaust memory or block: bombs, FIFOs, devices."""

import gzip
import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from stackae import data
from stackae.data import DataError

INFLATED = 256 << 20  # what each bomb inflates to; the loader must stay 200 MB under it
ZEROS = bytes(16 << 20)


def zeros(f, n_bytes=INFLATED):
    for _ in range(n_bytes // len(ZEROS)):
        f.write(ZEROS)


def idx_header(shape, code=0x08):
    return struct.pack(">BBBB", 0, 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def npy_header(shape):
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    """Small files that inflate to INFLATED bytes, each lying about its size in its own way."""
    folder = tmp_path_factory.mktemp("bombs")
    paths = {}
    # IDX: a header saying 1 x 28 x 28, then 256 MB of zeros.
    (folder / "idx").mkdir()
    paths["idx"] = str(folder / "idx")
    with gzip.open(folder / "idx" / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(idx_header((1, 28, 28)) + bytes(784))
        zeros(f)
    # IDX: a header declaring far more than any gzip of this size can inflate to.
    (folder / "huge").mkdir()
    paths["huge"] = str(folder / "huge")
    with gzip.open(folder / "huge" / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx_header((60_000, 4096, 4096)) + bytes(1000))
    # npz: an .npy member whose header says (1, 784) followed by 256 MB more.
    paths["npz-long"] = str(folder / "long.npz")
    with zipfile.ZipFile(paths["npz-long"], "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("x.npy", "w", force_zip64=True) as m:
            m.write(npy_header((1, 784)) + bytes(784))
            zeros(m)
    # npz: a member that is not an .npy (np.load would return it as bytes, inflated whole).
    paths["npz-raw"] = str(folder / "raw.npz")
    with zipfile.ZipFile(paths["npz-raw"], "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("x", "w", force_zip64=True) as m:
            zeros(m)
    # .pkl.gz: an array of 256 MB whose gzip trailer says the file inflates to 1,000 bytes.
    paths["pkl"] = str(folder / "bomb.pkl.gz")
    x = np.zeros((INFLATED // 784, 784), np.uint8)
    y = np.zeros(1, np.int64)
    with gzip.open(paths["pkl"], "wb", compresslevel=1) as f:
        pickle.dump(((x, y), (x[:1], y), (x[:1], y)), f, protocol=4)
    del x
    with open(paths["pkl"], "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write((1000).to_bytes(4, "little"))
    for path in paths.values():
        size = sum(p.stat().st_size for p in [*folder.rglob("*")] if str(p).startswith(path))
        assert size < 4 << 20, (path, size)  # each a few MB at most
    return paths


LOAD_ALL = """
import json, sys
from stackae import data


def status(key):  # KiB; VmHWM is this process's peak (ru_maxrss keeps the parent's across exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


before = status("VmRSS")
refusals = {}
for path in sys.argv[1:]:
    try:
        data.load(path)
        refusals[path] = None
    except data.DataError as err:
        refusals[path] = str(err)
grew = status("VmHWM") - before
print(json.dumps({"refusals": refusals, "grew_mb": grew / 1024}))
"""


def test_bombs_are_refused_in_one_line_with_bounded_memory(bombs):
    result = subprocess.run(
        [sys.executable, "-c", LOAD_ALL, *bombs.values()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    refusals = out["refusals"]
    assert all(text and "\n" not in text for text in refusals.values()), refusals
    idx = os.path.join(bombs["idx"], "train-images-idx3-ubyte.gz")
    assert refusals[bombs["idx"]] == (
        f"{idx}: IDX file holds more than the 800 bytes its header says"
    )
    assert "more than a gzip file of" in refusals[bombs["huge"]]
    assert refusals[bombs["npz-long"]].startswith(f"{bombs['npz-long']}: member x.npy holds ")
    assert refusals[bombs["npz-long"]].endswith("its header says 912")
    assert refusals[bombs["npz-raw"]] == f"{bombs['npz-raw']}: member x is not a .npy array"
    assert refusals[bombs["pkl"]] == (
        f"{bombs['pkl']}: inflates past the 1000 bytes its gzip trailer declares"
    )
    assert out["grew_mb"] < 200, out


def test_honest_gzip_files_still_load(tmp_path):
    x = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    (tmp_path / "idx").mkdir()
    with gzip.open(tmp_path / "idx" / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx_header(x.shape) + x.tobytes())
    d = data.load(str(tmp_path / "idx"))
    np.testing.assert_array_equal(d.train.x, x.reshape(2, -1) / np.float32(255))
    with gzip.open(tmp_path / "idx" / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx_header(x.shape) + x.tobytes()[:-1])
    assert "IDX file has 1583 bytes, its header says 1584" in str(
        pytest.raises(DataError, data.load, str(tmp_path / "idx")).value
    )
    np.savez_compressed(tmp_path / "c.npz", x=np.zeros((50, 784), np.uint8))
    assert data.load(str(tmp_path / "c.npz")).train.x.shape == (40, 784)  # 10 % valid, 10 % test


@pytest.fixture
def alarm():
    """Fail instead of hanging if something blocks on a special file."""

    def timeout(signum, frame):
        raise TimeoutError("blocked on a special file")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def refusal(source, **kwargs):
    with pytest.raises(DataError) as info:
        data.load(source, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("name", ["d.npy", "d.npz", "d.csv", "d.pkl.gz", "d.parquet"])
def test_a_fifo_is_refused_without_blocking(tmp_path, alarm, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    assert refusal(str(fifo)) == f"{fifo}: is a FIFO, not a regular file"


def test_special_files_in_folders_and_sources_are_refused(tmp_path, alarm, monkeypatch):
    folder = tmp_path / "idx"
    folder.mkdir()
    fifo = folder / "train-images-idx3-ubyte"
    os.mkfifo(fifo)
    assert refusal(str(folder)) == f"{fifo}: is a FIFO, not a regular file"
    os.mkfifo(tmp_path / "mnist.npz")
    monkeypatch.setenv(data.MNIST_ENV, str(tmp_path / "mnist.npz"))
    assert refusal("mnist") == f"{tmp_path / 'mnist.npz'}: is a FIFO, not a regular file"
    assert refusal(os.devnull) == f"{os.devnull}: is a character device, not a regular file"


def test_importing_and_loading_data_imports_no_backend():
    code = (
        "import sys; from stackae import data; d = data.load('mnist-sample', limit=10); "
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


# Issue 30, 13. Labels that are no small set of classes are refused before a softmax over
# all of them is built (0 and 1000000 would make a million classes for two).
def test_sparse_labels_are_refused_naming_the_count(tmp_path):
    from click.testing import CliRunner

    from stackae_cli.main import cli

    rng = np.random.default_rng(0)
    table = tmp_path / "t.csv"
    labels = np.where(np.arange(200) % 2, 1_000_000, 0)
    rows = np.column_stack([rng.random((200, 4)), labels])
    np.savetxt(table, rows, delimiter=",", fmt="%g", header="a,b,c,d,label", comments="")
    run = tmp_path / "run"

    def invoke(*args):
        return CliRunner().invoke(cli, [str(a) for a in args])

    args = ["--data", table, "--label-column", "label", "--layers", "3", "--epochs", "1"]
    done = invoke("pretrain", *args, "--out", run, "-q")
    assert done.exit_code == 0, done.output
    result = invoke("finetune", run, "--epochs", "1", "-q")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    assert "1000001 classes" in lines[0] and "only 2 occur" in lines[0], lines[0]
    assert "--task regression" in lines[0]
    assert not (run / "classifier.keras").exists()
    assert json.loads((run / "manifest.json").read_text())["status"] == "pretrained"


# Issue 30, 17. A feature whose scaling a saved model cannot hold in float32 is refused
# before training, in one line, by the command line and the estimators.
def huge_feature_table(path):
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.random((100, 3)), rng.random(100) * 1e20, np.arange(100) % 2])
    np.savetxt(path, rows, delimiter=",", fmt="%.17g")
    return path, rows


def test_a_feature_too_wide_for_float32_scaling_is_refused_before_training(tmp_path):
    from click.testing import CliRunner

    from stackae_cli.main import cli

    table, rows = huge_feature_table(tmp_path / "t.csv")
    run = tmp_path / "run"
    args = ["pretrain", "--data", table, "--label-column", "4", "--scale", "standard"]
    args += ["--layers", "3", "--epochs", "1", "--out", run, "-q"]
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "feature 3" in lines[0] and "float32" in lines[0], result.output
    assert not run.exists()

    from stackae.sklearn import SdAClassifier

    with pytest.raises(ValueError, match="feature 3 .*float32"):
        SdAClassifier(layers=(3,), scale="standard").fit(rows[:, :4], rows[:, 4].astype(int))
