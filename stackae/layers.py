"""TiedAutoEncoderLayer: a sigmoid encoder whose decoder is the same kernel transposed."""

import keras
from keras import ops


def tutorial_initializer():
    """The dA tutorial's uniform(+-4 sqrt(6 / (n_in + units))) as a Keras initializer."""
    # VarianceScaling(uniform, fan_avg) draws from +-sqrt(6 * scale / (n_in + units)),
    # so scale=16 gives the tutorial's factor of 4.
    return keras.initializers.VarianceScaling(scale=16.0, mode="fan_avg", distribution="uniform")


@keras.saving.register_keras_serializable(package="stackae")
class TiedAutoEncoderLayer(keras.layers.Layer):
    """Encoder `act(x W + b)` with a tied decoder `decoder_act(h W^T + b')`.

    Called on `x` the layer returns the code, so it drops into any Keras model
    as an encoder; `decode` and `reconstruct` use the same kernel transposed,
    so gradients from both directions reach one weight.

    Args:
        units: size of the code (number of hidden units).
        activation: encoder activation, `"sigmoid"` as in the tutorial.
        decoder_activation: decoder activation; the cross-entropy loss needs
            `"sigmoid"`, squared error also works with `"linear"`.
        kernel_initializer: defaults to the tutorial's
            uniform(+-4 sqrt(6 / (n_in + units))).
        bias_initializer, decoder_bias_initializer: default zeros.
        kernel_regularizer, bias_regularizer: as for `keras.layers.Dense`.
    """

    def __init__(
        self,
        units,
        activation="sigmoid",
        decoder_activation="sigmoid",
        kernel_initializer=None,
        bias_initializer="zeros",
        decoder_bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"`units` must be a positive integer. Received: units={units!r}")
        self.units = units
        self.activation = keras.activations.get(activation)
        self.decoder_activation = keras.activations.get(decoder_activation)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or tutorial_initializer()
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.decoder_bias_initializer = keras.initializers.get(decoder_bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        n_in = input_shape[-1]
        if n_in is None:
            raise ValueError(
                "The last dimension of the input must be known. "
                f"Received: input_shape={input_shape}"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(n_in, self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.bias = self.add_weight(
            name="bias",
            shape=(self.units,),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
        )
        self.decoder_bias = self.add_weight(
            name="decoder_bias",
            shape=(n_in,),
            initializer=self.decoder_bias_initializer,
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: n_in})

    @property
    def n_visible(self):
        return self.kernel.shape[0]

    def _cast(self, value):
        # encode/decode may be called outside __call__, where Keras does not autocast.
        return ops.cast(value, self.compute_dtype)

    def encode_logits(self, x):
        return ops.add(ops.matmul(self._cast(x), self._cast(self.kernel)), self._cast(self.bias))

    def encode(self, x):
        return self.activation(self.encode_logits(x))

    def decode_logits(self, h):
        kernel_t = ops.transpose(self._cast(self.kernel))  # (units, n_visible)
        return ops.add(ops.matmul(self._cast(h), kernel_t), self._cast(self.decoder_bias))

    def decode(self, h):
        return self.decoder_activation(self.decode_logits(h))

    def reconstruct(self, x):
        return self.decode(self.encode(x))

    def call(self, inputs):
        return self.encode(inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        base_config = super().get_config()
        config = {
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "decoder_activation": keras.activations.serialize(self.decoder_activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "decoder_bias_initializer": keras.initializers.serialize(self.decoder_bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
        }
        return {**base_config, **config}
