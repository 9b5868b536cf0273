"""TiedAutoEncoderLayer against the tutorial's equations, and its Keras behaviour."""

import keras
import numpy as np
import pytest
from numpy.testing import assert_allclose

import stackae
from tests import reference as ref


def test_encode_decode_match_reference(small_x):
    layer = stackae.TiedAutoEncoderLayer(7, dtype="float64")
    h = keras.ops.convert_to_numpy(layer(small_x))
    W, b, b_prime = (
        keras.ops.convert_to_numpy(v) for v in (layer.kernel, layer.bias, layer.decoder_bias)
    )
    h_ref, z_ref = ref.forward(small_x.astype("float64"), W, b, b_prime)
    assert_allclose(h, h_ref, rtol=1e-12)
    assert_allclose(keras.ops.convert_to_numpy(layer.reconstruct(small_x)), z_ref, rtol=1e-12)
    assert_allclose(keras.ops.convert_to_numpy(layer.decode(h)), z_ref, rtol=1e-12)


def test_weights_and_tutorial_initialiser():
    layer = stackae.TiedAutoEncoderLayer(500)
    layer.build((None, 784))
    assert layer.kernel.shape == (784, 500)
    assert layer.bias.shape == (500,)
    assert layer.decoder_bias.shape == (784,)
    W = keras.ops.convert_to_numpy(layer.kernel)
    bound = 4 * np.sqrt(6.0 / (784 + 500))
    assert np.abs(W).max() <= bound
    # A uniform sample of 392,000 values reaches close to both ends.
    assert W.max() > 0.99 * bound and W.min() < -0.99 * bound
    assert np.all(keras.ops.convert_to_numpy(layer.bias) == 0)


def test_tied_gradient_reaches_one_kernel(small_x):
    import tensorflow as tf

    layer = stackae.TiedAutoEncoderLayer(5, dtype="float64")
    layer.build(small_x.shape)
    x = small_x.astype("float64")
    with tf.GradientTape(persistent=True) as tape:
        h = layer.encode(x)
        decode_only = tf.reduce_sum(layer.decode(tf.stop_gradient(h)))
        both = tf.reduce_sum(layer.reconstruct(x))
    assert [v.name for v in layer.trainable_weights] == ["kernel", "bias", "decoder_bias"]
    g_decode = tape.gradient(decode_only, layer.kernel)
    g_both = tape.gradient(both, layer.kernel)
    assert g_decode is not None and np.abs(g_decode).sum() > 0
    # The encoder's use adds its own part: the gradient is not the decoder's alone.
    assert not np.allclose(g_both, g_decode)


@pytest.mark.parametrize("units", [0, -3, 2.5, "10", True])
def test_bad_units_rejected(units):
    with pytest.raises(ValueError, match="Received: units="):
        stackae.TiedAutoEncoderLayer(units)


def test_config_round_trip():
    layer = stackae.TiedAutoEncoderLayer(
        12, activation="relu", decoder_activation="linear", kernel_initializer="glorot_uniform"
    )
    clone = stackae.TiedAutoEncoderLayer.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.activation is keras.activations.relu


def test_layer_in_functional_model_saves_and_loads(tmp_path, small_x):
    inputs = keras.Input((30,))
    code = stackae.TiedAutoEncoderLayer(8)(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(code)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "functional.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert_allclose(
        loaded.predict(small_x, verbose=0), model.predict(small_x, verbose=0), rtol=1e-6
    )
    assert isinstance(loaded.layers[1], stackae.TiedAutoEncoderLayer)


def test_mixed_precision_policy(small_x):
    layer = stackae.TiedAutoEncoderLayer(6, dtype="mixed_float16")
    h = layer(small_x)
    assert keras.backend.standardize_dtype(h.dtype) == "float16"
    assert keras.backend.standardize_dtype(layer.kernel.dtype) == "float32"
    assert keras.backend.standardize_dtype(layer.reconstruct(small_x).dtype) == "float16"
