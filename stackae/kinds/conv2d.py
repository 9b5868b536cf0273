"""The conv2d kind: TiedConv2DAutoEncoderLayer, a convolution decoded by the transposed
convolution of the same kernel, with optional max-pooling (Masci et al. 2011)."""

import dataclasses

import numpy as np

from stackae.config import is_int
from stackae.kinds.base import KindSpec, LayerKind


def _check_pair(name, value, allow_none=False):
    if allow_none and value is None:
        return
    values = value if isinstance(value, tuple | list) else (value,)
    if len(values) not in (1, 2) or not all(is_int(v) and v >= 1 for v in values):
        raise ValueError(
            f"`{name}` must be a positive integer or a pair of them. Received: {name}={value!r}"
        )


def _pair(value):
    return (
        None
        if value is None
        else tuple(value)
        if isinstance(value, tuple | list)
        else (value, value)
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Conv2DSpec(KindSpec):
    """One tied convolutional layer of a stack: its shape and how it is pretrained.

    `pool_size` max-pools the code in the layer's autoencoder (see
    `stackae.TiedConv2DAutoEncoderLayer`). The sparsity and contractive
    penalties are written for dense codes and are refused here.
    """

    filters: int
    # The kind's own default: SGD at the tutorial's 0.1 did not lower a conv layer's loss
    # on a small MNIST trial, 0.03 did (`config.layer_specs` and the CLI take it from here).
    learning_rate: float = 0.03
    kernel_size: int | tuple = 3
    strides: int | tuple = 1
    padding: str = "valid"
    pool_size: int | tuple | None = None

    def __post_init__(self):
        super().__post_init__()
        if not is_int(self.filters) or self.filters < 1:
            raise ValueError(
                f"`filters` must be a positive integer. Received: filters={self.filters!r}"
            )
        _check_pair("kernel_size", self.kernel_size)
        _check_pair("strides", self.strides)
        _check_pair("pool_size", self.pool_size, allow_none=True)
        if self.padding not in ("valid", "same"):
            raise ValueError(
                f"`padding` must be 'valid' or 'same'. Received: padding={self.padding!r}"
            )
        for name in ("sparsity", "contraction"):
            if getattr(self, name):
                raise ValueError(
                    f"The {name} penalty is for dense layers. "
                    f"Received: {name}={getattr(self, name)!r} for a conv2d layer"
                )


class Conv2DKind(LayerKind):
    name = "conv2d"
    spec_class = Conv2DSpec
    input_rank = 3

    @property
    def layer_class(self):  # imported when asked: the specs import no backend
        from stackae.conv_layer import TiedConv2DAutoEncoderLayer

        return TiedConv2DAutoEncoderLayer

    def make_layer(self, spec, **kwargs):
        return self.layer_class(
            spec.filters,
            _pair(spec.kernel_size),
            strides=_pair(spec.strides),
            padding=spec.padding,
            activation=spec.activation,
            decoder_activation=spec.decoder_activation,
            pool_size=_pair(spec.pool_size),
            **kwargs,
        )

    def check_input(self, spec, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                "A conv2d layer needs images (height, width, channels); "
                f"it was given examples of shape {tuple(input_shape)}"
            )
        height, width, _ = self._feature_shape(spec, input_shape)
        if min(height, width) < 1:
            raise ValueError(
                f"A {_pair(spec.kernel_size)} kernel does not fit images of shape "
                f"{tuple(input_shape)} with padding {spec.padding!r}"
            )

    def _feature_shape(self, spec, input_shape):
        from stackae.conv_layer import conv_output_size

        sizes = [
            conv_output_size(n, k, s, spec.padding)
            for n, k, s in zip(input_shape[:2], _pair(spec.kernel_size), _pair(spec.strides))
        ]
        return (*sizes, spec.filters)

    def output_shape(self, spec, input_shape):
        height, width, filters = self._feature_shape(spec, input_shape)
        if spec.pool_size is None:
            return (height, width, filters)
        ph, pw = _pair(spec.pool_size)
        return (height // ph, width // pw, filters)

    def size(self, spec):
        return spec.filters

    def autoencode(self, layer, x):
        """The pooled code, and the decoder's logits from the sparse (unpooled) feature maps."""
        maps = layer.feature_maps(x)
        if layer.pool_size is None:
            code = sparse = maps
        else:
            code = layer._pool(maps)
            sparse = layer.unpool(code, maps)
        return code, layer(sparse, reverse=True, return_logits=True)

    def decode(self, layer, code):
        if layer.pool_size is not None:
            raise ValueError(
                f"Layer '{layer.name}' max-pools its code: decoding needs the positions of the "
                "maxima (use its `reconstruct(x)`, or `unpool(code, feature_maps)` then decode)"
            )
        return layer(code, reverse=True)

    def export_encoder(self, layer, index):
        import keras

        from stackae.export import copy_of

        conv = keras.layers.Conv2D(
            layer.filters,
            layer.kernel_size,
            strides=layer.strides,
            padding=layer.padding,
            activation=keras.activations.serialize(layer.activation),
            name=f"encoder_{index + 1}",
        )
        conv.build((None, *layer.image_shape))
        conv.kernel.assign(copy_of(layer.kernel))
        conv.bias.assign(copy_of(layer.bias))
        if layer.pool_size is None:
            return [conv]
        return [conv, keras.layers.MaxPooling2D(layer.pool_size, name=f"pool_{index + 1}")]

    def export_decoder(self, layer, index):
        """Unpooling, then a Conv2DTranspose holding the same kernel.

        Plain Keras has no layer that puts a value back at the position of a
        maximum, so the exported decoder copies each pooled value over its
        window (`UpSampling2D`) and zero-pads the rows and columns pooling
        dropped; the layer's own `reconstruct` keeps only the maxima.
        """
        import keras

        from stackae.export import copy_of

        layers = []
        if layer.pool_size is not None:
            height, width, _ = layer.feature_shape
            ph, pw = layer.pool_size
            layers.append(keras.layers.UpSampling2D(layer.pool_size, name=f"unpool_{index + 1}"))
            if height % ph or width % pw:
                layers.append(
                    keras.layers.ZeroPadding2D(
                        ((0, height % ph), (0, width % pw)), name=f"unpool_pad_{index + 1}"
                    )
                )
        decoder = keras.layers.Conv2DTranspose(
            layer.image_shape[-1],
            layer.kernel_size,
            strides=layer.strides,
            padding=layer.padding,
            output_padding=layer._output_padding(),
            activation=keras.activations.serialize(layer.decoder_activation),
            name=f"decoder_{index + 1}",
        )
        decoder.build((None, *layer.feature_shape))
        decoder.kernel.assign(copy_of(layer.kernel))  # (kh, kw, channels, filters): the same array
        decoder.bias.assign(copy_of(layer.decoder_bias))
        return [*layers, decoder]

    def filter_images(self, layer):
        """One image per filter, (filters, kh, kw) or (filters, kh, kw, 3) for colour input."""
        kernel = np.asarray(layer.kernel.numpy())  # (kh, kw, channels, filters)
        images = np.moveaxis(kernel, -1, 0)
        return images if kernel.shape[2] == 3 else images[..., 0]

    def estimates(self, spec, input_shape):
        kh, kw = _pair(spec.kernel_size)
        channels = input_shape[-1]
        height, width, filters = self._feature_shape(spec, input_shape)
        return {
            "parameters": kh * kw * channels * filters + filters + channels,
            "multiply_adds": height * width * kh * kw * channels * filters,
            "code_size": int(np.prod(self.output_shape(spec, input_shape))),
        }

    def spec_from_config(self, config):
        config = {k: v for k, v in config.items() if k != "kind"}
        for name in ("kernel_size", "strides", "pool_size"):
            if isinstance(config.get(name), list):
                config[name] = tuple(config[name])  # JSON gives lists back
        return Conv2DSpec(**config)
