"""Layer kinds: a conv + dense stack pretrains greedily, exports to a plain Keras CNN,
fine-tunes, and its classifier loads without stackae."""

import os
import re
import textwrap

import keras
import numpy as np
import pytest
from numpy.testing import assert_allclose

import stackae
from stackae import export
from stackae.kinds import Conv2DSpec, kind_of
from tests.processes import run_under

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numpy(value):
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def images(rng, n=48, size=(9, 9), channels=1):
    return rng.random((n, *size, channels)).astype("float32")


def mixed_specs(epochs=2):
    # A kernel shared over every position sums its gradient over them: a smaller rate.
    conv = {"epochs": epochs, "batch_size": 8, "learning_rate": 0.03}
    return [
        Conv2DSpec(filters=3, kernel_size=3, pool_size=2, **conv),
        Conv2DSpec(filters=4, kernel_size=2, corruption=0.2, **conv),
        stackae.LayerSpec(5, epochs=epochs, batch_size=8),
    ]


def test_mixed_stack_shapes_and_config_round_trip():
    stack = stackae.Stack(mixed_specs(), seed=3)
    stack.build((None, 9, 9, 1))
    assert stack.flattens == [False, False, True]
    assert stack.example_shapes == [(9, 9, 1), (3, 3, 3), (16,)]
    assert stack.sizes == [3, 4, 5]
    assert [kind_of(layer).name for layer in stack.encoder_layers] == ["conv2d", "conv2d", "dense"]
    config = stack.get_config()
    assert config["specs"][0]["kind"] == "conv2d" and "kind" not in config["specs"][2]
    clone = stackae.Stack.from_config(config)
    assert clone.specs == stack.specs


def test_a_kind_spec_has_layer_spec_training_fields_and_defaults():
    # One table: a default changed in LayerSpec changes every kind's.
    import dataclasses

    from stackae.config import LayerSpec
    from stackae.kinds import KindSpec

    layer = [(f.name, f.type, f.default) for f in dataclasses.fields(LayerSpec)]
    assert layer[0][0] == "units"
    assert [(f.name, f.type, f.default) for f in dataclasses.fields(KindSpec)] == layer[1:]
    with pytest.raises(TypeError):
        KindSpec(0.1)  # keyword-only, as the fields a kind's spec adds
    with pytest.raises(ValueError, match="corruption"):
        KindSpec(corruption=1.5)  # LayerSpec's checks


def test_a_conv_layer_refuses_rows_and_cannot_follow_a_dense_layer():
    stack = stackae.Stack([Conv2DSpec(filters=2)])
    with pytest.raises(
        ValueError, match=r"A conv2d layer needs images \(height, width, channels\)"
    ):
        stack.build((None, 30))
    with pytest.raises(ValueError, match=r"Layer 2 \(conv2d\) needs examples of rank 3"):
        stackae.Stack([stackae.LayerSpec(8), Conv2DSpec(filters=2)])
    with pytest.raises(ValueError, match="The sparsity penalty is for dense layers"):
        Conv2DSpec(filters=2, sparsity=0.1)


def test_conv_autoencoder_cost_sums_over_every_value(rng):
    layer = stackae.TiedConv2DAutoEncoderLayer(2, 3, pool_size=2, dtype="float64")
    autoencoder = stackae.AutoEncoder(layer, dtype="float64")
    x = rng.random((4, 8, 7, 2))
    autoencoder.build(x.shape)
    cost, _ = autoencoder.costs(x, x)
    logits = numpy(layer.reconstruct(x, return_logits=True))
    per_example = np.sum(np.logaddexp(0, logits) - x * logits, axis=(1, 2, 3))
    assert_allclose(float(cost), per_example.mean(), rtol=1e-10)
    assert [w.name for w in autoencoder.trainable_weights] == ["kernel", "bias", "decoder_bias"]


@pytest.fixture(scope="module")
def pretrained():
    rng = np.random.default_rng(0)
    x = images(rng)
    stack = stackae.Stack(mixed_specs(epochs=3), seed=5)
    stack.build((None, 9, 9, 1))
    before = [numpy(layer.kernel).copy() for layer in stack.encoder_layers]
    histories = stackae.pretrain(stack, x, valid=x[:16], verbose=0, jit_compile=False)
    return stack, x, before, histories


def test_mixed_stack_pretrains_greedily(pretrained):
    stack, x, before, histories = pretrained
    assert len(histories) == 3
    for k, (history, old) in enumerate(zip(histories, before)):
        losses = history.history["loss"]
        assert len(losses) == 3 and np.all(np.isfinite(losses))
        assert losses[-1] < losses[0], f"layer {k + 1} did not learn: {losses}"
        assert not np.allclose(old, numpy(stack.encoder_layers[k].kernel))
    # Layer 3's validation loss is its autoencoder's cost on the clean codes of layer 2,
    # flattened.
    codes = stack.codes(x[:16], 2).reshape(16, -1)
    autoencoder = stack.autoencoder(2)
    autoencoder.build((None, codes.shape[1]))
    cost, _ = autoencoder.costs(codes, codes)
    assert_allclose(histories[2].history["val_loss"][-1], float(cost), rtol=1e-4)


def test_exports_are_plain_keras_and_match_the_stack(pretrained):
    stack, x, _, _ = pretrained
    encoder = export.encoder(stack)
    kinds = [type(layer).__name__ for layer in encoder.layers]
    assert kinds == ["Conv2D", "MaxPooling2D", "Conv2D", "Flatten", "Dense"]
    assert_allclose(encoder.predict(x, verbose=0), numpy(stack.encode(x)), rtol=1e-5, atol=1e-6)

    unrolled = export.deep_autoencoder(stack)
    names = [type(layer).__name__ for layer in unrolled.layers]
    assert names[5:] == ["Dense", "Reshape", "Conv2DTranspose", "UpSampling2D", "ZeroPadding2D"] + [
        "Conv2DTranspose"
    ]
    assert unrolled.output_shape == (None, 9, 9, 1)
    # Above the pooling, the unrolled decoders are the layers' own tied decoders.
    top = stack.encode(x)
    partial = keras.Sequential(unrolled.layers[:8])
    expected = stack.encoder_layers[1].decode(
        keras.ops.reshape(stack.encoder_layers[2].decode(top), (-1, 2, 2, 4))
    )
    assert_allclose(partial.predict(x, verbose=0), numpy(expected), rtol=1e-5, atol=1e-6)
    # The Conv2DTranspose holds the encoder's own kernel, unflipped.
    assert_allclose(
        numpy(unrolled.get_layer("decoder_1").kernel), numpy(stack.encoder_layers[0].kernel)
    )


def test_classifier_finetunes_and_loads_without_stackae(pretrained, tmp_path):
    stack, x, _, _ = pretrained
    y = (x.mean(axis=(1, 2, 3)) > np.median(x.mean(axis=(1, 2, 3)))).astype("int64")
    model = export.classifier(stack, 2, dropout=0.1)
    before = numpy(model.get_layer("encoder_1").kernel).copy()
    spec = stackae.FinetuneSpec(epochs=3, batch_size=8, patience=5)
    history = stackae.finetune(model, (x, y), (x[:16], y[:16]), spec, seed=1, verbose=0)
    assert len(history.history["loss"]) >= 1
    assert not np.allclose(before, numpy(model.get_layer("encoder_1").kernel))
    path = tmp_path / "classifier.keras"
    model.save(path)
    np.savez(tmp_path / "data.npz", x=x, p=model.predict(x, verbose=0))
    script = """
    import json
    import numpy as np
    import keras
    data = np.load("data.npz")
    model = keras.saving.load_model("classifier.keras")
    print(json.dumps({
        "error": float(np.max(np.abs(model.predict(data["x"], verbose=0) - data["p"]))),
        "layers": [type(layer).__name__ for layer in model.layers],
    }))
    """
    # A fresh process where stackae cannot be imported.
    script = 'import sys\nsys.modules["stackae"] = None\n' + textwrap.dedent(script)
    result = run_under("tensorflow", script, tmp_path)
    assert result["error"] < 1e-5
    assert "Conv2D" in result["layers"] and "Dropout" in result["layers"]


BACKEND_SCRIPT = """
import json
import numpy as np
import keras
import stackae
from stackae import export
from stackae.kinds import Conv2DSpec

rng = np.random.default_rng(0)
x = rng.random((32, 7, 8, 2)).astype("float32")
y = (x.mean(axis=(1, 2, 3)) > np.median(x.mean(axis=(1, 2, 3)))).astype("int64")
conv = {"epochs": 3, "batch_size": 4, "learning_rate": 0.03}
stack = stackae.Stack(
    [Conv2DSpec(filters=3, kernel_size=3, strides=2, padding="same", pool_size=2, **conv),
     stackae.LayerSpec(4, epochs=2, batch_size=4, corruption=0.3)],
    seed=4,
)
histories = stackae.pretrain(stack, x, group=4, verbose=0)
encoder = export.encoder(stack)
codes = keras.ops.convert_to_numpy(stack.encode(x))
gap = float(np.max(np.abs(encoder.predict(x, verbose=0) - codes)))
model = export.classifier(stack, 2)
spec = stackae.FinetuneSpec(epochs=2, batch_size=4)
stackae.finetune(model, (x, y), spec=spec, seed=0, verbose=0)
print(json.dumps({
    "backend": keras.backend.backend(),
    "losses": [h.history["loss"] for h in histories],
    "gap": gap,
    "finite": bool(np.all(np.isfinite(model.predict(x, verbose=0)))),
}))
"""


@pytest.mark.slow  # the TensorFlow case runs by default
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_conv_stack_pretrains_and_finetunes_under(backend, tmp_path):
    """Grouped steps (group, batch, height, width, channels) under each backend's trainer."""
    env = {"JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    result = run_under(backend, BACKEND_SCRIPT, tmp_path, env=env)
    assert result["backend"] == backend
    conv_losses, dense_losses = result["losses"]
    assert conv_losses[-1] < conv_losses[0]
    assert np.all(np.isfinite(dense_losses))
    assert result["gap"] < 1e-5 and result["finite"]


@pytest.mark.parametrize(
    "shape,received",
    [((12, 81), r"\(81,\)"), ((12, 9, 9), r"\(9, 9\)")],
)
def test_pretraining_a_conv_stack_on_a_table_is_refused_in_one_line(shape, received):
    stack = stackae.Stack(mixed_specs())
    x = np.zeros(shape, "float32")
    with pytest.raises(ValueError) as caught:
        stackae.pretrain(stack, x, verbose=0)
    message = str(caught.value)
    assert "\n" not in message
    assert "A conv2d layer needs images (height, width, channels)" in message
    assert re.search(f"given examples of shape {received}", message)


def test_kinds_own_their_filter_pictures_and_estimates():
    stack = stackae.Stack([Conv2DSpec(filters=4, kernel_size=(3, 2), pool_size=2)])
    stack.build((None, 9, 8, 3))
    conv = stack.layer_kinds[0]
    pictures = conv.filter_images(stack.encoder_layers[0])
    kernel = numpy(stack.encoder_layers[0].kernel)  # (3, 2, 3, 4)
    assert pictures.shape == (4, 3, 2, 3)  # one colour image per filter
    assert_allclose(pictures[1], kernel[..., 1])
    estimates = conv.estimates(stack.specs[0], (9, 8, 3))
    # 7 x 7 positions, each 3 * 2 * 3 multiply-adds per filter; the code is pooled to 3 x 3.
    assert estimates == {
        "parameters": 3 * 2 * 3 * 4 + 4 + 3,
        "multiply_adds": 7 * 7 * 3 * 2 * 3 * 4,
        "code_size": 3 * 3 * 4,
    }
    dense = kind_of(stackae.LayerSpec(5))
    assert dense.estimates(stackae.LayerSpec(5), (12,))["multiply_adds"] == 60
    assert dense.output_shape(stackae.LayerSpec(5), (12,)) == (5,)


def test_a_mixed_stack_saves_and_loads(tmp_path, rng):
    stack = stackae.Stack(mixed_specs(), seed=3)
    stack.build((None, 9, 9, 1))
    x = images(rng, n=4)
    stack.save(tmp_path / "stack.keras")
    loaded = keras.saving.load_model(tmp_path / "stack.keras")
    assert loaded.specs == stack.specs
    assert loaded.specs[0].kernel_size == 3 and loaded.flattens == [False, False, True]
    assert_allclose(numpy(loaded.encode(x)), numpy(stack.encode(x)), rtol=1e-6)
    for mine, theirs in zip(stack.weights, loaded.weights):
        assert_allclose(numpy(theirs), numpy(mine))


def test_convolutions_train_without_xla_on_a_cpu_unless_asked(monkeypatch):
    # XLA's CPU convolutions made a conv layer's epoch 7-8x slower (benchmarks/conv_speed.py).
    from stackae import compat
    from stackae.compat import has_convolution
    from stackae.finetuning import make_finetuner

    monkeypatch.setattr(compat, "_has_gpu", lambda: False)
    conv = stackae.TiedConv2DAutoEncoderLayer(2, 3)
    dense = stackae.TiedAutoEncoderLayer(4)
    for layer, xla in ((conv, False), (dense, True)):
        autoencoder = stackae.AutoEncoder(layer)
        autoencoder.compile()
        assert autoencoder.jit_compile is xla
    asked = stackae.AutoEncoder(stackae.TiedConv2DAutoEncoderLayer(2, 3))
    asked.compile(jit_compile=True)
    assert asked.jit_compile is True

    stack = stackae.Stack(mixed_specs())
    stack.build((None, 8, 8, 1))
    classifier = export.classifier(stack, 3)
    assert has_convolution(classifier)
    assert not has_convolution(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    finetuner = make_finetuner(classifier)
    assert finetuner.jit_compile is False and classifier.jit_compile is False
    monkeypatch.setattr(compat, "_has_gpu", lambda: True)
    on_a_gpu = stackae.AutoEncoder(stackae.TiedConv2DAutoEncoderLayer(2, 3))
    on_a_gpu.compile()
    assert on_a_gpu.jit_compile is True
