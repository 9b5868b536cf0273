"""LayerKind: what stackae asks of a kind of tied layer, and KindSpec: the training settings
every kind's spec shares."""

import dataclasses

from stackae.config import LayerSpec


class _TrainingSettings:
    """KindSpec's methods (its fields come from LayerSpec's, below)."""

    def __post_init__(self):
        # One set of checks for every door: LayerSpec's, on these same fields.
        LayerSpec(units=1, **self.training_settings())

    def training_settings(self):
        """The fields shared with LayerSpec, as a dict."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(KindSpec)}

    def make_optimizer(self):
        return LayerSpec(units=1, **self.training_settings()).make_optimizer()


# LayerSpec's fields but `units` (the dense layer's width), with their types and defaults:
# a default is one value, LayerSpec's (stackae.config), for every kind.
KindSpec = dataclasses.make_dataclass(
    "KindSpec",
    [
        (f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
        for f in dataclasses.fields(LayerSpec)
        if f.name != "units"
    ],
    bases=(_TrainingSettings,),
    frozen=True,
    kw_only=True,
    namespace={
        "__module__": __name__,
        "__doc__": """The training settings of one layer of a stack, for kinds other than dense.

    The same fields, defaults and checks as `stackae.LayerSpec` without
    `units` (the dense layer's spec): its fields are made from LayerSpec's. A
    kind's spec subclasses this (a frozen, keyword-only dataclass) and adds
    its own fields (keyword-only; give them defaults or not), checked in its
    own `__post_init__` after calling this one's.
    """,
    },
)


class LayerKind:
    """One kind of tied layer: everything `Stack`, `AutoEncoder`, `pretrain` and
    `stackae.export` need to know about it.

    Subclass it, set the three class attributes, implement the methods that
    raise NotImplementedError, and `stackae.kinds.register_kind(MyKind())`.
    Shapes are per example (no batch axis): `(features,)` for rows,
    `(height, width, channels)` for images.
    """

    name = None  # the kind's name, as the spec's config records it
    spec_class = None  # its spec: a dataclass (a KindSpec subclass), one per layer
    layer_class = None  # its tied layer: a keras.layers.Layer with a `reverse=` call
    input_rank = 1  # rank of one example it encodes: 1 for rows, 3 for images

    def make_layer(self, spec, **kwargs):
        """The untrained tied layer a spec describes (kwargs: `name`, ...)."""
        raise NotImplementedError

    def output_shape(self, spec, input_shape):
        """The shape of one example's code for one example of `input_shape`."""
        raise NotImplementedError

    def check_input(self, spec, input_shape):
        """ValueError (one line) unless the layer can encode examples of `input_shape`."""
        if len(input_shape) != self.input_rank:
            what = (
                "rows (features,)"
                if self.input_rank == 1
                else f"examples of rank {self.input_rank}"
            )
            raise ValueError(
                f"A {self.name} layer needs {what}. Received: input_shape={tuple(input_shape)}"
            )

    def size(self, spec):
        """The layer's width as one number (units, filters)."""
        raise NotImplementedError

    def autoencode(self, layer, x):
        """(code, decoder logits) of a batch `x`: what the autoencoder's loss and penalties see.

        The default encodes, then decodes the code with `reverse=True`.
        """
        code = layer(x)
        return code, layer(code, reverse=True, return_logits=True)

    def kernels(self, layer):
        """The weights the `l2` weight decay applies to."""
        return [layer.kernel]

    def decode(self, layer, code):
        """A code back to the layer's input, as far as the code alone allows."""
        return layer(code, reverse=True)

    def export_encoder(self, layer, index):
        """Plain Keras layers (no stackae class) computing the code, with copies of the weights.

        `index` is the layer's 0-based place in the stack, for names.
        """
        raise NotImplementedError

    def export_decoder(self, layer, index):
        """Plain Keras layers from the code back to the layer's input: the tied decoder."""
        raise NotImplementedError

    def filter_images(self, layer):
        """The layer's filters as images, (n_filters, height, width[, 3]), raw values."""
        raise NotImplementedError

    def estimates(self, spec, input_shape):
        """{"parameters", "multiply_adds" (one example's encoding), "code_size" (values)}."""
        raise NotImplementedError

    def spec_config(self, spec):
        """The spec as a JSON-able dict that `spec_from_config` reads back."""
        return {"kind": self.name, **dataclasses.asdict(spec)}

    def spec_from_config(self, config):
        config = {k: v for k, v in config.items() if k != "kind"}
        return self.spec_class(**config)
