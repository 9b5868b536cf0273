"""pretrain / finetune / evaluate / encode / pictures of a run, as library calls.

Each job checks everything it can before it writes anything, takes the run's
lock before it reads a run it will change (and before a backend starts, so a
second process is refused at once), and leaves the run resumable if it is
stopped at any point. Importing this module imports no backend: the command
line is a thin shell over these functions, and `stackae --help` stays instant.
"""

import contextlib
import dataclasses
import math
import os
import shlex
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from stackae import backend, runs, stopping
from stackae.config import (
    DEFAULT_SEED,
    FINETUNE_DEFAULTS,
    PREDICT_BATCH,
    LayerSpec,
    check_noise,
    layer_specs,
    layer_token,
)
from stackae.errors import (
    BackendError,
    CheckpointError,
    DataError,
    OptionConflict,
    Param,
    ParameterError,
    RunError,
    first_line,
)
from stackae.files import atomic_write, refuse_existing
from stackae.runs import Run

# ---------------------------------------------------------------- data

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
    if source is not None and _is_source_of(run, record, source):
        source = None  # the run's own file: its recorded options and split apply
    own = source is None
    _check_applicable(run, record, own, given)
    used = _options_used(record, given, own)
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


def _is_source_of(run, record, source):
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


def _options_used(record, given, own=True):
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


# ---------------------------------------------------------------- opening runs


def open_run(path, write=False):
    """An existing run, checked; with `write`, locked before its manifest is read."""
    return Run.open(path, write=write)


def load_stack(run):
    from stackae.stack import Stack

    stack = run.load_model(runs.STACK)
    if not isinstance(stack, Stack):
        raise RunError(f"{run.file(runs.STACK)}: not a stackae stack")
    if list(stack.specs) != list(run.specs):
        raise RunError(
            f"{run.file(runs.STACK)}: its layer settings differ from the manifest's "
            "(was the manifest edited?)"
        )
    return stack


def stop_hint(verb, path):
    """What is true of the run at `path` now that `verb` was stopped: a command, or None."""
    try:
        run = Run.open(path, verify=False)
    except RunError:
        return None
    quoted = shlex.quote(str(path))
    if verb == "pretrain" and run.status == "pretraining":
        return f"stackae pretrain --resume --out {quoted}"
    record = run.finetune
    if verb == "finetune" and record is not None and not record.finished:
        return f"stackae finetune {quoted} --resume"
    return None


def _check_backend_matches(recorded, what):
    import keras

    current = keras.backend.backend()
    if recorded != current:
        raise BackendError(
            f"{what} was made under {recorded} and this is {current}: another backend draws "
            f"other batches and noise, so the result would differ; resume it with "
            f"KERAS_BACKEND={recorded}"
        )


def _conflicts(found, what):
    if found:
        raise OptionConflict(
            Param("resume"),
            f"continues the recorded {what}; these options differ from it: " + "; ".join(found),
        )


# ---------------------------------------------------------------- pretraining


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


def as_input(x, shape):
    """Rows `x` as examples of `shape` (a view: images keep their pixels' order)."""
    if len(shape) == 1:
        return x
    if not isinstance(x, np.ndarray):  # rows converted as they are read: in memory here
        x = np.asarray(x[:])
    elif isinstance(x, np.memmap):  # images are read in memory (pages of the file, no copy)
        x = np.asarray(x)
    return x.reshape(len(x), *shape)


def check_pretraining(specs, data, tensorboard=False):
    """Everything that can refuse a new pretraining before anything is written."""
    from stackae.data import check_batch, memory

    for k, spec in enumerate(specs):
        check_optimizer(spec)
        check_batch(len(data.train.x), spec.batch_size, f"{data.name}: layer {k + 1}")
    held = [s.x for s in (data.train, data.valid) if s is not None]
    memory.check_training(
        len(data.train.x),
        layer_sizes(specs, input_shape_of(specs, data)),
        [spec.batch_size for spec in specs],
        # Rows held in memory are copied once by the training pipeline; a memmap streams.
        sum(x.nbytes for x in held if type(x) is np.ndarray),
    )
    if tensorboard:
        _check_tensorboard()


def layer_sizes(specs, input_shape):
    """Values per example: the input's, then each layer's code (its kind's `estimates`)."""
    from stackae.kinds import kind_of

    sizes, shape = [int(np.prod(input_shape))], tuple(input_shape)
    for spec in specs:
        kind = kind_of(spec)
        if kind.input_rank == 1:
            shape = (int(np.prod(shape)),)  # a dense layer above images reads them flattened
        sizes.append(int(kind.estimates(spec, shape)["code_size"]))
        shape = tuple(kind.output_shape(spec, shape))
    return sizes


def layer_costs(specs, input_shape):
    """Multiply-adds of one example's encoding, per layer (its kind's `estimates`)."""
    from stackae.kinds import kind_of

    costs, shape = [], tuple(input_shape)
    for spec in specs:
        kind = kind_of(spec)
        if kind.input_rank == 1:
            shape = (int(np.prod(shape)),)
        costs.append(int(kind.estimates(spec, shape)["multiply_adds"]))
        shape = tuple(kind.output_shape(spec, shape))
    return costs


def check_optimizer(spec):
    """ParameterError (a usage error) for an optimizer name Keras does not know."""
    spec.make_optimizer()


def new_run(
    out, data, specs, *, seed=DEFAULT_SEED, overwrite=False, data_options=None, tensorboard=False
):
    """Check, then create the run directory with its manifest and the untrained stack."""
    import keras

    from stackae.stack import Stack

    check_pretraining(specs, data, tensorboard)
    keras.utils.set_random_seed(seed)  # the initial weights of every layer follow from the seed
    stack = Stack(specs, seed=seed)
    shape = input_shape_of(specs, data)
    stack.build((None, *shape))
    run = Run.create(
        out,
        specs=specs,
        seed=seed,
        data=data,
        data_options=data_options,
        overwrite=overwrite,
        input_shapes=stack.example_shapes,
    )
    run.save_model(stack, runs.STACK)
    return run, stack


def pretrain_run(run, stack, data, *, verbose="auto", tensorboard=False, callbacks=()):
    """Pretrain every unfinished layer of the run's stack, checkpointing each epoch.

    `callbacks`: more Keras callbacks for every layer, run before the checkpoint.
    """
    import keras

    from stackae import export
    from stackae.callbacks import (
        Banner,
        DivergenceGuard,
        FilterImages,
        LayerCheckpoint,
        StopOnRequest,
    )
    from stackae.data import check_width
    from stackae.stack import pretrain

    extra = list(callbacks)
    check_width(data.train.x, run.data.n_features, "training data")
    run.lock()
    point = run.resume_point()
    run.remove_pending()
    if point is not None:
        start, first_epoch, checkpoint = point
        run.claim(  # a user's file where a checkpoint goes is refused before training
            runs.STACK,
            runs.ENCODER,
            *(
                run.layer_checkpoint(k, epoch)
                for k in range(start, run.n_layers)
                for epoch in range(1, run.specs[k].epochs + 1)
            ),
        )
        if tensorboard:
            _check_tensorboard()
        n_layers = run.n_layers

        def layer_callbacks(k):
            spec = stack.specs[k]
            n_in = "x".join(map(str, stack.example_shapes[k]))  # 784, or 28x28x1 for images
            restore = checkpoint if k == start else None
            text = (
                f"layer {k + 1}/{n_layers}: {n_in} -> {layer_token(spec)}, "
                f"{spec.noise} {spec.corruption:g}, {spec.epochs} epochs"
            )
            if restore is not None:
                text += f" (resumed after epoch {first_epoch})"
            left = _pretraining_left(run, run.input_shape)
            if left is not None and left >= 60:  # shorter jobs need no forecast
                text += f"; about {left / 60:.0f} min of pretraining left"
            found = [
                StopOnRequest(),
                Banner(text),
                DivergenceGuard(f"layer {k + 1}"),
                *extra,
                LayerCheckpoint(run, k, restore=restore),
            ]
            if tensorboard and rows:
                logdir = run.output_dir("tensorboard") / f"layer_{k + 1}"
                found.append(keras.callbacks.TensorBoard(str(logdir)))
                image_shape = data.image_shape if k == 0 else None  # layer 1 reads pixels
                found.append(FilterImages(logdir / "filters", image_shape))
            return found

        shape = run.input_shape
        rows = len(shape) == 1  # a stack of rows draws its filters on TensorBoard
        pretrain(
            stack,
            as_input(data.train.x, shape),
            as_input(data.valid.x, shape) if data.valid is not None else None,
            callbacks=layer_callbacks,
            verbose=verbose,
            start_layer=start,
            initial_epoch=first_epoch,
            on_layer_end=lambda k, autoencoder, history: run.finish_layer(k, stack),
        )
    if run.status == "pretraining":
        run.save_model(export.encoder(stack, scaler=data.scaler), runs.ENCODER)
        if run.outliers is not None:  # pretrain --contamination: the training split's threshold
            from stackae.anomaly import fit_run_threshold

            fit_run_threshold(run, stack, as_input(data.train.x, run.input_shape))
        run.set_status("pretrained")
    return run


def _pretraining_left(run, input_shape):
    """Seconds of pretraining left, from the finished epochs' pace (None before any epoch).

    An epoch of layer k costs about its encoding's multiply-adds per row (its
    kind's `estimates`: n_in(k) x units(k) for a dense layer), so the pace
    measured so far, per unit of that, predicts the rest.
    """
    cost = layer_costs(run.specs, input_shape)
    states = [run.layer(k) for k in range(run.n_layers)]
    spent = sum(state.seconds for state in states)
    work_done = sum(state.epochs_done * c for state, c in zip(states, cost))
    if not work_done or not spent:
        return None
    work_left = sum(
        (spec.epochs - state.epochs_done) * c for spec, state, c in zip(run.specs, states, cost)
    )
    return spent / work_done * work_left


def _check_tensorboard():
    import importlib.util

    import keras

    if keras.backend.backend() != "tensorflow":
        raise BackendError(
            Param("tensorboard"),
            f"needs the TensorFlow backend; this is {keras.backend.backend()}",
        )
    if importlib.util.find_spec("tensorboard") is None:
        raise BackendError(
            Param("tensorboard"), "needs the tensorboard package: pip install tensorboard"
        )


@contextlib.contextmanager
def worker_scratch(out, resume, chief):
    """Where this process writes: `out` on the chief, a scratch copy on other workers.

    Workers of a MultiWorkerMirroredStrategy must make the same saves as the
    chief (saving runs collective ops), so each writes into a scratch folder of
    its own, removed at the end, and nothing they write can collide.
    """
    if chief:
        yield out
        return
    folder = Path(tempfile.mkdtemp(prefix="stackae-worker-"))
    scratch = folder / "run"
    try:
        if resume:
            shutil.copytree(out, scratch, ignore=shutil.ignore_patterns(runs.LOCK))
        yield str(scratch)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def pretrain_job(
    out,
    specs=None,
    *,
    data=None,
    data_options=None,
    seed=DEFAULT_SEED,
    resume=False,
    overwrite=False,
    given=None,
    strategy="auto",
    tensorboard=False,
    verbose="auto",
    quiet_backend=True,
    on_data=None,
    callbacks=(),
    data_changed_ok=False,
    contamination=None,
):
    """Pretrain a new run in `out` (or `resume` the one there), under a distribution strategy.

    `strategy` is a name from stackae.config.STRATEGIES or a strategy made
    by `stackae.distribute.get_strategy`. `data` is a source name or path
    (None: the default source) and `data_options` its load options.
    With `resume`, `given` holds the options a user gave explicitly
    (`layers`, `seed`, LayerSpec fields, data options): any that differ from
    the recorded run raise OptionConflict before anything starts; `specs`,
    `seed` and the data are the recorded ones. `on_data(Data)` is called once
    the data is loaded and checked, before training (the CLI prints a line
    there); `callbacks` go to every layer's `fit`. `data_changed_ok`: resume
    even if the run's data file changed since it was read. `contamination` ("auto"
    or a fraction in (0, 0.5]): record the reconstruction error above which a row
    is an outlier, fitted on the training split when pretraining ends
    (`stackae.anomaly`; `stackae score` flags rows with it).
    Returns the Run (on a non-chief worker, None: the chief's run is the result).
    """
    options = dict(data_options or {})
    if contamination is not None:
        from stackae.anomaly import check_contamination

        try:
            contamination = check_contamination(contamination)
        except ValueError as err:
            raise ParameterError(str(err), param="contamination") from None
    run = None
    if resume:  # the lock first: a second process is refused before a backend starts
        run = open_run(out, write=True)
        given = dict(given or {})
        data_given = {name: given.pop(name, None) for name in DATA_OPTIONS}
        _conflicts(
            run.resume_conflicts(**given)
            + run.data_conflicts(run.data, data, **(data_given | options))
            + _outlier_conflicts(run, contamination),
            "run",
        )
    elif Run.check_replaceable(out, overwrite) is not None:
        Run.open(out, write=True, verify=False)  # refused at once if another process holds it
    if strategy is None or isinstance(strategy, str):
        strategy = backend.start(verbose=not quiet_backend, strategy=strategy or "auto")
    stopping.check()
    from stackae.distribute import is_chief

    if resume:
        _check_backend_matches(run.backend, str(out))
    with worker_scratch(out, resume, is_chief(strategy)) as where:
        with strategy_scope(strategy):
            if resume:
                if where != out:
                    run = open_run(where, write=True)
                stack = load_stack(run)
                loaded = load_run_data(run, changed_ok=data_changed_ok)
            else:
                # The defaults for the data's scaling (a linear first decoder for
                # standardised features), as the command line and the estimators.
                specs = specs or layer_specs((LayerSpec().units,), scale=options.get("scale"))
                loaded, recorded = load_data(data, loss=specs[0].loss, **options)
                stopping.check()
                run, stack = new_run(
                    where,
                    loaded,
                    specs,
                    seed=seed,
                    overwrite=overwrite,
                    data_options=recorded,
                    tensorboard=tensorboard,
                )
                if contamination is not None:
                    run.record_outliers(contamination)
            if on_data is not None:
                on_data(loaded)
            pretrain_run(
                run, stack, loaded, verbose=verbose, tensorboard=tensorboard, callbacks=callbacks
            )
        if where != out:
            run.unlock()
            return None
    return run


def _outlier_conflicts(run, contamination):
    recorded = run.outliers
    if contamination is None or (recorded and recorded.contamination == contamination):
        return []
    return [f"contamination {recorded.contamination if recorded else None} (given {contamination})"]


def strategy_scope(strategy):
    """The strategy's scope (tf.distribute), or no scope where there is none (JAX)."""
    scope = getattr(strategy, "scope", None)
    return scope() if scope is not None else contextlib.nullcontext()


# ---------------------------------------------------------------- fine-tuning


def labelled(split, name, n_classes):
    from stackae.data import check_labels

    if split is None or split.y is None:
        raise RunError(f"{name}: the data has no labels")
    check_labels(split.y, n_classes, name)
    return split.x, split.y


# A softmax over more classes than this is refused when most of them never occur.
MANY_CLASSES = 1000


def check_classes(data, n_classes):
    """DataError (one line) for labels that are no small set of classes 0..K-1.

    The classifier has one output per class from 0 to the largest label: labels
    0 and 1000000000 would make a billion-class softmax for two classes.
    """
    found = [s.y for s in (data.train, data.valid, data.test) if s is not None and s.y is not None]
    if not found or n_classes is None or n_classes <= MANY_CLASSES:
        return
    distinct = len(np.unique(np.concatenate([np.asarray(y).reshape(-1) for y in found])))
    if n_classes > 2 * distinct:
        raise DataError(
            f"{data.name}: labels run from 0 to {n_classes - 1}, {n_classes} classes of which "
            f"only {distinct} occur: not a small set of classes; number the classes 0 to "
            f"{distinct - 1}, or fine-tune a quantity with",
            Param("task", "regression"),
        )


def finetune_job(
    run_dir,
    spec=None,
    *,
    data=None,
    data_options=None,
    given=None,
    resume=False,
    overwrite=False,
    strategy="auto",
    verbose="auto",
    quiet_backend=True,
    on_start=None,
    data_changed_ok=False,
):
    """Fine-tune a pretrained run with labels: the checks, the lock, the data, the training.

    A finished or interrupted fine-tuning is started again only with
    `overwrite`; `resume` continues an interrupted one with its recorded
    settings and data, and `given` (the FinetuneSpec fields and data options
    a user gave explicitly) must agree with them (OptionConflict otherwise).
    `on_start(run)` is called once the run is locked and checked.
    `data_changed_ok`: use the run's data file even if it changed since it was read.
    Returns the run's fine-tuning record.
    """
    spec = spec or FINETUNE_DEFAULTS
    run = open_run(run_dir, write=True)
    run.check_finetune(resume, overwrite)
    options = dict(data_options or {})
    record = run.finetune
    if resume:
        given = dict(given or {})
        data_given = {name: given.pop(name, None) for name in DATA_OPTIONS}
        _conflicts(
            run.finetune_conflicts(**given)
            + run.data_conflicts(run.finetune_data, data, **(data_given | options)),
            "fine-tuning",
        )
        spec = record.spec
    if on_start is not None:
        on_start(run)
    chosen = strategy
    if strategy is None or isinstance(strategy, str):
        chosen = backend.start(verbose=not quiet_backend, strategy=strategy or "auto")
    stopping.check()
    check_optimizer(spec)
    if resume:
        _check_backend_matches(record.backend or run.backend, f"{run.path}'s fine-tuning")
        loaded = load_run_data(run, record=run.finetune_data, changed_ok=data_changed_ok)
        data_record = record.data
    else:
        if data is not None and _is_source_of(run, run.data, data):
            data = None  # the run's own file
        loaded = load_run_data(run, data, changed_ok=data_changed_ok, **options)
        data_record = None  # the run's own data, as recorded
        if data is not None or any(value is not None for value in options.values()):
            # Other data, or other options: recorded with the fine-tuning, so that
            # --resume and evaluate read the same rows.
            used = _options_used(run.data, options, own=data is None)
            data_record = run.data_record(loaded, used | {"header": loaded.header})
    with strategy_scope(chosen):
        return finetune_run(
            run, loaded, spec, resume=resume, verbose=verbose, data_record=data_record
        )


def finetune_run(
    run, data, spec=FINETUNE_DEFAULTS, *, resume=False, verbose="auto", data_record=None
):
    """Export the classifier (or regressor), fine-tune it (checkpointed), save it.

    The run must be one `finetune_job` (or a caller) has checked with
    `run.check_finetune`. A checkpoint writes the trainer's weights and
    optimizer state, the early stopping's state and (when they change) the
    best weights into the run, after the first and the last epoch and in
    between on a time budget (`callbacks.FinetuneCheckpoint`: tiny epochs do
    not pay one each). With `resume`, an interrupted fine-tuning
    continues after its last finished epoch and ends with the classifier an
    uninterrupted one ends with. Returns the run's fine-tuning record.
    """
    import keras

    from stackae import export
    from stackae.callbacks import (
        Banner,
        DivergenceGuard,
        FinetuneCheckpoint,
        StopOnRequest,
        restore_checkpoint,
    )
    from stackae.data import check_batch, check_width
    from stackae.data.scaling import Scaler
    from stackae.finetuning import (
        error_rate,
        finetune,
        make_early_stopping,
        make_finetuner,
        regression_metrics,
    )

    run.lock()
    stack = load_stack(run)
    record = run.finetune
    if resume:
        if record is None or record.finished:
            raise RunError(f"{run.path}: no interrupted fine-tuning to resume")
        spec = record.spec
    regression = spec.task == "regression"
    check_width(data.train.x, run.data.n_features, "training data")
    if regression:
        train = targets(data.train, "training data")
        n_classes, n_outputs = None, int(np.prod(train[1].shape[1:], dtype=int))
        valid = targets(data.valid, "validation data") if data.valid is not None else None
    else:
        n_classes = record.n_classes if resume else (data.n_classes or run.data.n_classes)
        if not resume:
            check_classes(data, n_classes)
        n_outputs = None
        train = labelled(data.train, "training data", n_classes)
        valid = (
            labelled(data.valid, "validation data", n_classes) if data.valid is not None else None
        )
    train = (as_input(train[0], run.input_shape), train[1])
    if valid is not None:
        valid = (as_input(valid[0], run.input_shape), valid[1])
    check_batch(len(train[0]), spec.batch_size, "training data")
    check_optimizer(spec)
    run.claim(  # a user's file where a checkpoint goes is refused before training
        runs.REGRESSOR if regression else runs.CLASSIFIER,
        *(
            f"finetune_{kind}_{epoch}.{ext}"
            for epoch in range(1, spec.epochs + 1)
            for kind, ext in (("epoch", "weights.h5"), ("best", "npz"))
        ),
    )
    keras.utils.set_random_seed(run.seed)
    if regression:
        model = export.regressor(
            stack,
            n_outputs,
            dropout=spec.dropout,
            input_dropout=spec.input_dropout,
            # Standardised targets: their mean and spread (1 where constant).
            target_scaler=Scaler.fit("standard", train[1].reshape(len(train[1]), -1)),
        )
    else:
        model = export.classifier(
            stack, n_classes, dropout=spec.dropout, input_dropout=spec.input_dropout
        )
    finetuner = make_finetuner(model, spec, seed=run.seed)
    finetuner.build((None, *run.input_shape))  # a checkpoint loads into built models only
    stopper = make_early_stopping(spec) if valid is not None else None
    first_epoch, restore = 0, None
    if resume:
        first_epoch = record.epochs_done
        restore = run.checked_file(record.checkpoint) if record.checkpoint else None
        if stopper is not None and record.stopper is not None:
            stopper.set_state(record.stopper)
            if record.best_checkpoint:
                stopper.best_weights = _load_arrays(
                    run.checked_file(record.best_checkpoint), model.get_weights()
                )
        run.remove_pending()  # after the checks: a refused resume changes no file
    else:
        run.start_finetune(
            spec, n_classes, n_outputs, backend=keras.backend.backend(), data=data_record
        )
    stopped = stopper is not None and stopper.wait >= spec.patience
    if first_epoch < spec.epochs and not stopped:
        top = n_outputs if regression else n_classes
        sizes = "-".join(
            str(n) for n in [run.data.n_features, *(layer_token(s) for s in stack.specs), top]
        )
        text = f"fine-tuning {sizes}: at most {spec.epochs} epochs, patience {spec.patience}"
        if regression:
            text = "regression " + text
        if first_epoch:
            text += f" (resumed after epoch {first_epoch})"
        callbacks = [
            StopOnRequest(),
            Banner(text),
            DivergenceGuard("fine-tuning"),
            FinetuneCheckpoint(run, stopper, restore=restore),
        ]
        finetune(
            model,
            train,
            valid,
            spec,
            callbacks=callbacks,
            verbose=verbose,
            initial_epoch=first_epoch,
            finetuner=finetuner,
            early_stopping=stopper,
        )
    else:  # killed after its last epoch was recorded: only the ending is left
        if restore is not None:
            restore_checkpoint(finetuner, restore)
        if stopper is not None and stopper.best_weights is not None:
            model.set_weights(stopper.best_weights)
    test = None
    if data.test is not None and data.test.y is not None:
        test = targets(data.test, "test data") if regression else data.test
    metrics, valid_error, test_error = {}, None, None
    if regression:
        if test is not None:
            test = (as_input(test[0], run.input_shape), test[1])
        for name, split in (("valid", valid), ("test", test)):
            if split is not None:
                found = regression_metrics(model, *split)
                metrics |= {f"{name}_{key}": value for key, value in found.items()}
    else:
        valid_error = error_rate(model, *valid) if valid else None
        if test is not None:
            x, y = labelled(test, "test data", n_classes)
            test_error = error_rate(model, as_input(x, run.input_shape), y)
    # The saved model takes raw features: the run's scaling goes first.
    run.finish_finetune(
        export.with_scaling(model, run_scaler(run)), valid_error, test_error, metrics
    )
    return run.finetune


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


def _load_arrays(path, like):
    """The arrays of an .npz of weights this run wrote (in order), shaped as `like`.

    The archive's declared sizes are checked against the model's weights before
    anything is inflated: an edited file cannot make this read gigabytes.
    """
    expected = {f"arr_{i}.npy": np.asarray(w).nbytes for i, w in enumerate(like)}
    try:
        with zipfile.ZipFile(path) as archive:
            declared = {info.filename: info.file_size for info in archive.infolist()}
        fits = declared.keys() == expected.keys() and all(
            declared[name] <= expected[name] + 4096
            for name in expected  # + the .npy header
        )
        if fits:
            with np.load(path, allow_pickle=False) as saved:
                arrays = [saved[f"arr_{i}"] for i in range(len(expected))]
    except Exception as err:  # zipfile and numpy raise many kinds for a damaged archive
        raise CheckpointError(f"{path}: damaged checkpoint ({first_line(err)})") from None
    if not fits or [a.shape for a in arrays] != [np.shape(w) for w in like]:
        raise CheckpointError(f"{path}: its weights do not fit the run's classifier")
    return arrays


# ---------------------------------------------------------------- evaluate, encode, pictures


def evaluate_job(
    run_dir, data=None, *, data_options=None, quiet_backend=True, data_changed_ok=False
):
    """Open the run, start the backend, evaluate on its test split (or the data given).

    It changes nothing, so a stop request (Ctrl-C, SIGTERM) stops it where it lands.
    """
    with stopping.at_once():
        run = open_run(run_dir)
        backend.start(verbose=not quiet_backend)
        stopping.check()
        record = run.finetune_data if data is None else run.data
        loaded = load_run_data(
            run, data, record=record, changed_ok=data_changed_ok, **(data_options or {})
        )
        stopping.check()
        return evaluate_run(run, loaded)


def evaluate_run(run, data):
    """Test error and confusion counts of the classifier, reconstruction cost of each layer.

    Computed on the test split; data without one is evaluated on its validation
    rows, else its training rows, and `split` ("test", "valid", "train") says
    which: a figure of rows the model trained or chose its epoch on is no test figure.
    """
    from stackae import export
    from stackae.data import batches, check_width
    from stackae.finetuning import confusion_counts, error_rate, regression_metrics
    from stackae.stack import layer_codes

    stack = load_stack(run)
    name = "test" if data.test is not None else "valid" if data.valid is not None else "train"
    split = {"test": data.test, "valid": data.valid, "train": data.train}[name]
    check_width(split.x, run.data.n_features, "evaluation data")
    result = {"rows": int(len(split.x)), "split": name, "reconstruction": []}
    codes = as_input(split.x, run.input_shape)
    for k, layer in enumerate(stack.encoder_layers):
        autoencoder = stack.autoencoder(k)
        autoencoder.compile()
        cost = autoencoder.evaluate(batches(codes, PREDICT_BATCH), verbose=0, return_dict=True)
        result["reconstruction"].append(float(cost["loss"]))
        if k + 1 < len(stack.encoder_layers):
            codes = stack.layer_input(k + 1, layer_codes(layer, codes))  # one layer up
    record = run.finetune
    if run.model_file in run.files and record is not None and record.finished:
        if split.y is not None:
            # The saved model takes raw features; these rows are scaled already.
            model = export.on_scaled_rows(run.load_model(run.model_file))
            if record.spec.task == "regression":
                x, y = targets(split, "evaluation data")
                result["regression"] = regression_metrics(model, as_input(x, run.input_shape), y)
            else:
                n_classes = model.output_shape[-1]
                x, y = labelled(split, "evaluation data", n_classes)
                x = as_input(x, run.input_shape)
                result["error"] = error_rate(model, x, y)
                result["confusion"] = confusion_counts(model, x, y, n_classes).tolist()
    return result


def _check_layer(layer, n_layers):
    if not 1 <= layer <= n_layers:
        raise ParameterError(
            f"`layer` must be between 1 and {n_layers}. Received: layer={layer}", param="layer"
        )


def encode_run(run, x, layer=None):
    """Codes of `x` after `layer` layers (all by default), as a float32 array."""
    from stackae.data import check_width

    stack = load_stack(run)
    check_width(x, run.data.n_features, "data")
    depth = len(stack.specs) if layer is None else layer
    _check_layer(depth, len(stack.specs))
    codes = stack.codes(as_input(x, run.input_shape), depth)
    return codes.reshape(len(codes), -1)  # rows: a conv layer's feature maps flattened


def encode_job(
    run,
    data,
    out_path,
    layer=None,
    overwrite=False,
    *,
    limit=None,
    header=None,
    quiet_backend=True,
):
    """Write the codes of every split of `data` (and its labels) to an .npz; returns its arrays.

    `run` is a Run or a run directory, `data` a loaded Data or a source to load
    with `load_rows` (every row, or its first `limit`). A stop request (Ctrl-C,
    SIGTERM) stops it where it lands: the file is written atomically, whole or
    not at all.
    """
    with stopping.at_once():
        return _encode_job(run, data, out_path, layer, overwrite, limit, header, quiet_backend)


def _encode_job(run, data, out_path, layer, overwrite, limit, header, quiet_backend):
    refuse_existing(out_path, overwrite)
    if not isinstance(run, Run):
        run = open_run(run)
        run.refuse_output(out_path)
        backend.start(verbose=not quiet_backend)
    run.refuse_output(out_path)
    if not hasattr(data, "train"):
        data = load_rows(run, data, limit=limit, header=header)
    if layer is not None:
        _check_layer(layer, run.n_layers)  # before any row is read
    arrays = {}
    for name, split in (("train", data.train), ("valid", data.valid), ("test", data.test)):
        if split is not None:
            arrays[name] = encode_run(run, split.x, layer)
            if split.y is not None:
                arrays[f"y_{name}"] = split.y
            stopping.check()
    atomic_write(out_path, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")
    return arrays


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


def _write_picture(run, image, out_path, default, overwrite):
    """Write `image` to `out_path`, else to `default` inside the run; never clobbers.

    A picture inside the run is the run's own output (written under the run's
    lock, recorded, replaceable); an `out_path` that exists is replaced only
    with `overwrite`. Returns the path.
    """
    from stackae.images import save_png

    if out_path is None:
        refuse_existing(run.file(default), overwrite, owned=run.owns(default))
        _lock_for_picture(run)
        return run.write_output(
            default, lambda tmp: save_png(image, tmp), suffix=".png", replace=overwrite
        )
    refuse_existing(out_path, overwrite)
    run.refuse_output(out_path)
    return save_png(image, Path(out_path))


def _open_for_picture(run, out_path, default, overwrite):
    """The run (opened if a path), its picture's target checked before the backend starts.

    A picture written inside the run needs the run's lock: a busy run is refused
    at once, not after the backend's import.
    """
    if isinstance(run, Run):
        return run, False
    run = open_run(run)
    if out_path is None:
        refuse_existing(run.file(default), overwrite, owned=run.owns(default))
        _lock_for_picture(run)
    else:
        refuse_existing(out_path, overwrite)
        run.refuse_output(out_path)
    return run, True


def _lock_for_picture(run):
    try:
        run.lock()
    except RunError as err:
        raise RunError(
            f"{err}; or write the picture elsewhere with", Param("out_path", "FILE")
        ) from None


def filters_run(run, layer=1, out_path=None, grid=(10, 10), overwrite=False, quiet_backend=True):
    """PNG of layer `layer`'s filters (one tile per hidden unit); returns its path."""
    with stopping.at_once():
        return _filters_run(run, layer, out_path, grid, overwrite, quiet_backend)


def _filters_run(run, layer, out_path, grid, overwrite, quiet_backend):
    default = f"filters_layer_{layer}.png"
    run, opened = _open_for_picture(run, out_path, default, overwrite)
    _check_layer(layer, run.n_layers)  # load_stack checks the stack has the run's layers
    if opened:
        backend.start(verbose=not quiet_backend)
    stopping.check()
    import keras

    from stackae.images import filters_image

    stack = load_stack(run)
    tied = stack.encoder_layers[layer - 1]
    if stack.layer_kinds[layer - 1].name == "dense":
        kernel = keras.ops.convert_to_numpy(tied.kernel)
        shape = run.data.image_shape if layer == 1 else None
    else:  # one tile per filter, from its kind's filter images: (n, h, w), or (n, h, w, 3)
        images = np.asarray(stack.layer_kinds[layer - 1].filter_images(tied))
        shape = images.shape[1:]
        kernel = images.reshape(len(images), -1).T
    image = filters_image(kernel, shape, grid)
    stopping.check()
    return _write_picture(run, image, out_path, default, overwrite)


def reconstruct_run(
    run,
    data=None,
    out_path=None,
    n=20,
    corruption=None,
    overwrite=False,
    data_options=None,
    quiet_backend=True,
    data_changed_ok=False,
):
    """PNG of n rows: input | corrupted input | reconstruction through the whole stack."""
    with stopping.at_once():
        return _reconstruct_run(
            run,
            data,
            out_path,
            n,
            corruption,
            overwrite,
            data_options,
            quiet_backend,
            data_changed_ok,
        )


def _reconstruct_run(
    run, data, out_path, n, corruption, overwrite, data_options, quiet_backend, data_changed_ok
):
    default = "reconstructions.png"
    run, opened = _open_for_picture(run, out_path, default, overwrite)
    if opened:
        backend.start(verbose=not quiet_backend)
    stopping.check()
    import keras

    from stackae.data import check_width
    from stackae.images import reconstructions_image
    from stackae.noise import corrupt

    if corruption is not None:  # a level layer 1's noise takes (Gaussian's may pass 1)
        check_noise(run.specs[0].noise, corruption)
    if not hasattr(data, "train"):
        data = load_run_data(run, data, changed_ok=data_changed_ok, **(data_options or {}))
    stopping.check()
    stack = load_stack(run)
    split = data.test if data.test is not None else data.train
    check_width(split.x, run.data.n_features, "data")
    x = np.asarray(split.x[:n], dtype="float32")
    level = stack.specs[0].corruption if corruption is None else corruption
    seed = keras.ops.convert_to_tensor(np.array([stack.seed, 0], "int64"))
    noisy = corrupt(
        keras.ops.convert_to_tensor(as_input(x, run.input_shape)), stack.specs[0].noise, level, seed
    )
    recon = _reconstruct(stack, noisy)
    image = reconstructions_image(
        x,
        keras.ops.convert_to_numpy(noisy).reshape(len(x), -1),
        keras.ops.convert_to_numpy(recon).reshape(len(x), -1),
        run.data.image_shape,
    )
    stopping.check()
    return _write_picture(run, image, out_path, default, overwrite)


def _reconstruct(stack, x):
    """Up the whole stack and back down: a pooling conv layer decodes from its own maxima."""
    return stack.reconstruct(x)


__all__ = [
    "default_source",
    "encode_job",
    "encode_run",
    "evaluate_job",
    "evaluate_run",
    "filters_run",
    "finetune_job",
    "finetune_run",
    "load_data",
    "load_run_data",
    "load_rows",
    "new_run",
    "open_run",
    "pretrain_job",
    "pretrain_run",
    "reconstruct_run",
    "stop_hint",
    "worker_scratch",
]
