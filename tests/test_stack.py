"""Greedy pretraining, the exporter and fine-tuning of a small stack."""

import keras
import numpy as np
import pytest
from numpy.testing import assert_allclose

import stackae
from stackae import export
from stackae.config import FinetuneSpec
from stackae.data import training_dataset
from stackae.finetuning import error_rate, finetune
from stackae.stack import Stack, layer_specs, pretrain


def numpy(v):
    return keras.ops.convert_to_numpy(v)


def small_stack(sizes=(12, 6), **settings):
    keras.utils.set_random_seed(7)
    settings = {"epochs": 2, "batch_size": 8, **settings}
    stack = Stack(layer_specs(sizes, **settings), seed=11)
    stack.build((None, 30))
    return stack


def test_layer_specs_broadcast_and_errors():
    specs = layer_specs((1000, 1000, 1000), corruption=(0.1, 0.2, 0.3), learning_rate=0.01)
    assert [s.corruption for s in specs] == [0.1, 0.2, 0.3]
    assert [s.learning_rate for s in specs] == [0.01] * 3
    assert specs[0].epochs == 15 and specs[0].batch_size == 20  # the tutorial's defaults
    with pytest.raises(ValueError, match="2 values for 3 layers"):
        layer_specs((5, 5, 5), corruption=(0.1, 0.2))
    with pytest.raises(ValueError, match="positive integers"):
        layer_specs((5, 0))
    with pytest.raises(ValueError, match="Unknown layer setting"):
        layer_specs((5,), colour="red")


def test_encoder_export_equals_top_code(small_x):
    stack = small_stack()
    pretrain(stack, small_x, verbose=0)
    enc = export.encoder(stack)
    assert [type(layer) for layer in enc.layers] == [keras.layers.Dense] * 2
    assert_allclose(enc.predict(small_x, verbose=0), numpy(stack.encode(small_x)), atol=1e-6)


def test_deep_autoencoder_equals_decoding_through_stack(small_x):
    stack = small_stack()
    deep = export.deep_autoencoder(stack)
    expected = numpy(stack.decode(stack.encode(small_x)))
    assert deep.output_shape == (None, 30)
    assert_allclose(deep.predict(small_x, verbose=0), expected, atol=1e-6)


def test_classifier_starts_pretrained_and_finetuning_changes_all_layers(small_x, rng):
    stack = small_stack()
    pretrain(stack, small_x, verbose=0)
    model = export.classifier(stack, n_classes=3)
    for dense, tied in zip(model.layers[:2], stack.encoder_layers):
        assert_allclose(numpy(dense.kernel), numpy(tied.kernel))
        assert_allclose(numpy(dense.bias), numpy(tied.bias))
    assert np.all(numpy(model.layers[-1].kernel) == 0)
    y = (small_x[:, 0] * 3).astype("int64").clip(0, 2)
    before = [numpy(layer.kernel).copy() for layer in model.layers]
    finetune(model, (small_x, y), spec=FinetuneSpec(epochs=3, batch_size=8), verbose=0)
    for b, layer in zip(before, model.layers):
        assert not np.allclose(b, numpy(layer.kernel)), layer.name
    predicted = np.argmax(model.predict(small_x, verbose=0), axis=-1)
    assert error_rate(model, small_x, y) == pytest.approx(np.mean(predicted != y))


def test_classifier_dropout_is_active_in_fit_only(small_x):
    stack = small_stack()
    plain = export.classifier(stack, 3, zero_init=False)
    model = export.classifier(stack, 3, zero_init=False, dropout=0.5, input_dropout=0.2)
    names = [layer.name for layer in model.layers]
    assert names == ["input_dropout", "encoder_1", "dropout_1", "encoder_2", "dropout_2", "softmax"]
    model.get_layer("softmax").set_weights(plain.get_layer("softmax").get_weights())
    # Inference: the same function of the same weights; training: units dropped.
    assert_allclose(model.predict(small_x, verbose=0), plain.predict(small_x, verbose=0), atol=1e-6)
    assert not np.allclose(numpy(model(small_x, training=True)), numpy(plain(small_x)), atol=1e-3)


def test_learning_rate_decays_each_epoch(small_x):
    model = export.classifier(small_stack(), 3)
    y = (small_x[:, 0] * 3).astype("int64").clip(0, 2)
    spec = FinetuneSpec(epochs=3, batch_size=8, learning_rate=0.2, lr_decay=0.5)
    finetune(model, (small_x, y), spec=spec, verbose=0)
    assert float(numpy(model.optimizer.learning_rate)) == pytest.approx(0.2 * 0.5**2)


def test_layer_two_trains_on_clean_codes_of_layer_one(small_x):
    stack = small_stack(corruption=0.3)
    initial = [[numpy(w).copy() for w in layer.weights] for layer in stack.encoder_layers]
    pretrain(stack, small_x, verbose=0)

    # The same two steps by hand: layer 1 on x, then layer 2 on layer 1's clean codes.
    manual = []
    inputs = small_x
    for k, spec in enumerate(stack.specs):
        layer = stackae.TiedAutoEncoderLayer(spec.units)
        layer.build((None, inputs.shape[1]))
        for w, value in zip(layer.weights, initial[k]):
            w.assign(value)
        model = stackae.AutoEncoder(layer, corruption=0.3, seed=stack.seed + k)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        data, order = training_dataset(inputs, 8, seed=stack.seed + k)
        model.fit(data, epochs=2, callbacks=[order], verbose=0)
        manual.append(layer)
        inputs = numpy(layer(inputs))  # clean codes: no noise here
    for got, want in zip(stack.encoder_layers, manual):
        for a, b in zip(got.weights, want.weights):
            assert_allclose(numpy(a), numpy(b), rtol=1e-5, atol=1e-6)
    # And layer 2 did train (the equality above is not two untouched initial kernels).
    assert not np.allclose(numpy(stack.encoder_layers[1].kernel), initial[1][0])


def test_saved_stack_loads_back_identical(tmp_path, small_x):
    stack = small_stack(corruption=(0.1, 0.2))
    pretrain(stack, small_x, verbose=0)
    path = tmp_path / "stack.keras"
    stack.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Stack)
    assert loaded.specs == stack.specs and loaded.seed == stack.seed
    for a, b in zip(loaded.weights, stack.weights):
        assert np.array_equal(numpy(a), numpy(b))
    assert {w.name for w in loaded.weights} >= {"kernel", "bias", "decoder_bias"}


def test_exported_classifier_loads_without_stackae(tmp_path):
    import subprocess
    import sys

    stack = small_stack()
    model = export.classifier(stack, 4)
    path = tmp_path / "classifier.keras"
    model.save(path)
    x = np.random.default_rng(1).random((5, 30)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    expected = model.predict(x, verbose=0)
    code = (
        "import sys, numpy as np, keras\n"
        f"m = keras.saving.load_model({str(path)!r})\n"
        f"p = m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)\n"
        "assert 'stackae' not in sys.modules\n"
        f"np.save({str(tmp_path / 'p.npy')!r}, p)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    assert_allclose(np.load(tmp_path / "p.npy"), expected, rtol=1e-6)


def test_the_finetune_function_survives_importing_its_module():
    import stackae.finetuning  # noqa: F401  (binds stackae.finetuning, not stackae.finetune)

    assert stackae.finetune is stackae.finetuning.finetune


def test_pretraining_validation_on_held_batches_gives_keras_evaluate_s_numbers(monkeypatch, rng):
    # Validation rows in memory are held as tensors for the fit (no tf.data iterator per
    # epoch); the histories equal those of Keras's own evaluate on the same batches.
    from stackae import trainers

    x = rng.random((96, 12)).astype("float32")
    valid = rng.random((40, 12)).astype("float32")
    specs = layer_specs((6, 4), epochs=3, batch_size=8, corruption=0.2)
    held = []
    evaluate_held = trainers.TensorFlowSteps._evaluate_held

    def counted(self, callbacks):
        held.append(type(self).__name__)
        return evaluate_held(self, callbacks)

    monkeypatch.setattr(trainers.TensorFlowSteps, "_evaluate_held", counted)
    keras.utils.set_random_seed(7)  # the initial weights
    fast = pretrain(Stack(specs, seed=3), x, valid, verbose=0)
    assert held == ["AutoEncoder"] * 6  # every epoch of both layers
    monkeypatch.setattr(trainers, "held_validation", _not_held(trainers.held_validation))
    keras.utils.set_random_seed(7)
    plain = pretrain(Stack(specs, seed=3), x, valid, verbose=0)
    assert len(held) == 6
    for a, b in zip(fast, plain, strict=True):
        assert_allclose(a.history["val_loss"], b.history["val_loss"], rtol=1e-6)
        assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-6)


def _not_held(held_validation):
    def plain(model, x, validation, streamed):
        return held_validation(model, x, validation, streamed, limit=0)

    return plain
