"""Greedy layer-wise pretraining of a stack of tied-weight denoising autoencoders."""

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from stackae.config import DEFAULT_SEED, LayerSpec
from stackae.layers import TiedAutoEncoderLayer


def layer_specs(layers, **settings):
    """One LayerSpec per size in `layers`; each setting is one value or one per layer.

    >>> [s.corruption for s in layer_specs((1000, 1000), corruption=(0.1, 0.2))]
    [0.1, 0.2]
    """
    layers = tuple(layers)
    if not layers or any(not isinstance(u, int) or isinstance(u, bool) or u <= 0 for u in layers):
        raise ValueError(f"`layers` must be positive integers. Received: layers={layers}")
    fields = {f.name for f in dataclasses.fields(LayerSpec)} - {"units"}
    per_layer = [{"units": u} for u in layers]
    for name, value in settings.items():
        if name not in fields:
            raise ValueError(f"Unknown layer setting {name!r}. Expected one of {sorted(fields)}")
        if value is None:
            continue
        values = _broadcast(name, value, len(layers))
        for spec, v in zip(per_layer, values):
            spec[name] = v
    return [LayerSpec(**spec) for spec in per_layer]


def _broadcast(name, value, n):
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [value] * n
    if len(value) == 1:
        return list(value) * n
    if len(value) != n:
        raise ValueError(
            f"`{name}` has {len(value)} values for {n} layers; give one value or one per layer."
        )
    return list(value)


@keras.saving.register_keras_serializable(package="stackae")
class Stack(keras.Model):
    """A stack of TiedAutoEncoderLayers and how each is pretrained.

    Calling the stack returns the top code; `encode(x, depth)` stops after
    `depth` layers, `decode(h)` goes back down with every layer's tied decoder.
    Saved with `save("stack.keras")`, it keeps every kernel and both biases.
    """

    def __init__(self, specs, seed=DEFAULT_SEED, **kwargs):
        super().__init__(**kwargs)
        self.specs = [s if isinstance(s, LayerSpec) else LayerSpec(**s) for s in specs]
        self.seed = int(seed)
        self.encoder_layers = [
            TiedAutoEncoderLayer(spec.units, name=f"tied_{k + 1}")
            for k, spec in enumerate(self.specs)
        ]

    @property
    def sizes(self):
        return [spec.units for spec in self.specs]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.encoder_layers:
            if not layer.built:
                layer.build(shape)
            shape = shape[:-1] + (layer.units,)

    def call(self, inputs):
        return self.encode(inputs)

    def encode(self, x, depth=None):
        for layer in self.encoder_layers[:depth]:
            x = layer(x)
        return x

    def decode(self, h, depth=None):
        for layer in reversed(self.encoder_layers[:depth]):
            h = layer(h, reverse=True)
        return h

    def get_config(self):
        return {
            **super().get_config(),
            "specs": [dataclasses.asdict(s) for s in self.specs],
            "seed": self.seed,
        }

    def autoencoder(self, k):
        """The AutoEncoder that pretrains layer k (0-based), sharing its weights."""
        return self.specs[k].autoencoder(self.encoder_layers[k], seed=self.seed + k)

    def codes(self, x, depth, batch_size=1024):
        """Clean codes of `x` after `depth` layers, as a float32 array."""
        if depth == 0:
            return x
        from stackae.data import batches

        lower = keras.Sequential(self.encoder_layers[:depth])
        return lower.predict(batches(x, batch_size), verbose=0).astype("float32")


def pretrain(
    stack,
    x,
    valid=None,
    *,
    callbacks=None,
    verbose="auto",
    start_layer=0,
    resume_from=None,
    on_layer_end=None,
    group=None,
):
    """Greedy layer-wise pretraining: layer k learns from the clean codes of layers < k.

    Args:
        stack: the Stack to train (its layers are trained in place).
        x: training rows in [0, 1]; valid: optional validation rows.
        callbacks: a function k -> list of Keras callbacks for layer k.
        start_layer: layers below it are taken as already trained.
        resume_from: (first_epoch, weights_path) to continue `start_layer` from
            a checkpoint written by `autoencoder.save_weights` (weights and
            optimizer state).
        on_layer_end: called as on_layer_end(k, autoencoder, history) after each layer.
        group: batches per training step (`data.training_dataset`); None: 16 on
            one device, 1 under a multi-replica strategy. Results do not
            depend on it, only the speed does.
    Returns one Keras History per trained layer.
    """
    from stackae.autoencoder import DEFAULT_GROUP
    from stackae.data import batches, check_batch, training_dataset
    from stackae.distribute import default_group

    stack.build((None, x.shape[-1]))
    histories = []
    inputs, valid_inputs = _in_memory(x), _in_memory(valid)
    for k in range(len(stack.specs)):
        if k:  # one layer up: the clean codes of layer k-1, the previous inputs freed
            inputs = _encode(stack.encoder_layers[k - 1], inputs)
            valid_inputs = _encode(stack.encoder_layers[k - 1], valid_inputs)
        if k < start_layer:
            continue
        spec = stack.specs[k]
        check_batch(len(inputs), spec.batch_size, f"layer {k + 1} training data")
        autoencoder = stack.autoencoder(k)
        autoencoder.compile(optimizer=spec.make_optimizer())
        first_epoch = 0
        if resume_from and k == start_layer:
            first_epoch, weights_path = resume_from
            autoencoder.build((None, inputs.shape[-1]))
            autoencoder.optimizer.build(autoencoder.trainable_variables)
            autoencoder.load_weights(weights_path)
        train, order = training_dataset(
            inputs,
            spec.batch_size,
            seed=stack.seed + k,
            group=group or default_group(DEFAULT_GROUP),
        )
        validation = None
        if valid_inputs is not None:
            validation = batches(valid_inputs, spec.batch_size)
        history = autoencoder.fit(
            train,
            epochs=spec.epochs,
            initial_epoch=first_epoch,
            validation_data=validation,
            callbacks=[order, *(callbacks(k) if callbacks else [])],
            verbose=verbose,
            shuffle=False,  # the dataset is already in each epoch's order
        )
        histories.append(history)
        if on_layer_end:
            on_layer_end(k, autoencoder, history)
        # Let this layer's datasets (and the inputs they hold) go before the next codes.
        del train, validation, autoencoder
        history.set_model(None)
    return histories


def _in_memory(x):
    """An in-memory array as one float32 tensor (made once); a memmap stays on disk."""
    if x is None or isinstance(x, np.memmap) or tf.is_tensor(x):
        return x
    return tf.convert_to_tensor(np.asarray(x, dtype=np.float32))


def _encode(layer, x):
    """Clean codes of `x` through one layer: one op on a tensor, batches from a memmap."""
    if x is None:
        return None
    if tf.is_tensor(x):
        # XLA fuses the bias and sigmoid into the matmul's output: no second (rows, units) buffer.
        return tf.function(layer.encode, jit_compile=True)(x)  # (rows, units)
    from stackae.data import batches

    return _in_memory(keras.Sequential([layer]).predict(batches(x, 1024), verbose=0))
