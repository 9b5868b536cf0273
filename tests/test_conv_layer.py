"""TiedConv2DAutoEncoderLayer: tiedness (the adjoint identity), a NumPy reference, gradients,
Keras's layer harness and `.keras` files, under TensorFlow, JAX and PyTorch."""

import itertools
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from keras.src import testing
from numpy.testing import assert_allclose

import stackae
from tests.processes import run_under

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Odd and even sizes, kernels, strides, paddings: every combination is checked.
CASES = list(itertools.product([(7, 9), (8, 6)], [2, 3], [1, 2], ["valid", "same"]))


def numpy(value):
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def padding_of(size, k, s, padding):
    """(output size, padding before) of one axis, TensorFlow's "same" rule spelled out."""
    if padding == "valid":
        return (size - k) // s + 1, 0
    out = -(-size // s)
    return out, max((out - 1) * s + k - size, 0) // 2


def np_conv(x, K, s, padding):
    """Cross-correlation (batch, H, W, C) * (kh, kw, C, F) -> (batch, h', w', F), by loops."""
    n, H, W, _ = x.shape
    kh, kw, _, F = K.shape
    oh, top = padding_of(H, kh, s, padding)
    ow, left = padding_of(W, kw, s, padding)
    xp = np.zeros(
        (n, max(H, (oh - 1) * s + kh) + top, max(W, (ow - 1) * s + kw) + left, x.shape[3])
    )
    xp[:, top : top + H, left : left + W] = x
    out = np.zeros((n, oh, ow, F))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * s : i * s + kh, j * s : j * s + kw, :]
            out[:, i, j] = np.einsum("nabc,abcf->nf", patch, K)
    return out


def np_conv_transpose(y, K, s, padding, image):
    """The adjoint of np_conv: every output value scattered back through the kernel."""
    n, oh, ow, _ = y.shape
    kh, kw, C, _ = K.shape
    H, W = image
    _, top = padding_of(H, kh, s, padding)
    _, left = padding_of(W, kw, s, padding)
    xp = np.zeros((n, max(H, (oh - 1) * s + kh) + top, max(W, (ow - 1) * s + kw) + left, C))
    for i in range(oh):
        for j in range(ow):
            xp[:, i * s : i * s + kh, j * s : j * s + kw, :] += np.einsum(
                "nf,abcf->nabc", y[:, i, j], K
            )
    return xp[:, top : top + H, left : left + W]


def np_sparse(maps, p):
    """Each p x p window keeps its maximum (ties: all of them), 0 elsewhere and in the remainder."""
    out = np.zeros_like(maps)
    n, H, W, F = maps.shape
    for i in range(0, H // p * p, p):
        for j in range(0, W // p * p, p):
            window = maps[:, i : i + p, j : j + p]
            top = window.max(axis=(1, 2), keepdims=True)
            out[:, i : i + p, j : j + p] = np.where(window == top, window, 0)
    return out


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def random_weights(layer, rng):
    for variable in layer.weights:
        variable.assign(rng.normal(0.0, 0.5, variable.shape).astype(variable.dtype))


def linear_layer(k, s, padding, **kwargs):
    return stackae.TiedConv2DAutoEncoderLayer(
        4,
        k,
        strides=s,
        padding=padding,
        activation="linear",
        decoder_activation="linear",
        dtype="float64",
        **kwargs,
    )


@pytest.mark.parametrize("size,k,s,padding", CASES)
def test_adjoint_identity(size, k, s, padding, rng):
    layer = linear_layer(k, s, padding)
    layer.build((None, *size, 3))
    x = rng.normal(size=(2, *size, 3))
    code = numpy(layer(x))
    y = rng.normal(size=code.shape)
    back = numpy(layer(y, reverse=True))
    assert back.shape == x.shape  # the encoder's input size, odd sizes included
    assert_allclose(np.sum(code * y), np.sum(x * back), rtol=1e-12)


ADJOINT_SCRIPT = """
import itertools, json
import numpy as np
import keras
import stackae

rng = np.random.default_rng(0)
worst, shapes = 0.0, []
for size, k, s, padding in itertools.product([(7, 9), (8, 6)], [2, 3], [1, 2], ["valid", "same"]):
    layer = stackae.TiedConv2DAutoEncoderLayer(
        4, k, strides=s, padding=padding, activation="linear", decoder_activation="linear",
        dtype="float64",
    )
    layer.build((None, *size, 3))
    x = rng.normal(size=(2, *size, 3))
    code = keras.ops.convert_to_numpy(layer(x))
    y = rng.normal(size=code.shape)
    back = keras.ops.convert_to_numpy(layer(y, reverse=True))
    shapes.append(list(back.shape) == list(x.shape))
    a, b = float(np.sum(code * y)), float(np.sum(x * back))
    worst = max(worst, abs(a - b) / max(1.0, abs(a)))
print(json.dumps({"backend": keras.backend.backend(), "worst": worst, "shapes": all(shapes),
                  "dtype": str(keras.ops.convert_to_numpy(layer.kernel).dtype)}))
"""


@pytest.mark.slow  # the TensorFlow case runs by default
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_adjoint_identity_under_other_backends(backend, tmp_path):
    env = {"JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    result = run_under(backend, ADJOINT_SCRIPT, tmp_path, env=env)
    assert result["backend"] == backend
    assert result["dtype"] == "float64"
    assert result["shapes"]
    assert result["worst"] < 1e-12


@pytest.mark.parametrize("size,k,s,padding", CASES[::3])
@pytest.mark.parametrize("pool", [None, 2])
def test_encode_decode_match_numpy_reference(size, k, s, padding, pool, rng):
    layer = stackae.TiedConv2DAutoEncoderLayer(
        4, k, strides=s, padding=padding, pool_size=pool, dtype="float64"
    )
    layer.build((None, *size, 3))
    random_weights(layer, rng)
    K, b, c = (numpy(v) for v in (layer.kernel, layer.bias, layer.decoder_bias))
    x = rng.random((2, *size, 3))
    logits = np_conv(x, K, s, padding) + b
    maps = sigmoid(logits)
    assert_allclose(numpy(layer.feature_maps(x)), maps, rtol=1e-12)
    if pool is None:
        code, sparse = maps, maps
    else:
        h, w = maps.shape[1] // pool * pool, maps.shape[2] // pool * pool
        code = maps[:, :h, :w].reshape(2, h // pool, pool, w // pool, pool, 4).max(axis=(2, 4))
        sparse = np_sparse(maps, pool)
    assert_allclose(numpy(layer(x)), code, rtol=1e-12)
    assert layer.compute_output_shape((None, *size, 3)) == (None, *code.shape[1:])
    decoded = sigmoid(np_conv_transpose(sparse, K, s, padding, size) + c)
    assert_allclose(numpy(layer.sparse_code(x)), sparse, rtol=1e-12)
    assert_allclose(numpy(layer.reconstruct(x)), decoded, rtol=1e-12)
    assert_allclose(numpy(layer(sparse, reverse=True)), decoded, rtol=1e-12)
    assert_allclose(
        numpy(layer(sparse, reverse=True, return_logits=True)),
        np_conv_transpose(sparse, K, s, padding, size) + c,
        rtol=1e-12,
        atol=1e-12,
    )


def test_unpool_puts_a_code_at_the_maxima():
    layer = stackae.TiedConv2DAutoEncoderLayer(1, 1, pool_size=2, dtype="float64")
    layer.build((None, 5, 4, 1))
    maps = np.array([[1, 5, 0, 2], [3, 4, 7, 7], [9, 0, 1, 1], [2, 8, 1, 0], [6, 6, 6, 6]], float)
    maps = maps[None, :, :, None]
    code = np.array([[10.0, 20.0], [30.0, 40.0]])[None, :, :, None]
    expected = np.zeros((5, 4))
    expected[0, 1], expected[1, 2], expected[1, 3] = 10, 20, 20  # a tie keeps both
    expected[2, 0], expected[3, 1], expected[2, 2], expected[2, 3], expected[3, 2] = (
        30,
        0,
        40,
        40,
        40,
    )
    # (3, 1) holds 8 < 9 and row 4 is dropped by pooling (5 rows, windows of 2).
    assert_allclose(numpy(layer.unpool(code, maps))[0, :, :, 0], expected)


def test_gradients_match_numeric_differences(rng):
    import tensorflow as tf

    layer = stackae.TiedConv2DAutoEncoderLayer(
        2, 3, strides=2, pool_size=2, dtype="float64", decoder_activation="sigmoid"
    )
    layer.build((None, 7, 7, 2))
    random_weights(layer, rng)
    x = rng.random((2, 7, 7, 2))

    def cost():
        logits = layer.reconstruct(x, return_logits=True)
        return tf.reduce_sum(tf.nn.softplus(logits) - x * logits)

    with tf.GradientTape() as tape:
        value = cost()
    gradients = tape.gradient(value, layer.trainable_weights)
    assert [v.name for v in layer.trainable_weights] == ["kernel", "bias", "decoder_bias"]
    eps = 1e-6
    for variable, gradient in zip(layer.trainable_weights, gradients):
        flat = numpy(variable).reshape(-1)
        for index in rng.choice(flat.size, size=min(6, flat.size), replace=False):
            shifted = []
            for sign in (1, -1):
                moved = flat.copy()
                moved[index] += sign * eps
                variable.assign(moved.reshape(variable.shape))
                shifted.append(float(cost()))
            variable.assign(flat.reshape(variable.shape))
            numeric = (shifted[0] - shifted[1]) / (2 * eps)
            assert_allclose(numpy(gradient).reshape(-1)[index], numeric, rtol=1e-5, atol=1e-7)


def test_decoder_bias_is_an_ordinary_weight_that_an_encoder_freezes():
    """The dense layer's contract: three trainable weights from `build`, in the saved order."""
    layer = stackae.TiedConv2DAutoEncoderLayer(3, 3)
    layer.build((None, 6, 6, 1))
    assert [w.name for w in layer.trainable_weights] == ["kernel", "bias", "decoder_bias"]
    assert not hasattr(layer, "use_decoder")
    layer(np.ones((1, 4, 4, 3), "float32"), reverse=True)  # decoding changes nothing
    assert [w.name for w in layer.trainable_weights] == ["kernel", "bias", "decoder_bias"]
    layer.decoder_bias.trainable = False  # a model that only encodes
    assert [w.name for w in layer.trainable_weights] == ["kernel", "bias"]
    assert [w.name for w in layer.non_trainable_weights] == ["decoder_bias"]
    assert [w.name for w in layer.weights] == ["kernel", "bias", "decoder_bias"]


def test_fitting_an_encoder_warns_until_the_decoder_bias_is_frozen(rng):
    model, tied = tied_autoencoder_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    x = rng.random((8, 9, 7, 2)).astype("float32")
    y = np.arange(8) % 4

    def fit():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        return [str(w.message) for w in caught]

    unfrozen = fit()
    if keras.backend.backend() != "jax":  # JAX's gradient of an unused weight is zeros
        assert any("Gradients do not exist" in m and "decoder_bias" in m for m in unfrozen)
    tied.decoder_bias.trainable = False  # what the layer's docstring says to do
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    kernel = numpy(tied.kernel).copy()
    assert fit() == []
    assert not np.allclose(numpy(tied.kernel), kernel)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"filters": 0, "kernel_size": 3}, "Received: filters=0"),
        ({"filters": 2, "kernel_size": (3, 0)}, r"Received: kernel_size=\(3, 0\)"),
        ({"filters": 2, "kernel_size": 3, "strides": 1.5}, "Received: strides=1.5"),
        ({"filters": 2, "kernel_size": 3, "padding": "full"}, "Received: padding='full'"),
        ({"filters": 2, "kernel_size": 3, "pool_size": 0}, "Received: pool_size=0"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        stackae.TiedConv2DAutoEncoderLayer(**kwargs)


def test_build_needs_images_the_kernel_fits():
    with pytest.raises(ValueError, match="must be images"):
        stackae.TiedConv2DAutoEncoderLayer(2, 3).build((None, 30))
    with pytest.raises(ValueError, match="does not fit 2x8 images"):
        stackae.TiedConv2DAutoEncoderLayer(2, 3).build((None, 2, 8, 1))


def test_config_round_trip():
    layer = stackae.TiedConv2DAutoEncoderLayer(
        6,
        (3, 5),
        strides=(1, 2),
        padding="same",
        activation="relu",
        decoder_activation="linear",
        pool_size=2,
        kernel_regularizer=keras.regularizers.L2(0.01),
        decoder_bias_constraint="non_neg",
    )
    config = layer.get_config()
    clone = stackae.TiedConv2DAutoEncoderLayer.from_config(config)
    assert clone.get_config() == config
    assert clone.kernel_size == (3, 5) and clone.strides == (1, 2) and clone.pool_size == (2, 2)
    assert clone.activation is keras.activations.relu


class TestKerasLayerHarness(testing.TestCase):
    """Keras's own layer checks: build, symbolic and eager calls, config round trip,
    training inside a model, mixed precision."""

    def test_encoding_call(self):
        # A model that only encodes leaves the decoder bias without a gradient, and
        # Keras says so when the harness trains it (the layer's docstring: freeze it).
        warnings.filterwarnings("ignore", "Gradients do not exist for variables .*decoder_bias'")
        self.run_layer_test(
            stackae.TiedConv2DAutoEncoderLayer,
            init_kwargs={
                "filters": 3,
                "kernel_size": 3,
                "strides": 2,
                "padding": "same",
                "kernel_regularizer": "l2",
                "bias_constraint": "non_neg",
            },
            input_shape=(2, 7, 9, 2),
            expected_output_shape=(2, 4, 5, 3),
            expected_num_trainable_weights=3,
            expected_num_non_trainable_weights=0,
            expected_num_losses=1,
        )

    def test_pooled_encoding_call(self):
        warnings.filterwarnings("ignore", "Gradients do not exist for variables .*decoder_bias'")
        self.run_layer_test(
            stackae.TiedConv2DAutoEncoderLayer,
            init_kwargs={"filters": 3, "kernel_size": 2, "pool_size": 2},
            input_shape=(2, 7, 9, 2),
            call_kwargs={"return_logits": True},
            expected_output_shape=(2, 3, 4, 3),
            expected_num_trainable_weights=3,
            expected_num_non_trainable_weights=0,
        )


@pytest.mark.slow  # the TensorFlow case runs by default
def test_keras_layer_harness_under_jax_and_torch():
    """The harness in processes whose Keras backend is JAX, then PyTorch (fixed per process)."""
    script = (
        "import sys, unittest, keras\n"
        "from tests.test_conv_layer import TestKerasLayerHarness as Harness\n"
        "suite = unittest.defaultTestLoader.loadTestsFromTestCase(Harness)\n"
        "result = unittest.TextTestRunner().run(suite)\n"
        "if result.wasSuccessful():\n"
        "    print(keras.backend.backend(), 'passed', result.testsRun)\n"
    )
    for backend in ("jax", "torch"):
        env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.stdout.strip() == f"{backend} passed 2", result.stderr[-3000:]


def tied_autoencoder_model(pool_size=2):
    """A functional classifier on the tied conv layer's pooled code, and the layer."""
    inputs = keras.Input((9, 7, 2))
    tied = stackae.TiedConv2DAutoEncoderLayer(
        3, 3, padding="same", pool_size=pool_size, name="tied"
    )
    code = tied(inputs)
    outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(code))
    return keras.Model(inputs, outputs), tied


def test_saves_and_loads_in_a_functional_model(tmp_path, rng):
    model, tied = tied_autoencoder_model()
    random_weights(tied, rng)
    x = rng.random((5, 9, 7, 2)).astype("float32")
    path = tmp_path / "conv.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    layer = loaded.get_layer("tied")
    assert isinstance(layer, stackae.TiedConv2DAutoEncoderLayer)
    assert layer.image_shape == (9, 7, 2) and layer.pool_size == (2, 2)
    for mine, theirs in zip(tied.weights, layer.weights):
        assert_allclose(numpy(theirs), numpy(mine))
    # It trains inside Keras's own fit, and a Sequential takes it too.
    tied.decoder_bias.trainable = False  # the model only encodes
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    before = numpy(tied.kernel).copy()
    model.fit(x, np.arange(5) % 4, epochs=1, verbose=0)
    assert not np.allclose(before, numpy(tied.kernel))
    sequential = keras.Sequential([keras.Input((9, 7, 2)), layer])
    assert sequential.output_shape == (None, 4, 3, 3)


LOAD_SCRIPT = """
import json
import numpy as np
import keras
import stackae

data = np.load("expected.npz")
model = keras.saving.load_model("conv.keras")
tied = model.get_layer("tied")
print(json.dumps({
    "backend": keras.backend.backend(),
    "type": type(tied).__name__,
    "error": float(np.max(np.abs(model.predict(data["x"], verbose=0) - data["y"]))),
    "reconstruction": float(np.max(np.abs(
        keras.ops.convert_to_numpy(tied.reconstruct(data["x"])) - data["z"]))),
}))
"""


@pytest.mark.slow  # the TensorFlow case runs by default
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_file_saved_under_tensorflow_loads_under(backend, tmp_path, rng):
    model, tied = tied_autoencoder_model()
    random_weights(tied, rng)
    x = rng.random((5, 9, 7, 2)).astype("float32")
    model.save(tmp_path / "conv.keras")
    np.savez(
        tmp_path / "expected.npz",
        x=x,
        y=model.predict(x, verbose=0),
        z=numpy(tied.reconstruct(x)),
    )
    env = {"JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    result = run_under(backend, LOAD_SCRIPT, tmp_path, env=env)
    assert result["backend"] == backend
    assert result["type"] == "TiedConv2DAutoEncoderLayer"
    assert result["error"] < 1e-5
    assert result["reconstruction"] < 1e-5


@pytest.mark.slow  # the TensorFlow case runs by default
def test_file_saved_under_jax_loads_under_tensorflow(tmp_path):
    script = """
    import json
    import numpy as np
    import keras
    import stackae
    from tests.test_conv_layer import tied_autoencoder_model, random_weights

    model, tied = tied_autoencoder_model()
    random_weights(tied, np.random.default_rng(1))
    x = np.random.default_rng(2).random((5, 9, 7, 2)).astype("float32")
    model.save("conv.keras")
    np.savez("expected.npz", x=x, y=model.predict(x, verbose=0),
             z=keras.ops.convert_to_numpy(tied.reconstruct(x)))
    print(json.dumps({"backend": keras.backend.backend()}))
    """
    env = {"JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    assert run_under("jax", script, tmp_path, env=env)["backend"] == "jax"
    result = run_under("tensorflow", LOAD_SCRIPT, tmp_path, env=env)
    assert result["error"] < 1e-5 and result["reconstruction"] < 1e-5


# Files written by the conv layer whose decoder bias was non-trainable until used
# (see tests/fixtures/make_conv_fixtures.py).
CONV_FIXTURES = os.path.join(ROOT, "tests", "fixtures", "conv")


@pytest.fixture(scope="module")
def old_conv():
    return dict(np.load(os.path.join(CONV_FIXTURES, "expected.npz")))


def test_old_conv_classifier_file_loads_and_predicts_the_same(old_conv):
    model = keras.saving.load_model(os.path.join(CONV_FIXTURES, "conv_classifier.keras"))
    x = old_conv["x"]
    assert_allclose(model.predict(x, verbose=0), old_conv["classifier"], rtol=1e-6)
    tied = model.get_layer("tied")
    assert isinstance(tied, stackae.TiedConv2DAutoEncoderLayer)
    for variable in tied.weights:
        np.testing.assert_array_equal(numpy(variable), old_conv[f"classifier_{variable.name}"])
    # Saved unused (non-trainable then), the decoder bias loads as an ordinary weight.
    assert [w.name for w in tied.trainable_weights] == ["kernel", "bias", "decoder_bias"]
    assert_allclose(
        numpy(tied.reconstruct(x)), old_conv["classifier_reconstruction"], rtol=1e-5, atol=1e-6
    )


def test_old_conv_stack_file_loads_with_every_weight(old_conv):
    stack = keras.saving.load_model(os.path.join(CONV_FIXTURES, "conv_stack.keras"))
    assert isinstance(stack, stackae.Stack)
    for k, layer in enumerate(stack.encoder_layers):
        assert [w.name for w in layer.weights] == ["kernel", "bias", "decoder_bias"]
        for variable in layer.weights:
            np.testing.assert_array_equal(
                numpy(variable), old_conv[f"stack_{k + 1}_{variable.name}"]
            )
    assert_allclose(numpy(stack.encode(old_conv["x"])), old_conv["stack_codes"], rtol=1e-6)


def test_old_conv_pretraining_checkpoint_loads_with_its_optimizer_state(old_conv):
    layer = stackae.TiedConv2DAutoEncoderLayer(2, 3, pool_size=2)
    resumed = stackae.AutoEncoder(layer, corruption=0.2, seed=26)
    resumed.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    resumed.build((None, 6, 6, 1))
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(os.path.join(CONV_FIXTURES, "conv_autoencoder.weights.h5"))
    for variable in layer.weights:
        np.testing.assert_array_equal(numpy(variable), old_conv[f"checkpoint_{variable.name}"])
    variables = resumed.optimizer.variables
    assert len(variables) == 5  # iterations, and a momentum per weight (the decoder bias's too)
    for k, variable in enumerate(variables):
        np.testing.assert_array_equal(numpy(variable), old_conv[f"checkpoint_optimizer_{k}"])
