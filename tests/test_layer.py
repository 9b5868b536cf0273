"""TiedAutoEncoderLayer against the tutorial's equations, and its Keras behaviour."""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from keras.src import testing
from numpy.testing import assert_allclose, assert_array_equal

import stackae
from tests import reference as ref

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numpy(value):
    # Variable.numpy(): ops.convert_to_numpy on a variable trips a NumPy 2 DeprecationWarning.
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def random_weights(layer, rng):
    """Give every weight random values, biases included, so that none passes by being zero."""
    for variable in layer.weights:
        variable.assign(rng.normal(0.0, 0.5, variable.shape).astype(variable.dtype))


def test_encode_decode_match_reference(small_x, rng):
    layer = stackae.TiedAutoEncoderLayer(7, dtype="float64")
    layer.build(small_x.shape)
    random_weights(layer, rng)
    x = small_x.astype("float64")
    W, b, b_prime = (numpy(v) for v in (layer.kernel, layer.bias, layer.decoder_bias))
    h_ref, z_ref = ref.forward(x, W, b, b_prime)
    h = numpy(layer(x))
    assert_allclose(h, h_ref, rtol=1e-12)
    assert_allclose(numpy(layer(h, reverse=True)), z_ref, rtol=1e-12)
    logits = numpy(layer(h, reverse=True, return_logits=True))
    assert_allclose(logits, h_ref @ W.T + b_prime, rtol=1e-12, atol=1e-12)
    assert_allclose(numpy(layer(x, return_logits=True)), x @ W + b, rtol=1e-12, atol=1e-12)
    # The conveniences are the same calls.
    assert_allclose(numpy(layer.reconstruct(x)), z_ref, rtol=1e-12)
    assert_allclose(numpy(layer.decode(h)), z_ref, rtol=1e-12)


def test_weights_and_tutorial_initialiser():
    layer = stackae.TiedAutoEncoderLayer(500)
    layer.build((None, 784))
    assert [w.name for w in layer.weights] == ["kernel", "bias", "decoder_bias"]
    assert layer.kernel.shape == (784, 500)
    assert layer.bias.shape == (500,)
    assert layer.decoder_bias.shape == (784,)
    W = numpy(layer.kernel)
    bound = 4 * np.sqrt(6.0 / (784 + 500))
    assert np.abs(W).max() <= bound
    # A uniform sample of 392,000 values reaches close to both ends.
    assert W.max() > 0.99 * bound and W.min() < -0.99 * bound
    assert np.all(numpy(layer.bias) == 0)


def test_decoder_bias_is_an_ordinary_weight_that_an_encoder_freezes():
    layer = stackae.TiedAutoEncoderLayer(3)
    layer.build((None, 6))
    assert [w.name for w in layer.trainable_weights] == ["kernel", "bias", "decoder_bias"]
    layer.decoder_bias.trainable = False  # a model that only encodes
    assert [w.name for w in layer.trainable_weights] == ["kernel", "bias"]
    assert [w.name for w in layer.non_trainable_weights] == ["decoder_bias"]
    assert [w.name for w in layer.weights] == ["kernel", "bias", "decoder_bias"]  # saved order


def test_decoding_and_encoding_need_inputs_of_their_size():
    layer = stackae.TiedAutoEncoderLayer(3, name="tied")
    layer.build((None, 6))
    with pytest.raises(ValueError, match=r"decodes codes of size `units` \(3\)"):
        layer(np.ones((2, 6), "float32"), reverse=True)
    with pytest.raises(ValueError, match=r"encodes rows of size n_visible \(6\)"):
        layer(keras.Input((5,)))


def test_tied_gradient_reaches_one_kernel(small_x):
    import tensorflow as tf

    layer = stackae.TiedAutoEncoderLayer(5, dtype="float64")
    layer.build(small_x.shape)
    x = small_x.astype("float64")
    with tf.GradientTape(persistent=True) as tape:
        h = layer(x)
        decode_only = tf.reduce_sum(layer(tf.stop_gradient(h), reverse=True))
        both = tf.reduce_sum(layer(h, reverse=True))
    assert [v.name for v in layer.trainable_weights] == ["kernel", "bias", "decoder_bias"]
    g_decode = tape.gradient(decode_only, layer.kernel)
    g_both = tape.gradient(both, layer.kernel)
    assert g_decode is not None and np.abs(g_decode).sum() > 0
    assert tape.gradient(decode_only, layer.decoder_bias) is not None
    # The encoder's use adds its own part: the gradient is not the decoder's alone.
    assert not np.allclose(g_both, g_decode)


def test_functional_tied_autoencoder_matches_autoencoder_and_reference(rng):
    import tensorflow as tf

    x = rng.random((16, 10))  # float64
    inputs = keras.Input((10,), dtype="float64")
    tied = stackae.TiedAutoEncoderLayer(4, dtype="float64", name="tied")
    code = tied(inputs)
    logits = keras.Model(inputs, tied(code, reverse=True, return_logits=True))
    reconstruction = keras.Model(inputs, tied(code, reverse=True))
    random_weights(tied, rng)

    autoencoder = stackae.AutoEncoder(
        stackae.TiedAutoEncoderLayer(4, dtype="float64"), dtype="float64"
    )
    autoencoder.build((None, 10))
    for mine, theirs in zip(autoencoder.layer.weights, tied.weights):
        mine.assign(theirs)

    W, b, b_prime = (numpy(v) for v in tied.weights)
    _, z_ref = ref.forward(x, W, b, b_prime)
    assert_allclose(numpy(reconstruction(x)), z_ref, rtol=1e-10)
    assert_allclose(numpy(autoencoder(x)), z_ref, rtol=1e-10)

    with tf.GradientTape() as tape:
        a = logits(x)  # (batch, n_visible): the tutorial's cost from the logits
        cost = tf.reduce_mean(tf.reduce_sum(tf.nn.softplus(a) - x * a, axis=1))
    functional = tape.gradient(cost, tied.trainable_weights)
    with tf.GradientTape() as tape:
        ae_cost, _ = autoencoder.costs(x, x)
    stackae_grads = tape.gradient(ae_cost, autoencoder.trainable_weights)

    assert_allclose(float(cost), ref.cross_entropy_cost(x, x, W, b, b_prime), rtol=1e-10)
    assert_allclose(float(ae_cost), float(cost), rtol=1e-10)
    expected = ref.gradients(x, x, W, b, b_prime)
    assert len(functional) == len(stackae_grads) == 3
    for got_f, got_ae, want in zip(functional, stackae_grads, expected):
        assert_allclose(numpy(got_f), want, rtol=1e-10, atol=1e-12)
        assert_allclose(numpy(got_ae), want, rtol=1e-10, atol=1e-12)


def small_classifier(n_in=12, units=5, name="tied", **layer_kwargs):
    inputs = keras.Input((n_in,))
    code = stackae.TiedAutoEncoderLayer(units, name=name, **layer_kwargs)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(code))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return model


def fit_recording_warnings(model, x, y):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    return [str(w.message) for w in caught]


def test_fitting_an_encoder_emits_no_warning(tmp_path, rng):
    x = rng.random((32, 12)).astype("float32")
    y = rng.integers(0, 3, 32)
    model = small_classifier()
    tied = model.get_layer("tied")
    kernel_before = numpy(tied.kernel).copy()
    unfrozen = fit_recording_warnings(model, x, y)
    if keras.backend.backend() != "jax":  # JAX's gradient of an unused weight is zeros
        assert any("Gradients do not exist" in m and "decoder_bias" in m for m in unfrozen)
    tied.decoder_bias.trainable = False  # what the layer's docstring says to do
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    assert fit_recording_warnings(model, x, y) == []
    assert not np.allclose(numpy(tied.kernel), kernel_before)

    path = tmp_path / "classifier.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_functional_tied_autoencoder_trains_saves_and_loads(tmp_path, rng):
    x = rng.random((32, 12)).astype("float32")
    inputs = keras.Input((12,))
    tied = stackae.TiedAutoEncoderLayer(5, name="tied")
    model = keras.Model(inputs, tied(tied(inputs), reverse=True))
    assert model.output.shape == (None, 12)
    assert len(model.trainable_weights) == 3  # one kernel, two biases
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy")
    before = [numpy(w).copy() for w in tied.weights]
    assert fit_recording_warnings(model, x, x) == []
    for name, old, new in zip(["kernel", "bias", "decoder_bias"], before, tied.weights):
        assert not np.allclose(old, numpy(new)), f"{name} did not train"

    path = tmp_path / "tied_autoencoder.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert len(loaded.trainable_weights) == 3
    assert fit_recording_warnings(loaded, x, x) == []


@pytest.mark.parametrize("units", [0, -3, 2.5, "10", True])
def test_bad_units_rejected(units):
    with pytest.raises(ValueError, match="Received: units="):
        stackae.TiedAutoEncoderLayer(units)


def test_config_round_trip():
    layer = stackae.TiedAutoEncoderLayer(
        12,
        activation="relu",
        decoder_activation="linear",
        kernel_initializer="glorot_uniform",
        kernel_regularizer=keras.regularizers.L2(0.01),
        decoder_bias_regularizer=keras.regularizers.L1(0.02),
        kernel_constraint=keras.constraints.MaxNorm(2.0),
        bias_constraint="non_neg",
        decoder_bias_constraint=keras.constraints.MinMaxNorm(0.0, 1.5),
    )
    config = layer.get_config()
    clone = stackae.TiedAutoEncoderLayer.from_config(config)
    assert clone.get_config() == config
    assert clone.activation is keras.activations.relu
    assert isinstance(clone.decoder_bias_regularizer, keras.regularizers.L1)
    assert clone.decoder_bias_regularizer.get_config()["l1"] == pytest.approx(0.02)
    assert isinstance(clone.kernel_constraint, keras.constraints.MaxNorm)
    assert isinstance(clone.bias_constraint, keras.constraints.NonNeg)
    assert clone.decoder_bias_constraint.get_config()["max_value"] == 1.5
    assert config["bias_regularizer"] is None


def test_regularizers_and_constraints_act_on_their_weights(rng):
    layer = stackae.TiedAutoEncoderLayer(
        4,
        kernel_regularizer=keras.regularizers.L2(0.1),
        decoder_bias_regularizer=keras.regularizers.L1(0.2),
        bias_constraint="non_neg",
        decoder_bias_constraint="non_neg",
    )
    layer.build((None, 6))
    x = rng.random((8, 6)).astype("float32")
    layer(layer(x), reverse=True)
    assert len(layer.losses) == 2
    layer.decoder_bias.trainable = False  # a frozen weight's penalty does not count
    assert len(layer.losses) == 1
    layer.decoder_bias.trainable = True
    assert_allclose(
        sum(float(loss) for loss in layer.losses),
        0.1 * np.sum(numpy(layer.kernel) ** 2) + 0.2 * np.sum(np.abs(numpy(layer.decoder_bias))),
        rtol=1e-5,
    )

    inputs = keras.Input((6,))
    model = keras.Model(inputs, layer(layer(inputs), reverse=True))
    # Biases pushed far below zero: one SGD step leaves them negative unless constrained.
    layer.bias.assign(-np.ones(4, "float32"))
    layer.decoder_bias.assign(-np.ones(6, "float32"))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x, x, batch_size=8, epochs=1, verbose=0)
    assert_array_equal(numpy(layer.bias), 0.0)
    assert_array_equal(numpy(layer.decoder_bias), 0.0)


def test_layer_in_functional_model_saves_and_loads(tmp_path, small_x):
    inputs = keras.Input((30,))
    code = stackae.TiedAutoEncoderLayer(8, decoder_bias_constraint="non_neg")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(code)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "functional.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert_allclose(
        loaded.predict(small_x, verbose=0), model.predict(small_x, verbose=0), rtol=1e-6
    )
    assert isinstance(loaded.layers[1], stackae.TiedAutoEncoderLayer)
    assert isinstance(loaded.layers[1].decoder_bias_constraint, keras.constraints.NonNeg)


def test_mixed_precision_policy(small_x):
    layer = stackae.TiedAutoEncoderLayer(6, dtype="mixed_float16")
    h = layer(small_x)
    assert keras.backend.standardize_dtype(h.dtype) == "float16"
    assert keras.backend.standardize_dtype(layer.kernel.dtype) == "float32"
    for output in (
        layer(h, reverse=True),
        layer(h, reverse=True, return_logits=True),
        layer.reconstruct(small_x),
    ):
        assert keras.backend.standardize_dtype(output.dtype) == "float16"
    # float32 codes are cast by the call too, as any Keras layer's inputs.
    decoded = layer(keras.ops.cast(h, "float32"), reverse=True)
    assert keras.backend.standardize_dtype(decoded.dtype) == "float16"
    symbolic = layer(keras.Input((6,), dtype="float32"), reverse=True)
    assert symbolic.dtype == "float16" and symbolic.shape == (None, 30)


def test_output_shapes_both_ways():
    layer = stackae.TiedAutoEncoderLayer(4)
    layer.build((None, 9))
    assert layer.compute_output_shape((None, 9)) == (None, 4)
    assert layer.compute_output_shape((None, 4), reverse=True) == (None, 9)
    # Rows of any rank: (batch, time, features), as keras.layers.Dense.
    sequence = keras.Input((7, 9))
    assert layer(sequence).shape == (None, 7, 4)
    assert layer(layer(sequence), reverse=True).shape == (None, 7, 9)
    assert layer(np.ones((2, 7, 9), "float32")).shape == (2, 7, 4)


class Decoder(stackae.TiedAutoEncoderLayer):
    """The layer decoding by default, built for `n_visible` inputs by its first call.

    Keras's harness builds a layer from the shape of its first call's input
    (here a code, which does not say n_visible) and trains it without call
    arguments; this subclass changes only those two defaults.
    """

    def __init__(self, n_visible, **kwargs):
        super().__init__(**kwargs)
        self.n_visible_arg = n_visible

    def build(self, input_shape):
        super().build((*input_shape[:-1], self.n_visible_arg))

    def call(self, inputs, reverse=True, return_logits=False):
        return super().call(inputs, reverse=reverse, return_logits=return_logits)

    def compute_output_spec(self, inputs, reverse=True, return_logits=False):
        return super().compute_output_spec(inputs, reverse=reverse, return_logits=return_logits)

    def get_config(self):
        return {**super().get_config(), "n_visible": self.n_visible_arg}


class TestKerasLayerHarness(testing.TestCase):
    """Keras's own layer checks: build, symbolic and eager calls, config round trip,
    training inside a model, mixed precision."""

    init_kwargs = {
        "units": 4,
        "kernel_regularizer": "l2",
        "decoder_bias_regularizer": "l1",
        "bias_constraint": "non_neg",
    }

    def test_encoding_call(self):
        # A model that only encodes leaves the decoder bias without a gradient, and
        # Keras says so when the harness trains it (the layer's docstring: freeze it).
        warnings.filterwarnings("ignore", "Gradients do not exist for variables .*decoder_bias'")
        self.run_layer_test(
            stackae.TiedAutoEncoderLayer,
            init_kwargs=self.init_kwargs,
            input_shape=(3, 6),
            expected_output_shape=(3, 4),
            expected_num_trainable_weights=3,
            expected_num_non_trainable_weights=0,
            expected_num_losses=2,  # the kernel's and the decoder bias's regularizers
        )

    def test_encoding_call_logits(self):
        warnings.filterwarnings("ignore", "Gradients do not exist for variables .*decoder_bias'")
        self.run_layer_test(
            stackae.TiedAutoEncoderLayer,
            init_kwargs=self.init_kwargs,
            input_shape=(2, 5, 6),
            call_kwargs={"return_logits": True},
            expected_output_shape=(2, 5, 4),
            expected_num_trainable_weights=3,
            expected_num_non_trainable_weights=0,
        )

    def test_decoding_call(self):
        # A model that only decodes leaves the encoder bias without a gradient, and
        # Keras says so when the harness trains it.
        warnings.filterwarnings("ignore", "Gradients do not exist for variables .*/bias'")
        self.run_layer_test(
            Decoder,
            init_kwargs={"n_visible": 6, **self.init_kwargs},
            input_shape=(3, 4),
            call_kwargs={"reverse": True},
            expected_output_shape=(3, 6),
            expected_num_trainable_weights=3,
            expected_num_non_trainable_weights=0,
            expected_num_losses=2,
            custom_objects={"Decoder": Decoder},
        )

    def test_decoding_call_logits(self):
        warnings.filterwarnings("ignore", "Gradients do not exist for variables .*/bias'")
        self.run_layer_test(
            Decoder,
            init_kwargs={"n_visible": 6, **self.init_kwargs},
            input_shape=(2, 5, 4),
            call_kwargs={"reverse": True, "return_logits": True},
            expected_output_shape=(2, 5, 6),
            expected_num_trainable_weights=3,
            custom_objects={"Decoder": Decoder},
        )


def test_keras_layer_harness_under_jax():
    """The harness's two calls in a process whose Keras backend is JAX (fixed per process)."""
    script = (
        "import sys, unittest, keras\n"
        "from tests.test_layer import TestKerasLayerHarness as Harness\n"
        "names = ['test_encoding_call', 'test_decoding_call']\n"
        "suite = unittest.TestSuite(Harness(name) for name in names)\n"
        "result = unittest.TextTestRunner().run(suite)\n"
        "if result.wasSuccessful():\n"
        "    print(keras.backend.backend(), 'passed', result.testsRun)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.stdout.strip() == "jax passed 2", result.stderr[-3000:]


# Files written by the layer before `reverse=True` (see tests/fixtures/make_fixtures.py).


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(os.path.join(FIXTURES, "expected.npz")))


def load_fixture(name, cls):
    """Load a fixture in safe mode without custom_objects; it must come back a `cls`."""
    model = keras.saving.load_model(os.path.join(FIXTURES, name))
    assert isinstance(model, cls)
    return model


def test_old_classifier_file_loads_and_predicts_the_same(expected):
    model = load_fixture("tied_classifier.keras", keras.Model)
    assert_allclose(model.predict(expected["x"], verbose=0), expected["classifier"], rtol=1e-6)
    tied = model.get_layer("tied")
    assert isinstance(tied, stackae.TiedAutoEncoderLayer)
    for variable in tied.weights:
        assert_array_equal(numpy(variable), expected[f"classifier_{variable.name}"])
    # The decoder bias is kept, an ordinary weight.
    assert [w.name for w in tied.trainable_weights] == ["kernel", "bias", "decoder_bias"]


def test_old_stack_file_loads_with_every_weight(expected):
    stack = load_fixture("stack.keras", stackae.Stack)
    x = expected["x"]
    for k, layer in enumerate(stack.encoder_layers):
        assert [w.name for w in layer.weights] == ["kernel", "bias", "decoder_bias"]
        for variable in layer.weights:
            assert_array_equal(numpy(variable), expected[f"stack_{k + 1}_{variable.name}"])
    assert_allclose(numpy(stack.encode(x)), expected["stack_codes"], rtol=1e-6)
    assert_allclose(
        numpy(stack.decode(stack.encode(x))), expected["stack_reconstruction"], rtol=1e-6
    )


def test_old_autoencoder_file_and_checkpoint_load(expected):
    x = expected["x"]
    model = load_fixture("autoencoder.keras", stackae.AutoEncoder)
    assert_allclose(model.predict(x, verbose=0), expected["autoencoder_reconstruction"], rtol=1e-6)

    # A pretraining checkpoint: weights and the optimizer's momentum for each of them.
    resumed = stackae.AutoEncoder(5, corruption=0.2, seed=16)
    resumed.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    resumed.build((None, 12))
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(os.path.join(FIXTURES, "autoencoder.weights.h5"))
    for variable in resumed.layer.weights:
        assert_array_equal(numpy(variable), expected[f"checkpoint_{variable.name}"])
    momenta = [numpy(v) for v in resumed.optimizer.variables]
    assert len(momenta) == 5  # iterations, learning rate, one momentum per weight
    for k, value in enumerate(momenta):
        assert_array_equal(value, expected[f"checkpoint_optimizer_{k}"])


@pytest.mark.parametrize(
    "imports",
    ["import stackae\nimport keras", "import keras\nimport stackae"],
    ids=["stackae-first", "keras-first"],
)
def test_keras_files_load_after_import_stackae_in_either_order(imports, small_x, tmp_path):
    from tests.processes import run_under

    inputs = keras.Input((small_x.shape[1],))
    model = keras.Model(inputs, stackae.TiedAutoEncoderLayer(5, name="tied")(inputs))
    model.save(tmp_path / "tied.keras")
    np.save(tmp_path / "x.npy", small_x[:4])
    script = imports + (
        "\nimport json, sys, numpy as np\n"
        "loaded = 'stackae.layers' in sys.modules\n"  # registered by the imports alone
        "model = keras.saving.load_model('tied.keras')\n"  # no custom_objects
        "codes = np.asarray(model.predict(np.load('x.npy'), verbose=0)).tolist()\n"
        "print(json.dumps({'loaded': loaded, 'codes': codes}))\n"
    )
    found = run_under("jax", script, tmp_path)
    assert found["loaded"]
    assert_allclose(found["codes"], model.predict(small_x[:4], verbose=0), atol=1e-6)
