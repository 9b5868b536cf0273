"""Greedy layer-wise pretraining of a stack of tied-weight denoising autoencoders."""

import dataclasses

import keras
import numpy as np

from stackae.autoencoder import AutoEncoder
from stackae.config import DEFAULT_SEED, PREDICT_BATCH, LayerSpec, layer_specs  # noqa: F401 (public here too)
from stackae.data.rows import streams
from stackae.layers import TiedAutoEncoderLayer


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
        # Specs saved before `activation` / `decoder_activation` existed lack them and
        # take LayerSpec's defaults, sigmoid and sigmoid, as those stacks were.
        self.encoder_layers = [
            spec_layer(spec, name=f"tied_{k + 1}") for k, spec in enumerate(self.specs)
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
        spec = self.specs[k]
        return AutoEncoder(
            self.encoder_layers[k],
            noise=spec.noise,
            corruption=spec.corruption,
            loss=spec.loss,
            l2=spec.l2,
            sparsity=spec.sparsity,
            sparsity_target=spec.sparsity_target,
            contraction=spec.contraction,
            seed=self.seed + k,
        )

    def codes(self, x, depth):
        """Clean codes of `x` after `depth` layers, as a float32 NumPy array (`x` for depth 0)."""
        if depth == 0:
            return x
        for layer in self.encoder_layers[:depth]:
            x = layer_codes(layer, _in_memory(x))
        return keras.ops.convert_to_numpy(x)


def spec_layer(spec, **kwargs):
    """The untrained TiedAutoEncoderLayer a LayerSpec describes; kwargs go to the layer."""
    return TiedAutoEncoderLayer(
        spec.units,
        activation=spec.activation,
        decoder_activation=spec.decoder_activation,
        **kwargs,
    )


def pretrain(
    stack,
    x,
    valid=None,
    *,
    callbacks=None,
    verbose="auto",
    start_layer=0,
    initial_epoch=0,
    on_layer_end=None,
    group=None,
    jit_compile=None,
):
    """Greedy layer-wise pretraining: layer k learns from the clean codes of layers < k.

    Args:
        stack: the Stack to train (its layers are trained in place).
        x: training rows, in [0, 1] for a layer with the cross-entropy (a
            sigmoid decoder); any real values for a linear decoder with the
            squared error. valid: optional validation rows.
        callbacks: a function k -> list of Keras callbacks for layer k.
        start_layer: layers below it are taken as already trained.
        initial_epoch: the epoch `start_layer` starts at (resuming: a callback
            of that layer restores its checkpoint in `on_train_begin`, as
            `keras.callbacks.BackupAndRestore` does; see stackae.callbacks).
        on_layer_end: called as on_layer_end(k, autoencoder, history) after each layer.
        group: batches per training step (`data.training_dataset`); None: 16 on
            one device, 1 under a multi-replica strategy. Results do not
            depend on it, only the speed does.
        jit_compile: passed to each layer's `AutoEncoder.compile` (None: XLA
            where it runs). False saves XLA's compile time, which dominates on
            small data; the noise is drawn by another generator then.
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
            inputs = layer_codes(stack.encoder_layers[k - 1], inputs)
            valid_inputs = layer_codes(stack.encoder_layers[k - 1], valid_inputs)
        if k < start_layer:
            continue
        spec = stack.specs[k]
        check_batch(len(inputs), spec.batch_size, f"layer {k + 1} training data")
        autoencoder = stack.autoencoder(k)
        autoencoder.compile(optimizer=spec.make_optimizer(), jit_compile=jit_compile)
        first_epoch = initial_epoch if k == start_layer else 0
        autoencoder.build((None, inputs.shape[-1]))
        layer_group = group or default_group(DEFAULT_GROUP)
        train, order = training_dataset(
            inputs, spec.batch_size, seed=stack.seed + k, group=layer_group
        )
        validation = None
        if valid_inputs is not None:
            validation = batches(valid_inputs, spec.batch_size)
        history = autoencoder.fit(
            train,
            group=layer_group,
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
    """An in-memory array as float32, made once: one TensorFlow tensor for tf.data to
    gather from, a NumPy array for a PyDataset to slice. A memmap or a `Rows` view streams."""
    if x is None or streams(x):
        return x
    if keras.backend.backend() != "tensorflow":
        return np.asarray(x, dtype=np.float32)
    import tensorflow as tf

    return x if tf.is_tensor(x) else tf.convert_to_tensor(np.asarray(x, dtype=np.float32))


def layer_codes(layer, x):
    """Clean codes of `x` through one layer: one compiled op in memory, batches from a memmap."""
    if x is None:
        return None
    if streams(x):
        from stackae.data import batches

        return _in_memory(keras.Sequential([layer]).predict(batches(x, PREDICT_BATCH), verbose=0))
    # XLA fuses the bias and sigmoid into the matmul's output: no second (rows, units) buffer.
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        encode = tf.function(layer.encode, jit_compile=True)
    elif keras.backend.backend() == "jax":
        import jax

        encode = jax.jit(layer.encode)
    else:  # torch: eager, without recording a graph for gradients
        return _in_memory(keras.ops.convert_to_numpy(keras.ops.stop_gradient(layer.encode(x))))
    return _in_memory(encode(x))  # (rows, units)
