"""The dense kind: TiedAutoEncoderLayer, `x W + b` decoded by `h W^T + b'`."""

import dataclasses

import numpy as np

from stackae.config import LayerSpec
from stackae.kinds.base import LayerKind


class DenseKind(LayerKind):
    name = "dense"
    spec_class = LayerSpec
    input_rank = 1

    @property
    def layer_class(self):  # imported when asked: the specs import no backend
        from stackae.layers import TiedAutoEncoderLayer

        return TiedAutoEncoderLayer

    def make_layer(self, spec, **kwargs):
        return self.layer_class(
            spec.units,
            activation=spec.activation,
            decoder_activation=spec.decoder_activation,
            **kwargs,
        )

    def output_shape(self, spec, input_shape):
        return (*tuple(input_shape)[:-1], spec.units)

    def size(self, spec):
        return spec.units

    def export_encoder(self, layer, index):
        import keras

        from stackae import export

        activation = keras.activations.serialize(layer.activation)
        return [
            export._dense(layer.units, activation, layer.kernel, layer.bias, f"encoder_{index + 1}")
        ]

    def export_decoder(self, layer, index):
        import keras
        from keras import ops

        from stackae import export

        return [
            export._dense(
                layer.n_visible,
                keras.activations.serialize(layer.decoder_activation),
                ops.transpose(layer.kernel),
                layer.decoder_bias,
                f"decoder_{index + 1}",
            )
        ]

    def filter_images(self, layer):
        """One image per hidden unit: its kernel column, as a row of n_visible values."""
        kernel = np.asarray(layer.kernel.numpy())
        return kernel.T  # (units, n_visible): the caller knows the image shape

    def estimates(self, spec, input_shape):
        n_in = int(np.prod(input_shape))
        return {
            "parameters": n_in * spec.units + spec.units + n_in,
            "multiply_adds": n_in * spec.units,
            "code_size": spec.units,
        }

    def spec_config(self, spec):
        # As stacks have always saved their specs: no "kind" key means dense.
        return dataclasses.asdict(spec)

    def spec_from_config(self, config):
        return LayerSpec(**{k: v for k, v in config.items() if k != "kind"})
