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
    expected = r"`contamination` must be 'auto' or a number in \(0, 0.5\]"
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
