"""Export a pretrained Stack to plain Keras models: encoder, classifier, regressor, deep AE."""

import keras
import numpy as np

# Names of the preprocessing layers the exported models may start and end with.
SCALING = "scaling"
TARGET_SCALING = "target_scaling"


def copy_of(value):
    """A new array holding `value` (a variable or tensor) for `Variable.assign`.

    Under JAX, assigning a variable's own array shares its buffer, and a
    compiled `predict` of the exported model may then delete the stack's.
    """
    return keras.ops.copy(keras.ops.convert_to_tensor(value))


def _dense(units, activation, kernel, bias, name):
    """A Dense layer holding copies of `kernel` and `bias`."""
    layer = keras.layers.Dense(units, activation=activation, name=name)
    layer.build((None, kernel.shape[0]))
    layer.kernel.assign(copy_of(kernel))
    layer.bias.assign(copy_of(bias))
    return layer


def _encoder_groups(stack):
    """Per layer of the stack, its plain Keras encoder layers (a Flatten first where the
    layer takes rows and the one below gives images), from the layer's kind."""
    groups = []
    for k, (kind, tied) in enumerate(zip(stack.layer_kinds, stack.encoder_layers)):
        flatten = [keras.layers.Flatten(name=f"flatten_{k + 1}")] if stack.flattens[k] else []
        groups.append([*flatten, *kind.export_encoder(tied, k)])
    return groups


def _encoder_layers(stack):
    return [layer for group in _encoder_groups(stack) for layer in group]


def _input_shape(stack):
    """The shape of one example the stack encodes: (n_visible,) for rows, or an image's."""
    if stack.example_shapes is None:  # layers built one by one, not through the stack
        first = stack.encoder_layers[0]
        if not first.built:
            raise ValueError("The stack is not built: pretrain it (or call `build`) first.")
        shape = getattr(first, "image_shape", None) or (first.n_visible,)
        stack.build((None, *shape))
    return stack.example_shapes[0]


def _n_visible(stack):
    shape = _input_shape(stack)
    if len(shape) != 1:
        raise ValueError(
            f"A scaler scales rows of features; this stack encodes examples of shape {shape}"
        )
    return shape[0]


def scaling_layer(scaler, width, *, invert=False, name=SCALING):
    """A `keras.layers.Normalization` computing `(x - offset) / scale` per feature, or None.

    `scaler` is None, an object with `offset` and `scale` (sequences of `width`
    floats, as `stackae.data.scaling.Scaler` has) or an `(offset, scale)` pair.
    None, a scaler of kind "none" and offsets 0 with scales 1 are the identity:
    no layer. `invert=True` computes `x * scale + offset` instead (targets back
    to their units). The layer is Keras's own, so a saved model that holds it
    loads without stackae; it computes in float32 (raw features may overflow
    float16 under mixed precision).
    """
    if scaler is None or getattr(scaler, "kind", None) == "none":
        return None
    offset, scale = scaler if isinstance(scaler, tuple | list) else (scaler.offset, scaler.scale)
    offset, scale = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (offset, scale))
    if offset.size != width or scale.size != width:
        raise ValueError(
            f"A scaler for {width} columns needs {width} offsets and scales. "
            f"Received: {name} with {offset.size} offsets and {scale.size} scales"
        )
    if not (np.all(np.isfinite(offset)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise ValueError(
            "A scaler needs finite offsets and finite scales > 0. "
            f"Received: offset={offset.tolist()}, scale={scale.tolist()}"
        )
    if np.all(offset == 0) and np.all(scale == 1):
        return None
    return keras.layers.Normalization(
        mean=offset.tolist(),
        variance=(scale**2).tolist(),
        invert=invert,
        dtype="float32",
        name=name,
    )


def _inputs(stack, scaler):
    """The Input and, with a scaler, its scaling layer."""
    if scaler is None or getattr(scaler, "kind", None) == "none":
        return [keras.Input(_input_shape(stack))]
    scaling = scaling_layer(scaler, _n_visible(stack))
    return [keras.Input((_n_visible(stack),)), *([scaling] if scaling is not None else [])]


def encoder(stack, scaler=None):
    """keras.Sequential of Dense layers holding copies of each layer's W and b.

    With a `scaler` (see `scaling_layer`) a `Normalization` layer named
    "scaling" comes first, so the model takes raw features.
    """
    return keras.Sequential([*_inputs(stack, scaler), *_encoder_layers(stack)], name="encoder")


def _hidden(stack, dropout, input_dropout, scaler):
    """Input, scaling, input dropout and the encoder layers, each followed by its dropout."""
    layers = _inputs(stack, scaler)
    if input_dropout:
        layers.append(keras.layers.Dropout(input_dropout, name="input_dropout"))
    for k, group in enumerate(_encoder_groups(stack)):
        layers.extend(group)
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout_{k + 1}"))
    top = stack.layer_kinds[-1].output_shape(stack.specs[-1], stack.example_shapes[-1])
    if len(top) > 1:  # a conv top layer's feature maps, flattened for the output layer
        layers.append(keras.layers.Flatten(name=f"flatten_{len(stack.specs) + 1}"))
    return layers


def _top(units, activation, zero_init, name):
    mixed = keras.config.dtype_policy().name.startswith("mixed")
    return keras.layers.Dense(
        units,
        activation=activation,
        kernel_initializer="zeros" if zero_init else "glorot_uniform",
        # Under mixed precision the output and the loss stay in float32 (Keras's advice).
        dtype="float32" if mixed else None,
        name=name,
    )


def classifier(stack, n_classes, zero_init=True, dropout=0.0, input_dropout=0.0, scaler=None):
    """The encoder with a softmax layer of `n_classes` on top, ready to fine-tune.

    The softmax starts at zero like the tutorial's logistic regression
    (`zero_init=False` uses Keras's Glorot default instead). `dropout` > 0 puts
    a `keras.layers.Dropout` after every hidden layer and `input_dropout` > 0
    one on the input (Srivastava et al. 2014): active in `fit` only, so the
    model's predictions are the same function of the same weights. With a
    `scaler` the model starts with a "scaling" layer and takes raw features.
    """
    top = _top(n_classes, "softmax", zero_init, name="softmax")
    return keras.Sequential(
        [*_hidden(stack, dropout, input_dropout, scaler), top], name="classifier"
    )


def regressor(
    stack,
    n_outputs,
    *,
    zero_init=True,
    dropout=0.0,
    input_dropout=0.0,
    scaler=None,
    target_scaler=None,
):
    """The encoder with a linear layer of `n_outputs` on top, ready to fine-tune for regression.

    `scaler` scales the raw features first, as in `classifier`. With a
    `target_scaler` (offset and scale of each of the `n_outputs` targets) the
    linear layer predicts scaled targets `(y - offset) / scale` and a last
    `Normalization(invert=True)` layer named "target_scaling" maps them back,
    so the model returns targets in their own units. `stackae.finetune` with
    `task="regression"` trains it on the squared error of the scaled targets
    (it reads the scales from that layer). The linear layer starts at zero
    (`zero_init`), so the first prediction is the offset: the targets' mean
    when the scaler standardises.
    """
    if isinstance(n_outputs, bool) or not isinstance(n_outputs, int) or n_outputs < 1:
        raise ValueError(f"`n_outputs` must be an integer >= 1. Received: n_outputs={n_outputs!r}")
    layers = [
        *_hidden(stack, dropout, input_dropout, scaler),
        _top(n_outputs, None, zero_init, "output"),
    ]
    unscale = scaling_layer(target_scaler, n_outputs, invert=True, name=TARGET_SCALING)
    if unscale is not None:
        layers.append(unscale)
    return keras.Sequential(layers, name="regressor")


def with_scaling(model, scaler):
    """`model` (Sequential, trained on scaled rows) with a "scaling" layer first: raw features in.

    The layers are shared, not copied. Without a scaler (or with an identity
    one) `model` itself is returned.
    """
    width = model.inputs[0].shape[-1]
    scaling = scaling_layer(scaler, width)
    if scaling is None:
        return model
    return keras.Sequential([keras.Input((width,)), scaling, *model.layers], name=model.name)


def on_scaled_rows(model):
    """The part of a saved model after its "scaling" layer (the model itself if it has none)."""
    if model.layers and model.layers[0].name == SCALING:
        width = model.inputs[0].shape[-1]
        return keras.Sequential([keras.Input((width,)), *model.layers[1:]], name=model.name)
    return model


def target_scale(model):
    """Per-output scales of `model`'s trailing "target_scaling" layer (float32), or None."""
    last = model.layers[-1] if model.layers else None
    if not (isinstance(last, keras.layers.Normalization) and last.invert):
        return None
    return np.sqrt(np.asarray(last.input_variance, dtype=np.float64)).astype(np.float32)


def deep_autoencoder(stack):
    """The encoder followed by the mirrored tied decoders, as plain Keras layers.

    A dense layer's decoder is a Dense holding W^T and the decoder bias; a
    conv2d layer's is a Conv2DTranspose holding the same kernel (after an
    UpSampling2D where it pools: see `stackae.kinds.Conv2DKind.export_decoder`);
    a Reshape undoes each Flatten.
    """
    decoders = []
    for k, (kind, tied) in reversed(list(enumerate(zip(stack.layer_kinds, stack.encoder_layers)))):
        decoders.extend(kind.export_decoder(tied, k))
        if stack.flattens[k]:
            decoders.append(keras.layers.Reshape(stack._below(k), name=f"unflatten_{k + 1}"))
    return keras.Sequential(
        [keras.Input(_input_shape(stack)), *_encoder_layers(stack), *decoders],
        name="deep_autoencoder",
    )
