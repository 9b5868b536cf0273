"""The rows a job reads: a new run's data, a run's own data with its recorded options, split
and scaling, or other rows matched to the run's features; the labels and targets of a split."""

import dataclasses
import math
import os

import numpy as np

from stackae import runs
from stackae.config import DEFAULT_SEED
from stackae.errors import DataError, Param, ParameterError, RunError

DATA_OPTIONS = ("limit", "valid_size", "test_size", "label_column", "scale", "header")
# Options that describe the run's own file, never another: a new file is read whole,
# and its own first line decides its header.
FILE_OPTIONS = ("limit", "header")
# Options that choose the rows of each split.
SPLIT_OPTIONS = ("limit", "valid_size", "test_size", "label_column")
TABLES = (".csv", ".parquet")
CHANGED_HINT = (Param("data_changed_ok"), "reads it as it is now")


def default_source():
    """(name, one-line note) of the data used when none is given."""
    from stackae.data import default_source as find

    return find()


def load_data(source=None, *, loss, split_seed=DEFAULT_SEED, **options):
    """(Data, the options to record) for a new run: scaling fitted, split drawn."""
    from stackae.data import load

    options = {name: options.get(name) for name in DATA_OPTIONS}
    scale = options["scale"]
    options["scale"] = "global" if scale is True else (scale or "none")
    data = load(source, loss=loss, split_seed=split_seed, **options)
    if options["test_size"] is not None and data.split is None:
        raise ParameterError(
            f"{data.name} has a test split of its own;",
            Param("test_size", None),
            "applies to files without one",
            param="test_size",
        )
    options["header"] = data.header
    return data, {**options, "split_seed": split_seed}


def load_run_data(run, source=None, record=None, loss=None, *, changed_ok=False, **given):
    """The data a run's job reads, scaled by the run's recorded scaler.

    Without `source` (or with the run's own file): the data `record` names
    (the run's by default) with its recorded options and split; a split option
    given that differs from a recorded split, or a file whose fingerprint
    changed (unless `changed_ok`), is refused. With `source` (other rows to
    encode or evaluate): that data, read whole unless `limit` is given, split
    with the recorded sizes where none are given. Either way the run's width
    is checked, its features matched by name when both files name their
    columns, and its own scaling applied (another `scale` is refused). `loss`: the loss the
    rows are checked for (default: the first layer's; "squared-error" takes any
    range).
    """
    from stackae.data import check_width, load

    record = record or run.data
    if source is not None and is_source_of(run, record, source):
        source = None  # the run's own file: its recorded options and split apply
    own = source is None
    _check_applicable(run, record, own, given)
    used = options_used(record, given, own)
    changed = used != dataclasses.asdict(record.options)
    scaler = run_scaler(run)
    if scaler is None and not own and run.data.options.scale != "none":
        scaler = load_run_data(run).scaler  # format 1 kept no scaler: fit it as the run did
    split = None
    if own and not changed:
        split = run.split_indices() if record.split else _tail_split(record)
    path = run.resolve_data_path(record)
    if own and path is not None and not changed_ok:
        check_fingerprint(path, record.fingerprint)
    if not own and given.get("label_column") is None and not _is_table(source):
        used["label_column"] = None  # a run's label column names a table's column
    data = load(
        path or record.name if own else source,
        loss=loss or run.specs[0].loss,
        split_seed=used["split_seed"],
        scaler=scaler,
        split=split,
        columns=run.data.columns,
        **{name: used[name] for name in DATA_OPTIONS},
    )
    check_width(data.train.x, run.data.n_features, f"{data.name}")
    check_examples(run, data)
    return data


def is_source_of(run, record, source):
    """Whether `source` (a name or path) is the data `record` names."""
    if not isinstance(source, str | os.PathLike):
        return False
    path = run.resolve_data_path(record)
    if path is None:
        return os.fspath(source) == record.name
    return os.path.abspath(source) == os.path.abspath(path)


def _is_table(source):
    """A CSV or Parquet path, or a DataFrame: what a label column can name a column of."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source).lower().endswith(TABLES)
    return hasattr(source, "columns")


def _check_applicable(run, record, own, given):
    """Refuse options that cannot apply to the run's data (ParameterError, one line).

    The run's own scaling is applied to every row it reads, so another --scale
    is refused. The run's own rows keep their recorded split: another split
    would test on rows the run trained on. A source with its own test split
    takes no --test-size.
    """
    scale = given.get("scale")
    if scale is not None:
        scale = "global" if scale is True else ("none" if scale is False else scale)
        if scale != record.options.scale:
            raise ParameterError(
                f"{scale}: {run.path} scales its data as it recorded "
                f"({record.options.scale}); every verb applies the run's own scaling",
                param="scale",
            )
    if not own:
        return
    recorded = dataclasses.asdict(record.options)
    for name in SPLIT_OPTIONS:
        value = given.get(name)
        if value is None or value == recorded[name] or str(value) == str(recorded[name]):
            continue
        if record.split is not None or record.options.split == "tail":
            raise ParameterError(
                f"{value}: {run.path} has a recorded split of its data "
                f"({name} {recorded[name]}); another would test on rows it trained on. "
                "Give other rows as",
                Param("data", "FILE"),
                param=name,
            )
        if name in ("test_size", "label_column"):
            raise ParameterError(
                f"{value}: {record.name} has splits and labels of its own;",
                Param(name, None),
                "applies to files without them",
                param=name,
            )


def check_fingerprint(path, recorded, hint=CHANGED_HINT):
    """DataError (one line) if the file at `path` is not the one a run recorded."""
    if recorded is None or not os.path.exists(path):
        return  # not recorded (a format 2 run), or a missing file the reader names
    from stackae.data.readers import fingerprint

    now = fingerprint(path)
    if now["size"] != recorded.size:
        what = f"{recorded.size} bytes then, {now['size']} now"
    elif now["sha256"] != recorded.sha256:
        what = "same size, other contents"
    else:
        return
    raise DataError(
        f"{path}: the file changed since the run read it ({what}): its rows are not the "
        "run's rows, nor its split;",
        *hint,
    )


def options_used(record, given, own=True):
    """The data options a job reads with: `record`'s, replaced by those `given` (not None).

    For another file (`own` False), the options that describe the run's own
    file (its --limit, its header) do not carry over.
    """
    options = dataclasses.asdict(record.options)
    if not own:
        options.update(dict.fromkeys(FILE_OPTIONS))
    options.update({name: value for name, value in given.items() if value is not None})
    return options


def _tail_split(record):
    """Format 1's split of a file without splits: validation rows from the end, no test."""
    if record.options.split != "tail":
        return None
    n_train = record.shapes["train"][0]
    n_valid = record.shapes.get("valid", [0])[0]
    split = {"train": np.arange(n_train), "valid": np.arange(n_train, n_train + n_valid)}
    split["test"] = np.arange(0)
    return split


def load_rows(run, source, *, limit=None, header=None, loss=None, label_column=None):
    """Every row of `source` (its first `limit`), unsplit, scaled and matched as the run's.

    The run's own `limit` and split describe the run's data, not these rows:
    a file is read whole unless `limit` is given. `loss`: the loss the rows are
    checked for (default: the first layer's; "squared-error" takes any range).
    `label_column`: the table's label column, if not the run's.
    """
    from stackae.data import check_width, load

    scaler = run_scaler(run)
    if scaler is None and run.data.options.scale != "none":
        scaler = load_run_data(run).scaler  # format 1 kept no scaler: fit it as the run did
    label = run.data.options.label_column if label_column is None else label_column
    data = load(
        source,
        loss=loss or run.specs[0].loss,
        limit=limit,
        valid_size=0,
        test_size=0,
        label_column=label if _is_table(source) else None,
        scaler=scaler,
        columns=run.data.columns,
        header=header,
    )
    check_width(data.train.x, run.data.n_features, f"{data.name}")
    check_examples(run, data)
    return data


def run_scaler(run):
    """The run's recorded Scaler, or None."""
    if run.data.scaler is None:
        return None
    from stackae.data.scaling import Scaler

    where = f"{run.file(runs.MANIFEST)}: data.scaler"
    return Scaler.from_dict(run.data.scaler, where, run.data.n_features)


def targets(split, name):
    """(x, y) of a split with real-valued targets (float32, finite)."""
    if split is None or split.y is None:
        raise RunError(f"{name}: the data has no targets")
    y = np.asarray(split.y, dtype=np.float32)
    if not np.all(np.isfinite(y)):
        raise RunError(f"{name}: targets hold NaN or infinite values")
    return split.x, y


def labelled(split, name, n_classes):
    from stackae.data import check_labels

    if split is None or split.y is None:
        raise RunError(f"{name}: the data has no labels")
    check_labels(split.y, n_classes, name)
    return split.x, split.y


def input_shape_of(specs, data):
    """The shape of one example a stack of `specs` reads from `data`: rows of its width, or
    (height, width, channels) images (1 channel, or 3 for colour) where the first layer's kind
    takes images; DataError (one line) for a table under a conv layer."""
    from stackae.kinds import kind_of

    kind = kind_of(specs[0])
    if kind.input_rank == 1:
        return (data.n_features,)
    shape = data.image_shape
    if kind.input_rank == 3 and shape is not None and math.prod(shape) == data.n_features:
        return (*shape, 1) if len(shape) == 2 else tuple(shape)
    raise DataError(
        f"{data.name}: a {kind.name} first layer needs images (MNIST, Fashion-MNIST, an IDX "
        f"folder, .npz/.npy images (n, h, w[, 1 or 3])); this is a table of {data.n_features} "
        "features"
    )


def check_examples(run, data):
    """DataError (one line) unless a run that reads images is given images of its shape.

    A table (or a flat array) of the right width is not images: a conv run refuses it.
    """
    shape = run.input_shape
    if len(shape) == 1:
        return
    found = input_shape_of(run.specs, data)  # refuses a table under a conv layer
    if tuple(found) != tuple(shape):
        raise DataError(
            f"{data.name}: the run reads {'x'.join(map(str, shape))} images; "
            f"these are {'x'.join(map(str, found))}"
        )
