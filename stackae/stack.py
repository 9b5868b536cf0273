"""Greedy layer-wise pretraining of a stack of tied-weight denoising autoencoders."""

import keras
import numpy as np

from stackae import trainers
from stackae.autoencoder import AutoEncoder
from stackae.config import (  # noqa: F401 (public here too)
    DEFAULT_SEED,
    PREDICT_BATCH,
    LayerSpec,
    check_codes_fit_losses,
    layer_specs,
)
from stackae.data.rows import streams
from stackae.kinds import kind_of, spec_of


@keras.saving.register_keras_serializable(package="stackae")
class Stack(keras.Model):
    """A stack of tied layers and how each is pretrained.

    `specs` holds one spec per layer: a `LayerSpec` (a dense
    TiedAutoEncoderLayer), a `stackae.kinds.Conv2DSpec` (a tied convolution),
    or the spec of any kind registered with `stackae.kinds.register_kind`, or
    their configs as dicts. Kinds mix: where a layer that takes rows (dense)
    follows one that gives images (conv2d), the images are flattened
    (row-major, as `keras.layers.Flatten`); a layer that needs images cannot
    follow one that gives rows.

    Calling the stack returns the top code; `encode(x, depth)` stops after
    `depth` layers, `decode(h)` goes back down with every layer's tied decoder.
    Saved with `save("stack.keras")`, it keeps every kernel and both biases.
    """

    def __init__(self, specs, seed=DEFAULT_SEED, **kwargs):
        super().__init__(**kwargs)
        self.specs = [s if isinstance(s, LayerSpec) else spec_of(s) for s in specs]
        self.layer_kinds = [kind_of(s) for s in self.specs]
        # flattens[k]: layer k takes rows and the layer below gives images.
        self.flattens = [False]
        for k in range(1, len(self.specs)):
            below, kind = self.layer_kinds[k - 1].input_rank, self.layer_kinds[k].input_rank
            if kind > below:
                raise ValueError(
                    f"Layer {k + 1} ({self.layer_kinds[k].name}) needs examples of rank {kind} "
                    f"(images for conv2d); layer {k} ({self.layer_kinds[k - 1].name}) gives rows"
                )
            self.flattens.append(kind < below)
        check_codes_fit_losses(self.specs)
        self.seed = int(seed)
        self.example_shapes = None  # per layer, the shape of one example it encodes (build)
        # Specs saved before `activation` / `decoder_activation` existed lack them and
        # take LayerSpec's defaults, sigmoid and sigmoid, as those stacks were.
        self.encoder_layers = [
            spec_layer(spec, name=f"tied_{k + 1}") for k, spec in enumerate(self.specs)
        ]

    @property
    def sizes(self):
        return [kind.size(spec) for kind, spec in zip(self.layer_kinds, self.specs)]

    def build(self, input_shape):
        shape = tuple(input_shape)
        self.example_shapes = []
        for k, (kind, spec, layer) in enumerate(
            zip(self.layer_kinds, self.specs, self.encoder_layers)
        ):
            if self.flattens[k]:
                shape = (shape[0], int(np.prod(shape[1:])))
            if kind.input_rank > 1:  # a dense layer takes rows of any rank, as Dense
                kind.check_input(spec, shape[1:])
            self.example_shapes.append(tuple(shape[1:]))
            if not layer.built:
                layer.build(shape)
            shape = (shape[0], *kind.output_shape(spec, shape[1:]))

    def call(self, inputs):
        return self.encode(inputs)

    def encode(self, x, depth=None):
        for k, layer in enumerate(self.encoder_layers[:depth]):
            x = layer(self.layer_input(k, x))
        return x

    def decode(self, h, depth=None):
        layers = list(enumerate(self.encoder_layers[:depth]))
        for k, layer in reversed(layers):
            h = self.layer_kinds[k].decode(layer, h)
            if self.flattens[k]:  # rows back to the images of the layer below
                h = keras.ops.reshape(h, (-1, *self._below(k)))
        return h

    def reconstruct(self, x):
        """`x` up every layer and back down every tied decoder, without noise.

        A layer that max-pools its code (a conv2d layer with `pool_size`)
        decodes from the positions of its own maxima, as its autoencoder was
        trained (`TiedConv2DAutoEncoderLayer.unpool`): `decode(encode(x))`
        cannot, the positions being lost in the pooled code. Without pooling
        it is `decode(encode(x))`.
        """
        return self._down_up(0, x)

    def _down_up(self, k, x):
        layer, kind = self.encoder_layers[k], self.layer_kinds[k]
        code = layer(x)
        if k + 1 < len(self.encoder_layers):
            code_shape = keras.ops.shape(code)
            code = self._down_up(k + 1, self.layer_input(k + 1, code))
            if self.flattens[k + 1]:  # rows back to the images of this layer's code
                code = keras.ops.reshape(code, code_shape)
        if getattr(layer, "pool_size", None) is not None:
            return layer(layer.unpool(code, layer.feature_maps(x)), reverse=True)
        return kind.decode(layer, code)

    def _below(self, k):
        """The shape of one code of layer k - 1."""
        return self.layer_kinds[k - 1].output_shape(self.specs[k - 1], self.example_shapes[k - 1])

    def layer_input(self, k, x):
        """`x` (codes of layer k - 1) as layer k takes it: flattened where it takes rows."""
        if not self.flattens[k]:
            return x
        return keras.ops.reshape(x, (-1, int(np.prod(x.shape[1:]))))

    def get_config(self):
        return {
            **super().get_config(),
            "specs": [kind.spec_config(s) for kind, s in zip(self.layer_kinds, self.specs)],
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
        for k, layer in enumerate(self.encoder_layers[:depth]):
            x = layer_codes(layer, _in_memory(self._flat_codes(k, x)))
        return keras.ops.convert_to_numpy(x)

    def _flat_codes(self, k, x):
        """In-memory codes as layer k takes them (a memmap of rows is never flattened)."""
        if not self.flattens[k]:
            return x
        return _in_memory(keras.ops.reshape(x, (-1, int(np.prod(x.shape[1:])))))


def spec_layer(spec, **kwargs):
    """The untrained tied layer a spec describes (its kind's); kwargs go to the layer."""
    return kind_of(spec).make_layer(spec, **kwargs)


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
            squared error. A stack whose first layer is convolutional takes
            images (n, height, width, channels) in memory, kept in their
            shape (grayscale images take a channel axis: `x[..., None]`).
            valid: optional validation rows (or images).
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
    from stackae.distribute import default_group, streams_epochs

    stack.build((None, *x.shape[1:]))
    histories = []
    inputs, valid_inputs = _in_memory(x), _in_memory(valid)
    for k in range(len(stack.specs)):
        if k:  # one layer up: the clean codes of layer k-1, the previous inputs freed
            inputs = layer_codes(stack.encoder_layers[k - 1], inputs)
            valid_inputs = layer_codes(stack.encoder_layers[k - 1], valid_inputs)
            inputs = stack._flat_codes(k, inputs)
            if valid_inputs is not None:
                valid_inputs = stack._flat_codes(k, valid_inputs)
        if k < start_layer:
            continue
        spec = stack.specs[k]
        check_batch(len(inputs), spec.batch_size, f"layer {k + 1} training data")
        autoencoder = stack.autoencoder(k)
        autoencoder.compile(optimizer=spec.make_optimizer(), jit_compile=jit_compile)
        first_epoch = initial_epoch if k == start_layer else 0
        autoencoder.build((None, *inputs.shape[1:]))
        layer_group = group or default_group(DEFAULT_GROUP)
        repeat = streams_epochs()
        train, order = training_dataset(
            inputs,
            spec.batch_size,
            seed=stack.seed + k,
            group=layer_group,
            repeat=repeat,
            epochs=range(first_epoch, spec.epochs),
        )
        validation = None
        if valid_inputs is not None:
            validation = batches(valid_inputs, spec.batch_size)
        history = trainers.fit_epochs(
            autoencoder,
            train,
            order,
            streamed=repeat,
            valid_x=valid_inputs,
            validation=validation,
            callbacks=callbacks(k) if callbacks else [],
            group=layer_group,
            epochs=spec.epochs,
            initial_epoch=first_epoch,
            verbose=verbose,
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
