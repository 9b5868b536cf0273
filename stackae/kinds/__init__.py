"""Layer kinds: the tied layers a stack can be made of (dense, conv2d, your own).

A *kind* is one object that owns, for its tied layer: the spec (one per layer
of a stack: its shape and its training settings), the layer itself (encoder,
and decoder with the transposed operator of the same weights through
`layer(code, reverse=True)`), the output shape for an input shape, cost and
memory estimates, the export to plain Keras layers (encoder side, and the tied
decoder of the unrolled autoencoder) and its filter picture. `Stack`,
`AutoEncoder`, `pretrain` and `stackae.export` talk to the kind, never to
`units` or `kernel` directly.

Registering your own kind takes a spec, a layer and a kind:

    import dataclasses
    import keras
    from stackae.kinds import KindSpec, LayerKind, register_kind

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class MySpec(KindSpec):          # the training fields come with KindSpec
        units: int

    class MyTiedLayer(keras.layers.Layer):
        ...                          # call(x, reverse=False, return_logits=False)

    class MyKind(LayerKind):
        name = "mine"
        spec_class = MySpec
        layer_class = MyTiedLayer
        input_rank = 1               # rows; 3 for images (height, width, channels)

        def make_layer(self, spec, **kwargs): ...
        def output_shape(self, spec, input_shape): ...
        def size(self, spec): ...
        def export_encoder(self, layer, index): ...   # plain Keras layers
        def export_decoder(self, layer, index): ...
        def estimates(self, spec, input_shape): ...
        def filter_images(self, layer): ...

    register_kind(MyKind())

Then `stackae.Stack([MySpec(units=64), stackae.LayerSpec(32)])` pretrains
with `stackae.pretrain` and exports with `stackae.export.classifier` like any
stack. The layer's `call(inputs, reverse=False, return_logits=False)` encodes,
or decodes a code with `reverse=True`; `return_logits` returns the
activation's input (the cross-entropy is computed from the decoder's logits).
`LayerKind` has defaults for the rest (`autoencode`: encode, then decode the
code; `kernels`: `[layer.kernel]` for the L2 weight decay). The layer's
weights are ordinary trainable weights, its decoder's included: stackae's
autoencoder trains them all, and the exported models hold plain Keras layers
only. A stack's config records each spec with its kind's name, so register
the kind before loading a saved stack.
"""

from stackae.kinds.base import KindSpec, LayerKind
from stackae.kinds.conv2d import Conv2DKind, Conv2DSpec
from stackae.kinds.dense import DenseKind
from stackae.kinds.registry import get_kind, kind_names, kind_of, register_kind, spec_of

__all__ = [
    "Conv2DKind",
    "Conv2DSpec",
    "DenseKind",
    "KindSpec",
    "LayerKind",
    "get_kind",
    "kind_names",
    "kind_of",
    "register_kind",
    "spec_of",
]

register_kind(DenseKind())
register_kind(Conv2DKind())
