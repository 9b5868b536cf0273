"""Tables end to end through the CLI: per-feature scaling, recorded splits, exports, regression."""

import csv
import json
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from numpy.testing import assert_allclose, assert_array_equal

from stackae import workflows
from stackae_cli.main import cli
from tests.processes import DEADLINE, signal_when

N_ROWS, N_FEATURES = 240, 5
# Feature j is multiplied by 10**(j - 2) and shifted: scales from 0.01 to 100.
SCALES = 10.0 ** (np.arange(N_FEATURES) - 2)
SHIFTS = np.array([5.0, -300.0, 0.0, 1e4, 7.0])
PRETRAIN = ["--layers", "8", "--scale", "standard", "--epochs", "2", "-q"]
FINETUNE = ["--epochs", "3", "-q"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.output


def table(seed=0):
    """(raw features on very different scales, the standard normal features, 3 class labels)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N_ROWS, N_FEATURES))
    labels = (z[:, 0] + z[:, 1] ** 2 > 1).astype(int) + (z[:, 2] > 0.5)
    return z * SCALES + SHIFTS, z, labels


def write_csv(path, x, y, name="label", quoting=csv.QUOTE_MINIMAL):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, quoting=quoting)
        writer.writerow([*(f"f{j}" for j in range(x.shape[1])), name])
        for row, label in zip(x, y):
            writer.writerow([*(repr(float(v)) for v in row), repr(label.item())])
    return path


def features(path):
    return np.loadtxt(path, delimiter=",", skiprows=1)[:, :N_FEATURES]


def split_of(run):
    with np.load(run / "split.npz") as saved:
        return {name: saved[name] for name in saved.files}


def manifest(run):
    return json.loads((run / "manifest.json").read_text())


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A fine-tuned classification run on a CSV without splits: (run, csv, finetune's output)."""
    folder = tmp_path_factory.mktemp("table")
    x, _, labels = table()
    path = write_csv(folder / "table.csv", x, labels)
    run = folder / "run"
    ok("pretrain", *PRETRAIN, "--data", path, "--label-column", "label", "--out", run)
    output = ok("finetune", run, *FINETUNE)
    return run, path, output


# ---------------------------------------------------------------- scaling


def test_a_row_encodes_the_same_alone_with_neighbours_and_in_the_whole_file(tuned, tmp_path):
    run, path, _ = tuned
    lines = path.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    ok("encode", run, "--data", path, "--out", tmp_path / "all.npz")
    whole = np.load(tmp_path / "all.npz")["train"]
    for i in (0, 17, N_ROWS - 1):
        alone = tmp_path / f"row{i}.csv"
        alone.write_text(f"{header}\n{rows[i]}\n")
        near = tmp_path / f"near{i}.csv"
        near.write_text("\n".join([header, *rows[max(i - 2, 0) : i + 3]]) + "\n")
        ok("encode", run, "--data", alone, "--out", tmp_path / f"alone{i}.npz")
        ok("encode", run, "--data", near, "--out", tmp_path / f"near{i}.npz")
        assert_allclose(np.load(tmp_path / f"alone{i}.npz")["train"][0], whole[i], atol=1e-6)
        at = i - max(i - 2, 0)
        assert_allclose(np.load(tmp_path / f"near{i}.npz")["train"][at], whole[i], atol=1e-6)
    # An independent reference: standardise with NumPy's statistics of the training rows
    # only, then the sigmoid layer with the encoder's weights.
    x = features(path)
    train = x[split_of(run)["train"]]
    kernel, bias = keras.saving.load_model(run / "encoder.keras").layers[-1].get_weights()
    scaled = (x - train.mean(axis=0)) / train.std(axis=0)
    assert_allclose(whole, 1 / (1 + np.exp(-(scaled @ kernel + bias))), atol=1e-5)


def test_scaling_comes_from_the_training_split_only(tuned, tmp_path):
    run, path, _ = tuned
    x, _, labels = table()
    split = split_of(run)
    recorded = manifest(run)["data"]["scaler"]
    train = x[split["train"]]
    assert_allclose(recorded["offset"], train.mean(axis=0), rtol=1e-12)
    assert_allclose(recorded["scale"], train.std(axis=0), rtol=1e-9)
    wild = x.copy()  # outliers in validation and test rows change nothing
    wild[split["valid"][:3], 1] = 1e9
    wild[split["test"][:3], 3] = -1e9
    other = tmp_path / "other"
    data = write_csv(tmp_path / "wild.csv", wild, labels)
    ok("pretrain", *PRETRAIN, "--data", data, "--label-column", "label", "--out", other)
    assert manifest(other)["data"]["scaler"] == recorded
    assert {k: v.tolist() for k, v in split_of(other).items()} == {
        k: v.tolist() for k, v in split.items()
    }
    wild = x.copy()
    wild[split["train"][0], 1] = 1e9  # the same outlier in a training row does change it
    ok(
        "pretrain",
        *PRETRAIN,
        "--data",
        write_csv(tmp_path / "train.csv", wild, labels),
        "--label-column",
        "label",
        "--out",
        tmp_path / "train",
    )
    assert manifest(tmp_path / "train")["data"]["scaler"]["scale"][1] > 1e6


# ---------------------------------------------------------------- splits and exports


def test_a_csv_without_a_split_gets_one_recorded_split_that_every_verb_uses(tuned):
    run, _, output = tuned
    split = split_of(run)
    _, _, labels = table()
    rows = np.concatenate([split["train"], split["valid"], split["test"]])
    assert_array_equal(np.sort(rows), np.arange(N_ROWS))  # a partition of the file's rows
    assert len(split["valid"]) == len(split["test"]) == N_ROWS // 10  # the default fractions
    for name in ("valid", "test"):  # stratified: each class in proportion, to one row
        expected = np.bincount(labels, minlength=3) * len(split[name]) / N_ROWS
        assert np.all(np.abs(np.bincount(labels[split[name]], minlength=3) - expected) <= 1)
    valid = [line for line in output.splitlines() if line.startswith("validation error")]
    test = [line for line in output.splitlines() if line.startswith("test error")]
    assert len(valid) == len(test) == 1, output
    evaluated = ok("evaluate", run)
    assert f"{test[0]} on {len(split['test'])} rows" in evaluated, evaluated
    shapes = {k: len(v) for k, v in split.items()}
    assert f"shapes { ({k: [n, N_FEATURES] for k, n in shapes.items()}) }" in ok("info", run)
    record = manifest(run)["finetune"]
    errors = [record["valid_error"], record["test_error"]]
    assert [f"validation error {100 * errors[0]:.2f} %", f"test error {100 * errors[1]:.2f} %"] == [
        valid[0],
        test[0],
    ]


EXPORTED = """
import sys
sys.modules["stackae"] = sys.modules["stackae_cli"] = None  # any import of them fails
import keras, numpy as np
x = np.loadtxt(sys.argv[1], delimiter=",", skiprows=1)[:, :-1]
encoder = keras.saving.load_model(sys.argv[2] + "/encoder.keras")
classifier = keras.saving.load_model(sys.argv[2] + "/classifier.keras")
np.savez(sys.argv[3], codes=encoder.predict(x, verbose=0), probs=classifier.predict(x, verbose=0))
"""


# test_tabular_model's test_exports_with_a_scaler_take_raw_features_and_load_without_stackae
# is the faster library-level check.
@pytest.mark.slow
def test_exported_models_take_raw_features_in_a_process_without_stackae(tuned, tmp_path):
    run, path, _ = tuned
    out = tmp_path / "outputs.npz"
    done = subprocess.run(
        [sys.executable, "-c", EXPORTED, str(path), str(run), str(out)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = np.load(out)
    ok("encode", run, "--data", path, "--out", tmp_path / "codes.npz")
    # The exported model reads float32 features: f3 (about 1e4, standard deviation 10) keeps
    # 7 significant digits, so its standardised value is known to about 1e-4 there; stackae
    # scales in float64 (measured: codes differ by at most 1.1e-4).
    assert_allclose(found["codes"], np.load(tmp_path / "codes.npz")["train"], atol=5e-4)
    _, _, labels = table()
    test = split_of(run)["test"]
    error = np.mean(found["probs"][test].argmax(axis=1) != labels[test])
    assert f"test error {100 * error:.2f} % on {len(test)} rows" in ok("evaluate", run)
    assert manifest(run)["finetune"]["test_error"] == pytest.approx(error)


# ---------------------------------------------------------------- regression


REGRESSION = ["--layers", "16", "--scale", "standard", "--epochs", "3", "-q"]
REGRESSION_TUNE = ["--task", "regression", "--momentum", "0.9", "--lr", "0.01"]
REGRESSION_TUNE += ["--epochs", "40", "--patience", "40", "-q"]


def regression_table():
    """Features on very different scales; a smooth nonlinear target, 1000 +- 50 units."""
    x, z, _ = table(seed=1)
    target = 3 * z[:, 0] - 2 * z[:, 1] + np.tanh(2 * z[:, 2]) + 0.1 * z[:, 3] ** 2
    return x, 1000 + 50 * target


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    """A pretrained run on a regression table and the same run fine-tuned: (pretrained, tuned)."""
    folder = tmp_path_factory.mktemp("regression")
    x, y = regression_table()
    path = write_csv(folder / "prices.csv", x, y, name="price")
    pretrained = folder / "pretrained"
    ok("pretrain", *REGRESSION, "--data", path, "--label-column", "price", "--out", pretrained)
    tuned = folder / "tuned"
    shutil.copytree(pretrained, tuned)
    ok("finetune", tuned, *REGRESSION_TUNE)
    return pretrained, tuned


def test_regression_beats_the_mean_predictor_by_a_wide_margin(regression):
    _, tuned = regression
    x, y = regression_table()
    test = split_of(tuned)["test"]
    mean_rmse = np.sqrt(np.mean(np.square(y[test] - y[split_of(tuned)["train"]].mean())))
    metrics = manifest(tuned)["finetune"]["metrics"]
    assert metrics["test_rmse"] < 0.3 * mean_rmse, (metrics, mean_rmse)
    assert metrics["test_r2"] > 0.9
    shown = ok("evaluate", tuned)
    # Evaluated again, from the saved model: the recorded RMSE to float32 rounding.
    shown_rmse = float(shown.split("test RMSE ")[1].split(",")[0])
    assert shown_rmse == pytest.approx(metrics["test_rmse"], rel=1e-4)
    assert f"on {len(test)} rows" in shown
    info = ok("info", tuned)  # the recorded metrics, as `finetune` printed them
    assert f"validation RMSE {metrics['valid_rmse']:.6g}" in info
    assert f"test RMSE {metrics['test_rmse']:.6g}, MAE {metrics['test_mae']:.6g}" in info
    assert f"R^2 {metrics['test_r2']:.4f}" in info
    model = keras.saving.load_model(tuned / "regressor.keras")  # raw features in, prices out
    predicted = model.predict(x[test], verbose=0)[:, 0]
    assert_allclose(np.sqrt(np.mean(np.square(predicted - y[test]))), metrics["test_rmse"], 1e-4)


def finetune_epochs(run):
    try:
        return (manifest(run).get("finetune") or {}).get("epochs_done")
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_regression_killed_then_resumed_ends_with_the_uninterrupted_weights(regression, tmp_path):
    pretrained, tuned = regression
    run = tmp_path / "run"
    shutil.copytree(pretrained, run)
    command = [sys.executable, "-m", "stackae_cli", "finetune", str(run), *REGRESSION_TUNE]

    def ready():
        done = finetune_epochs(run)
        return done is not None and done >= 2

    code, err = signal_when(command, ready, signal.SIGKILL)
    assert code == -signal.SIGKILL, err[-2000:]
    assert 2 <= finetune_epochs(run) < 40
    ok("finetune", run, "--resume", "-q")
    expected = keras.saving.load_model(tuned / "regressor.keras").get_weights()
    found = keras.saving.load_model(run / "regressor.keras").get_weights()
    assert len(found) == len(expected)
    for a, b in zip(found, expected):
        assert_array_equal(a, b)
    assert manifest(run)["finetune"]["metrics"] == manifest(tuned)["finetune"]["metrics"]


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("edit", ["length", "nan", "zero scale"])
def test_a_hand_edited_scaler_is_refused_in_one_line_and_nothing_changes(tuned, tmp_path, edit):
    original, _, _ = tuned
    run = tmp_path / "run"
    shutil.copytree(original, run)
    raw = manifest(run)
    scaler = raw["data"]["scaler"]
    if edit == "length":
        scaler["offset"], scaler["scale"] = scaler["offset"][:-1], scaler["scale"][:-1]
    elif edit == "nan":
        scaler["offset"][2] = float("nan")
    else:
        scaler["scale"][3] = 0.0
    (run / "manifest.json").write_text(json.dumps(raw))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    one_row = tmp_path / "row.csv"
    one_row.write_text("\n".join(tuned[1].read_text().splitlines()[:2]) + "\n")
    for verb in (["info"], ["evaluate"], ["encode", "--out", tmp_path / "codes.npz"]):
        args = [verb[0], run, *(["--data", one_row] if verb[0] == "encode" else []), *verb[1:]]
        result = invoke(*args)
        assert result.exit_code == 1, (verb, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "scaler" in lines[0], lines
    assert not (tmp_path / "codes.npz").exists()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_csv_cells_quoted_numbers_accepted_missing_values_and_text_refused(tmp_path):
    x, _, labels = table()
    plain = write_csv(tmp_path / "plain.csv", x, labels)
    quoted = write_csv(tmp_path / "quoted.csv", x, labels, quoting=csv.QUOTE_ALL)
    assert '"' in quoted.read_text()
    options = dict(label_column="label", scale="standard")
    a, _ = workflows.load_data(str(plain), loss="squared-error", **options)
    b, _ = workflows.load_data(str(quoted), loss="squared-error", **options)
    for name in ("train", "valid", "test"):
        assert_array_equal(getattr(a, name).x, getattr(b, name).x)
        assert_array_equal(getattr(a, name).y, getattr(b, name).y)
    lines = plain.read_text().splitlines()
    cells = lines[5].split(",")
    for bad, expected in (
        ("", "line 6: missing value in column 'f2'"),
        ("NaN", "line 6: missing value in column 'f2'"),
        ("n/a", "line 6: missing value in column 'f2'"),
        ("inf", "line 6: infinite value in column 'f2'"),
        ("1.5kg", "column 'f2' holds text, not numbers ('1.5kg' in line 6)"),
    ):
        edited = tmp_path / "edited.csv"
        edited.write_text(
            "\n".join([*lines[:5], ",".join([*cells[:2], bad, *cells[3:]]), *lines[6:]])
        )
        out = tmp_path / "refused"
        result = invoke(
            "pretrain", *PRETRAIN, "--data", edited, "--label-column", "label", "--out", out
        )
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines() == [f"Error: {edited}: {expected}"]
        assert not out.exists()


# Issue 30, 21. A regressor is saved as regressor.keras; a run that saved it under the
# old name, classifier.keras, is read by every verb.
def test_a_regressor_is_named_for_what_it_is_and_the_old_name_still_reads(regression, tmp_path):
    _, tuned = regression
    assert (tuned / "regressor.keras").is_file() and not (tuned / "classifier.keras").exists()
    shown = ok("evaluate", tuned)
    old = tmp_path / "old"
    shutil.copytree(tuned, old)
    (old / "regressor.keras").rename(old / "classifier.keras")
    record = manifest(old)
    record["files"]["classifier.keras"] = record["files"].pop("regressor.keras")
    (old / "manifest.json").write_text(json.dumps(record))
    assert ok("evaluate", old) == shown


# ---------------------------------------------------------------- figures named after their rows


def one_error(result, code):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize(
    "sizes", [[], ["--test-size", "0"], ["--valid-size", "0", "--test-size", "0"]]
)
def test_no_printed_test_figure_is_of_training_or_validation_rows(tmp_path, sizes):
    x, _, labels = table()
    path = write_csv(tmp_path / "t.csv", x, labels)
    run = tmp_path / "run"
    ok("pretrain", *PRETRAIN, *sizes, "--data", path, "--label-column", "label", "--out", run)
    tuned = ok("finetune", run, "--epochs", "1", "-q")
    split = split_of(run)
    assert ("test error" in tuned) == ("test" in split)
    assert ("validation error" in tuned) == ("valid" in split)
    shown = ok("evaluate", run)
    name = "test" if "test" in split else "valid" if "valid" in split else "train"
    rows = split[name]
    if name == "test":  # the test rows are none of the rows trained or validated on
        assert not set(rows) & set(split["train"]) and not set(rows) & set(split.get("valid", []))
        assert f"on {len(rows)} rows" in shown
    else:
        assert not any(line.startswith("test") for line in shown.splitlines())
        words = {"valid": "validation error", "train": "training error"}
        figure = [line for line in shown.splitlines() if line.startswith(words[name])]
        assert figure and figure[0].endswith(f"on {len(rows)} rows")
        assert "(the data has no test" in shown.splitlines()[0]
    full = {"test": "test", "valid": "validation", "train": "training"}[name]
    assert shown.splitlines()[0].startswith(f"evaluated on the {full} split: {len(rows)} rows")


@pytest.mark.parametrize(
    "verb, extra, flag",
    [
        ("evaluate", ["--test-size", "0.5"], "--test-size 0.5"),
        ("evaluate", ["--valid-size", "3"], "--valid-size 3"),
        ("evaluate", ["--limit", "100"], "--limit 100"),
        ("evaluate", ["--scale", "none"], "--scale none"),
        ("finetune", ["--test-size", "0.5", "--overwrite"], "--test-size 0.5"),
        ("finetune", ["--scale", "minmax", "--overwrite"], "--scale minmax"),
        ("reconstruct", ["--test-size", "0.3"], "--test-size 0.3"),
    ],
)
def test_options_that_cannot_apply_to_a_run_are_refused_in_one_line(tuned, verb, extra, flag):
    run, path, _ = tuned
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    option, value = flag.split()
    line = one_error(invoke(verb, run, *extra), 2)
    assert f"'{option}': {value}:" in line, line
    # Naming the run's own file is the run's data too: its split holds.
    line = one_error(invoke(verb, run, "--data", path, *extra), 2)
    assert f"'{option}': {value}:" in line, line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_columns_are_matched_by_name_in_every_verb(tuned, tmp_path):
    run, path, _ = tuned
    record = manifest(run)["data"]
    assert manifest(run)["format"] == 3
    assert record["columns"] == [f"f{j}" for j in range(N_FEATURES)]
    assert record["options"]["header"] is True
    x, _, labels = table()
    order = [3, 0, 4, 2, 1]
    moved = tmp_path / "moved.csv"
    with open(moved, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", *(f"f{j}" for j in order)])
        for row, label in zip(x, labels):
            writer.writerow([label, *(repr(float(row[j])) for j in order)])
    ok("encode", run, "--data", path, "--out", tmp_path / "a.npz")
    ok("encode", run, "--data", moved, "--out", tmp_path / "b.npz")
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert_array_equal(a["train"], b["train"])
        assert_array_equal(a["y_train"], b["y_train"])
    figures = [line for line in ok("evaluate", run).splitlines() if " error " in line]
    assert figures and figures == [
        line for line in ok("evaluate", run, "--data", moved).splitlines() if " error " in line
    ]
    # One feature missing while the label column is there: refused, naming the feature.
    short = write_csv(tmp_path / "short.csv", x[:, :4], labels)
    line = one_error(invoke("evaluate", run, "--data", short), 1)
    assert "no column 'f4', one of the run's 5 features" in line
    line = one_error(invoke("encode", run, "--data", short, "--out", tmp_path / "c.npz"), 1)
    assert "no column 'f4'" in line and not (tmp_path / "c.npz").exists()


def test_a_data_file_changed_under_a_run_is_refused_unless_told(tmp_path):
    x, _, labels = table()
    path = write_csv(tmp_path / "t.csv", x, labels)
    run = tmp_path / "run"
    ok("pretrain", *PRETRAIN, "--data", path, "--label-column", "label", "--out", run)
    assert manifest(run)["data"]["fingerprint"]["size"] == path.stat().st_size
    lines = path.read_text().splitlines()
    rows = lines[1:]
    np.random.default_rng(0).shuffle(rows)
    path.write_text("\n".join([lines[0], *rows]) + "\n")  # same size, rows in another order
    before = (run / "manifest.json").read_bytes()
    for verb in (["finetune", run, "--epochs", "1", "-q"], ["evaluate", run]):
        line = one_error(invoke(*verb), 1)
        assert "changed since the run read it" in line and "--data-changed-ok" in line
    assert (run / "manifest.json").read_bytes() == before
    ok("finetune", run, "--epochs", "1", "-q", "--data-changed-ok")


def test_a_runs_limit_is_not_applied_to_other_files(tmp_path):
    x, _, labels = table()
    path = write_csv(tmp_path / "t.csv", x, labels)
    run = tmp_path / "run"
    ok(
        "pretrain",
        *PRETRAIN,
        "--data",
        path,
        "--label-column",
        "label",
        "--limit",
        "100",
        "--out",
        run,
    )
    other = tmp_path / "other.csv"
    shutil.copy(path, other)
    assert "train (240, 8)" in ok("encode", run, "--data", other, "--out", tmp_path / "a.npz")
    assert "train (50, 8)" in ok(
        "encode", run, "--data", other, "--limit", "50", "--out", tmp_path / "b.npz"
    )
    # A file without a header: its first row is data, and the guess is said.
    bare = tmp_path / "bare.csv"
    np.savetxt(bare, x, delimiter=",")
    shown = ok("encode", run, "--data", bare, "--out", tmp_path / "c.npz")
    assert "train (240, 8)" in shown and "line 1 read as data" in shown
    # Read as names, its first row names none of the run's features.
    line = one_error(
        invoke("encode", run, "--data", bare, "--header", "--out", tmp_path / "d.npz"), 1
    )
    assert "no column 'f0', one of the run's 5 features" in line


def test_test_size_for_a_source_with_its_own_test_split_is_refused(tmp_path):
    out = tmp_path / "run"
    line = one_error(
        invoke(
            "pretrain",
            "--data",
            "mnist-sample",
            "--test-size",
            "0.2",
            "--limit",
            "100",
            "--layers",
            "8",
            "--epochs",
            "1",
            "--out",
            out,
        ),
        2,
    )
    assert "--test-size" in line and "mnist-sample has a test split of its own" in line
    assert not out.exists()


# ---------------------------------------------------------------- checkpoints


def test_a_tables_finetuning_checkpoints_on_a_budget_and_resumes_from_any_of_them(
    tmp_path, monkeypatch
):
    """Tiny epochs do not pay a checkpoint each; the manifest holds what a resume needs."""
    from stackae import callbacks, runs

    x, _, labels = table()
    path = write_csv(tmp_path / "t.csv", x, labels)
    pretrained = tmp_path / "pretrained"
    ok("pretrain", *PRETRAIN, "--data", path, "--label-column", "label", "--out", pretrained)
    tune = ["--epochs", "12", "--patience", "12", "--dropout", "0.1", "--momentum", "0.5", "-q"]
    uninterrupted = tmp_path / "uninterrupted"
    shutil.copytree(pretrained, uninterrupted)
    ok("finetune", uninterrupted, *tune)

    # A budget no fine-tuning of 12 epochs reaches: checkpoints after the first two and last.
    monkeypatch.setattr(callbacks.FinetuneCheckpoint, "RATIO", float("inf"))
    monkeypatch.setattr(callbacks.FinetuneCheckpoint, "EVERY", 1e9)
    record = runs.Run.record_finetune_epoch
    seen = []

    def recorded(self, epoch, *args, **kwargs):
        record(self, epoch, *args, **kwargs)
        done = self.manifest.finetune
        seen.append((epoch, done.epochs_done, len(done.history["loss"]), done.checkpoint))
        if len(seen) == 1:  # the run as a kill right after this checkpoint would leave it
            shutil.copytree(self.path, tmp_path / "killed", ignore=shutil.ignore_patterns("*.lock"))

    monkeypatch.setattr(runs.Run, "record_finetune_epoch", recorded)
    run = tmp_path / "run"
    shutil.copytree(pretrained, run)
    ok("finetune", run, *tune)
    assert seen == [
        (0, 1, 1, "finetune_epoch_1.weights.h5"),
        (1, 2, 2, "finetune_epoch_2.weights.h5"),
        (11, 12, 12, "finetune_epoch_12.weights.h5"),
    ]
    killed = manifest(tmp_path / "killed")["finetune"]
    assert killed["epochs_done"] == 1 and not killed["finished"]
    assert killed["checkpoint"] == "finetune_epoch_1.weights.h5" and killed["stopper"]

    # Resumed from the first checkpoint, the 11 epochs after it are run again, exactly.
    ok("finetune", tmp_path / "killed", "--resume", "-q")
    for name in ("run", "killed"):
        found = keras.saving.load_model(tmp_path / name / "classifier.keras").get_weights()
        expected = keras.saving.load_model(uninterrupted / "classifier.keras").get_weights()
        for a, b in zip(found, expected):
            assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        history = manifest(tmp_path / name)["finetune"]["history"]
        expected = manifest(uninterrupted)["finetune"]["history"]
        assert history.keys() == expected.keys()
        for key in expected:
            assert_allclose(history[key], expected[key], rtol=1e-5)
