"""Defaults, names and per-layer settings, in one place; imports no backend (the CLI reads it)."""

import dataclasses
import math
import re

from stackae.errors import ParameterError, first_line

DEFAULT_SEED = 123
# Each noise kind and the bound its level stays below: a probability, or Gaussian's stddev.
NOISE_LEVELS = {"masking": 1.0, "gaussian": math.inf, "salt-and-pepper": 1.0}
NOISE_KINDS = tuple(NOISE_LEVELS)
LOSSES = ("cross-entropy", "squared-error")
# Per-feature scaling fitted on the training split; "global": one min and max over all values.
SCALE_KINDS = ("none", "minmax", "standard", "global")
# Encoder and decoder activations a LayerSpec takes (Keras names).
ACTIVATIONS = ("sigmoid", "linear", "relu", "tanh")
# Those whose codes lie in [0, 1]: the cross-entropy of the layer above is defined on them.
UNIT_INTERVAL_ACTIVATIONS = ("sigmoid",)
# Scalings (stackae.data.scaling) whose outputs stay in [0, 1], where the tutorial's
# sigmoid decoder and cross-entropy fit; "none" leaves the data as they are.
UNIT_INTERVAL_SCALINGS = ("none", "minmax", "global")
TASKS = ("classification", "regression")
STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multi-worker")
# Rows per call when predicting, encoding or evaluating (no gradients: bigger is faster).
PREDICT_BATCH = 1024


def make_optimizer(name, learning_rate, momentum=0.0):
    """A Keras optimizer by name; ValueError (one line) for a name Keras does not know."""
    import keras

    config = {"learning_rate": learning_rate}
    if momentum:
        config["momentum"] = momentum
    try:
        return keras.optimizers.get({"class_name": name, "config": config})
    except (ValueError, TypeError) as err:
        raise ParameterError(
            f"`optimizer` {name!r} is not a Keras optimizer ({first_line(err)})", param="optimizer"
        ) from None


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class Field:
    """One setting of a spec: its type, the values it takes, and what it does.

    The spec checks its fields with `check`; the command line makes its option
    types from `kind`, `low` and `high` (the range shows in `--help`), and the
    scikit-learn estimators their `_parameter_constraints`. Rules between
    fields (the cross-entropy needs a sigmoid decoder) stay in the spec.
    """

    name: str
    kind: type  # int, float or str
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None  # a str field's values (None: any non-empty name)

    def ok(self, value):
        if self.kind is str:
            if not isinstance(value, str):
                return False
            return value in self.choices if self.choices else value.strip() != ""
        if not (is_int(value) if self.kind is int else is_number(value)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        high = self.high
        return high is None or (value < high if self.high_open else value <= high)

    def describe(self):
        """What the field takes, in words: 'a positive integer', 'in [0, 1)'."""
        if self.kind is str:
            return f"one of {self.choices}" if self.choices else "a Keras optimizer name"
        if self.kind is int and self.low == 1 and self.high is None:
            return "a positive integer"
        if self.high is None:
            return f"a number {'>' if self.low_open else '>='} {self.low:g}"
        return (
            f"in {'(' if self.low_open else '['}{self.low:g}, "
            f"{self.high:g}{')' if self.high_open else ']'}"
        )

    def check(self, value):
        """ParameterError (one line, naming the field) unless the field takes `value`."""
        _require(self.ok(value), self.name, value, self.describe())


def _fields(*fields):
    return {field.name: field for field in fields}


def _count(name, help):
    return Field(name, int, help, low=1)


def _unit(name, help, low_open=False, high_open=True):
    return Field(name, float, help, 0.0, 1.0, low_open=low_open, high_open=high_open)


# The fields of a LayerSpec. `corruption`'s upper bound depends on the noise
# (NOISE_LEVELS): `check_noise` checks the pair.
LAYER_FIELDS = _fields(
    _count("units", "Hidden units"),
    Field("corruption", float, "Noise level", low=0.0),
    Field("noise", str, "Noise kind", choices=NOISE_KINDS),
    Field("loss", str, "Reconstruction loss", choices=LOSSES),
    _count("epochs", "Pretraining epochs"),
    _count("batch_size", "Global batch size"),
    Field("learning_rate", float, "Learning rate", low=0.0, low_open=True),
    Field("optimizer", str, "Keras optimizer (sgd, adam, ...)"),
    Field("l2", float, "L2 weight decay", low=0.0),
    Field("sparsity", float, "KL sparsity weight", low=0.0),
    _unit("sparsity_target", "Target mean activation", low_open=True),
    Field("contraction", float, "Contractive penalty weight", low=0.0),
    Field("activation", str, "Encoder activation", choices=ACTIVATIONS),
    Field("decoder_activation", str, "Decoder activation", choices=ACTIVATIONS),
)
# The fields of a FinetuneSpec.
FINETUNE_FIELDS = _fields(
    _count("epochs", "Most fine-tuning epochs"),
    _count("batch_size", "Global batch size"),
    Field("learning_rate", float, "Learning rate", low=0.0, low_open=True),
    Field("optimizer", str, "Keras optimizer name"),
    _count("patience", "Epochs without a better validation error before stopping"),
    _unit("momentum", "SGD momentum"),
    _unit("lr_decay", "Learning rate factor per epoch", low_open=True, high_open=False),
    _unit("dropout", "Dropout after each hidden layer, in training"),
    _unit("input_dropout", "Dropout on the input, in training"),
    Field("task", str, "classification (labels) or regression (targets)", choices=TASKS),
)


def is_split_size(value):
    """The one rule for a validation or test size: an int count >= 0 or a fraction in [0, 1)."""
    if is_int(value):
        return value >= 0
    return is_number(value) and 0 <= value < 1


def check_split_size(name, value):
    """ParameterError (one line) unless `value` is None or a split size (`is_split_size`)."""
    if value is not None:
        _require(is_split_size(value), name, value, "an int count >= 0, a fraction in [0, 1)")


def check_noise(noise, corruption):
    """ValueError (one line) unless `noise` is a kind and `corruption` a level it takes."""
    LAYER_FIELDS["noise"].check(noise)
    upper = NOISE_LEVELS[noise]
    _require(
        is_number(corruption) and 0 <= corruption < upper,
        "corruption",
        corruption,
        f"in [0, {upper:g}) for {noise} noise",
    )


def _require(ok, name, value, what):
    if not ok:
        raise ParameterError(f"`{name}` must be {what}. Received: {name}={value!r}", param=name)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """How one layer of a stack is pretrained; the defaults are the dA tutorial's.

    Every field is checked when the spec is made (ValueError naming the field),
    so a spec read back from a run's manifest is as valid as one typed in.
    """

    units: int = 500
    corruption: float = 0.0
    noise: str = "masking"
    loss: str = "cross-entropy"
    epochs: int = 15
    batch_size: int = 20
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    l2: float = 0.0
    sparsity: float = 0.0
    sparsity_target: float = 0.05
    contraction: float = 0.0
    activation: str = "sigmoid"  # the encoder's
    decoder_activation: str = "sigmoid"

    def __post_init__(self):
        for field in LAYER_FIELDS.values():
            if field.name == "corruption":
                check_noise(self.noise, self.corruption)  # the bound is the noise's
            elif field.name != "noise":
                field.check(getattr(self, field.name))
        if self.loss == "cross-entropy" and self.decoder_activation != "sigmoid":
            raise ParameterError(
                "The cross-entropy loss needs a sigmoid decoder (outputs in [0, 1]); "
                "use loss='squared-error' for another decoder. "
                f"Received: loss={self.loss!r}, decoder_activation={self.decoder_activation!r}"
            )
        # Both penalties are written for sigmoid codes: the KL sparsity compares mean
        # activations in (0, 1) with a target in (0, 1), and the contractive Jacobian is
        # h (1 - h) W, the sigmoid's derivative.
        for name in ("sparsity", "contraction"):
            value = getattr(self, name)
            if value and self.activation != "sigmoid":
                raise ParameterError(
                    f"The {name} penalty needs a sigmoid encoder. "
                    f"Received: {name}={value!r}, activation={self.activation!r}"
                )

    def make_optimizer(self):
        return make_optimizer(self.optimizer, self.learning_rate)


# The `--layers` grammar (also `layer_specs`'s): one token per layer, bottom first.
LAYERS_GRAMMAR = (
    "N: a dense layer of N units; convFxK: a convolutional layer of F filters KxK "
    "(add sS for stride S, 'same' for same padding: conv32x5s2same); poolP: max-pool the "
    "conv layer before it by PxP (inside its autoencoder, not a layer of its own)"
)
_CONV = re.compile(r"conv(\d+)x(\d+)(?:s(\d+))?(same|valid)?")
_POOL = re.compile(r"pool(\d+)")


def parse_layers(layers):
    """The layers of a stack from the `--layers` grammar (LAYERS_GRAMMAR), bottom first.

    `layers`: a comma-separated string or a sequence of tokens (ints for dense
    layers, or strings). Returns a tuple with an int (units) per dense layer and
    a dict of Conv2DSpec shape fields per conv layer; a `poolP` token sets the
    `pool_size` of the conv layer just before it. ParameterError (one line,
    naming the token) for anything else.

    >>> parse_layers("conv32x5,pool2,500")
    ({'kind': 'conv2d', 'filters': 32, 'kernel_size': 5, 'strides': 1, 'padding': 'valid', \
'pool_size': 2}, 500)
    """
    if isinstance(layers, str):
        layers = layers.split(",")
    parsed = []
    for token in layers:
        if is_int(token) or isinstance(token, dict):
            parsed.append(token)
            continue
        text = str(token).strip().lower()
        conv, pool = _CONV.fullmatch(text), _POOL.fullmatch(text)
        if re.fullmatch(r"[-+]?\d+", text):
            parsed.append(int(text))  # <= 0 is refused below, as a size
        elif conv:
            filters, kernel, stride, padding = conv.groups()
            parsed.append(
                {
                    "kind": "conv2d",
                    "filters": int(filters),
                    "kernel_size": int(kernel),
                    "strides": int(stride or 1),
                    "padding": padding or "valid",
                    "pool_size": None,
                }
            )
        elif pool and parsed and isinstance(parsed[-1], dict) and parsed[-1]["pool_size"] is None:
            parsed[-1] = {**parsed[-1], "pool_size": int(pool.group(1))}
        else:
            why = (
                "pools the conv layer just before it, once"
                if pool
                else "is not a layer (N, convFxK[sS][same] or poolP)"
            )
            raise ParameterError(
                f"`layers` token {str(token).strip()!r} {why}. Received: layers={_text(layers)}",
                param="layers",
            )
    if not parsed or any(
        (is_int(u) and u <= 0) or (isinstance(u, dict) and min(_shape_numbers(u)) <= 0)
        for u in parsed
    ):
        raise ParameterError(
            "`layers` must be positive integers. Received: layers="
            + (_text(layers) if any(isinstance(t, str) for t in layers) else f"{tuple(parsed)}"),
            param="layers",
        )
    return tuple(parsed)


def _text(layers):
    return ",".join(str(t).strip() for t in layers)


def _shape_numbers(layer):
    return [layer[k] for k in ("filters", "kernel_size", "strides") if is_int(layer[k])] + [
        layer["pool_size"] or 1
    ]


def layer_token(spec):
    """The `--layers` tokens of a spec or a `parse_layers` item: '500', 'conv32x5,pool2'
    (a user's kind: its name and size, 'tiny5', for messages)."""
    if isinstance(spec, LayerSpec):
        return str(spec.units)
    shape = spec if isinstance(spec, dict | int) else layer_shape(spec)
    if shape is None:  # a user's kind: its name and size, e.g. 'tiny5'
        from stackae.kinds import kind_of

        kind = kind_of(spec)
        return f"{kind.name}{kind.size(spec)}"
    if not isinstance(shape, dict):
        return str(shape)
    text = f"conv{shape['filters']}x{_one(shape['kernel_size'])}"
    if shape["strides"] not in (1, (1, 1)):
        text += f"s{_one(shape['strides'])}"
    if shape["padding"] == "same":
        text += "same"
    if shape["pool_size"] is not None:
        text += f",pool{_one(shape['pool_size'])}"
    return text


def _one(value):
    if isinstance(value, tuple | list) and len(set(value)) == 1:
        return value[0]
    return "x".join(map(str, value)) if isinstance(value, tuple | list) else value


def layer_shape(spec):
    """A spec's shape as `parse_layers` gives it: units, or a conv layer's dict (None: other)."""
    if isinstance(spec, LayerSpec):
        return spec.units
    if type(spec).__name__ == "Conv2DSpec":
        return {
            "kind": "conv2d",
            **{
                name: _one(getattr(spec, name)) if name != "padding" else spec.padding
                for name in ("filters", "kernel_size", "strides", "padding", "pool_size")
            },
        }
    return None


def layer_specs(layers, *, scale=None, **settings):
    """One spec per layer of `layers`; each setting is one value or one per layer.

    `layers`: dense sizes, or the `--layers` grammar (`parse_layers`): a string
    "conv32x5,pool2,500" or its tokens; a conv token makes a
    `stackae.kinds.Conv2DSpec`. Per-layer settings count layers, not pool tokens.

    Settings not given (or None) take `default_layer_settings` for the data's
    `scale` (a SCALE_KINDS name; None or False: "none", True: "global"), so
    standardised features get a linear first decoder and the squared error
    wherever a stack is made: the library, the command line, the estimators.

    >>> [s.corruption for s in layer_specs((1000, 1000), corruption=(0.1, 0.2))]
    [0.1, 0.2]
    >>> layer_specs((500,), scale="standard")[0].loss
    'squared-error'
    >>> layer_specs("conv8x3,pool2,10")[0].pool_size
    2
    """
    layers = parse_layers(layers)
    fields = {f.name for f in dataclasses.fields(LayerSpec)} - {"units"}
    per_layer = [
        {"units": u} if is_int(u) else {k: v for k, v in u.items() if k != "kind"} for u in layers
    ]
    for name in settings:
        if name not in fields:
            raise ParameterError(
                f"Unknown layer setting {name!r}. Expected one of {sorted(fields)}"
            )
    activations = settings.get("activation")
    if activations is not None:
        activations = _broadcast("activation", activations, len(layers))
    fitting = default_layer_settings(scale_kind(scale), layers, activations)
    for name, value in settings.items():
        if value is None:
            value = fitting.get(name)
        fitting.pop(name, None)
        if value is None:
            continue
        values = _broadcast(name, value, len(layers))
        for spec, v in zip(per_layer, values):
            spec[name] = v
    for name, values in fitting.items():  # defaults for the scaling of settings not passed
        for spec, v in zip(per_layer, values):
            spec[name] = v
    return [_make_spec(spec) for spec in per_layer]


def check_codes_fit_losses(specs):
    """ParameterError (one line) where a layer's cross-entropy would read the codes of an
    encoder below it that leave [0, 1] (relu, tanh, linear): its cost is not defined there."""
    for k in range(1, len(specs)):
        below, spec = specs[k - 1], specs[k]
        if spec.loss == "cross-entropy" and below.activation not in UNIT_INTERVAL_ACTIVATIONS:
            raise ParameterError(
                f"Layer {k + 1}'s cross-entropy needs codes in [0, 1], and layer {k}'s "
                f"{below.activation} encoder gives others; give layer {k + 1} "
                "loss='squared-error' and decoder_activation='linear' (the default when "
                f"neither is given). Received: activation={below.activation!r} (layer {k}), "
                f"loss={spec.loss!r} (layer {k + 1})",
                param="loss",
            )


def _make_spec(fields):
    if "units" in fields:
        return LayerSpec(**fields)
    from stackae.kinds import Conv2DSpec

    return Conv2DSpec(**fields)


def _kind_default(layer, name):
    """A setting's default for one parsed layer: its kind's spec's (Conv2DSpec's for conv)."""
    if is_int(layer):
        return getattr(DEFAULTS, name)
    from stackae.kinds import Conv2DSpec

    return {f.name: f.default for f in dataclasses.fields(Conv2DSpec)}[name]


def scale_kind(scale):
    """The SCALE_KINDS name of a data option `scale`: None or False "none", True "global"."""
    if scale is True:
        return "global"
    return scale or "none"


def _broadcast(name, value, n):
    if isinstance(value, str) or not isinstance(value, list | tuple):
        return [value] * n
    if len(value) == 1:
        return list(value) * n
    if len(value) != n:
        raise ParameterError(
            f"`{name}` has {len(value)} values for {n} layers; give one value or one per layer.",
            param=name,
        )
    return list(value)


DEFAULTS = LayerSpec()


def default_layer_settings(scale_kind, layers, activations=None):
    """Activations, losses and learning rates for a stack of sizes `layers` on inputs
    scaled by `scale_kind` (and encoders' `activations`, one per layer, None: sigmoid),
    as `layer_specs` settings with one value per layer:
    `{"activation": ..., "decoder_activation": ..., "loss": ..., "learning_rate": ...}`.

    Settings the user gives go over these (they are defaults, not rules).

    Inputs in [0, 1] (`scale_kind` in UNIT_INTERVAL_SCALINGS: "none", data taken
    as they are, e.g. pixels, and "minmax") get the tutorial's settings in every
    layer: sigmoid encoder and decoder, cross-entropy, learning rate 0.1 (today's
    defaults, unchanged).

    Any other kind (standardised features, negative and unbounded) gets, in the
    first layer, a sigmoid encoder with a linear decoder and the squared-error
    loss: a sigmoid decoder only outputs (0, 1), so it cannot reconstruct such
    inputs, and the cross-entropy is not defined for them. This is the choice of
    Vincent et al. (2010, "Stacked denoising autoencoders", JMLR 11) for
    real-valued inputs: an affine decoder with the squared error. Its learning
    rate is min(0.1, 1 / units): a linear decoder lacks the sigmoid's damping
    (derivative <= 1/4), and the summed squared error's curvature along the
    mean code is about units / 2 (sigmoid codes average near 1/2), so SGD
    diverges above about 4 / units (measured: lr 0.008 diverges with 500 units
    on 50 standardised features, 0.004 trains). The layers above see the first
    layer's codes, which a sigmoid encoder keeps in [0, 1], so they keep the
    tutorial's settings.

    A layer above an encoder whose codes leave [0, 1] (relu, tanh, linear)
    sees real values as the first layer sees standardised features, and gets
    the same: a linear decoder, the squared error, min(lr, 1 / codes) (the
    cross-entropy on relu codes gave a cost of -1e33 and "trained").

    Conv layers (`parse_layers`'s dicts) take their kind's default learning
    rate, `stackae.kinds.Conv2DSpec`'s.

    >>> default_layer_settings("standard", (500, 500))["decoder_activation"]
    ('linear', 'sigmoid')
    """
    if not tuple(layers):
        raise ParameterError("`layers` must be positive integers. Received: layers=()")
    layers = parse_layers(layers)
    per_layer = [
        (DEFAULTS.decoder_activation, DEFAULTS.loss, _kind_default(u, "learning_rate"))
        for u in layers
    ]
    activations = tuple(activations or (DEFAULTS.activation,) * len(layers))
    real_inputs = [scale_kind not in UNIT_INTERVAL_SCALINGS] + [
        a not in UNIT_INTERVAL_ACTIVATIONS for a in activations[:-1]
    ]
    for k, (layer, real) in enumerate(zip(layers, real_inputs)):
        if real:
            # A conv layer's decoder output sums filters x kernel area codes: the same bound.
            codes = layer if is_int(layer) else layer["filters"] * _square(layer["kernel_size"])
            per_layer[k] = ("linear", "squared-error", min(per_layer[k][2], 1.0 / codes))
    return {
        "activation": activations,
        "decoder_activation": tuple(d for d, _, _ in per_layer),
        "loss": tuple(loss for _, loss, _ in per_layer),
        "learning_rate": tuple(lr for _, _, lr in per_layer),
    }


def _square(value):
    return value[0] * value[1] if isinstance(value, tuple | list) else value * value


# Fine-tuning settings that depend on the task, for a FinetuneSpec that leaves them None.
# Classification: SGD at lr 0.1 without momentum, as the SdA tutorial. Regression: SGD at
# lr 0.1 diverged on standardised targets (diabetes, 100 units, NaN by epoch 5): a linear
# output's squared error has a curvature that grows with the units below it. Momentum 0.9
# at lr 0.01 (an effective step of 0.1 with less noise) trained every table of
# benchmarks/tabular.py, regression RMSE within 5 % of an MLP's (benchmarks/README.md).
TASK_DEFAULTS = {
    "classification": {"learning_rate": 0.1, "momentum": 0.0},
    "regression": {"learning_rate": 0.01, "momentum": 0.9},
}


@dataclasses.dataclass(frozen=True)
class FinetuneSpec:
    """Fine-tuning settings; minibatches for speed. `learning_rate` and `momentum` left
    None take the task's defaults (TASK_DEFAULTS): lr 0.1 with plain SGD as the SdA
    tutorial for classification, lr 0.01 with momentum 0.9 for regression."""

    epochs: int = 100
    batch_size: int = 20
    learning_rate: float | None = None
    optimizer: str = "sgd"
    patience: int = 10
    momentum: float | None = None
    lr_decay: float = 1.0  # the learning rate of epoch e is learning_rate * lr_decay**e
    dropout: float = 0.0  # after each hidden layer, during fine-tuning only
    input_dropout: float = 0.0  # on the input, likewise
    # "regression": a linear output, the squared error, early stopping on the validation loss.
    task: str = "classification"

    def __post_init__(self):
        FINETUNE_FIELDS["task"].check(self.task)
        for name, value in TASK_DEFAULTS[self.task].items():
            if getattr(self, name) is None:  # not given: the task's default
                object.__setattr__(self, name, value)
        for field in FINETUNE_FIELDS.values():
            field.check(getattr(self, field.name))
        if self.momentum and self.optimizer.lower() != "sgd":
            raise ParameterError(
                f"`momentum` is an SGD setting; the optimizer is {self.optimizer!r}. "
                f"Received: momentum={self.momentum!r}",
                param="momentum",
            )

    def make_optimizer(self):
        return make_optimizer(self.optimizer, self.learning_rate, self.momentum)


FINETUNE_DEFAULTS = FinetuneSpec()
