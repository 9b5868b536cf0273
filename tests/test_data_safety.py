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


# ---------------------------------------------------------------- tables read as the user meant
# Tables are read by a rule the user can predict: a header when it names columns, the
# columns a run recorded matched by name, and every guess said in one line.


def table_rows(n=150, width=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, width)), np.arange(n) % 3


def write_table(path, x, y=None, names=None, bom=False, first=None):
    lines = [] if names is None else [",".join(names)]
    if first is not None:
        lines.append(first)
    for k, row in enumerate(x):
        cells = [repr(float(v)) for v in row] + ([] if y is None else [str(int(y[k]))])
        lines.append(",".join(cells))
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def said(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "stackae.data"]


def test_a_headerless_csv_keeps_its_first_row_whatever_starts_it(tmp_path, caplog):
    x, _ = table_rows(40)
    # A UTF-8 byte order mark before the first number: still a data row.
    d = data.load(write_table(tmp_path / "bom.csv", x, bom=True), loss="squared-error")
    assert sum(len(s) for s in (d.train, d.valid, d.test)) == 40 and d.header is False
    assert any("line 1 read as data" in line for line in said(caplog))
    # An empty first cell is a missing value in a data row, not a header.
    x_text = "\n".join(",".join(repr(float(v)) for v in row) for row in x)
    (tmp_path / "empty.csv").write_text("," + x_text[x_text.index(",") + 1 :] + "\n")
    with pytest.raises(DataError, match=r"line 1: missing value in column '0'"):
        data.load(str(tmp_path / "empty.csv"), loss="squared-error")
    # A header with a byte order mark: its first name is read without it.
    d = data.load(
        write_table(tmp_path / "named.csv", x, names=["a", "b", "c", "d"], bom=True),
        loss="squared-error",
    )
    assert d.columns == ["a", "b", "c", "d"] and d.header is True


def test_a_header_of_numbers_is_data_unless_header_is_given(tmp_path, caplog):
    x, _ = table_rows(60, width=5)
    years = ["2019", "2020", "2021", "2022", "2023"]
    path = write_table(tmp_path / "years.csv", x, names=years)
    options = dict(loss="squared-error", valid_size=0, test_size=0)
    d = data.load(path, **options)
    # The guess (numbers only: data) is said in one line, with the way to say otherwise.
    assert len(d.train) == 61 and d.header is False and d.columns is None
    assert any("line 1 read as data" in line and "--header" in line for line in said(caplog))
    d = data.load(path, header=True, **options)
    assert len(d.train) == 60 and d.columns == years
    np.testing.assert_array_equal(d.train.x, x.astype(np.float32))
    with pytest.raises(DataError, match="holds text"):
        data.load(write_table(tmp_path / "named.csv", x, names=list("abcde")), header=False)


def test_duplicate_column_names_are_refused(tmp_path):
    x, y = table_rows(30)
    path = write_table(tmp_path / "dup.csv", x, y, names=["a", "b", "a", "c", "label"])
    with pytest.raises(DataError, match=r"column name 'a' appears twice \(columns 0 and 2\)"):
        data.load(path, label_column="label", scale="standard")


def test_columns_are_matched_by_name_and_a_missing_or_extra_one_is_named(tmp_path):
    x, y = table_rows(60)
    names = ["f0", "f1", "f2", "f3"]
    first = data.load(
        write_table(tmp_path / "a.csv", x, y, [*names, "label"]), label_column="label"
    )
    assert first.columns == names
    order = [2, 0, 3, 1]
    moved = write_table(tmp_path / "b.csv", x[:, order], y, [*(names[j] for j in order), "label"])
    d = data.load(moved, label_column="label", columns=names)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(d, split).x, getattr(first, split).x)
    # A label column the run's file gave by index: here the one column that is no feature.
    d = data.load(moved, label_column=4, columns=names)
    np.testing.assert_array_equal(d.test.y, first.test.y)
    # Without the label column: features still by name, no labels.
    d = data.load(
        write_table(tmp_path / "c.csv", x[:, order], None, [names[j] for j in order]),
        label_column="label",
        columns=names,
        valid_size=0,
        test_size=0,
    )
    np.testing.assert_array_equal(d.train.x, x.astype(np.float32))
    # A feature missing while the label column is there: never the label as that feature.
    short = write_table(tmp_path / "d.csv", x[:, :3], y, [*names[:3], "label"])
    with pytest.raises(DataError, match=r"no column 'f3', one of the run's 4 features"):
        data.load(short, label_column="label", columns=names)
    extra = write_table(tmp_path / "e.csv", np.c_[x, x[:, :1]], y, [*names, "g", "label"])
    with pytest.raises(DataError, match=r"column 'g' is neither one of the run's features"):
        data.load(extra, label_column="label", columns=names)


def test_a_missing_feature_is_not_reported_as_a_missing_label_column(tmp_path):
    x, y = table_rows(30)
    short = write_table(tmp_path / "short.csv", x[:, :3])  # headerless: no names to match
    with pytest.raises(DataError) as err:
        data.load(short, label_column=4, scaler=data.Scaler.none(4))
    assert "no label column" not in str(err.value)
    assert "neither the run's 4 features nor those and the label column 4" in str(err.value)


@pytest.mark.parametrize("kind", ["npy", "npz", "array"])
def test_label_column_for_arrays_is_refused_not_ignored(tmp_path, kind):
    x, y = table_rows(30)
    if kind == "npy":
        np.save(tmp_path / "x.npy", np.c_[x, y])
        source = str(tmp_path / "x.npy")
    elif kind == "npz":
        np.savez(tmp_path / "x.npz", x=x, y=y)
        source = str(tmp_path / "x.npz")
    else:
        source = np.c_[x, y]
    with pytest.raises(DataError, match="label.column applies to tables"):
        data.load(source, label_column=4, scale="standard")


def test_labels_text_or_nan_say_what_labels_must_be(tmp_path):
    x, _ = table_rows(30)
    lines = ["a,b,c,d,species"] + [
        ",".join([*(repr(float(v)) for v in row), "setosa"]) for row in x
    ]
    (tmp_path / "text.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        data.load(str(tmp_path / "text.csv"), label_column="species", scale="standard")
    assert "label column 'species' holds text ('setosa' in line 2)" in str(err.value)
    assert "labels must be integer classes" in str(err.value)
    y = (np.arange(30) % 3).astype(float)
    y[7] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"label missing \(NaN\) in row 7"):
        data.load(str(tmp_path / "nan.npz"), scale="standard")


def test_split_sizes_that_leave_no_test_split_are_said_or_refused(tmp_path, caplog):
    x, y = table_rows(150)
    np.savez(tmp_path / "t.npz", x=x, y=y)
    path = str(tmp_path / "t.npz")
    d = data.load(path, valid_size=140)
    assert d.test is None and len(d.valid) == 140
    assert any("no test split" in line for line in said(caplog))
    with pytest.raises(DataError, match=r"test_size=0.1 gets no rows: valid_size=140"):
        data.load(path, valid_size=140, test_size=0.1)
    caplog.clear()
    d = data.load(path, test_size=0.999)
    assert (len(d.train), len(d.test)) == (20, 115)
    assert any("test_size=0.999 gives 115 test rows, not 149" in line for line in said(caplog))


def test_a_class_with_no_training_row_is_said(tmp_path, caplog):
    x, y = table_rows(60)
    y = y.copy()
    y[11] = 3  # one row of class 3
    np.savez(tmp_path / "t.npz", x=x, y=y)
    d = data.load(str(tmp_path / "t.npz"))
    where = "validation" if 3 in d.valid.y else "test"
    assert 3 not in d.train.y
    assert f"class 3 has 1 row, all in the {where} split" in " ".join(said(caplog))


def test_fingerprints_tell_changed_contents_whole_or_sampled(tmp_path, monkeypatch):
    from stackae.data import readers

    x, y = table_rows(200)
    path = write_table(tmp_path / "t.csv", x, y)
    before = readers.fingerprint(path)
    assert before["sampled"] is False and before["size"] == os.path.getsize(path)
    lines = open(path).read().splitlines()
    (tmp_path / "t.csv").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    after = readers.fingerprint(path)
    assert after["size"] == before["size"] and after["sha256"] != before["sha256"]
    monkeypatch.setattr(readers, "FINGERPRINT_WHOLE", 1000)
    monkeypatch.setattr(readers, "FINGERPRINT_BLOCK", 100)
    sampled = readers.fingerprint(path)
    assert sampled["sampled"] is True and sampled["sha256"] != after["sha256"]
    assert readers.fingerprint(path) == sampled
