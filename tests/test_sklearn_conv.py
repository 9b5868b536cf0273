"""The scikit-learn estimators on conv stacks: `layers` in the --layers grammar, `input_shape`
reshaping each row of X to an image, 2-D rows in and out, pickling, one-line refusals."""

import pickle

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.utils._param_validation import InvalidParameterError

from stackae.sklearn import SdAClassifier, SdARegressor, StackedDenoisingAutoencoder

# Pixels scaled to [0, 1] (the cross-entropy, sigmoid decoders): standardising rarely lit
# pixels makes values of 20 and more, on which an unpooled conv layer diverged.
CONV = {"epochs": 1, "batch_size": 16, "random_state": 0, "scale": "minmax"}


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits: 64 pixel columns of 0..16, 10 classes."""
    x, y = load_digits(return_X_y=True)
    return x[:400], y[:400]


@pytest.fixture(scope="module")
def classifier(digits):
    x, y = digits
    clf = SdAClassifier(
        "conv4x3,pool2",
        input_shape=(8, 8, 1),
        finetune_epochs=10,
        finetune_batch_size=16,
        validation_fraction=0.0,
        **CONV,
    )
    return clf.fit(x[:300], y[:300])


def test_a_conv_classifier_fits_predicts_and_scores(digits, classifier):
    x, y = digits
    layers = [type(layer).__name__ for layer in classifier.model_.layers]
    # Raw rows in: the fitted scaling, the rows as images, the CNN, a flattened softmax.
    assert layers == ["Normalization", "Reshape", "Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    assert classifier.model_.input_shape == (None, 64)
    probabilities = classifier.predict_proba(x[300:])
    assert probabilities.shape == (100, 10)
    assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert set(classifier.predict(x[300:])) <= set(range(10))
    assert classifier.score(x[300:], y[300:]) > 0.4  # 10 classes: chance is 0.1
    assert classifier.get_params()["input_shape"] == (8, 8, 1)
    assert clone(classifier).get_params() == classifier.get_params()


def test_a_conv_classifier_pickles(digits, classifier):
    x, _ = digits
    again = pickle.loads(pickle.dumps(classifier))
    assert_array_equal(again.predict_proba(x[300:]), classifier.predict_proba(x[300:]))
    assert again.input_shape == (8, 8, 1)


def test_the_transformer_gives_flat_codes_and_scores_images(digits):
    x, _ = digits
    sda = StackedDenoisingAutoencoder("conv4x3", input_shape=(8, 8), **CONV).fit(x)
    codes = sda.transform(x[:5])
    assert codes.shape == (5, 6 * 6 * 4)  # the 6x6x4 feature maps, flattened
    assert len(sda.get_feature_names_out()) == codes.shape[1]
    assert sda.inverse_transform(codes).shape == (5, 64)  # no pooling: codes decode
    errors = sda.per_feature_errors(x[:5])
    assert errors.shape == (5, 64)
    assert_allclose(-errors.mean(axis=1), sda.score_samples(x[:5]), rtol=1e-12)
    # A dense first layer reads the rows themselves, input_shape or not.
    dense = StackedDenoisingAutoencoder((6,), input_shape=(8, 8, 1), **CONV)
    dense.fit(x)
    assert dense.transform(x[:5]).shape == (5, 6)
    assert dense.encoder_.input_shape == (None, 64)


def test_a_conv_regressor_takes_the_grammar_as_a_token_list(digits):
    x, y = digits
    reg = SdARegressor(["conv4x3", "pool2", 8], input_shape=(8, 8, 1), finetune_epochs=2, **CONV)
    predictions = reg.fit(x[:200], y[:200].astype(float)).predict(x[200:210])
    assert predictions.shape == (10,) and np.all(np.isfinite(predictions))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layers": "conv4x3,pool2"}, "A conv2d first layer reads images: give input_shape"),
        ({"layers": "conv4x3", "input_shape": (8, 7)}, "holds 56 values, but X has 64 features"),
        ({"layers": "conv4x3", "input_shape": (8, 0, 1)}, "Received: input_shape=(8, 0, 1)"),
        ({"layers": "conv4x3,pool2,pool2", "input_shape": (8, 8)}, "token 'pool2'"),
        ({"layers": (8,), "input_shape": (4, 4)}, "holds 16 values, but X has 64 features"),
    ],
)
def test_conv_settings_that_cannot_work_are_refused_in_one_line(digits, kwargs, message):
    x, y = digits
    for estimator in (StackedDenoisingAutoencoder(**kwargs), SdAClassifier(**kwargs)):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
            estimator.fit(x[:40], y[:40])
        assert "\n" not in str(e.value)
        assert not hasattr(estimator, "stack_")
    with pytest.raises(InvalidParameterError, match="input_shape"):
        StackedDenoisingAutoencoder("conv4x3", input_shape="8x8").fit(x[:40])
