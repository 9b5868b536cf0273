"""stackae.sklearn: scikit-learn's estimator checks, pipelines, pickling, regression."""

import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import check_estimator

from stackae.sklearn import SdAClassifier, SdARegressor, StackedDenoisingAutoencoder

# Small enough for the dozens of fits scikit-learn's checks make.
TINY = {"layers": (8,), "epochs": 1, "batch_size": 16, "random_state": 0}
TINY_SUPERVISED = {**TINY, "finetune_epochs": 2, "momentum": 0.9, "validation_fraction": 0.0}


@pytest.mark.parametrize(
    "estimator",
    [
        # Dozens of fits each: 6-9 s now that fits of one structure share their traced
        # programs (20-32 s before, 40-70 s on a loaded machine: they were -m slow then).
        StackedDenoisingAutoencoder(**TINY),
        SdAClassifier(**TINY_SUPERVISED),
        # Two epochs of a tiny net reach scikit-learn's R^2 > 0.5 check at lr 0.1, not at
        # the regression default of 0.01 (made for real tables, where 0.1 diverged).
        SdARegressor(**TINY_SUPERVISED, finetune_learning_rate=0.1),
    ],
    ids=lambda estimator: type(estimator).__name__,
)
def test_scikit_learn_checks(estimator):
    results = check_estimator(estimator, on_fail=None)
    failed = {r["check_name"]: str(r["exception"]) for r in results if r["status"] == "failed"}
    assert not failed
    # scikit-learn skips its array-API check unless SCIPY_ARRAY_API is set and an array-API
    # library is installed; stackae takes NumPy arrays. Every other check ran and passed.
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= {"check_array_api_input"}, skipped
    assert len(results) > 40


# ---------------------------------------------------------------- the transformer


@pytest.fixture(scope="module")
def table():
    """300 rows of 6 raw features in mixed units with a 2-dimensional structure, and a target."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 2))
    x = z @ rng.normal(size=(2, 6)) + 0.05 * rng.normal(size=(300, 6))
    x = x * np.array([1.0, 10.0, 100.0, 0.1, 5.0, 1000.0]) + np.arange(6) * 50
    y = 3.0 * z[:, 0] - 2.0 * np.tanh(z[:, 1]) + 0.05 * rng.normal(size=300)
    return x, y


@pytest.fixture(scope="module")
def fitted(table):
    x, _ = table
    return StackedDenoisingAutoencoder((12, 4), epochs=20, random_state=0).fit(x)


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def test_transform_is_the_stacks_codes_of_the_standardised_rows(table, fitted):
    x, _ = table
    codes = fitted.transform(x)
    assert codes.shape == (300, 4) and codes.dtype == np.float64
    # NumPy reference: standardise with the rows' own mean and std, then every layer.
    h = (x - x.mean(axis=0)) / x.std(axis=0)
    for layer in fitted.stack_.encoder_layers:
        h = sigmoid(h @ layer.kernel.numpy() + layer.bias.numpy())
    assert_allclose(codes, h, rtol=1e-4, atol=1e-5)
    assert fitted.transform(x.astype(np.float32)).dtype == np.float32
    assert list(fitted.get_feature_names_out()) == [
        f"stackeddenoisingautoencoder{k}" for k in range(4)
    ]
    # Defaults for standardised features: a linear first decoder with the squared error.
    first, second = fitted.stack_.specs
    assert (first.decoder_activation, first.loss) == ("linear", "squared-error")
    assert first.learning_rate == pytest.approx(1 / 12)
    assert (second.decoder_activation, second.loss) == ("sigmoid", "cross-entropy")


def test_inverse_transform_decodes_to_raw_units_and_score_samples_flags_anomalies(table, fitted):
    x, _ = table
    decoded = fitted.inverse_transform(fitted.transform(x))
    assert decoded.shape == x.shape
    # Back in raw units: each feature's error is small next to its own spread.
    relative = np.sqrt(np.mean((decoded - x) ** 2, axis=0)) / x.std(axis=0)
    assert np.all(relative < 0.9), relative
    # NumPy reference of score_samples: minus the mean squared error in scaled units.
    scaled = (x - x.mean(axis=0)) / x.std(axis=0)
    rebuilt = (decoded - x.mean(axis=0)) / x.std(axis=0)
    assert_allclose(fitted.score_samples(x), -np.mean((scaled - rebuilt) ** 2, axis=1), atol=1e-4)
    # Rows off the data's structure score lower (more anomalous) than the rows themselves.
    rng = np.random.default_rng(1)
    outliers = x.mean(axis=0) + 4 * x.std(axis=0) * rng.choice([-1, 1], size=(20, 6))
    assert np.median(fitted.score_samples(outliers)) < np.percentile(fitted.score_samples(x), 5)
    with pytest.raises(ValueError, match="X has 3 features, but StackedDenoisingAutoencoder"):
        fitted.inverse_transform(np.zeros((2, 3)))


def test_dataframes_keep_feature_names_and_bad_input_gets_scikit_learns_errors(table):
    x, _ = table
    frame = pd.DataFrame(x[:40], columns=[f"f{i}" for i in range(6)])
    sda = StackedDenoisingAutoencoder(4, epochs=1, batch_size=64, random_state=0).fit(frame)
    assert list(sda.feature_names_in_) == list(frame.columns) and sda.n_features_in_ == 6
    # The batch of 64 was clipped to the 40 rows given.
    assert sda.stack_.specs[0].batch_size == 40
    assert sda.transform(frame).shape == (40, 4)
    sda.fit(x[:40])  # arrays from here on: no feature names to warn about
    nan = x[:10].copy()
    nan[3, 2] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        sda.transform(nan)
    with pytest.raises(ValueError, match="X has 5 features, but StackedDenoisingAutoencoder is"):
        sda.transform(x[:10, :5])
    with pytest.raises(TypeError, match="Sparse data was passed"):
        sda.fit(scipy.sparse.csr_matrix(x))
    with pytest.raises(ValueError, match="Found array with 0 sample"):
        sda.fit(x[:0])
    with pytest.raises(ValueError, match="`layers` must be positive integers"):
        StackedDenoisingAutoencoder((4, 0)).fit(x)
    with pytest.raises(ValueError, match="'scale' parameter of StackedDenoisingAutoencoder"):
        StackedDenoisingAutoencoder(scale="robust").fit(x)
    with pytest.raises(ValueError, match="cross-entropy needs features in \\[0, 1\\]"):
        StackedDenoisingAutoencoder(scale="none").fit(x)


# ---------------------------------------------------------------- classifier, regressor


def test_regressor_beats_the_mean_predictor_by_a_wide_margin(table):
    x, y = table
    train, test = slice(0, 240), slice(240, None)
    # Two outputs at once, each in its own units.
    targets = np.stack([y, 100 * y + 7], axis=1)
    model = SdARegressor((32,), random_state=0).fit(x[train], targets[train])
    predictions = model.predict(x[test])
    assert predictions.shape == (60, 2)
    error = np.mean((predictions - targets[test]) ** 2, axis=0)
    mean_error = np.mean((targets[train].mean(axis=0) - targets[test]) ** 2, axis=0)
    assert np.all(error < 0.2 * mean_error), (error, mean_error)
    assert r2_score(targets[test], predictions) == pytest.approx(
        model.score(x[test], targets[test])
    )
    assert 1 <= model.n_iter_ <= 30 and model.best_epoch_ is not None


@pytest.mark.slow
def test_pipeline_grid_search_on_digits_picks_a_configuration_and_scores_it():
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.3, stratify=digits.target, random_state=0
    )
    # No scaler step: the estimator standardises the features itself.
    pipeline = Pipeline([("sda", SdAClassifier(epochs=2, finetune_epochs=8, random_state=0))])
    grid = {"sda__layers": [(32,), (64,)], "sda__corruption": [0.0, 0.2]}
    search = GridSearchCV(pipeline, grid, cv=2).fit(x_train[:400], y_train[:400])
    assert set(search.best_params_) == set(grid)
    assert search.score(x_test, y_test) > 0.85
    # A transformer step feeding a scikit-learn classifier works the same way.
    features = Pipeline(
        [
            ("sda", StackedDenoisingAutoencoder((64,), epochs=3, random_state=0)),
            ("logistic", LogisticRegression(max_iter=500)),
        ]
    ).fit(x_train, y_train)
    assert features.score(x_test, y_test) > 0.8


def test_fits_are_deterministic_given_random_state_and_leave_numpys_generator_alone(table):
    import keras

    x, y = table
    labels = (y > np.median(y)).astype(int)
    settings = {"layers": (8,), "epochs": 2, "finetune_epochs": 3, "random_state": 7}
    np.random.seed(5)
    expected = np.random.random()
    np.random.seed(5)
    first = SdAClassifier(**settings).fit(x, labels)
    assert np.random.random() == expected
    # Whatever the global generators hold, the same random_state gives the same fit.
    keras.utils.set_random_seed(123)
    keras.random.uniform((3,))
    random.random()
    second = clone(first).fit(x, labels)
    assert_array_equal(first.predict_proba(x), second.predict_proba(x))
    other = SdAClassifier(**{**settings, "random_state": 8}).fit(x, labels)
    assert not np.array_equal(first.predict_proba(x), other.predict_proba(x))


# ---------------------------------------------------------------- pickling

RELOAD = """
import pickle, sys
import numpy as np
sda, classifier, regressor, x = pickle.load(open(sys.argv[1], "rb"))
np.savez(sys.argv[2], codes=sda.transform(x), scores=sda.score_samples(x),
         proba=classifier.predict_proba(x), labels=classifier.predict(x),
         values=regressor.predict(x))
"""


def test_fitted_estimators_pickle_and_predict_the_same_in_another_process(table, tmp_path):
    x, y = table
    sda = StackedDenoisingAutoencoder((8, 3), epochs=2, random_state=0).fit(x)
    labels = np.where(y > 0, "high", "low")
    settings = {"layers": (8,), "epochs": 1, "finetune_epochs": 2, "random_state": 0}
    classifier = SdAClassifier(**settings).fit(x, labels)
    regressor = SdARegressor(**settings).fit(x, y)
    path = tmp_path / "models.pkl"
    path.write_bytes(pickle.dumps((sda, classifier, regressor, x[:50])))
    out = tmp_path / "out.npz"
    subprocess.run(
        [sys.executable, "-c", RELOAD, str(path), str(out)],
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )
    with np.load(out) as found:
        assert_array_equal(found["codes"], sda.transform(x[:50]))
        assert_array_equal(found["scores"], sda.score_samples(x[:50]))
        assert_array_equal(found["proba"], classifier.predict_proba(x[:50]))
        assert_array_equal(found["labels"], classifier.predict(x[:50]))
        assert_array_equal(found["values"], regressor.predict(x[:50]))
    # Pickling leaves the estimator as it was, and an unfitted one pickles too.
    assert_array_equal(pickle.loads(pickle.dumps(sda)).transform(x[:5]), sda.transform(x[:5]))
    assert pickle.loads(pickle.dumps(SdAClassifier(layers=(3,)))).layers == (3,)


def test_import_stackae_does_not_import_scikit_learn():
    code = (
        "import sys, stackae, stackae.config; "
        "assert 'sklearn' not in sys.modules and 'stackae.sklearn' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
