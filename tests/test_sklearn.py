"""stackae.sklearn: scikit-learn's estimator checks, pipelines, pickling, regression."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from stackae.sklearn import SdAClassifier, SdARegressor, StackedDenoisingAutoencoder

# Small enough for the dozens of fits scikit-learn's checks make.
TINY = {"layers": (8,), "epochs": 1, "batch_size": 16, "random_state": 0}
TINY_SUPERVISED = {**TINY, "finetune_epochs": 2, "momentum": 0.9, "validation_fraction": 0.0}


def expected_failures(estimator):
    return {}


@parametrize_with_checks(
    [
        StackedDenoisingAutoencoder(**TINY),
        SdAClassifier(**TINY_SUPERVISED),
        SdARegressor(**TINY_SUPERVISED),
    ],
    expected_failed_checks=expected_failures,
)
def test_scikit_learn_checks(estimator, check):
    check(estimator)
