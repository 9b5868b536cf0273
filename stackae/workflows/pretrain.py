"""Pretraining a run: the checks before anything is written, a new run, its greedy pretraining
(checkpointed on a time budget, resumable), and the job that does all of it under a strategy."""

import numpy as np

from stackae import backend, runs, stopping
from stackae.config import DEFAULT_SEED, LayerSpec, layer_specs, layer_token
from stackae.errors import BackendError, Param, ParameterError
from stackae.runs import Run
from stackae.workflows.common import (
    as_input,
    check_backend_matches,
    check_optimizer,
    load_stack,
    open_run,
    refuse_conflicts,
)
from stackae.workflows.data import DATA_OPTIONS, input_shape_of, load_data, load_run_data
from stackae.workflows.workers import strategy_scope, worker_scratch


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
    """Pretrain every unfinished layer of the run's stack, checkpointing on a time budget.

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
        refuse_conflicts(
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
        check_backend_matches(run.backend, str(out))
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
