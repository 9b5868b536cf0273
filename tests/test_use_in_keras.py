"""stackae's pieces inside ordinary Keras: the code of examples/use_in_keras.py on small data."""

import importlib.util
import os
import warnings

import keras
import numpy as np
import pytest
from numpy.testing import assert_allclose

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "use_in_keras.py")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("use_in_keras", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits():
    """Two easy classes' worth of structure: each class lights up its own pixels."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 400)
    x = rng.random((400, 784)).astype("float32") * 0.3
    for label in range(10):
        x[y == label, label * 70 : label * 70 + 70] += 0.7
    return x, y


def gradient_warnings(run, *args, **kwargs):
    """Run `run` and return (its result, the warnings about weights without gradients)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(*args, **kwargs)
    messages = [str(w.message) for w in caught]
    return result, [m for m in messages if "Gradients do not exist" in m or "decoder_bias" in m]


def test_tied_layer_trains_inside_a_functional_model(example, digits, tmp_path):
    keras.utils.set_random_seed(1)
    (model, before, after, losses, reloaded), warned = gradient_warnings(
        example.layer_in_model, *digits, units=16, epochs=3, path=str(tmp_path / "tied.keras")
    )
    assert warned == []  # the unused decoder bias is frozen
    assert not np.allclose(before, after)
    assert losses[-1] < losses[0]
    assert type(reloaded.get_layer("tied")).__name__ == "TiedAutoEncoderLayer"
    x = digits[0][:50]
    assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_frozen_encoder_keeps_its_weights(example, digits):
    keras.utils.set_random_seed(2)
    _, _, enc_before, enc_after, head_before, head_after = example.frozen_encoder(
        *digits, units=(16, 8), pretrain_epochs=1, epochs=2
    )
    assert len(enc_before) == 4  # kernel and bias of both layers
    for b, a in zip(enc_before, enc_after):
        np.testing.assert_array_equal(a, b)
    assert all(not np.allclose(b, a) for b, a in zip(head_before, head_after))


@pytest.mark.slow  # test_stack's test_exported_classifier_loads_without_stackae is faster
def test_classifier_loads_without_stackae(example, digits, tmp_path):
    keras.utils.set_random_seed(3)
    x, y = digits
    # frozen_encoder pretrains the stack the classifier is exported from.
    _, stack, *_ = example.frozen_encoder(x, y, units=(16,), pretrain_epochs=1, epochs=1)
    path = str(tmp_path / "classifier.keras")
    model = example.saved_classifier(stack, (x[:300], y[:300]), (x[300:], y[300:]), path, epochs=1)
    # The subprocess itself asserts that stackae never entered sys.modules.
    predictions, summary = example.predict_without_stackae(path, x[:50], str(tmp_path))
    assert summary == "Sequential ['Dense', 'Dense']"
    assert_allclose(predictions, model.predict(x[:50], verbose=0), atol=1e-6)


def test_functional_tied_autoencoder(example, digits, tmp_path):
    keras.utils.set_random_seed(4)
    x = digits[0]
    (model, before, after, losses, reloaded), warned = gradient_warnings(
        example.tied_autoencoder, x, units=16, epochs=3, path=str(tmp_path / "ae.keras")
    )
    assert warned == []
    assert [w.name for w in model.trainable_weights] == ["kernel", "bias", "decoder_bias"]
    assert not np.allclose(before, after)  # the decoder's bias trained through the reverse call
    assert losses[-1] < losses[0]
    assert model.output.shape == (None, 784)
    assert_allclose(
        reloaded.predict(x[:50], verbose=0), model.predict(x[:50], verbose=0), atol=1e-6
    )
    # Reloaded, the one layer still decodes with its own kernel, transposed.
    tied = reloaded.get_layer("tied")
    assert_allclose(
        np.asarray(tied(tied(x[:5]), reverse=True)),
        reloaded.predict(x[:5], verbose=0),
        atol=1e-6,
    )


def test_decoder_head_on_a_pretrained_layer(example, digits, tmp_path):
    keras.utils.set_random_seed(5)
    (model, pretrained, after, history, reloaded), warned = gradient_warnings(
        example.decoder_head,
        *digits,
        units=16,
        pretrain_epochs=1,
        epochs=2,
        path=str(tmp_path / "head.keras"),
    )
    assert warned == []
    assert not np.allclose(pretrained, after)
    assert history["label_loss"][-1] < history["label_loss"][0]
    x = digits[0][:50]
    got, want = reloaded.predict(x, verbose=0), model.predict(x, verbose=0)
    assert set(got) == {"label", "reconstruction"}
    for name in got:
        assert_allclose(got[name], want[name], atol=1e-6)
    accuracy = np.mean(example.label_model(model).predict(x, verbose=0).argmax(1) == digits[1][:50])
    assert accuracy > 0.5  # ten classes: chance is 0.1


def test_layer_among_dropout_batchnorm_and_dense(example, digits, tmp_path):
    keras.utils.set_random_seed(6)
    (model, losses, reloaded), warned = gradient_warnings(
        example.mixed_model, *digits, units=16, epochs=3, path=str(tmp_path / "mixed.keras")
    )
    assert warned == []
    assert [type(layer).__name__ for layer in reloaded.layers] == [
        "Dropout",
        "TiedAutoEncoderLayer",
        "BatchNormalization",
        "Dense",
        "Dropout",
        "Dense",
    ]
    assert losses[-1] < losses[0]
    x = digits[0][:50]
    assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
