"""Scalers fitted on the training split, seeded splits, tables and targets, reloading rows."""

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from stackae import data
from stackae.data import DataError, Scaler
from stackae.data.scaling import Stats


def table(n=200, seed=0):
    """Rows like the issue's: 30 real features from about 0 to 4254, 2 classes."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 1.0, (n, 30)) * np.geomspace(0.01, 1000, 30)
    y = (x[:, 0] > np.median(x[:, 0])).astype(np.int64)
    return x, y


def message(source, **kwargs):
    with pytest.raises(DataError) as info:
        data.load(source, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# ---------------------------------------------------------------- Scaler


def test_scalers_fit_the_training_split_only(tmp_path):
    x, y = table()
    np.savez(tmp_path / "t.npz", x=x, y=y)
    d = data.load(str(tmp_path / "t.npz"), scale="minmax")
    train = x[d.split["train"]]
    low, high = train.min(axis=0), train.max(axis=0)
    assert d.scaler.kind == "minmax"
    assert_array_equal(d.scaler.offset, low)
    assert_array_equal(d.scaler.scale, high - low)
    expected = ((train - low) / (high - low)).astype(np.float32)
    assert_array_equal(d.train.x, expected)
    assert d.train.x.min() == 0 and d.train.x.max() == 1
    assert d.train.x.std(axis=0).min() > 0.05  # the issue: 22 of 30 features below 1e-3
    # Validation/test rows outside the training range are clipped for the cross-entropy...
    test = (x[d.split["test"]] - low) / (high - low)
    assert_array_equal(d.test.x, np.clip(test, 0, 1).astype(np.float32))
    # ... and kept as they are for the squared error.
    d2 = data.load(str(tmp_path / "t.npz"), scale="minmax", loss="squared-error")
    assert_array_equal(d2.test.x, test.astype(np.float32))

    d = data.load(str(tmp_path / "t.npz"), scale="standard", loss="squared-error")
    train = x[d.split["train"]]
    assert_allclose(d.scaler.offset, train.mean(axis=0), rtol=1e-12)
    assert_allclose(d.scaler.scale, train.std(axis=0), rtol=1e-12)
    assert_allclose(np.asarray(d.train.x).mean(axis=0), 0, atol=1e-5)
    assert_allclose(np.asarray(d.train.x).std(axis=0), 1, atol=1e-5)
    text = message(str(tmp_path / "t.npz"), scale="standard")
    assert "after standard scaling but the cross-entropy loss needs [0, 1]" in text


def test_global_is_the_old_scale_over_every_split(tmp_path):
    x, y = table()
    np.savez(tmp_path / "t.npz", x=x, y=y)
    old = data.load(str(tmp_path / "t.npz"), scale=True)
    assert old.scaler.kind == "global"
    low, high = x.min(), x.max()  # every split, the test split included, as before
    assert_array_equal(old.scaler.offset, np.full(30, low))
    for name, split in (("train", old.train), ("valid", old.valid), ("test", old.test)):
        before = np.clip((x[old.split[name]] / 2 - low / 2) / (high / 2 - low / 2), 0, 1)
        assert_array_equal(split.x, before.astype(np.float32))
    none = data.load(str(tmp_path / "t.npz"), scale=False, loss="squared-error")
    assert none.scaler.kind == "none"


def test_constant_features_and_pixels():
    x = np.ones((40, 3))
    x[:, 1] = np.arange(40)
    s = Scaler.fit("minmax", x)
    assert_array_equal(s.scale, [1, 39, 1])
    assert_array_equal(s.transform(x)[:, 0], 0)
    assert Scaler.fit("standard", x).scale[0] == 1
    d = data.load("mnist-sample", limit=20, scale="standard")
    assert d.scaler.kind == "none"  # uint8 pixels are divided by 255, never scaled
    assert d.train.x.max() <= 1


def test_stats_merge_blocks_like_one_pass():
    rng = np.random.default_rng(1)
    x = rng.normal(5, 3, (1000, 4))
    merged = Stats(4)
    for part in np.array_split(x, 7):
        merged.add(part)
    assert_allclose(merged.mean, x.mean(axis=0), rtol=1e-12)
    assert_allclose(merged.m2 / 1000, x.var(axis=0), rtol=1e-10)
    assert_array_equal(merged.low, x.min(axis=0))


def test_a_memmap_is_fitted_in_chunks(tmp_path, monkeypatch):
    import stackae.data.rows as rows

    monkeypatch.setattr(rows, "CHUNK_BYTES", 4 * 30 * 7)  # 7 rows a block
    x, _ = table(100)
    np.save(tmp_path / "t.npy", x.astype(np.float32))
    d = data.load(str(tmp_path / "t.npy"), scale="standard", loss="squared-error")
    train = x.astype(np.float32)[d.split["train"]].astype(np.float64)
    assert_allclose(d.scaler.offset, train.mean(axis=0), rtol=1e-10)
    assert_allclose(d.scaler.scale, train.std(axis=0), rtol=1e-10)
    assert isinstance(d.train.x, data.Rows)
    assert_array_equal(d.train.x[5:9], d.scaler.transform(train[5:9]))


def test_scaler_round_trips_and_refuses_edits():
    s = Scaler.fit("minmax", table()[0])
    back = Scaler.from_dict(s.to_dict(), "run.json")
    assert back.kind == "minmax"
    assert_array_equal(back.offset, s.offset)
    assert_array_equal(back.scale, s.scale)
    good = s.to_dict()
    bad = {
        "unknown scaler kind 'zscore'": {**good, "kind": "zscore"},
        "offset has 29 values but scale has 30": {**good, "offset": good["offset"][:-1]},
        "scaler scale holds NaN or infinity": {**good, "scale": [float("nan")] * 30},
        "scaler scale must be > 0, found 0.0 (feature 0)": {**good, "scale": [0.0] * 30},
        "scaler offset is not a list of numbers": {**good, "offset": "abc"},
    }
    for expected, d in bad.items():
        with pytest.raises(DataError) as info:
            Scaler.from_dict(d, "run.json")
        assert str(info.value).startswith("run.json: ") and expected in str(info.value)
    with pytest.raises(DataError, match="run.json: scaler has 30 features but the data has 784"):
        Scaler.from_dict(good, "run.json", n_features=784)


# ---------------------------------------------------------------- splits


def test_splits_are_seeded_stratified_and_reproducible(tmp_path):
    x, y = table(500)
    y[:50] = 2  # a rare class
    np.savez(tmp_path / "t.npz", x=x, y=y)
    path = str(tmp_path / "t.npz")
    d = data.load(path, scale="minmax")
    assert {k: len(v) for k, v in d.split.items()} == {"train": 400, "valid": 50, "test": 50}
    for part in (d.valid.y, d.test.y):  # each class in proportion: 225 / 225 / 50 of 500
        assert np.bincount(part)[2] == 5 and abs(np.bincount(part)[0] - 22.5) == 0.5
    again = data.load(path, scale="minmax")
    for name in ("train", "valid", "test"):
        assert_array_equal(again.split[name], d.split[name])
    other = data.load(path, split_seed=7, scale="minmax")
    assert not np.array_equal(other.split["test"], d.split["test"])
    sizes = data.load(path, valid_size=0.2, test_size=30, scale="minmax").split
    assert (len(sizes["valid"]), len(sizes["test"])) == (100, 30)

    # The recorded split and scaler give the same rows, whatever the seed, nothing refitted.
    rec = data.load(path, scale="standard", split=d.split, scaler=d.scaler, split_seed=99)
    assert rec.scaler is d.scaler
    for name in ("train", "valid", "test"):
        assert_array_equal(getattr(rec, name).x, getattr(d, name).x)
    text = message(path, split={"train": [0, 1, 600]})
    assert text == f"{path}: split train has row 600 but the data has 500 rows"
    assert "repeats a row" in message(path, split={"train": [0, 1], "test": [1]})
    text = message("mnist-sample", split=d.split)
    assert "has its own splits" in text


def test_tiny_data_keeps_one_training_batch(tmp_path):
    np.save(tmp_path / "s.npy", np.random.default_rng(0).random((24, 3)))
    d = data.load(str(tmp_path / "s.npy"))
    assert len(d.train) >= 20 and len(d.train) + len(d.valid or ()) + len(d.test or ()) == 24
    small = data.load(str(tmp_path / "s.npy"), limit=5).split
    assert list(small) == ["train"] and small["train"].tolist() == [0, 1, 2, 3, 4]
    assert "test_size=24 leaves no training rows" in message(str(tmp_path / "s.npy"), test_size=24)
    with pytest.raises(ValueError, match="valid_size"):
        data.load(str(tmp_path / "s.npy"), valid_size=1.5)


def test_own_splits_are_kept():
    d = data.load("mnist-sample", test_size=0.5)  # test_size does not apply to them
    assert d.split is None and (len(d.train), len(d.valid), len(d.test)) == (8000, 2000, 2000)
    assert len(data.load("mnist-sample", valid_size=0.25).valid) == 2500


# ---------------------------------------------------------------- tables and targets


def test_csv_quoted_header_label_and_refusals(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('"a","label","b"\n"0.5","1",0.25\n1,0,"0"\n0,1,1\n')
    d = data.load(str(path), label_column="label", valid_size=0, test_size=0)
    assert_array_equal(d.train.x, [[0.5, 0.25], [1, 0], [0, 1]])
    assert_array_equal(d.train.y, [1, 0, 1])
    assert d.target_kind == "classes" and d.n_outputs == 2

    path.write_text("a,b,c\n0.5,1,0\n0.25,,1\n")
    assert message(str(path)) == f"{path}: line 3: missing value in column 'b'"
    path.write_text("a,name,c\n0.5,x1,0\n")
    assert message(str(path)) == f"{path}: column 'name' holds text, not numbers ('x1' in line 2)"
    path.write_text("0.5,1\n0.5,NA\n")
    assert message(str(path)) == f"{path}: line 2: missing value in column '1'"
    path.write_text('a,b\n"1,5",2\n')
    assert "column 'a' holds text" in message(str(path))


def test_float_targets_are_values(tmp_path):
    x, _ = table(100)
    target = x[:, :2] @ [0.5, -1.25] + 0.1
    np.savez(tmp_path / "r.npz", x=x, y=target)
    d = data.load(str(tmp_path / "r.npz"), scale="minmax")
    assert (d.target_kind, d.n_outputs, d.n_classes) == ("values", 1, None)
    assert d.train.y.dtype == np.float32
    assert_array_equal(d.train.y, target[d.split["train"]].astype(np.float32))
    np.savez(tmp_path / "r2.npz", x=x, y=np.stack([target, -target], axis=1))
    d = data.load(str(tmp_path / "r2.npz"), scale="minmax")
    assert d.n_outputs == 2 and d.train.y.shape == (len(d.train), 2)
    bad = target.copy()
    bad[7] = np.nan
    np.savez(tmp_path / "r3.npz", x=x, y=bad)
    assert "targets must be finite, found NaN/inf in row 7" in message(
        str(tmp_path / "r3.npz"), scale="minmax", split={"train": np.arange(100)}
    )
    path = tmp_path / "r.csv"
    path.write_text("a,b,price\n0.1,0.2,3.5\n0.3,0.4,1.25\n0.5,0.6,7\n")
    d = data.load(str(path), label_column="price", valid_size=0, test_size=0)
    assert d.target_kind == "values"
    assert_array_equal(d.train.y, np.float32([3.5, 1.25, 7]))


def test_dataframes_and_arrays():
    x, y = table(60)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(30)]).assign(kind=y)
    d = data.load(frame, label_column="kind", scale="minmax")
    assert d.name == "<DataFrame>" and d.n_features == 30 and d.n_classes == 2
    assert_array_equal(d.train.y, y[d.split["train"]])
    assert_array_equal(d.train.x, d.scaler.transform(x[d.split["train"]], clip=True))
    frame.loc[4, "f3"] = np.nan
    assert message(frame, label_column="kind") == (
        "<DataFrame>: missing value in row 4, column 'f3'"
    )
    text = message(frame.assign(f3="text"), label_column="kind")
    assert text.startswith("<DataFrame>: column 'f3' holds")
    d = data.load((x, y), scale="minmax")
    assert d.name == "<array>" and d.target_kind == "classes"
    assert data.load(x, scale="minmax").train.y is None


def test_encode_rows_without_the_recorded_label_column(tmp_path):
    x, y = table(60)
    labelled = tmp_path / "run.csv"
    rows = np.column_stack([x, y])
    np.savetxt(labelled, rows, delimiter=",", header=",".join([*map(str, range(30)), "y"]))
    labelled.write_text(labelled.read_text().lstrip("# "))
    run = data.load(str(labelled), label_column="y", scale="minmax")
    new = tmp_path / "new.csv"
    np.savetxt(new, x[:5], delimiter=",")
    d = data.load(str(new), label_column="y", scaler=run.scaler, valid_size=0, test_size=0)
    assert d.train.y is None
    assert_array_equal(d.train.x, run.scaler.transform(x[:5], clip=True))
    # The same row scales the same alone, with a neighbour, or among all (the issue).
    alone = data.load(x[:1], scaler=run.scaler, valid_size=0, test_size=0).train.x
    assert_array_equal(alone[0], d.train.x[0])


def test_relative_mnist_path_is_made_absolute(tmp_path, monkeypatch):
    x = np.zeros((40, 28, 28), np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=np.arange(40) % 10)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(data.MNIST_ENV, "mnist.npz")
    d = data.load("mnist", valid_size=10)
    assert d.origin == str(tmp_path / "mnist.npz")
    assert str(tmp_path / "mnist.npz") in data.default_source()[1]
