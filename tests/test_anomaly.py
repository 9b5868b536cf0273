"""Anomaly detection: the estimator as a scikit-learn outlier detector, its thresholds, errors."""

import pickle

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from stackae import anomaly
from stackae.sklearn import StackedDenoisingAutoencoder

N_ROWS, N_OUTLIERS, WIDTH = 400, 20, 8
DETECTOR = {"layers": (8,), "epochs": 20, "random_state": 0}


def planted(seed=0):
    """Rows near a 2-d curved surface in 8 raw features of mixed units, and 5 % planted outliers.

    The outliers are drawn around the data's mean with 3 times its spread in
    every direction, most of them off the surface. Returns (rows, is_outlier).
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N_ROWS, 2))
    x = np.tanh(z @ rng.normal(size=(2, WIDTH))) + 0.05 * rng.normal(size=(N_ROWS, WIDTH))
    outlier = np.zeros(N_ROWS, bool)
    outlier[rng.choice(N_ROWS, N_OUTLIERS, replace=False)] = True
    x[outlier] = x.mean(axis=0) + 3 * x.std(axis=0) * rng.normal(size=(N_OUTLIERS, WIDTH))
    return x * 10.0 ** (np.arange(WIDTH) % 5 - 2) + 50 * np.arange(WIDTH), outlier


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.fixture(scope="module")
def detector(data):
    x, _ = data
    return StackedDenoisingAutoencoder(**DETECTOR, contamination=0.05).fit(x)


def test_predict_flags_the_planted_outliers(data, detector):
    x, outlier = data
    flagged = detector.predict(x) == -1
    hits = np.count_nonzero(flagged & outlier)
    recall, precision = hits / N_OUTLIERS, hits / max(np.count_nonzero(flagged), 1)
    assert recall >= 0.8 and precision >= 0.8, (recall, precision)
    assert_array_equal(detector.fit_predict(x), detector.predict(x))


def test_contamination_flags_that_fraction_of_the_training_rows(data, detector):
    x, _ = data
    for contamination in (0.05, 0.1, 0.5):
        fitted = clone(detector).set_params(contamination=contamination).fit(x)
        flagged = np.count_nonzero(fitted.predict(x) == -1)
        assert abs(flagged - contamination * N_ROWS) <= 1, (contamination, flagged)
        # The threshold is the (1 - contamination) quantile of the training rows' errors.
        errors = -fitted.score_samples(x)
        assert fitted.offset_ == pytest.approx(-np.percentile(errors, 100 * (1 - contamination)))


def test_auto_is_the_median_plus_three_robust_deviations(data):
    x, outlier = data
    fitted = StackedDenoisingAutoencoder(**DETECTOR).fit(x)
    assert fitted.contamination == "auto"
    errors = -fitted.score_samples(x)
    median = np.median(errors)
    mad = np.median(np.abs(errors - median))
    assert fitted.offset_ == pytest.approx(-(median + 3 * 1.4826 * mad))
    # Without a guess of the fraction it still finds the planted rows and flags few others.
    flagged = fitted.predict(x) == -1
    assert np.count_nonzero(flagged & outlier) >= 0.8 * N_OUTLIERS
    assert np.count_nonzero(flagged & ~outlier) <= 0.1 * N_ROWS


def test_decision_function_is_score_samples_minus_offset(data, detector):
    x, _ = data
    scores, decision = detector.score_samples(x), detector.decision_function(x)
    assert decision.dtype == np.float64 and decision.shape == (N_ROWS,)
    assert_allclose(decision, scores - detector.offset_, rtol=0, atol=0)
    predicted = detector.predict(x)
    assert predicted.dtype.kind == "i" and set(np.unique(predicted)) == {-1, 1}
    assert_array_equal(predicted, np.where(decision < 0, -1, 1))
    # A row scores the same alone, among others, or in any order.
    order = np.random.default_rng(3).permutation(N_ROWS)
    assert_array_equal(detector.score_samples(x[order]), scores[order])
    assert detector.score_samples(x[17:18])[0] == scores[17]


def test_signs_match_isolation_forest_on_an_obvious_outlier(data):
    x, outlier = data
    inliers = x[~outlier]
    far = inliers.mean(axis=0) + 10 * inliers.std(axis=0)  # every feature 10 spreads out
    detectors = [
        StackedDenoisingAutoencoder(**DETECTOR).fit(inliers),
        IsolationForest(random_state=0).fit(inliers),
    ]
    for fitted in detectors:
        name = type(fitted).__name__
        assert fitted.decision_function(far[None])[0] < 0, name
        assert fitted.predict(far[None])[0] == -1, name
        # Lower score_samples is more abnormal: the far row is below every training row.
        assert fitted.score_samples(far[None])[0] < fitted.score_samples(inliers).min(), name
        # Most training rows are inliers, with a positive decision function.
        assert np.mean(fitted.decision_function(inliers) > 0) > 0.5, name


def test_per_feature_errors_name_the_feature_that_is_off(data, detector):
    x, outlier = data
    errors = detector.per_feature_errors(x)
    assert errors.shape == (N_ROWS, WIDTH) and errors.dtype == np.float64
    assert_allclose(errors.mean(axis=1), -detector.score_samples(x), rtol=1e-12)
    # NumPy reference: the standardised row, encoded by the sigmoid layer and decoded by
    # the same kernel (a linear decoder for standardised features), squared differences.
    scaled = (x - x.mean(axis=0)) / x.std(axis=0)
    (layer,) = detector.stack_.encoder_layers
    kernel, bias, decoder_bias = (w.numpy() for w in (layer.kernel, layer.bias, layer.decoder_bias))
    rebuilt = 1 / (1 + np.exp(-(scaled @ kernel + bias))) @ kernel.T + decoder_bias
    assert_allclose(errors, (scaled - rebuilt) ** 2, rtol=1e-4, atol=1e-6)
    # An inlier with one feature pushed 6 spreads off: that feature's error stands out.
    rows = np.flatnonzero(~outlier)[:20]
    for j in range(WIDTH):
        pushed = x[rows].copy()
        pushed[:, j] += 6 * x[:, j].std()
        assert np.mean(np.argmax(detector.per_feature_errors(pushed), axis=1) == j) >= 0.9, j


def test_works_in_a_pipeline_and_pickles(data, detector):
    x, _ = data
    pipeline = Pipeline([("asinh", FunctionTransformer(np.arcsinh)), ("sda", clone(detector))]).fit(
        x
    )
    alone = clone(detector).fit(np.arcsinh(x))
    assert_array_equal(pipeline.score_samples(x), alone.score_samples(np.arcsinh(x)))
    assert_array_equal(pipeline.decision_function(x), alone.decision_function(np.arcsinh(x)))
    assert_array_equal(pipeline.predict(x), alone.predict(np.arcsinh(x)))
    assert_array_equal(pipeline.fit_predict(x), alone.predict(np.arcsinh(x)))
    restored = pickle.loads(pickle.dumps(detector))
    assert restored.offset_ == detector.offset_ and restored.contamination == 0.05
    assert_array_equal(restored.decision_function(x), detector.decision_function(x))
    assert_array_equal(restored.per_feature_errors(x), detector.per_feature_errors(x))


@pytest.mark.parametrize("contamination", [0, 0.0, 0.51, -0.1, 1, True, "none", None, np.nan])
def test_a_contamination_out_of_range_is_refused_before_training(data, contamination):
    x, _ = data
    sda = StackedDenoisingAutoencoder(contamination=contamination)
    expected = r"'contamination' parameter of StackedDenoisingAutoencoder must be"
    with pytest.raises(ValueError, match=expected):
        sda.fit(x)
    assert not hasattr(sda, "stack_")


def test_threshold_rules():
    errors = np.arange(1.0, 101.0)  # 1 .. 100
    assert anomaly.threshold(errors, 0.1) == pytest.approx(np.percentile(errors, 90))
    assert np.count_nonzero(errors > anomaly.threshold(errors, 0.1)) == 10
    # "auto": median 50.5, MAD 25
    assert anomaly.threshold(errors, "auto") == pytest.approx(50.5 + 3 * 1.4826 * 25)
    assert anomaly.threshold(np.full(5, 2.0), "auto") == 2.0  # no spread: nothing above
    with pytest.raises(ValueError, match="at least one row"):
        anomaly.threshold([], 0.1)


# ---------------------------------------------------------------- the command line


def invoke(*args):
    from click.testing import CliRunner

    from stackae_cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.output


def refused(*args, match):
    result = invoke(*args)
    assert (
        result.exit_code != 0
        and result.exception is None
        or isinstance(result.exception, SystemExit)
    ), result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and match in lines[0], result.output
    assert "Traceback" not in result.output
    return lines[0]


def write_csv(path, x, labels=None):
    names = [f"f{j}" for j in range(x.shape[1])] + ([] if labels is None else ["label"])
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        for i, row in enumerate(x):
            cells = [repr(float(v)) for v in row] + ([] if labels is None else [str(labels[i])])
            f.write(",".join(cells) + "\n")
    return path


def read_scores(path):
    import csv

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    return {name: np.array([row[k] for row in body]) for k, name in enumerate(header)}


PRETRAIN = ["--layers", "8", "--scale", "standard", "--epochs", "5", "--corruption", "0.1", "-q"]


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, data):
    """A run pretrained with --contamination 0.05 on a CSV with a label column."""
    folder = tmp_path_factory.mktemp("anomaly")
    x, outlier = data
    path = write_csv(folder / "rows.csv", x, outlier.astype(int))
    run = folder / "run"
    ok("pretrain", *PRETRAIN, "--data", path, "--label-column", "label", "--out", run)
    return run, path


def library_errors(run, x):
    """The errors of raw rows x through the run's stack and recorded scaler, as the library does."""
    from stackae import workflows

    opened = workflows.open_run(run)
    scaler = workflows.run_scaler(opened)
    stack = workflows.load_stack(opened)
    return anomaly.reconstruction_errors(stack, scaler.transform(x)), stack, scaler


@pytest.fixture(scope="module")
def run_with_threshold(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("anomaly")
    x, outlier = data
    path = write_csv(folder / "rows.csv", x, outlier.astype(int))
    run = folder / "run"
    output = ok(
        "pretrain",
        *PRETRAIN,
        "--data",
        path,
        "--label-column",
        "label",
        "--out",
        run,
        "--contamination",
        "0.05",
    )
    assert "outlier threshold: reconstruction error above" in output
    assert "outliers: contamination 0.05, error threshold " in ok("info", run)
    return run, path


def test_score_writes_the_libraries_errors_and_the_recorded_thresholds_flags(
    run_with_threshold, data, tmp_path
):
    import json

    from stackae import workflows

    run, path = run_with_threshold
    x, outlier = data
    recorded = json.loads((run / "manifest.json").read_text())["outliers"]
    assert recorded["contamination"] == 0.05
    errors, stack, scaler = library_errors(run, x)
    # The threshold is the training split's 95th percentile of errors.
    opened = workflows.open_run(run)
    train = opened.split_indices()["train"]
    assert recorded["threshold"] == pytest.approx(np.percentile(errors[train], 95), rel=1e-9)
    output = ok("score", run, "--data", path, "--out", tmp_path / "scores.csv", "-q")
    scores = read_scores(tmp_path / "scores.csv")
    assert list(scores) == ["row", "error", "outlier"]
    assert_array_equal(scores["row"].astype(int), np.arange(N_ROWS))
    assert_allclose(scores["error"].astype(float), errors, rtol=1e-12)
    flags = scores["outlier"].astype(int)
    assert_array_equal(flags, (errors > recorded["threshold"]).astype(int))
    assert f"{N_ROWS} rows, {flags.sum()} above the threshold" in output
    assert np.count_nonzero(flags & outlier) >= 0.8 * N_OUTLIERS
    # The estimator with the same scaling and stack gives the same errors.
    sda = StackedDenoisingAutoencoder()
    sda.stack_, sda.scaler_, sda.n_features_in_ = stack, scaler, WIDTH
    assert_allclose(-sda.score_samples(x), errors, rtol=1e-12)
    # --contamination at scoring time fits the same rule on the same training split.
    ok("score", run, "--data", path, "--out", tmp_path / "again.csv", "--contamination", "0.05")
    assert_array_equal(read_scores(tmp_path / "again.csv")["outlier"], scores["outlier"])
    ok("score", run, "--data", path, "--out", tmp_path / "given.csv", "--threshold", "0")
    assert set(read_scores(tmp_path / "given.csv")["outlier"]) == {"1"}


def test_score_reads_every_data_door_alike(run_with_threshold, data, tmp_path):
    run, path = run_with_threshold
    x, _ = data
    ok("score", run, "--data", path, "--out", tmp_path / "table.csv", "--per-feature")
    table = read_scores(tmp_path / "table.csv")
    columns = np.stack([table[f"error_{j}"].astype(float) for j in range(WIDTH)], axis=1)
    assert_allclose(columns.mean(axis=1), table["error"].astype(float), rtol=1e-12)
    write_csv(tmp_path / "unlabelled.csv", x)
    np.save(tmp_path / "rows.npy", x)
    np.savez(tmp_path / "rows.npz", x=x)
    for source in ("unlabelled.csv", "rows.npy", "rows.npz"):
        out = tmp_path / f"{source}.scores.csv"
        ok("score", run, "--data", tmp_path / source, "--out", out)
        found = read_scores(out)
        assert_allclose(found["error"].astype(float), table["error"].astype(float), rtol=1e-12)
        assert_array_equal(found["outlier"], table["outlier"])
    ok("score", run, "--data", path, "--out", tmp_path / "first.csv", "--limit", "7")
    assert len(read_scores(tmp_path / "first.csv")["error"]) == 7


def test_a_run_without_a_threshold_still_scores(scored_run, tmp_path):
    run, path = scored_run
    output = ok("score", run, "--data", path, "--out", tmp_path / "plain.csv")
    assert "no threshold recorded or given" in output
    assert list(read_scores(tmp_path / "plain.csv")) == ["row", "error"]


def test_bad_input_is_refused_in_one_line_and_nothing_is_written(
    run_with_threshold, data, tmp_path
):
    run, path = run_with_threshold
    x, _ = data
    nan = x[:5].copy()
    nan[2, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "narrow.npy", x[:, :5])
    out = tmp_path / "scores.csv"
    refused("score", run, "--data", tmp_path / "nan.npy", "--out", out, match="NaN")
    write_csv(tmp_path / "nan.csv", nan)
    refused("score", run, "--data", tmp_path / "nan.csv", "--out", out, match="missing value")
    refused("score", run, "--data", tmp_path / "narrow.npy", "--out", out, match="data has 5")
    refused(
        "score",
        run,
        "--data",
        path,
        "--out",
        out,
        "--label-column",
        "kind",
        match="no label column 'kind'",
    )
    refused("score", run, "--data", path, "--out", out, "--contamination", "0.7", match="0.7")
    assert not out.exists() and not list(tmp_path.glob(".stackae-*"))
    out.write_text("mine\n")
    refused("score", run, "--data", path, "--out", out, match="exists; use --overwrite")
    assert out.read_text() == "mine\n"
    for name in ("manifest.json", "stack.keras", "encoder.keras"):
        before = (run / name).read_bytes()
        refused(
            "score",
            run,
            "--data",
            path,
            "--out",
            run / name,
            "--overwrite",
            match="a file of the run",
        )
        assert (run / name).read_bytes() == before
    ok("score", run, "--data", path, "--out", out, "--overwrite")
    assert out.read_text().startswith("row,error,outlier\n")


def test_pretrain_refuses_a_contamination_out_of_range(data, tmp_path):
    x, _ = data
    path = write_csv(tmp_path / "rows.csv", x)
    for bad in ("0", "0.6", "many"):
        result = invoke(
            "pretrain", *PRETRAIN, "--data", path, "--out", tmp_path / "r", "--contamination", bad
        )
        assert result.exit_code == 2 and "--contamination" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_the_example_runs_and_finds_malignant_rows():
    import os
    import re
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "examples", "anomaly.py")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    first, auc, worst = result.stdout.splitlines()
    found = re.fullmatch(r"378 rows, 21 malignant; flagged (\d+), of which (\d+) malignant", first)
    assert found and int(found[2]) >= 0.4 * int(found[1]), first
    assert float(re.fullmatch(r"ROC-AUC of the scores: (\d\.\d+)", auc)[1]) > 0.85
    assert worst.startswith("most anomalous row (")


def test_resume_refuses_another_contamination(run_with_threshold):
    run, _ = run_with_threshold
    result = invoke("pretrain", "--resume", "--out", run, "--contamination", "0.1", "-q")
    assert result.exit_code == 2, result.output
    assert "contamination 0.05 (given 0.1)" in result.output
