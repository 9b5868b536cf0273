"""The run manifest, defined once: dataclasses that are its schema, read from and written to JSON.

`Manifest.from_json` checks every field a verb reads (type, range, and how
fields agree with each other) and fills the fields an older manifest lacks
with the meaning they had when it was written. The promise: a run written by
any earlier released stackae is read; a field it lacks means what it meant
then (format 1, stackae 0.1.0: sigmoid layers, classification, `scale: true`
as one global min-max; format 2, stackae 0.2: no column names, header decision or
fingerprint recorded, so columns match by position and the file is not checked).
Later formats add fields only as optional ones with such a default, so that
the next field is one more line here. Imports no backend.
"""

import dataclasses
import math
import types
import typing

from stackae.config import (
    SCALE_KINDS,
    FinetuneSpec,
    LayerSpec,
    is_int,
    is_number,
    is_split_size,
)
from stackae.errors import DataError, RunError, first_line

FORMAT = 3  # bumped when an older stackae could misread what this one writes
MANIFEST = "manifest.json"
LOCK = ".stackae.lock"
MAX_INT = 2**63 - 1  # seeds feed stateless RNGs as int64 pairs
STATUSES = ("pretraining", "pretrained", "finetuning", "finetuned")
SPLITS = ("train", "valid", "test")
# Spec fields added after format 1: a manifest may lack them (their default is their old
# meaning); every other spec field was always written, so its absence is damage.
ADDED_SPEC_FIELDS = {"activation", "decoder_activation", "task"}


@dataclasses.dataclass
class DataOptions:
    """How the data was loaded: the options every later verb loads it with again."""

    limit: int | None = None
    valid_size: int | float | None = None
    test_size: int | float | None = None
    label_column: str | int | None = None
    scale: str = "none"
    split_seed: int = 123
    # "random": a seeded split recorded in the run; "tail": format 1's validation rows
    # from the end of a file without splits of its own, and no test split.
    split: str = "random"
    # Whether a CSV's first line was read as its column names (None: not a CSV, or format 2,
    # which decided by its rule each time).
    header: bool | None = None


@dataclasses.dataclass
class Fingerprint:
    """stackae.data.readers.fingerprint of a data file: later verbs refuse a changed file."""

    size: int
    sha256: str
    sampled: bool = False  # hashed by sampled blocks (a large file), not whole
    mtime_ns: int | None = None  # kept to tell, not compared


@dataclasses.dataclass
class DataRecord:
    """What a run records about its data: enough to load the same rows again."""

    name: str
    n_features: int
    path: str | None = None  # absolute (or relative to the run) for a file; None for a name
    origin: str | None = None
    n_classes: int | None = None
    image_shape: tuple[int, int] | tuple[int, int, int] | None = None  # (h, w[, 3 colours])
    shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    options: DataOptions = dataclasses.field(default_factory=DataOptions)
    scaler: dict | None = None  # stackae.data.scaling.Scaler.to_dict(), checked when used
    split: str | None = None  # the run's file of recorded split indices
    target_kind: str = "classes"  # "classes" or "values" (regression targets)
    n_outputs: int | None = None
    # Format 3: a table's feature names, matched by name in the files later verbs read.
    columns: list[str] | None = None
    fingerprint: Fingerprint | None = None  # None: not recorded (a named source, format 2)
    # Format 3: the shape of one example the stack reads, e.g. [28, 28, 1] for a conv stack
    # (None: rows of n_features, as formats 1 and 2 always were).
    input_shape: list[int] | None = None


@dataclasses.dataclass
class LayerProgress:
    units: int  # the layer's size: units, or a conv layer's filters (its kind's `size`)
    # Format 3: the shape of one example the layer reads, e.g. [784] or [28, 28, 1]
    # (absent: a row of the data's width, as every layer of a dense stack reads rows).
    input_shape: list[int] | None = None
    epochs_done: int = 0
    finished: bool = False
    history: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    checkpoint: str | None = None


@dataclasses.dataclass
class FinetuneProgress:
    """One fine-tuning: its spec, progress, checkpoints, early-stopping state and result."""

    spec: FinetuneSpec
    n_classes: int | None = None
    n_outputs: int | None = None
    epochs_done: int = 0
    finished: bool = True  # format 1 wrote finished records only before it had the flag
    seconds: float = 0.0
    history: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    stopper: dict[str, int | float | None] | None = None
    checkpoint: str | None = None
    best_checkpoint: str | None = None
    valid_error: float | None = None
    test_error: float | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    backend: str | None = None
    data: DataRecord | None = None  # the data fine-tuning read, when not the run's own

    def check(self, files, require):
        """The rules that tie the record's fields together (`require(ok, what)` refuses)."""
        require(self.n_classes is None or self.n_classes >= 2, "finetune n_classes")
        require(self.n_outputs is None or self.n_outputs >= 1, "finetune n_outputs")
        require(0 <= self.epochs_done <= self.spec.epochs, "finetune epochs_done")
        require(math.isfinite(self.seconds), "finetune seconds")
        for key in ("valid_error", "test_error"):
            value = getattr(self, key)
            require(value is None or 0 <= value <= 1, f"finetune {key}")
        for key in ("checkpoint", "best_checkpoint"):
            name = getattr(self, key)
            require(name is None or name in files, f"finetune {key}")
        if self.stopper is not None:
            best_epoch, wait = self.stopper.get("best_epoch"), self.stopper.get("wait")
            require(
                set(self.stopper) >= {"best", "best_epoch", "wait"}
                and (
                    best_epoch is None
                    or (is_int(best_epoch) and 0 <= best_epoch < self.spec.epochs)
                )
                and is_int(wait)
                and 0 <= wait <= self.spec.epochs,
                "finetune stopper",
            )


@dataclasses.dataclass
class OutlierThreshold:
    """`stackae pretrain --contamination`: where `stackae score` flags a row as an outlier.

    `threshold`: the reconstruction error above which a row is an outlier,
    fitted on the training split's errors when pretraining ends (None before);
    `contamination`: "auto" or the fraction of training rows above it
    (`stackae.anomaly.threshold`).
    """

    contamination: float | str
    threshold: float | None = None


@dataclasses.dataclass
class Config:
    # Dense specs are written as always (no "kind"); other kinds' with their kind's name
    # (stackae.kinds: `spec_config`), read back by that kind.
    specs: list[LayerSpec]
    seed: int


@dataclasses.dataclass
class Manifest:
    format: int
    tool: str
    created: str
    status: str
    config: Config
    data: DataRecord
    layers: list[LayerProgress]
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    outputs: list[str] = dataclasses.field(default_factory=list)
    # Files about to be written: recorded first, so a run killed mid-write removes only its own.
    pending: list[str] = dataclasses.field(default_factory=list)
    finetune: FinetuneProgress | None = None
    outliers: OutlierThreshold | None = None  # absent: no threshold recorded

    @property
    def backend(self):
        return self.versions.get("backend", "tensorflow")

    @classmethod
    def from_json(cls, raw, where=MANIFEST):
        """The manifest in `raw` (parsed JSON), checked; RunError (one line) otherwise."""
        if not isinstance(raw, dict):
            raise RunError(f"{where}: bad manifest: not a JSON object")
        if raw.get("tool") != "stackae":
            raise RunError(f"{where}: bad manifest: not written by stackae")
        fmt = raw.get("format")
        if not is_int(fmt) or fmt < 1:
            raise RunError(f"{where}: bad manifest: no format number")
        if fmt > FORMAT:
            raise RunError(
                f"{where}: run format {fmt} comes from a newer stackae; "
                f"this one reads up to {FORMAT}"
            )
        manifest = _read(cls, _upgrade(raw), "manifest", where)
        manifest.check(where)
        return manifest

    def to_json(self):
        from stackae.kinds import kind_of

        raw = _plain(dataclasses.asdict(self))
        raw["config"]["specs"] = [
            _plain(kind_of(spec).spec_config(spec)) for spec in self.config.specs
        ]
        return raw

    @property
    def input_shape(self):
        """The shape of one example the stack reads: (n_features,) unless recorded."""
        shape = self.data.input_shape
        return (self.data.n_features,) if shape is None else tuple(shape)

    def check(self, where):
        """The rules that tie fields together (each field's type is checked on reading)."""

        def require(ok, what):
            if not ok:
                raise RunError(f"{where}: bad manifest: {what}")

        require(self.status in STATUSES, f"status is not one of {STATUSES}")
        require(0 <= self.config.seed <= MAX_INT, "seed is not an integer in [0, 2**63)")
        specs = self.config.specs
        require(bool(specs), "no layer specs")
        require(len(self.layers) == len(specs), "layers do not match specs")
        require(all(_plain_name(k) for k in self.files), "file list")
        require(all(_plain_name(k) for k in [*self.outputs, *self.pending]), "outputs")
        from stackae.kinds import kind_of

        for k, (layer, spec) in enumerate(zip(self.layers, specs)):
            require(layer.units == kind_of(spec).size(spec), f"layer {k + 1} units")
            require(
                layer.input_shape is None or min(layer.input_shape, default=0) >= 1,
                f"layer {k + 1} input_shape",
            )
            require(
                0 <= layer.epochs_done <= spec.epochs,
                f"layer {k + 1} epochs_done is not a number of epochs",
            )
            require(math.isfinite(layer.seconds), f"layer {k + 1} seconds")
            require(
                layer.checkpoint is None or layer.checkpoint in self.files,
                f"layer {k + 1} checkpoint",
            )
        data = self.data
        require(data.name != "", "no data name")
        require(1 <= data.n_features <= MAX_INT, "no data width")
        require(
            data.input_shape is None
            or (
                min(data.input_shape, default=0) >= 1
                and math.prod(data.input_shape) == data.n_features
            ),
            "data input_shape is not a shape of the data's width",
        )
        require(data.n_classes is None or data.n_classes >= 1, "n_classes")
        require(data.n_outputs is None or data.n_outputs >= 1, "data n_outputs")
        require(data.target_kind in ("classes", "values"), "data target_kind")
        shape = data.image_shape
        require(
            shape is None or (min(shape) >= 1 and math.prod(shape) == data.n_features),
            "data image_shape is not [height, width(, channels)] of the data's width",
        )
        require(
            all(
                name in SPLITS and len(dims) >= 1 and all(0 <= d <= MAX_INT for d in dims)
                for name, dims in data.shapes.items()
            ),
            "data shapes",
        )
        options = data.options
        require(options.limit is None or 1 <= options.limit <= MAX_INT, "data limit")
        for name in ("valid_size", "test_size"):
            value = getattr(options, name)
            require(value is None or (is_split_size(value) and value <= MAX_INT), f"data {name}")
        require(options.scale in SCALE_KINDS, f"data scale is not one of {SCALE_KINDS}")
        require(0 <= options.split_seed <= MAX_INT, "data split_seed")
        require(options.split in ("random", "tail"), "data options split")
        require(data.split is None or data.split in self.files, "data split file")
        require(
            data.columns is None
            or (
                len(data.columns) == data.n_features and len(set(data.columns)) == len(data.columns)
            ),
            "data columns are not the data's distinct feature names",
        )
        found = data.fingerprint
        require(
            found is None or (found.size >= 0 and len(found.sha256) == 64),
            "data fingerprint",
        )
        if data.scaler is not None:  # a scaler edited into nonsense is refused by every verb
            from stackae.data.scaling import Scaler  # NumPy only: `info` starts no backend

            try:
                Scaler.from_dict(data.scaler, "data.scaler", data.n_features)
            except DataError as err:
                raise RunError(f"{where}: bad manifest: {err}") from None
        if self.finetune is not None:
            self.finetune.check(self.files, require)
        if self.outliers is not None:
            found = self.outliers
            require(
                found.contamination == "auto"
                or (not isinstance(found.contamination, str) and 0 < found.contamination <= 0.5),
                "outliers contamination",
            )
            require(found.threshold is None or found.threshold >= 0, "outliers threshold")


def _upgrade(raw):
    """Format 1 -> the fields of today, with the meaning they had then."""
    if raw.get("format") != 1:
        return raw
    raw = dict(raw)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("options"), dict):
        data = dict(data)
        options = dict(data["options"])
        if isinstance(options.get("scale"), bool):
            # Format 1's --scale: one min and max over every value of every split.
            options["scale"] = "global" if options["scale"] else "none"
        shapes = data.get("shapes")
        if data.get("path") is not None and isinstance(shapes, dict) and "test" not in shapes:
            options["split"] = "tail"  # format 1 split a file without splits only this way
        data["options"] = options
        raw["data"] = data
    tune = raw.get("finetune")
    if isinstance(tune, dict) and "epochs_done" not in tune and "epochs" in tune:
        tune = dict(tune)
        tune["epochs_done"] = tune.pop("epochs")
        raw["finetune"] = tune
    return raw


# ---------------------------------------------------------------- reading typed JSON


class _Bad(Exception):
    def __init__(self, path, what):
        super().__init__(f"{path} {what}")


def _read(cls, value, path, where):
    try:
        return _convert(cls, value, path)
    except _Bad as err:
        raise RunError(f"{where}: bad manifest: {err}") from None


def _convert(tp, value, path):
    """`value` as type `tp` (a dataclass, a typing form, or a plain type), or _Bad."""
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for option in typing.get_args(tp):
            if option is type(None):
                continue
            try:
                return _convert(option, value, path)
            except _Bad:
                pass
        names = " or ".join(_name(t) for t in typing.get_args(tp))
        raise _Bad(path, f"is not {names}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _Bad(path, "is not a list")
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        items = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(items):
            raise _Bad(path, f"is not a list of {len(items)}")
        return tuple(_convert(t, v, f"{path}[{i}]") for i, (t, v) in enumerate(zip(items, value)))
    if origin is dict:
        key, item = typing.get_args(tp)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _Bad(path, "is not an object")
        return {k: _convert(item, v, f"{path}.{k}") for k, v in value.items()}
    if tp is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _Bad(path, "is not an object")
        return value
    if tp is int:
        if not is_int(value) or abs(value) > MAX_INT:
            raise _Bad(path, "is not an integer")
        return value
    if tp is float:
        if not is_number(value):
            raise _Bad(path, "is not a finite number")
        return float(value)
    if tp is type(None):
        if value is not None:
            raise _Bad(path, "is not null")
        return None
    if not isinstance(value, tp):
        raise _Bad(path, f"is not {_name(tp)}")
    return value


def _convert_dataclass(cls, value, path):
    if not isinstance(value, dict):
        raise _Bad(path, "is not an object")
    if cls is Config and isinstance(value, dict) and isinstance(value.get("specs"), list):
        if "seed" not in value:
            raise _Bad(path, "lacks seed")
        return Config(
            specs=[_spec(spec, f"{path}.specs[{i}]") for i, spec in enumerate(value["specs"])],
            seed=_convert(int, value["seed"], f"{path}.seed"),
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    spec = cls in (LayerSpec, FinetuneSpec)
    for field in dataclasses.fields(cls):
        if field.name not in value:
            required = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            )
            if required or (spec and field.name not in ADDED_SPEC_FIELDS):
                raise _Bad(path, f"lacks {field.name}")
            continue  # a field added after the manifest was written: its default is its meaning
        kwargs[field.name] = _convert(hints[field.name], value[field.name], f"{path}.{field.name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # the specs check their own ranges
        raise _Bad(path, f"({first_line(err)})") from None


def _spec(value, path):
    """One layer spec: a LayerSpec as always, or another kind's by its "kind" name."""
    if not isinstance(value, dict) or value.get("kind", "dense") == "dense":
        return _convert_dataclass(LayerSpec, value, path)
    from stackae.kinds import get_kind

    try:
        return get_kind(value["kind"]).spec_from_config(value)
    except (TypeError, ValueError) as err:
        raise _Bad(path, f"({first_line(err)})") from None


def _name(tp):
    return getattr(tp, "__name__", str(tp))


def _plain(value):
    """dataclasses.asdict's output as JSON types (tuples as lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _plain_name(name):
    """A file name inside the run directory, never a path out of it."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MANIFEST, LOCK)
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )
