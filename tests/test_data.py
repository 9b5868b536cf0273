"""stackae.data.load: every source format, every refusal, fuzzed loaders."""

import collections
import gzip
import os
import pickle
import struct
import sys
import tempfile
import warnings

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_array_equal

from stackae import data
from stackae import images as images_module
from stackae.data import DataError


def refuse(*args, **kwargs):
    raise OSError("offline")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No download, no real cache: every source must come from files the test writes."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KERAS_HOME", str(home / ".keras"))
    monkeypatch.delenv(data.MNIST_ENV, raising=False)
    monkeypatch.setattr(keras.datasets.mnist, "load_data", refuse)
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", refuse)
    monkeypatch.setattr(data, "FASHION_DIR", str(tmp_path / "no-fashion"))
    return home


def images(n, seed=0, side=28):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side), dtype=np.uint8), np.arange(n) % 10


def write_keras_npz(path, n_train, n_test, side=28):
    x_train, y_train = images(n_train, 1, side)
    x_test, y_test = images(n_test, 2, side)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return x_train, y_train, x_test, y_test


def message(source, **kwargs):
    with pytest.raises(DataError) as info:
        data.load(source, **kwargs)
    text = str(info.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------- named sources


def test_mnist_from_env_splits_like_the_tutorial(tmp_path, monkeypatch):
    path = tmp_path / "mnist.npz"
    x_train, y_train, x_test, y_test = write_keras_npz(path, 10_030, 7)
    monkeypatch.setenv(data.MNIST_ENV, str(path))
    assert data.default_source()[0] == "mnist"
    d = data.load("mnist")
    assert (d.name, d.origin, d.image_shape, d.n_classes, d.n_features) == (
        "mnist",
        str(path),
        (28, 28),
        10,
        784,
    )
    flat = x_train.reshape(len(x_train), -1).astype(np.float32) / 255
    assert d.train.x.dtype == np.float32 and d.train.y.dtype == np.int64
    assert_array_equal(d.train.x, flat[:30])
    assert_array_equal(d.valid.x, flat[30:])
    assert_array_equal(d.valid.y, y_train[30:])
    assert_array_equal(d.test.x, x_test.reshape(7, -1) / np.float32(255))
    assert_array_equal(d.test.y, y_test)

    d = data.load("mnist", valid_size=5, limit=3)
    assert_array_equal(d.train.x, flat[:3])
    assert_array_equal(d.valid.x, flat[-5:-2])
    assert len(d.test.x) == 3
    assert data.load("mnist", valid_size=0).valid is None


def test_mnist_from_keras_cache_is_the_default(offline):
    cache = offline / ".keras" / "datasets"
    cache.mkdir(parents=True)
    write_keras_npz(cache / "mnist.npz", 40, 5)
    assert data.default_source()[0] == "mnist"
    d = data.load(None, valid_size=10)
    assert d.name == "mnist" and d.origin == str(cache / "mnist.npz")
    assert len(d.train.x) == 30


def test_mnist_missing_says_what_to_do(tmp_path, monkeypatch):
    name, note = data.default_source()
    assert name == "mnist-sample" and data.MNIST_ENV in note and "\n" not in note
    text = message("mnist")
    assert "could not be found or downloaded" in text
    assert "mnist-sample" in text and data.MNIST_ENV in text
    monkeypatch.setenv(data.MNIST_ENV, str(tmp_path / "gone.npz"))
    assert "gone.npz does not exist" in message("mnist")


def test_mnist_sample_is_shipped_and_stratified():
    d = data.load("mnist-sample")
    assert d.name == "mnist-sample" and d.origin.endswith("mnist_sample.npz")
    assert (len(d.train.x), len(d.valid.x), len(d.test.x)) == (8000, 2000, 2000)
    assert d.train.x.dtype == np.float32 and d.train.x.shape[1] == 784
    assert 0.0 <= d.train.x.min() and d.train.x.max() <= 1.0
    counts = np.bincount(d.valid.y, minlength=10)
    assert (d.n_classes, d.image_shape) == (10, (28, 28))
    assert counts.min() > 150  # every digit in the validation tail
    assert data.load(None).name == "mnist-sample"
    small = data.load("mnist-sample", valid_size=0, limit=50)
    assert small.valid is None and len(small.train.x) == 50 and len(small.test.x) == 50


def write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim)
    body = header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(body)


def write_idx_folder(folder, n_train, n_test, gz=True):
    folder.mkdir()
    ext = ".gz" if gz else ""
    x_train, y_train = images(n_train, 3)
    x_test, y_test = images(n_test, 4)
    write_idx(folder / f"train-images-idx3-ubyte{ext}", x_train)
    write_idx(folder / f"train-labels-idx1-ubyte{ext}", y_train.astype(np.uint8))
    write_idx(folder / f"t10k-images-idx3-ubyte{ext}", x_test)
    write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", y_test.astype(np.uint8))
    return x_train, y_train, x_test, y_test


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder(tmp_path, gz):
    x_train, y_train, x_test, y_test = write_idx_folder(tmp_path / "idx", 20, 6, gz)
    d = data.load(str(tmp_path / "idx"), valid_size=4)
    assert_array_equal(d.train.x, x_train[:16].reshape(16, -1) / np.float32(255))
    assert_array_equal(d.valid.y, y_train[16:])
    assert_array_equal(d.test.y, y_test)
    assert d.image_shape == (28, 28) and d.n_classes == 10


def test_fashion_mnist_from_the_debian_folder(tmp_path, monkeypatch):
    assert "apt-get install dataset-fashion-mnist" in message("fashion-mnist")
    write_idx_folder(tmp_path / "fashion", 10_010, 5)
    monkeypatch.setattr(data, "FASHION_DIR", str(tmp_path / "fashion"))
    d = data.load("fashion-mnist")
    sizes = (len(d.train.x), len(d.valid.x), len(d.test.x))
    assert d.name == "fashion-mnist" and sizes == (10, 10_000, 5)


# ---------------------------------------------------------------- file formats


def test_npz_plain_and_keras_layout(tmp_path):
    x = np.random.default_rng(0).random((30, 6))
    np.savez(tmp_path / "xy.npz", x=x, y=np.arange(30) % 3)
    d = data.load(str(tmp_path / "xy.npz"))
    # No split of its own: a seeded, stratified 10 % / 10 % split, its indices returned.
    assert d.name == str(tmp_path / "xy.npz") and (len(d.valid), len(d.test)) == (3, 3)
    assert d.train.x.dtype == np.float32 and d.n_classes == 3 and d.image_shape is None
    assert_array_equal(np.sort(np.concatenate(list(d.split.values()))), np.arange(30))
    for name, split in (("train", d.train), ("valid", d.valid), ("test", d.test)):
        assert_array_equal(split.x, x[d.split[name]].astype(np.float32))
        assert_array_equal(split.y, np.arange(30)[d.split[name]] % 3)
    assert sorted(d.valid.y) == sorted(d.test.y) == [0, 1, 2]  # one of each class

    np.savez(tmp_path / "one.npz", x)
    assert data.load(str(tmp_path / "one.npz"), valid_size=10).valid.x.shape == (10, 6)

    write_keras_npz(tmp_path / "k.npz", 12, 4, side=5)
    d = data.load(str(tmp_path / "k.npz"))
    assert (d.train.x.shape, d.test.x.shape, d.image_shape) == ((12, 25), (4, 25), (5, 5))

    np.savez(tmp_path / "odd.npz", a=x, b=x)
    assert "expected arrays x" in message(str(tmp_path / "odd.npz"))


def test_npy_float32_in_range_stays_a_memmap(tmp_path):
    x = np.random.default_rng(0).random((40, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    d = data.load(str(tmp_path / "x.npy"), valid_size=0, test_size=0)
    assert isinstance(d.train.x, np.memmap) and d.split["train"].tolist() == list(range(40))
    assert_array_equal(d.train.x, x)
    # Rows drawn at random stream through a view that reads them from the file.
    d = data.load(str(tmp_path / "x.npy"), valid_size=10)
    assert data.streams(d.train.x) and data.streams(d.valid.x)
    assert_array_equal(d.train.x, x[d.split["train"]])
    assert_array_equal(d.valid.x, x[d.split["valid"]])

    # uint8 streams too (it used to be converted whole, 4 bytes a value, in memory).
    np.save(tmp_path / "u8.npy", (x * 255).astype(np.uint8).reshape(40, 1, 5))
    d = data.load(str(tmp_path / "u8.npy"), valid_size=0, test_size=0)
    assert data.streams(d.train.x) and d.train.x.shape == (40, 5)
    assert_array_equal(d.train.x, (x * 255).astype(np.uint8) / np.float32(255))
    assert d.image_shape == (1, 5)
    np.save(tmp_path / "f64.npy", x.astype(np.float64))
    assert data.load(str(tmp_path / "f64.npy")).train.x.dtype == np.float32


def test_single_channel_images_keep_their_picture_shape(tmp_path):
    x = images(12)[0][..., None]  # (12, 28, 28, 1), as Keras image datasets come
    np.save(tmp_path / "c.npy", x)
    d = data.load(str(tmp_path / "c.npy"))
    assert d.image_shape == (28, 28) and d.train.x.shape == (12, 784)
    assert_array_equal(d.train.x, x.reshape(12, -1) / np.float32(255))
    kernel = np.random.default_rng(0).random((784, 4)).astype(np.float32)
    assert images_module.filters_image(kernel, d.image_shape, grid=(2, 2)).shape == (57, 57)
    # Colour images keep (h, w, 3), drawn in colour; other channel counts train as flat rows,
    # no image shape recorded, pictures in square tiles.
    np.save(tmp_path / "rgb.npy", np.zeros((5, 8, 8, 3), np.uint8))
    d = data.load(str(tmp_path / "rgb.npy"))
    assert d.image_shape == (8, 8, 3) and d.train.x.shape == (5, 192)
    assert images_module.filters_image(kernel[:192], d.image_shape, grid=(2, 2)).ndim == 3
    np.save(tmp_path / "two.npy", np.zeros((5, 8, 8, 2), np.uint8))
    d = data.load(str(tmp_path / "two.npy"))
    assert d.image_shape is None and d.train.x.shape == (5, 128)
    assert images_module.filters_image(kernel[:128], d.image_shape, grid=(2, 2)).ndim == 2


def test_csv_with_header_and_labels(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,label,b\n0.5,1,0.25\n1,0,0\n0,2,1\n")
    d = data.load(str(path), label_column="label")
    assert_array_equal(d.train.x, [[0.5, 0.25], [1, 0], [0, 1]])
    assert_array_equal(d.train.y, [1, 0, 2])
    assert d.n_classes == 3
    assert_array_equal(data.load(str(path), label_column=1).train.y, [1, 0, 2])
    assert "no label column 'kind'" in message(str(path), label_column="kind")

    path.write_text("0.5,1\n0,0.25\n")
    assert_array_equal(data.load(str(path)).train.x, [[0.5, 1], [0, 0.25]])


def test_csv_ragged_and_non_numeric(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("0,1,0\n1,1,0\n0,1\n")
    assert message(str(path)) == f"{path}: line 3 has 2 columns, expected 3"
    path.write_text("x,y\n0,1\n1,oops\n")
    # A column of text is named (the message used to name the line only).
    assert message(str(path)) == f"{path}: column 'y' holds text, not numbers ('oops' in line 3)"
    path.write_text("")
    assert "empty" in message(str(path))


def tutorial_pickle(path, protocol=2):
    rng = np.random.default_rng(0)
    pairs = tuple(
        (rng.random((n, 784)).astype(np.float32), (np.arange(n) % 10).astype(np.int64))
        for n in (50, 20, 10)
    )
    with gzip.open(path, "wb") as f:
        pickle.dump(pairs, f, protocol=protocol)
    return pairs


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_tutorial_pickle(tmp_path, protocol):
    path = str(tmp_path / "mnist.pkl.gz")
    train, valid, test = tutorial_pickle(path, protocol)
    d = data.load(path)
    assert_array_equal(d.train.x, train[0])
    assert_array_equal(d.valid.y, valid[1])
    assert_array_equal(d.test.x, test[0])
    assert d.image_shape == (28, 28) and d.n_classes == 10
    d = data.load(path, valid_size=30)
    assert_array_equal(d.train.x, train[0][:40])
    assert_array_equal(d.valid.x, np.concatenate([train[0][40:], valid[0]]))


class Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(((Exploit(target), None), None, None), f, protocol=2)
    text = message(str(path))
    assert "refusing to load" in text and "system" in text
    assert not target.exists()

    with gzip.open(path, "wb") as f:
        pickle.dump(collections.OrderedDict(), f)
    assert "refusing to load collections.OrderedDict" in message(str(path))
    with gzip.open(path, "wb") as f:
        pickle.dump([1, 2], f)
    assert "expected a tuple (train, valid, test)" in message(str(path))


# ---------------------------------------------------------------- refusals


def test_missing_unknown_and_corrupt_files(tmp_path, monkeypatch):
    assert message(str(tmp_path / "nope.npy")) == f"{tmp_path / 'nope.npy'}: no such file or folder"
    (tmp_path / "x.xlsx").write_bytes(b"PK")
    assert "unknown file type" in message(str(tmp_path / "x.xlsx"))
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were missing
    assert message(str(tmp_path / "x.parquet")) == (
        f"{tmp_path / 'x.parquet'}: reading .parquet needs pyarrow (pip install pyarrow)"
    )

    np.savez_compressed(tmp_path / "t.npz", x=np.zeros((100, 100)))
    blob = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(blob[: len(blob) // 2])
    assert "cannot read as .npz" in message(str(tmp_path / "t.npz"))

    (tmp_path / "h.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    assert "cannot read as .npy" in message(str(tmp_path / "h.npy"))
    np.save(tmp_path / "short.npy", np.zeros((100, 10), np.float32))
    blob = (tmp_path / "short.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(blob[:-100])
    assert "cannot read as .npy" in message(str(tmp_path / "short.npy"))

    (tmp_path / "g.pkl.gz").write_bytes(b"not gzip at all")
    assert "cannot read as a pickle" in message(str(tmp_path / "g.pkl.gz"))

    folder = tmp_path / "idx"
    write_idx_folder(folder, 5, 2, gz=False)
    blob = (folder / "train-images-idx3-ubyte").read_bytes()
    (folder / "train-images-idx3-ubyte").write_bytes(blob[:-10])
    assert "its header says" in message(str(folder))
    (tmp_path / "empty").mkdir()
    assert "no IDX files" in message(str(tmp_path / "empty"))


def test_nan_and_inf_are_counted_with_the_first_row(tmp_path, monkeypatch):
    x = np.full((40, 8), 0.5, np.float32)
    x[17, 2], x[17, 3], x[30, 0] = np.nan, np.inf, -np.inf
    np.save(tmp_path / "data.npy", x)
    monkeypatch.chdir(tmp_path)
    assert message("data.npy") == "data.npy: 3 NaN/inf values, first in row 17"
    # Rows are counted in the file, also when they land in the validation split.
    x[17] = 0.5
    x[35, :] = np.nan
    np.save(tmp_path / "data.npy", x)
    assert message("data.npy", valid_size=20) == "data.npy: 9 NaN/inf values, first in row 30"


def test_range_for_the_cross_entropy(tmp_path):
    path = str(tmp_path / "r.npy")
    np.save(path, np.linspace(-1, 3, 20).reshape(4, 5))
    text = message(path)
    assert "from -1 to 3" in text and "use --scale or --loss squared-error" in text
    assert np.asarray(data.load(path, loss="squared-error").train.x).max() == 3
    scaled = np.asarray(data.load(path, scale=True).train.x)
    assert scaled.min() == 0 and scaled.max() == 1
    np.save(path, np.full((3, 2), 255, np.uint8))
    assert np.asarray(data.load(path).train.x).max() == 1  # uint8 is scaled, never refused
    np.save(path, np.full((3, 2), 1e300))
    assert "do not fit in float32" in message(path, loss="squared-error")
    with pytest.raises(ValueError, match="loss"):
        data.load(path, loss="hinge")


def test_shapes_and_labels_are_checked(tmp_path):
    path = str(tmp_path / "s.npy")
    np.save(path, np.zeros(5))
    assert "expected a 2-d array" in message(path)
    np.save(path, np.zeros((0, 3)))
    assert "no rows" in message(path)
    np.savez(tmp_path / "l.npz", x=np.zeros((4, 2)), y=np.arange(3))
    assert "3 labels for 4 rows" in message(str(tmp_path / "l.npz"))
    np.savez(tmp_path / "l.npz", x=np.zeros((3, 2)), y=np.array([0, -2, 1]))
    assert "labels must be >= 0, found -2 (row 1)" in message(str(tmp_path / "l.npz"))
    np.savez(tmp_path / "w.npz", x_train=np.zeros((3, 2)), x_test=np.zeros((3, 4)))
    assert "different widths" in message(str(tmp_path / "w.npz"))
    np.savez(tmp_path / "v.npz", x=np.zeros((3, 2)))
    assert "valid_size=3 leaves no training rows" in message(str(tmp_path / "v.npz"), valid_size=3)


def test_public_checks():
    data.check_width(np.zeros((2, 784)), 784, "d.npy")
    with pytest.raises(DataError, match="d.npy: data has 30 features but the run expects 784"):
        data.check_width(np.zeros((2, 30)), 784, "d.npy")
    data.check_labels(np.array([0, 9]), 10, "y")
    with pytest.raises(DataError, match="found 2.5"):
        data.check_labels(np.array([0, 2.5]), 10, "y")
    with pytest.raises(DataError, match="found -1"):
        data.check_labels(np.array([-1]), 10, "y")
    with pytest.raises(DataError, match="label 12 .row 1. is out of range for 10 classes"):
        data.check_labels(np.array([0, 12]), 10, "y")
    with pytest.raises(DataError, match="found dtype <U1"):
        data.check_labels(np.array(["a"]), 10, "y")
    data.check_batch(20, 20, "d")
    with pytest.raises(DataError, match="d: only 5 training rows, fewer than one batch of 20"):
        data.check_batch(5, 20, "d")


# ---------------------------------------------------------------- fuzzing

DTYPES = [np.uint8, np.int8, np.int64, np.float16, np.float32, np.float64, np.bool_, np.complex64]
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
arrays = st.sampled_from(DTYPES).flatmap(lambda dtype: hnp.arrays(dtype, shapes))
cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-300, 300),
    st.sampled_from(["", "a", "nan", "1e999", '"0.5"']),
)
ragged = st.lists(st.lists(cells, max_size=4), max_size=5)


def write_case(folder, kind, content):
    if kind.startswith("bytes."):
        path = os.path.join(folder, "d" + kind[len("bytes") :])
        with open(path, "wb") as f:
            f.write(content)
    elif kind == "npy":
        path = os.path.join(folder, "d.npy")
        np.save(path, content)
    elif kind == "npz":
        path = os.path.join(folder, "d.npz")
        x, y = content
        np.savez(path, x=x, **({} if y is None else {"y": y}))
    elif kind == "csv":
        path = os.path.join(folder, "d.csv")
        with open(path, "w") as f:
            f.write("\n".join(",".join(str(c) for c in row) for row in content))
    elif kind == "pkl":
        path = os.path.join(folder, "d.pkl.gz")
        with gzip.open(path, "wb") as f:
            pickle.dump(content, f, protocol=2)
    return path


GARBAGE = ["bytes.npy", "bytes.npz", "bytes.csv", "bytes.pkl.gz"]
cases = st.one_of(
    st.tuples(st.just("npy"), arrays),
    st.tuples(st.just("npz"), st.tuples(arrays, st.none() | arrays)),
    st.tuples(st.just("csv"), ragged),
    st.tuples(st.just("pkl"), st.tuples(*[st.tuples(arrays, arrays)] * 3) | arrays),
    st.tuples(st.sampled_from(GARBAGE), st.binary()),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=cases,
    loss=st.sampled_from(["cross-entropy", "squared-error"]),
    scale=st.booleans(),
    valid_size=st.none() | st.integers(0, 3),
)
def test_loaders_load_or_refuse_cleanly(case, loss, scale, valid_size):
    kind, content = case
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("error")
        path = write_case(folder, kind, content)
        try:
            d = data.load(path, loss=loss, scale=scale, valid_size=valid_size)
        except DataError as err:
            assert "\n" not in str(err) and str(err)
            return
        for split in (d.train, d.valid, d.test):
            if split is None:
                continue
            x = np.asarray(split.x)
            assert x.dtype == np.float32 and x.ndim == 2 and len(x) > 0
            assert np.isfinite(x).all()
            if loss == "cross-entropy" or scale:
                assert x.min() >= 0 and x.max() <= 1
            if split.y is not None:
                assert split.y.dtype == np.int64 and len(split.y) == len(x)
                assert split.y.min() >= 0 and split.y.max() < d.n_classes
