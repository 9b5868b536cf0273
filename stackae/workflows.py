"""pretrain / finetune / evaluate / encode / pictures of a run, as library calls.

Each workflow checks everything it can before it writes anything, holds the
run's lock while it writes, and leaves the run resumable if it is stopped at
any point. The command line is a thin shell over these functions.
"""

import contextlib
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from stackae import export, runs
from stackae.callbacks import (
    Banner,
    DivergenceGuard,
    FilterImages,
    FinetuneCheckpoint,
    LayerCheckpoint,
    restore_checkpoint,
)
from stackae.config import DEFAULT_SEED, FINETUNE_DEFAULTS, PREDICT_BATCH, LayerSpec
from stackae.errors import BackendError, CheckpointError, RunError
from stackae.files import atomic_write, refuse_existing
from stackae.runs import Run

# ---------------------------------------------------------------- data


def load_data(source=None, *, limit=None, valid_size=None, label_column=None, scale=False, loss):
    """(Data, the options to record) for a new run."""
    from stackae.data import load

    options = {"limit": limit, "valid_size": valid_size, "label_column": label_column}
    options["scale"] = bool(scale)
    return load(source, loss=loss, **options), options


def load_run_data(run, source=None, *, limit=None, valid_size=None, label_column=None, scale=False):
    """The data given, else the data the run was made with and its recorded options."""
    from stackae.data import check_width

    record = run.data
    if source is None:
        source = run.data_source
        limit = limit if limit is not None else record.limit
        valid_size = valid_size if valid_size is not None else record.valid_size
        label_column = label_column if label_column is not None else record.label_column
        scale = scale or record.scale
    data, _ = load_data(
        source,
        limit=limit,
        valid_size=valid_size,
        label_column=label_column,
        scale=scale,
        loss=run.specs[0].loss,
    )
    check_width(data.train.x, record.n_features, f"{data.name}")
    return data


# ---------------------------------------------------------------- pretraining


def check_pretraining(specs, data):
    """Everything that can refuse a new pretraining before anything is written."""
    from stackae.data import check_batch

    for k, spec in enumerate(specs):
        spec.make_optimizer()  # ValueError for a name Keras does not know
        check_batch(len(data.train.x), spec.batch_size, f"{data.name}: layer {k + 1}")


def new_run(out, data, specs, *, seed=DEFAULT_SEED, overwrite=False, data_options=None):
    """Check, then create the run directory with its manifest and the untrained stack."""
    from stackae.stack import Stack

    check_pretraining(specs, data)
    keras.utils.set_random_seed(seed)  # the initial weights of every layer follow from the seed
    stack = Stack(specs, seed=seed)
    stack.build((None, data.n_features))
    run = Run.create(
        out, specs=specs, seed=seed, data=data, data_options=data_options, overwrite=overwrite
    )
    run.save_model(stack, runs.STACK)
    return run, stack


def open_run(path, write=False):
    """An existing run, checked; with `write`, locked against other processes."""
    run = Run.open(path)
    if write:
        run.lock()
    return run


def load_stack(run):
    from stackae.stack import Stack

    stack = run.load_model(runs.STACK)
    if not isinstance(stack, Stack):
        raise RunError(f"{run.file(runs.STACK)}: not a stackae stack")
    if [s.units for s in stack.specs] != [s.units for s in run.specs]:
        raise RunError(f"{run.file(runs.STACK)}: layer sizes do not match the manifest")
    return stack


def pretrain_run(run, stack, data, *, verbose="auto", tensorboard=False, callbacks=()):
    """Pretrain every unfinished layer of the run's stack, checkpointing each epoch.

    `callbacks`: more Keras callbacks for every layer, run before the checkpoint.
    """
    extra = list(callbacks)
    from stackae.data import check_width
    from stackae.stack import pretrain

    check_width(data.train.x, run.data.n_features, "training data")
    point = run.resume_point()
    run.remove_stray_checkpoints()
    if point is not None:
        start, first_epoch, checkpoint = point
        if tensorboard:
            _check_tensorboard()
        n_layers = run.n_layers

        def layer_callbacks(k):
            spec = stack.specs[k]
            n_in = data.n_features if k == 0 else stack.specs[k - 1].units
            restore = checkpoint if k == start else None
            text = (
                f"layer {k + 1}/{n_layers}: {n_in} -> {spec.units}, "
                f"{spec.noise} {spec.corruption:g}, {spec.epochs} epochs"
            )
            if restore is not None:
                text += f" (resumed after epoch {first_epoch})"
            left = _pretraining_left(run, data.n_features)
            if left is not None and left >= 60:  # shorter jobs need no forecast
                text += f"; about {left / 60:.0f} min of pretraining left"
            found = [
                Banner(text),
                DivergenceGuard(f"layer {k + 1}"),
                *extra,
                LayerCheckpoint(run, k, restore=restore),
            ]
            if tensorboard:
                logdir = run.output_dir("tensorboard") / f"layer_{k + 1}"
                found.append(keras.callbacks.TensorBoard(str(logdir)))
                found.append(FilterImages(logdir / "filters", data.image_shape))
            return found

        pretrain(
            stack,
            data.train.x,
            data.valid.x if data.valid is not None else None,
            callbacks=layer_callbacks,
            verbose=verbose,
            start_layer=start,
            initial_epoch=first_epoch,
            on_layer_end=lambda k, autoencoder, history: run.finish_layer(k, stack),
        )
    if run.status == "pretraining":
        run.save_model(export.encoder(stack), runs.ENCODER)
        run.set_status("pretrained")
    return run


def _pretraining_left(run, n_features):
    """Seconds of pretraining left, from the finished epochs' pace (None before any epoch).

    An epoch of layer k costs about n_in(k) x units(k) multiply-adds per row,
    so the pace measured so far, per unit of that, predicts the rest.
    """
    sizes = [n_features, *(spec.units for spec in run.specs)]
    cost = [sizes[k] * sizes[k + 1] for k in range(run.n_layers)]
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
    if keras.backend.backend() != "tensorflow":
        raise BackendError(
            f"--tensorboard needs the TensorFlow backend; this is {keras.backend.backend()}"
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
    strategy="auto",
    tensorboard=False,
    verbose="auto",
    on_data=None,
    callbacks=(),
):
    """Pretrain a new run in `out` (or `resume` the one there), under a distribution strategy.

    `strategy` is a name from stackae.config.STRATEGIES or a strategy made
    by `stackae.distribute.get_strategy`.
    `data` is a source name or path (None: the default source) and
    `data_options` its load options. `on_data(Data)` is called once the data
    is loaded and checked, before training (the CLI prints a line there);
    `callbacks` go to every layer's `fit`.
    Returns the Run (on a non-chief worker, None: the chief's run is the result).
    """
    from stackae.distribute import get_strategy, is_chief

    if strategy is None or isinstance(strategy, str):
        strategy = get_strategy(strategy or "auto")
    options = dict(data_options or {})
    with worker_scratch(out, resume, is_chief(strategy)) as where:
        with strategy_scope(strategy):
            if resume:
                run = open_run(where, write=True)
                stack = load_stack(run)
                loaded = load_run_data(run, data, **options)
            else:
                specs = specs or [LayerSpec()]
                loaded, recorded = load_data(data, loss=specs[0].loss, **options)
                run, stack = new_run(
                    where, loaded, specs, seed=seed, overwrite=overwrite, data_options=recorded
                )
            if on_data is not None:
                on_data(loaded)
            pretrain_run(
                run, stack, loaded, verbose=verbose, tensorboard=tensorboard, callbacks=callbacks
            )
        if where != out:
            run.unlock()
            return None
    return run


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


def finetune_run(run, data, spec=FINETUNE_DEFAULTS, *, resume=False, verbose="auto"):
    """Export the classifier, fine-tune it with labels (checkpointed every epoch), save it.

    Every epoch writes the trainer's weights and optimizer state, the early
    stopping's state and (when they change) the best weights into the run.
    With `resume`, an interrupted fine-tuning continues after its last
    finished epoch and ends with the classifier an uninterrupted one ends with.
    Returns the run's FinetuneRecord.
    """
    from stackae.data import check_batch, check_width
    from stackae.finetuning import EarlyStopping, error_rate, finetune, make_finetuner

    stack = load_stack(run)
    if not run.pretrained:
        raise RunError(
            f"{run.path}: pretraining is not finished; "
            f"resume it with: stackae pretrain --resume --out {run.path}"
        )
    run.check_finetune(resume, overwrite=True)  # a library call may fine-tune again
    record = run.finetune
    if resume:
        spec = record.spec
    check_width(data.train.x, run.data.n_features, "training data")
    n_classes = record.n_classes if resume else (data.n_classes or run.data.n_classes)
    train = labelled(data.train, "training data", n_classes)
    check_batch(len(train[0]), spec.batch_size, "training data")
    valid = labelled(data.valid, "validation data", n_classes) if data.valid is not None else None
    spec.make_optimizer()  # ValueError for a name Keras does not know
    keras.utils.set_random_seed(run.seed)
    model = export.classifier(
        stack, n_classes, dropout=spec.dropout, input_dropout=spec.input_dropout
    )
    finetuner = make_finetuner(model, spec, seed=run.seed)
    finetuner.build((None, run.data.n_features))  # a checkpoint loads into built models only
    stopper = EarlyStopping(spec.patience) if valid is not None else None
    first_epoch, restore = 0, None
    if resume:
        first_epoch = record.epochs_done
        restore = run.file(record.checkpoint) if record.checkpoint else None
        if stopper is not None and record.stopper is not None:
            stopper.set_state(record.stopper)
            if record.best_checkpoint:
                stopper.best_weights = _load_arrays(run.file(record.best_checkpoint))
    else:
        run.start_finetune(spec, n_classes)
    stopped = stopper is not None and stopper.wait >= spec.patience
    if first_epoch < spec.epochs and not stopped:
        sizes = "-".join(str(n) for n in [run.data.n_features, *stack.sizes, n_classes])
        text = f"fine-tuning {sizes}: at most {spec.epochs} epochs, patience {spec.patience}"
        if first_epoch:
            text += f" (resumed after epoch {first_epoch})"
        callbacks = [
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
    valid_error = error_rate(model, *valid) if valid else None
    test_error = None
    if data.test is not None and data.test.y is not None:
        test_error = error_rate(model, *labelled(data.test, "test data", n_classes))
    run.finish_finetune(model, valid_error, test_error)
    return run.finetune


def _load_arrays(path):
    """The arrays of an .npz of weights this run wrote (in order)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            return [saved[f"arr_{i}"] for i in range(len(saved.files))]
    except Exception as err:  # numpy raises many kinds for a damaged archive
        raise CheckpointError(f"{path}: damaged checkpoint ({runs.first_line(err)})") from None


# ---------------------------------------------------------------- evaluate, encode, pictures


def evaluate_run(run, data):
    """Test error and confusion counts of the classifier, reconstruction cost of each layer."""
    from stackae.data import batches, check_width
    from stackae.finetuning import confusion_counts, error_rate
    from stackae.stack import layer_codes

    stack = load_stack(run)
    split = data.test if data.test is not None else data.valid or data.train
    check_width(split.x, run.data.n_features, "evaluation data")
    result = {"rows": int(len(split.x)), "reconstruction": []}
    codes = split.x
    for k, layer in enumerate(stack.encoder_layers):
        autoencoder = stack.autoencoder(k)
        autoencoder.compile()
        cost = autoencoder.evaluate(batches(codes, PREDICT_BATCH), verbose=0, return_dict=True)
        result["reconstruction"].append(float(cost["loss"]))
        if k + 1 < len(stack.encoder_layers):
            codes = layer_codes(layer, codes)  # one layer up, not again from the input
    if runs.CLASSIFIER in run.files and split.y is not None:
        model = run.load_model(runs.CLASSIFIER)
        n_classes = model.output_shape[-1]
        x, y = labelled(split, "evaluation data", n_classes)
        result["error"] = error_rate(model, x, y)
        result["confusion"] = confusion_counts(model, x, y, n_classes).tolist()
    return result


def encode_run(run, x, layer=None):
    """Codes of `x` after `layer` layers (all by default), as a float32 array."""
    from stackae.data import check_width

    stack = load_stack(run)
    check_width(x, run.data.n_features, "data")
    depth = len(stack.specs) if layer is None else layer
    if not 1 <= depth <= len(stack.specs):
        raise RunError(f"--layer must be between 1 and {len(stack.specs)}; got {depth}")
    return stack.codes(x, depth)


def encode_job(run, data, out_path, layer=None, overwrite=False):
    """Write the codes of every split of `data` (and its labels) to an .npz; returns its arrays."""
    refuse_existing(out_path, overwrite)
    arrays = {}
    for name, split in (("train", data.train), ("valid", data.valid), ("test", data.test)):
        if split is not None:
            arrays[name] = encode_run(run, split.x, layer)
            if split.y is not None:
                arrays[f"y_{name}"] = split.y
    atomic_write(out_path, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")
    return arrays


def _write_picture(run, image, out_path, default, overwrite):
    """Write `image` to `out_path`, else to `default` inside the run; never clobbers.

    A picture inside the run is the run's own output (locked, recorded, replaceable);
    an `out_path` that exists is replaced only with `overwrite`. Returns the path.
    """
    from stackae.images import save_png

    if out_path is None:
        refuse_existing(run.file(default), overwrite, owned=run.owns(default))
        run.lock()
        return run.write_output(default, lambda tmp: save_png(image, tmp), suffix=".png")
    refuse_existing(out_path, overwrite)
    return save_png(image, Path(out_path))


def filters_run(run, layer=1, out_path=None, grid=(10, 10), overwrite=False):
    """PNG of layer `layer`'s filters (one tile per hidden unit); returns its path."""
    from stackae.images import filters_image

    stack = load_stack(run)
    if not 1 <= layer <= len(stack.specs):
        raise RunError(f"--layer must be between 1 and {len(stack.specs)}; got {layer}")
    kernel = keras.ops.convert_to_numpy(stack.encoder_layers[layer - 1].kernel)
    shape = run.data.image_shape if layer == 1 else None
    image = filters_image(kernel, shape, grid)
    return _write_picture(run, image, out_path, f"filters_layer_{layer}.png", overwrite)


def reconstruct_run(run, data, out_path=None, n=20, corruption=None, overwrite=False):
    """PNG of n rows: input | corrupted input | reconstruction through the whole stack."""
    from stackae.data import check_width
    from stackae.images import reconstructions_image
    from stackae.noise import corrupt

    stack = load_stack(run)
    split = data.test if data.test is not None else data.train
    check_width(split.x, run.data.n_features, "data")
    x = np.asarray(split.x[:n], dtype="float32")
    level = stack.specs[0].corruption if corruption is None else corruption
    seed = keras.ops.convert_to_tensor(np.array([stack.seed, 0], "int64"))
    noisy = corrupt(keras.ops.convert_to_tensor(x), stack.specs[0].noise, level, seed)
    recon = stack.decode(stack.encode(noisy))
    image = reconstructions_image(
        x,
        keras.ops.convert_to_numpy(noisy),
        keras.ops.convert_to_numpy(recon),
        run.data.image_shape,
    )
    return _write_picture(run, image, out_path, "reconstructions.png", overwrite)


__all__ = [
    "encode_job",
    "encode_run",
    "evaluate_run",
    "filters_run",
    "finetune_run",
    "load_data",
    "load_run_data",
    "new_run",
    "open_run",
    "pretrain_job",
    "pretrain_run",
    "reconstruct_run",
    "worker_scratch",
]
