"""A user's own tied layer, registered as a kind in this file, goes through the public API:
pretrain, export, fine-tune, a run directory's resume (docs/kinds.md points here)."""

import dataclasses

import keras
import numpy as np
from keras import ops
from numpy.testing import assert_allclose

import stackae
from stackae import export
from stackae.kinds import Conv2DSpec, KindSpec, LayerKind, kind_of, register_kind


class TinyTied(keras.layers.Layer):
    """tanh(x W + b), decoded by the same W transposed plus a decoder bias: a user's layer."""

    def __init__(self, units, decoder_activation="sigmoid", **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.decoder_activation = keras.activations.get(decoder_activation)

    def build(self, input_shape):
        n_in = input_shape[-1]
        self.kernel = self.add_weight(name="kernel", shape=(n_in, self.units))
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        self.decoder_bias = self.add_weight(name="decoder_bias", shape=(n_in,), initializer="zeros")

    def call(self, inputs, reverse=False, return_logits=False):
        if reverse:
            logits = ops.matmul(inputs, ops.transpose(self.kernel)) + self.decoder_bias
            return logits if return_logits else self.decoder_activation(logits)
        logits = ops.matmul(inputs, self.kernel) + self.bias
        return logits if return_logits else ops.tanh(logits)

    def compute_output_spec(self, inputs, reverse=False, return_logits=False):
        size = self.kernel.shape[0] if reverse else self.units
        return keras.KerasTensor((*inputs.shape[:-1], size), dtype=self.compute_dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TinySpec(KindSpec):
    units: int


class TinyKind(LayerKind):
    name = "tiny"
    spec_class = TinySpec
    layer_class = TinyTied
    input_rank = 1

    def make_layer(self, spec, **kwargs):
        return TinyTied(spec.units, decoder_activation=spec.decoder_activation, **kwargs)

    def output_shape(self, spec, input_shape):
        return (*input_shape[:-1], spec.units)

    def size(self, spec):
        return spec.units

    def export_encoder(self, layer, index):
        dense = keras.layers.Dense(layer.units, activation="tanh", name=f"tiny_{index + 1}")
        dense.build((None, layer.kernel.shape[0]))
        dense.kernel.assign(layer.kernel)
        dense.bias.assign(layer.bias)
        return [dense]

    def export_decoder(self, layer, index):
        n_in = layer.kernel.shape[0]
        dense = keras.layers.Dense(n_in, activation="sigmoid", name=f"tiny_decoder_{index + 1}")
        dense.build((None, layer.units))
        dense.kernel.assign(ops.transpose(layer.kernel))
        dense.bias.assign(layer.decoder_bias)
        return [dense]

    def filter_images(self, layer):
        return layer.kernel.numpy().T

    def estimates(self, spec, input_shape):
        n_in = input_shape[-1]
        return {
            "parameters": n_in * spec.units,
            "multiply_adds": n_in * spec.units,
            "code_size": spec.units,
        }


register_kind(TinyKind())


def test_a_user_kind_pretrains_exports_and_finetunes():
    rng = np.random.default_rng(0)
    x = rng.random((48, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype("int64")
    specs = [
        Conv2DSpec(filters=2, kernel_size=3, pool_size=2, epochs=2, batch_size=8),
        TinySpec(units=6, epochs=3, batch_size=8, learning_rate=0.05, corruption=0.1),
    ]
    stack = stackae.Stack(specs, seed=2)
    assert [kind.name for kind in stack.layer_kinds] == ["conv2d", "tiny"]
    stack.build((None, 8, 8, 1))
    kernel = stack.encoder_layers[1].kernel.numpy().copy()
    histories = stackae.pretrain(stack, x, verbose=0, jit_compile=False)
    assert histories[1].history["loss"][-1] < histories[1].history["loss"][0]
    tied = stack.encoder_layers[1]
    assert isinstance(tied, TinyTied) and not np.allclose(kernel, tied.kernel.numpy())

    # The stack's config names the kind, and comes back with it.
    config = stack.get_config()
    assert config["specs"][1]["kind"] == "tiny"
    assert stackae.Stack.from_config(config).specs == stack.specs

    encoder = export.encoder(stack)
    assert [type(layer).__name__ for layer in encoder.layers][-2:] == ["Flatten", "Dense"]
    assert_allclose(encoder.predict(x, verbose=0), stack.encode(x).numpy(), rtol=1e-5, atol=1e-6)
    unrolled = export.deep_autoencoder(stack)
    assert tuple(unrolled.get_layer("tiny_decoder_2").kernel.shape) == (6, 18)
    assert unrolled.output_shape == (None, 8, 8, 1)

    model = export.classifier(stack, 2)
    spec = stackae.FinetuneSpec(epochs=2, batch_size=8)
    stackae.finetune(model, (x, y), spec=spec, seed=0, verbose=0)
    assert not np.allclose(model.get_layer("tiny_2").kernel.numpy(), tied.kernel.numpy())
    assert model.predict(x, verbose=0).shape == (48, 2)
    assert kind_of(tied).name == "tiny"


def test_a_user_kind_alone_on_rows_trains_its_autoencoder():
    x = np.random.default_rng(1).random((32, 10)).astype("float32")
    autoencoder = stackae.AutoEncoder(TinyTied(4), corruption=0.2, seed=1)
    autoencoder.compile(jit_compile=False)
    history = autoencoder.fit(x, batch_size=8, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    # Its decoder bias trained with the kernel (no `use_decoder` needed).
    assert len(autoencoder.trainable_weights) == 3
    assert np.any(autoencoder.layer.decoder_bias.numpy() != 0)


def test_a_user_kind_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch, capsys):
    # Through the library's run directory (workflows.pretrain_job, as the command line):
    # the manifest names the kind, and a run copied after layer 2's first checkpoint, as a
    # kill would leave it, resumes to the uninterrupted run's weights and history.
    import json
    import shutil

    from stackae import runs, workflows

    rng = np.random.default_rng(3)
    data = tmp_path / "images.npy"
    np.save(data, rng.random((40, 8, 8, 1)).astype("float32"))
    specs = [
        Conv2DSpec(filters=2, kernel_size=3, pool_size=2, epochs=2, batch_size=8),
        TinySpec(units=5, epochs=3, batch_size=8, learning_rate=0.05, corruption=0.2),
    ]
    record = runs.Run.record_epoch

    def recorded(self, k, epoch, *args, **kwargs):
        record(self, k, epoch, *args, **kwargs)
        if (k, epoch) == (1, 0):
            shutil.copytree(self.path, tmp_path / "killed", ignore=shutil.ignore_patterns("*.lock"))

    monkeypatch.setattr(runs.Run, "record_epoch", recorded)
    workflows.pretrain_job(tmp_path / "run", specs, data=str(data), verbose=0)
    monkeypatch.setattr(runs.Run, "record_epoch", record)
    killed = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert killed["layers"][0]["finished"] and not killed["layers"][1]["finished"]
    assert [spec["kind"] for spec in killed["config"]["specs"]] == ["conv2d", "tiny"]

    workflows.pretrain_job(tmp_path / "killed", data=str(data), resume=True, verbose=0)
    assert "layer 2/2: 18 -> tiny5, masking 0.2, 3 epochs" in capsys.readouterr().out
    stacks = [
        keras.saving.load_model(tmp_path / name / "stack.keras") for name in ("run", "killed")
    ]
    assert [kind.name for kind in stacks[1].layer_kinds] == ["conv2d", "tiny"]
    for mine, theirs in zip(stacks[1].weights, stacks[0].weights, strict=True):
        assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
    histories = [
        json.loads((tmp_path / name / "manifest.json").read_text())["layers"][1]["history"]
        for name in ("run", "killed")
    ]
    assert_allclose(histories[1]["loss"], histories[0]["loss"], rtol=1e-5)
