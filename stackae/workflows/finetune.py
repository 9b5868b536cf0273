"""Fine-tuning a run with labels or targets: the job (checks, lock, data) and the checkpointed,
resumable training of the run's classifier or regressor."""

import zipfile

import numpy as np

from stackae import backend, runs, stopping
from stackae.config import FINETUNE_DEFAULTS, layer_token
from stackae.errors import CheckpointError, DataError, Param, RunError, first_line
from stackae.workflows.common import (
    as_input,
    check_backend_matches,
    check_optimizer,
    load_stack,
    open_run,
    refuse_conflicts,
)
from stackae.workflows.data import (
    DATA_OPTIONS,
    is_source_of,
    labelled,
    load_run_data,
    options_used,
    run_scaler,
    targets,
)
from stackae.workflows.workers import strategy_scope

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
        refuse_conflicts(
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
        check_backend_matches(record.backend or run.backend, f"{run.path}'s fine-tuning")
        loaded = load_run_data(run, record=run.finetune_data, changed_ok=data_changed_ok)
        data_record = record.data
    else:
        if data is not None and is_source_of(run, run.data, data):
            data = None  # the run's own file
        loaded = load_run_data(run, data, changed_ok=data_changed_ok, **options)
        data_record = None  # the run's own data, as recorded
        if data is not None or any(value is not None for value in options.values()):
            # Other data, or other options: recorded with the fine-tuning, so that
            # --resume and evaluate read the same rows.
            used = options_used(run.data, options, own=data is None)
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
    from stackae.finetuning import finetune, prepare, task_model

    run.lock()
    stack = load_stack(run)
    record = run.finetune
    if resume:
        if record is None or record.finished:
            raise RunError(f"{run.path}: no interrupted fine-tuning to resume")
        spec = record.spec
    regression = spec.task == "regression"
    check_width(data.train.x, run.data.n_features, "training data")
    n_classes = None
    if not regression:
        n_classes = record.n_classes if resume else (data.n_classes or run.data.n_classes)
        if not resume:
            check_classes(data, n_classes)
    train, valid = _examples(run, data, n_classes, regression)
    n_outputs = int(np.prod(train[1].shape[1:], dtype=int)) if regression else None
    check_batch(len(train[0]), spec.batch_size, "training data")
    keras.utils.set_random_seed(run.seed)
    model = task_model(
        stack, spec, n_outputs if regression else n_classes, train[1] if regression else None
    )
    # The library's one fine-tuning setup; making the optimizer refuses a name Keras does
    # not know (finetune_job checked it before reading the data) before any file changes.
    finetuner, stopper = prepare(model, spec, seed=run.seed, validation=valid is not None)
    finetuner.build((None, *run.input_shape))  # a checkpoint loads into built models only
    run.claim(  # a user's file where a checkpoint goes is refused before training
        runs.REGRESSOR if regression else runs.CLASSIFIER,
        *(
            f"finetune_{kind}_{epoch}.{ext}"
            for epoch in range(1, spec.epochs + 1)
            for kind, ext in (("epoch", "weights.h5"), ("best", "npz"))
        ),
    )
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
    # The saved model takes raw features: the run's scaling goes first.
    run.finish_finetune(
        export.with_scaling(model, run_scaler(run)),
        *_figures(run, model, data, valid, n_classes, regression),
    )
    return run.finetune


def _examples(run, data, n_classes, regression):
    """(train, valid or None): the (x, y) pairs of the training and validation splits, x as
    the run's stack reads it, y labels of `n_classes` classes or real-valued targets."""
    if regression:
        train = targets(data.train, "training data")
        valid = targets(data.valid, "validation data") if data.valid is not None else None
    else:
        train = labelled(data.train, "training data", n_classes)
        valid = (
            labelled(data.valid, "validation data", n_classes) if data.valid is not None else None
        )
    train = (as_input(train[0], run.input_shape), train[1])
    if valid is not None:
        valid = (as_input(valid[0], run.input_shape), valid[1])
    return train, valid


def _figures(run, model, data, valid, n_classes, regression):
    """(validation error, test error, metrics) of the fine-tuned `model`: a classifier's
    error rates, or a regressor's RMSE, MAE and R² per split; None (empty) where they do not
    apply or the split has no labels."""
    from stackae.finetuning import error_rate, regression_metrics

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
    return valid_error, test_error, metrics


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
