"""Defaults, names and per-layer settings, in one place; imports no backend (the CLI reads it)."""

import dataclasses
import math

from stackae.errors import first_line

DEFAULT_SEED = 123
# Each noise kind and the bound its level stays below: a probability, or Gaussian's stddev.
NOISE_LEVELS = {"masking": 1.0, "gaussian": math.inf, "salt-and-pepper": 1.0}
NOISE_KINDS = tuple(NOISE_LEVELS)
LOSSES = ("cross-entropy", "squared-error")
# Per-feature scaling fitted on the training split; "global": one min and max over all values.
SCALE_KINDS = ("none", "minmax", "standard", "global")
# Encoder and decoder activations a LayerSpec takes (Keras names).
ACTIVATIONS = ("sigmoid", "linear", "relu", "tanh")
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
        raise ValueError(
            f"`optimizer` {name!r} is not a Keras optimizer ({first_line(err)})"
        ) from None


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_optimizer_settings(spec):
    """The fields both specs share: a positive learning rate and an optimizer name."""
    _require(
        is_number(spec.learning_rate) and spec.learning_rate > 0,
        "learning_rate",
        spec.learning_rate,
        "a number > 0",
    )
    _require(
        isinstance(spec.optimizer, str) and spec.optimizer.strip() != "",
        "optimizer",
        spec.optimizer,
        "a Keras optimizer name",
    )


def check_noise(noise, corruption):
    """ValueError (one line) unless `noise` is a kind and `corruption` a level it takes."""
    _require(noise in NOISE_LEVELS, "noise", noise, f"one of {NOISE_KINDS}")
    upper = NOISE_LEVELS[noise]
    _require(
        is_number(corruption) and 0 <= corruption < upper,
        "corruption",
        corruption,
        f"in [0, {upper:g}) for {noise} noise",
    )


def _require(ok, name, value, what):
    if not ok:
        raise ValueError(f"`{name}` must be {what}. Received: {name}={value!r}")


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
        for name in ("units", "epochs", "batch_size"):
            value = getattr(self, name)
            _require(is_int(value) and value >= 1, name, value, "a positive integer")
        check_noise(self.noise, self.corruption)
        _require(self.loss in LOSSES, "loss", self.loss, f"one of {LOSSES}")
        _check_optimizer_settings(self)
        for name in ("l2", "sparsity", "contraction"):
            value = getattr(self, name)
            _require(is_number(value) and value >= 0, name, value, "a number >= 0")
        _require(
            is_number(self.sparsity_target) and 0 < self.sparsity_target < 1,
            "sparsity_target",
            self.sparsity_target,
            "in (0, 1)",
        )
        for name in ("activation", "decoder_activation"):
            value = getattr(self, name)
            _require(value in ACTIVATIONS, name, value, f"one of {ACTIVATIONS}")
        if self.loss == "cross-entropy" and self.decoder_activation != "sigmoid":
            raise ValueError(
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
                raise ValueError(
                    f"The {name} penalty needs a sigmoid encoder. "
                    f"Received: {name}={value!r}, activation={self.activation!r}"
                )

    def make_optimizer(self):
        return make_optimizer(self.optimizer, self.learning_rate)


def layer_specs(layers, **settings):
    """One LayerSpec per size in `layers`; each setting is one value or one per layer.

    >>> [s.corruption for s in layer_specs((1000, 1000), corruption=(0.1, 0.2))]
    [0.1, 0.2]
    """
    layers = tuple(layers)
    if not layers or any(not is_int(u) or u <= 0 for u in layers):
        raise ValueError(f"`layers` must be positive integers. Received: layers={layers}")
    fields = {f.name for f in dataclasses.fields(LayerSpec)} - {"units"}
    per_layer = [{"units": u} for u in layers]
    for name, value in settings.items():
        if name not in fields:
            raise ValueError(f"Unknown layer setting {name!r}. Expected one of {sorted(fields)}")
        if value is None:
            continue
        values = _broadcast(name, value, len(layers))
        for spec, v in zip(per_layer, values):
            spec[name] = v
    return [LayerSpec(**spec) for spec in per_layer]


def _broadcast(name, value, n):
    if isinstance(value, str) or not isinstance(value, list | tuple):
        return [value] * n
    if len(value) == 1:
        return list(value) * n
    if len(value) != n:
        raise ValueError(
            f"`{name}` has {len(value)} values for {n} layers; give one value or one per layer."
        )
    return list(value)


DEFAULTS = LayerSpec()


def default_layer_settings(scale_kind, layers):
    """Activations, losses and learning rates for a stack of sizes `layers` on inputs
    scaled by `scale_kind`, as `layer_specs` settings with one value per layer:
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

    >>> default_layer_settings("standard", (500, 500))["decoder_activation"]
    ('linear', 'sigmoid')
    """
    layers = tuple(layers)
    if not layers or any(not is_int(u) or u <= 0 for u in layers):
        raise ValueError(f"`layers` must be positive integers. Received: layers={layers}")
    tutorial = (DEFAULTS.decoder_activation, DEFAULTS.loss, DEFAULTS.learning_rate)
    first = tutorial
    if scale_kind not in UNIT_INTERVAL_SCALINGS:
        first = ("linear", "squared-error", min(DEFAULTS.learning_rate, 1.0 / layers[0]))
    per_layer = [first, *[tutorial] * (len(layers) - 1)]
    return {
        "activation": (DEFAULTS.activation,) * len(layers),
        "decoder_activation": tuple(d for d, _, _ in per_layer),
        "loss": tuple(loss for _, loss, _ in per_layer),
        "learning_rate": tuple(lr for _, _, lr in per_layer),
    }


@dataclasses.dataclass(frozen=True)
class FinetuneSpec:
    """Fine-tuning settings; lr 0.1 with SGD as the SdA tutorial, minibatches for speed."""

    epochs: int = 100
    batch_size: int = 20
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    patience: int = 10
    momentum: float = 0.0
    lr_decay: float = 1.0  # the learning rate of epoch e is learning_rate * lr_decay**e
    dropout: float = 0.0  # after each hidden layer, during fine-tuning only
    input_dropout: float = 0.0  # on the input, likewise
    # "regression": a linear output, the squared error, early stopping on the validation loss.
    task: str = "classification"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            _require(is_int(value) and value >= 1, name, value, "a positive integer")
        _check_optimizer_settings(self)
        for name in ("momentum", "dropout", "input_dropout"):
            value = getattr(self, name)
            _require(is_number(value) and 0 <= value < 1, name, value, "in [0, 1)")
        _require(
            is_number(self.lr_decay) and 0 < self.lr_decay <= 1,
            "lr_decay",
            self.lr_decay,
            "in (0, 1]",
        )
        _require(self.task in TASKS, "task", self.task, f"one of {TASKS}")
        if self.momentum and self.optimizer.lower() != "sgd":
            raise ValueError(
                f"`momentum` is an SGD setting; the optimizer is {self.optimizer!r}. "
                f"Received: momentum={self.momentum!r}"
            )

    def make_optimizer(self):
        return make_optimizer(self.optimizer, self.learning_rate, self.momentum)


FINETUNE_DEFAULTS = FinetuneSpec()
# What regression fine-tuning changes of those defaults when not given: SGD at lr 0.1
# diverged on standardised targets (diabetes, 100 units, NaN by epoch 5; benchmarks/tabular.py).
REGRESSION_DEFAULTS = {"learning_rate": 0.01, "momentum": 0.9}
