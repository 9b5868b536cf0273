"""TiedAutoEncoderLayer: a sigmoid encoder whose decoder is the same kernel transposed."""

import keras
from keras import ops

from stackae import compat


def tutorial_initializer():
    """The dA tutorial's uniform(+-4 sqrt(6 / (n_in + units))) as a Keras initializer."""
    # VarianceScaling(uniform, fan_avg) draws from +-sqrt(6 * scale / (n_in + units)),
    # so scale=16 gives the tutorial's factor of 4.
    return keras.initializers.VarianceScaling(scale=16.0, mode="fan_avg", distribution="uniform")


# A tied layer's three weights, each with an initializer, a regularizer and a constraint
# held by the layer as `<weight>_<setting>` (kernel_initializer, ..., decoder_bias_constraint).
TIED_WEIGHTS = ("kernel", "bias", "decoder_bias")
_SETTINGS = (
    ("initializer", keras.initializers),
    ("regularizer", keras.regularizers),
    ("constraint", keras.constraints),
)


def add_tied_weights(layer, kernel_shape, code_size, visible_size):
    """Make `layer.kernel`, `layer.bias` (code_size,) and `layer.decoder_bias` (visible_size,).

    Ordinary trainable weights, created in this order (saved files hold them
    so), each with the layer's own initializer, regularizer and constraint.
    """
    shapes = (tuple(kernel_shape), (code_size,), (visible_size,))
    for name, shape in zip(TIED_WEIGHTS, shapes):
        settings = {what: getattr(layer, f"{name}_{what}") for what, _ in _SETTINGS}
        setattr(layer, name, layer.add_weight(name=name, shape=shape, **settings))


def tied_weights_config(layer):
    """The layer's initializers, regularizers and constraints, serialized for `get_config`."""
    return {
        f"{name}_{what}": module.serialize(getattr(layer, f"{name}_{what}"))
        for what, module in _SETTINGS
        for name in TIED_WEIGHTS
    }


@keras.saving.register_keras_serializable(package="stackae")
class TiedAutoEncoderLayer(keras.layers.Layer):
    """Encoder `act(x W + b)` with a tied decoder `decoder_act(h W^T + b')`.

    Called on `x` the layer returns the code, so it drops into any Keras model
    as an encoder. Called with `reverse=True` on a code it decodes with the
    same kernel transposed (as `keras.layers.ReversibleEmbedding` does), so a
    tied autoencoder is two calls of one layer in a functional model:

        tied = TiedAutoEncoderLayer(64)
        h = tied(x)
        x_hat = tied(h, reverse=True)

    The contract of a tied layer (what AutoEncoder, Stack and the exporter use):
    `build(input_shape)` makes `kernel` (n_visible, units), `bias` (units,) and
    `decoder_bias` (n_visible,), all ordinary trainable weights created there
    (saved files hold these three, in this order); `call(x)` encodes,
    `call(h, reverse=True)` decodes with the same kernel, `return_logits=True`
    returns the activation's input either way; `encode` / `decode` /
    `reconstruct` are these calls; `n_visible` and `units` give the sizes; the
    last axis of the input must be n_visible (encoding) or units (decoding),
    checked in `call` and `compute_output_spec`. Decode only a built layer: a
    layer first called with `reverse=True` would be built from the codes.

    Like the reverse projection of `keras.layers.ReversibleEmbedding`, the
    decoder bias is used only by `reverse=True` calls, and a model that only
    encodes gives it no gradient (Keras then warns "Gradients do not exist for
    variables [...decoder_bias]" under TensorFlow and PyTorch). Freeze it in
    such a model: `layer.decoder_bias.trainable = False`. (A model that only
    decodes leaves the encoder bias unused: `layer.bias.trainable = False`.)

    Args:
        units: size of the code (number of hidden units).
        activation: encoder activation, `"sigmoid"` as in the tutorial.
        decoder_activation: decoder activation; the cross-entropy loss needs
            `"sigmoid"`, squared error also works with `"linear"`.
        kernel_initializer: defaults to the tutorial's
            uniform(+-4 sqrt(6 / (n_in + units))).
        bias_initializer, decoder_bias_initializer: default zeros.
        kernel_regularizer, bias_regularizer, decoder_bias_regularizer: as for
            `keras.layers.Dense`.
        kernel_constraint, bias_constraint, decoder_bias_constraint: as for
            `keras.layers.Dense`.

    Call arguments:
        inputs: rows `x` of size n_visible, or with `reverse=True` codes of
            size `units`.
        reverse: decode instead of encode.
        return_logits: return the activation's input (`x W + b`, or
            `h W^T + b'` when decoding), e.g. for a cross-entropy computed
            from logits.
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
        decoder_bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        decoder_bias_constraint=None,
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
        self.decoder_bias_regularizer = keras.regularizers.get(decoder_bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.decoder_bias_constraint = keras.constraints.get(decoder_bias_constraint)
        # The last axis is n_visible when encoding and units when decoding:
        # call and compute_output_spec check it, knowing the direction.
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        n_in = input_shape[-1]
        if n_in is None:
            raise ValueError(
                "The last dimension of the input must be known. "
                f"Received: input_shape={input_shape}"
            )
        add_tied_weights(self, (n_in, self.units), self.units, n_in)

    @property
    def n_visible(self):
        return self.kernel.shape[0]

    def _check_size(self, shape, reverse):
        expected = self.units if reverse else self.n_visible
        if shape and shape[-1] is not None and shape[-1] != expected:
            what = "codes of size `units`" if reverse else "rows of size n_visible"
            raise ValueError(
                f"Layer '{self.name}' {'decodes' if reverse else 'encodes'} {what} "
                f"({expected}). Received: inputs.shape={shape}"
            )

    def call(self, inputs, reverse=False, return_logits=False):
        self._check_size(tuple(inputs.shape), reverse)
        if reverse:
            # (..., units) -> (..., n_visible) through the encoder's kernel, transposed.
            logits = ops.add(compat.matmul(inputs, ops.transpose(self.kernel)), self.decoder_bias)
            activation = self.decoder_activation
        else:
            logits = ops.add(compat.matmul(inputs, self.kernel), self.bias)
            activation = self.activation
        return logits if return_logits else activation(logits)

    def encode(self, x):
        return self(x)

    def decode(self, h):
        return self(h, reverse=True)

    def reconstruct(self, x):
        return self.decode(self.encode(x))

    def compute_output_shape(self, input_shape, reverse=False):
        size = self.n_visible if reverse else self.units
        return tuple(input_shape[:-1]) + (size,)

    def compute_output_spec(self, inputs, reverse=False, return_logits=False):
        # Keras passes call arguments other than tensors to this method, not to
        # compute_output_shape.
        self._check_size(tuple(inputs.shape), reverse)
        shape = self.compute_output_shape(inputs.shape, reverse=reverse)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def get_config(self):
        base_config = super().get_config()
        config = {
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "decoder_activation": keras.activations.serialize(self.decoder_activation),
            **tied_weights_config(self),
        }
        return {**base_config, **config}
