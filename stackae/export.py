"""Export a pretrained Stack to plain Keras models: encoder, classifier, deep autoencoder."""

import keras
from keras import ops


def _dense(units, activation, kernel, bias, name):
    """A Dense layer holding copies of `kernel` and `bias` (assign copies the values)."""
    layer = keras.layers.Dense(units, activation=activation, name=name)
    layer.build((None, kernel.shape[0]))
    layer.kernel.assign(kernel)
    layer.bias.assign(bias)
    return layer


def _encoder_layers(stack):
    return [
        _dense(
            tied.units,
            keras.activations.serialize(tied.activation),
            tied.kernel,
            tied.bias,
            name=f"encoder_{k + 1}",
        )
        for k, tied in enumerate(stack.encoder_layers)
    ]


def _n_visible(stack):
    return stack.encoder_layers[0].n_visible


def encoder(stack):
    """keras.Sequential of Dense layers holding copies of each layer's W and b."""
    return keras.Sequential(
        [keras.Input((_n_visible(stack),)), *_encoder_layers(stack)], name="encoder"
    )


def classifier(stack, n_classes, zero_init=True, dropout=0.0, input_dropout=0.0):
    """The encoder with a softmax layer of `n_classes` on top, ready to fine-tune.

    The softmax starts at zero like the tutorial's logistic regression
    (`zero_init=False` uses Keras's Glorot default instead). `dropout` > 0 puts
    a `keras.layers.Dropout` after every hidden layer and `input_dropout` > 0
    one on the input (Srivastava et al. 2014): active in `fit` only, so the
    model's predictions are the same function of the same weights.
    """
    mixed = keras.config.dtype_policy().name.startswith("mixed")
    top = keras.layers.Dense(
        n_classes,
        activation="softmax",
        kernel_initializer="zeros" if zero_init else "glorot_uniform",
        # Under mixed precision the softmax and the loss stay in float32 (Keras's advice).
        dtype="float32" if mixed else None,
        name="softmax",
    )
    layers = [keras.Input((_n_visible(stack),))]
    if input_dropout:
        layers.append(keras.layers.Dropout(input_dropout, name="input_dropout"))
    for k, dense in enumerate(_encoder_layers(stack)):
        layers.append(dense)
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout_{k + 1}"))
    return keras.Sequential([*layers, top], name="classifier")


def deep_autoencoder(stack):
    """The encoder followed by the mirrored tied decoders (W^T, decoder bias), as plain Dense."""
    decoders = [
        _dense(
            tied.n_visible,
            keras.activations.serialize(tied.decoder_activation),
            ops.transpose(tied.kernel),
            tied.decoder_bias,
            name=f"decoder_{k + 1}",
        )
        for k, tied in reversed(list(enumerate(stack.encoder_layers)))
    ]
    return keras.Sequential(
        [keras.Input((_n_visible(stack),)), *_encoder_layers(stack), *decoders],
        name="deep_autoencoder",
    )
