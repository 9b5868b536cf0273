"""TiedConv2DAutoEncoderLayer: a convolutional encoder decoded by the transposed convolution
of the same kernel (Masci et al. 2011), with optional max-pooling of the code."""

import keras
from keras import ops

from stackae.layers import add_tied_weights, tied_weights_config


def _pair(value, name):
    """An int or a pair of ints, each >= 1, as a tuple of two ints (ValueError otherwise)."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, tuple | list)
        or len(pair) != 2
        or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in pair)
    ):
        raise ValueError(
            f"`{name}` must be a positive integer or a pair of them. Received: {name}={value!r}"
        )
    return tuple(pair)


def conv_output_size(size, kernel, stride, padding):
    """The length of one spatial axis after `keras.ops.conv` (None stays None)."""
    if size is None:
        return None
    if padding == "valid":
        return (size - kernel) // stride + 1
    return -(-size // stride)


@keras.saving.register_keras_serializable(package="stackae")
class TiedConv2DAutoEncoderLayer(keras.layers.Layer):
    """Encoder `act(conv(x, K) + b)` with the tied decoder `decoder_act(conv_transpose(h, K) + c)`.

    Images are channels-last, `(batch, height, width, channels)`. The kernel
    `K` has shape `(kh, kw, channels, filters)`, the encoder bias `b` one value
    per filter and the decoder bias `c` one value per input channel. The
    decoder is `keras.ops.conv_transpose` of the same kernel, unflipped: in
    Keras's cross-correlation convention it is the exact adjoint of the
    encoder's convolution (`<conv(x, K), y> == <x, conv_transpose(y, K)>`), and
    it gives back exactly the encoder's input size, odd sizes included (the
    `output_padding` is computed from the input size recorded at `build`).

    Called on images the layer returns the code, so it drops into any Keras
    model as an encoder, like `keras.layers.Conv2D` (followed by
    `keras.layers.MaxPooling2D` when `pool_size` is set). Called with
    `reverse=True` on feature maps it decodes them (as
    `keras.layers.ReversibleEmbedding` does with its one weight).

    Max-pooling (`pool_size`). Masci et al. (ICANN 2011) found max-pooling
    essential: without it the filters of a convolutional autoencoder
    degenerate towards the identity. With `pool_size=s` the code is the
    maximum of each s x s window of the feature maps (no overlap, padding
    "valid", as `MaxPooling2D`), and the autoencoder decodes from the *sparse*
    feature maps: each window keeps its maximum where it was and is zero
    elsewhere (ties keep every maximal position). That is Masci's unpooling;
    it forces each pixel to be rebuilt from few filters. Where the maxima are
    depends on the input, not on the pooled code alone, so the decoder takes
    feature maps: `unpool(code, feature_maps)` puts a pooled code back at the
    positions of the maxima of `feature_maps`, and `reconstruct(x)` is
    `decode(unpool(encode(x), feature_maps(x)))`, which is what training
    minimises the error of. Without pooling the feature maps are the code and
    `decode(encode(x))` is the reconstruction. Pooling is an option of the
    layer, not a stage of its own between layers, because it belongs inside
    the layer's autoencoder: a pooling stage after a separately trained layer
    would leave its filters to degenerate.

    The layer's contract is the dense `TiedAutoEncoderLayer`'s: `build`
    makes `kernel` (kh, kw, channels, filters), `bias` (filters,) and
    `decoder_bias` (channels,), all ordinary trainable weights created there
    (saved files hold these three, in this order). Like the reverse
    projection of `keras.layers.ReversibleEmbedding`, the decoder bias is
    used only by `reverse=True` calls, and a model that only encodes gives it
    no gradient (Keras then warns "Gradients do not exist for variables
    [...decoder_bias]" under TensorFlow and PyTorch). Freeze it in such a
    model: `layer.decoder_bias.trainable = False`. (A model that only decodes
    leaves the encoder bias unused: `layer.bias.trainable = False`.) Decode
    only a built layer: a layer first called with `reverse=True` would be
    built from the feature maps.

    Args:
        filters: number of filters (channels of the code).
        kernel_size: int or pair (kh, kw).
        strides: int or pair; default 1.
        padding: "valid" or "same".
        activation: encoder activation, default "sigmoid".
        decoder_activation: decoder activation; the cross-entropy loss needs
            "sigmoid", squared error also works with "linear".
        pool_size: None (no pooling) or an int or pair: max-pooling windows
            of the code (see above).
        kernel_initializer: default Glorot uniform, whose fans (kh kw channels
            and kh kw filters) make it the dense tutorial's bound without the 4.
        bias_initializer, decoder_bias_initializer: default zeros.
        kernel_regularizer, bias_regularizer, decoder_bias_regularizer,
        kernel_constraint, bias_constraint, decoder_bias_constraint: as for
            `keras.layers.Conv2D`.

    Call arguments:
        inputs: images `(batch, height, width, channels)`, or with
            `reverse=True` feature maps `(batch, h', w', filters)`, the
            convolution's output size (before pooling).
        reverse: decode instead of encode.
        return_logits: return the activation's input (pooled when encoding
            with `pool_size`).
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        activation="sigmoid",
        decoder_activation="sigmoid",
        pool_size=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        decoder_bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        decoder_bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        decoder_bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or isinstance(filters, bool) or filters <= 0:
            raise ValueError(f"`filters` must be a positive integer. Received: filters={filters!r}")
        if padding not in ("valid", "same"):
            raise ValueError(f"`padding` must be 'valid' or 'same'. Received: padding={padding!r}")
        self.filters = filters
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.padding = padding
        self.pool_size = None if pool_size is None else _pair(pool_size, "pool_size")
        self.activation = keras.activations.get(activation)
        self.decoder_activation = keras.activations.get(decoder_activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.decoder_bias_initializer = keras.initializers.get(decoder_bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.decoder_bias_regularizer = keras.regularizers.get(decoder_bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.decoder_bias_constraint = keras.constraints.get(decoder_bias_constraint)
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self.image_shape = None  # (height, width, channels), recorded at build

    def build(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 4 or any(d is None for d in shape[1:]):
            raise ValueError(
                "The input must be images (batch, height, width, channels) of a known size. "
                f"Received: input_shape={input_shape}"
            )
        height, width, channels = (int(d) for d in shape[1:])
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        sizes = [
            conv_output_size(n, k, s, self.padding)
            for n, k, s in ((height, kh, sh), (width, kw, sw))
        ]
        if min(sizes) < 1:
            raise ValueError(
                f"A {kh}x{kw} kernel does not fit {height}x{width} images with padding 'valid'. "
                f"Received: input_shape={input_shape}"
            )
        self.image_shape = (height, width, channels)
        add_tied_weights(self, (kh, kw, channels, self.filters), self.filters, channels)

    @property
    def feature_shape(self):
        """(h', w', filters): the size of the feature maps (the code before pooling)."""
        height, width, _ = self.image_shape
        sizes = [
            conv_output_size(n, k, s, self.padding)
            for n, k, s in zip((height, width), self.kernel_size, self.strides)
        ]
        return (*sizes, self.filters)

    @property
    def code_shape(self):
        """(h'', w'', filters): the size of the code, pooled where `pool_size` is set."""
        height, width, filters = self.feature_shape
        if self.pool_size is None:
            return (height, width, filters)
        return (height // self.pool_size[0], width // self.pool_size[1], filters)

    def _output_padding(self):
        """The conv_transpose output padding that gives back the recorded input size."""
        padding = []
        for size, out, k, s in zip(
            self.image_shape[:2], self.feature_shape[:2], self.kernel_size, self.strides
        ):
            # Keras's conv_transpose: (out - 1) s + k + p for "valid", (out - 1) s + k % 2 + p
            # for "same" (an explicit p; None would give out * s, wrong for odd sizes).
            base = (out - 1) * s + (k if self.padding == "valid" else k % 2)
            padding.append(size - base)
        return tuple(padding)

    def call(self, inputs, reverse=False, return_logits=False):
        if reverse:
            # (batch, h', w', filters) -> (batch, height, width, channels), the same K.
            logits = ops.conv_transpose(
                inputs,
                self.kernel,
                strides=self.strides,
                padding=self.padding,
                output_padding=self._output_padding(),
                data_format="channels_last",
            )
            logits = ops.add(logits, self.decoder_bias)
            return logits if return_logits else self.decoder_activation(logits)
        logits = self._conv(inputs)
        if self.pool_size is None:
            return logits if return_logits else self.activation(logits)
        if return_logits:
            return self._pool(logits)
        return self._pool(self.activation(logits))

    def _conv(self, x):
        logits = ops.conv(
            x, self.kernel, strides=self.strides, padding=self.padding, data_format="channels_last"
        )
        return ops.add(logits, self.bias)  # (batch, h', w', filters)

    def _pool(self, maps):
        return ops.max_pool(maps, self.pool_size, strides=self.pool_size, padding="valid")

    def feature_maps(self, x, return_logits=False):
        """`act(conv(x, K) + b)` before pooling, (batch, h', w', filters)."""
        logits = self._conv(ops.convert_to_tensor(x, self.compute_dtype))
        return logits if return_logits else self.activation(logits)

    def unpool(self, code, feature_maps):
        """A pooled `code` back at the positions of the maxima of `feature_maps`, 0 elsewhere.

        `code` is (batch, h'', w'', filters), `feature_maps` (batch, h', w',
        filters); rows and columns that pooling dropped (h' not a multiple of
        the pool size) are 0. `unpool(pool(m), m)` keeps each window's maximum
        of `m` and zeroes the rest (Masci's sparse code). The positions are
        constants: no gradient flows through them.
        """
        if self.pool_size is None:
            return code
        (ph, pw), (height, width, _) = self.pool_size, self.feature_shape
        kept_h, kept_w = height // ph * ph, width // pw * pw
        maps = ops.stop_gradient(feature_maps[:, :kept_h, :kept_w, :])
        maxima = ops.repeat(ops.repeat(self._pool(maps), ph, axis=1), pw, axis=2)
        values = ops.repeat(ops.repeat(code, ph, axis=1), pw, axis=2)
        sparse = ops.where(ops.equal(maps, maxima), values, ops.zeros_like(values))
        if (kept_h, kept_w) == (height, width):
            return sparse
        return ops.pad(sparse, [(0, 0), (0, height - kept_h), (0, width - kept_w), (0, 0)])

    def sparse_code(self, x):
        """The feature maps of `x` the decoder reconstructs from: with pooling, only each
        window's maximum is kept (see `unpool`); without, the feature maps themselves."""
        maps = self.feature_maps(x)
        if self.pool_size is None:
            return maps
        return self.unpool(self._pool(maps), maps)

    def encode(self, x):
        return self(x)

    def decode(self, h):
        return self(h, reverse=True)

    def reconstruct(self, x, return_logits=False):
        """The autoencoder's output: decode the sparse code of `x` (the code itself unpooled)."""
        return self(self.sparse_code(x), reverse=True, return_logits=return_logits)

    def compute_output_shape(self, input_shape, reverse=False):
        if reverse:
            return (input_shape[0], *self.image_shape)
        if self.built:
            return (input_shape[0], *self.code_shape)
        # Not built yet: Keras asks for the shape of a first symbolic call.
        height, width = (
            conv_output_size(n, k, s, self.padding)
            for n, k, s in zip(input_shape[1:3], self.kernel_size, self.strides)
        )
        if self.pool_size is not None:
            height = None if height is None else height // self.pool_size[0]
            width = None if width is None else width // self.pool_size[1]
        return (input_shape[0], height, width, self.filters)

    def compute_output_spec(self, inputs, reverse=False, return_logits=False):
        # Keras passes call arguments other than tensors to this method, not to
        # compute_output_shape.
        shape = self.compute_output_shape(inputs.shape, reverse=reverse)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def get_config(self):
        base_config = super().get_config()
        config = {
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "activation": keras.activations.serialize(self.activation),
            "decoder_activation": keras.activations.serialize(self.decoder_activation),
            "pool_size": self.pool_size,
            **tied_weights_config(self),
        }
        return {**base_config, **config}
