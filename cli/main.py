"""The `stackae` command: a thin click shell over the stackae library."""

import contextlib
import datetime
import functools
import importlib.util
import os
import sys
from importlib.metadata import version
from pathlib import Path

import click


def _load_config():
    """stackae/config.py without importing the package (which imports TensorFlow).

    The defaults live in the library; reading them this way keeps `stackae --help`
    instant.
    """
    spec = importlib.util.find_spec("stackae")
    path = Path(spec.submodule_search_locations[0]) / "config.py"
    module_spec = importlib.util.spec_from_file_location("_stackae_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


CONFIG = _load_config()
LAYER = CONFIG.DEFAULTS
FINETUNE = CONFIG.FINETUNE_DEFAULTS
NOISES = ("masking", "gaussian", "salt-and-pepper")
LOSSES = ("cross-entropy", "squared-error")
STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multi-worker")


def _list(kind, choices=None):
    """A click callback parsing '0.1,0.2' into a tuple, or raising BadParameter."""

    def parse(ctx, param, value):
        if value is None:
            return None
        items = value.split(",")
        try:
            parsed = tuple(kind(item.strip()) for item in items)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma list of {kind.__name__}s") from None
        for item in parsed:
            if choices and item not in choices:
                raise click.BadParameter(f"{item!r} is not one of {', '.join(choices)}")
            if kind in (int, float) and item < 0:
                raise click.BadParameter(f"{value!r}: values must not be negative")
        return parsed

    return parse


def _per_layer(flag, field, kind, text, choices=None):
    """A comma-list option whose help shows the library's default for `field`."""
    if choices:
        text = f"{text} {', '.join(choices)}."
    return click.option(
        flag,
        callback=_list(kind, choices),
        help=f"{text}  [default: {getattr(LAYER, field)}]",
    )


def _layers(ctx, param, value):
    sizes = _list(int)(ctx, param, value)
    if any(size <= 0 for size in sizes):
        raise click.BadParameter(f"{value!r}: layer sizes must be positive integers")
    return sizes


@contextlib.contextmanager
def _quiet_stderr(enabled):
    """Silence fd 2 while TensorFlow starts: its C++ start-up lines bypass Python logging."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _library(verbose, strategy="auto"):
    """Import stackae (and TensorFlow) quietly unless -v; return the tf.distribute strategy.

    The strategy is made first: MultiWorkerMirroredStrategy must configure
    TensorFlow before anything else starts it.
    """
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _quiet_stderr(not verbose):
        import tensorflow as tf

        import stackae.jobs  # noqa: F401
        from stackae.distribute import get_strategy

        chosen = get_strategy(strategy)
        tf.config.list_logical_devices()  # device start-up logs, silenced here too
    if not verbose:
        tf.get_logger().setLevel("ERROR")
    return chosen


def _failures(fn):
    """Expected failures become one line on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from_library = ()
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            out = kwargs.get("out") or kwargs.get("run_dir")
            hint = f" Resume with: stackae pretrain --resume --out {out}" if out else ""
            raise click.ClickException(
                f"interrupted; every finished epoch is saved.{hint}"
            ) from None
        except Exception as err:
            from_library = _library_errors()
            if isinstance(err, from_library):
                raise click.ClickException(
                    str(err).splitlines()[0] if str(err) else repr(err)
                ) from None
            raise

    return wrapper


def _library_errors():
    if "stackae.jobs" not in sys.modules:
        return ()
    from stackae.data import DataError
    from stackae.jobs import TrainingDiverged
    from stackae.runs import RunError

    return (DataError, RunError, TrainingDiverged, OSError)


strategy_option = click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default="auto",
    show_default=True,
    help="tf.distribute strategy; --batch-size is global.",
)

verbosity = [
    click.option("-q", "--quiet", is_flag=True, help="Print no progress bars."),
    click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's own log lines."),
]


def _options(options):
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _data_options(required=False):
    return _options(
        [
            click.option(
                "--data",
                required=required,
                help="mnist, mnist-sample, fashion-mnist, or a path (.npz .npy .csv, IDX folder, "
                "mnist.pkl.gz). Default: full MNIST if found, else the shipped mnist-sample.",
            ),
            click.option(
                "--limit",
                type=click.IntRange(min=1),
                help="Use only the first N rows of each split.",
            ),
            click.option(
                "--valid-size",
                type=click.IntRange(min=0),
                help="Rows held out from the end of the training set for validation.",
            ),
            click.option("--label-column", help="CSV column holding the labels."),
            click.option("--scale", is_flag=True, help="Min-max scale float data into [0, 1]."),
        ]
    )


def _load(data, limit, valid_size, label_column, scale, loss="cross-entropy"):
    from stackae.data import default_source, load

    if data is None:
        data, message = default_source()
        click.echo(message)
    return load(
        data, limit=limit, valid_size=valid_size, label_column=label_column, scale=scale, loss=loss
    ), {"limit": limit, "valid_size": valid_size, "label_column": label_column, "scale": scale}


def _load_for_run(run, data, limit, valid_size, label_column, scale):
    """The --data given, else the data the run was pretrained on, with the same options."""
    recorded = run.manifest["data"]
    options = recorded.get("options", {})
    if data is None:
        data = recorded["name"]
        limit = limit if limit is not None else options.get("limit")
        valid_size = valid_size if valid_size is not None else options.get("valid_size")
        label_column = label_column or options.get("label_column")
        scale = scale or bool(options.get("scale"))
    loss = run.manifest["config"]["specs"][0]["loss"]
    return _load(data, limit, valid_size, label_column, scale, loss)[0]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(version("stackae"), prog_name="stackae")
def cli():
    """Denoising and stacked denoising autoencoders for Keras 3.

    Pretrain a stack, fine-tune it with labels, evaluate it, encode data with
    it, and draw its filters and reconstructions.
    """


@cli.command()
@click.option(
    "--layers",
    default=str(LAYER.units),
    show_default=True,
    callback=_layers,
    help="Hidden layer sizes, bottom first, e.g. 1000,1000,1000.",
)
@_data_options()
@_options(
    [
        _per_layer(
            "--corruption", "corruption", float, "Noise level per layer (one value for all)."
        ),
        _per_layer("--noise", "noise", str, "Noise kind per layer:", NOISES),
        _per_layer("--loss", "loss", str, "Reconstruction loss per layer:", LOSSES),
        _per_layer("--epochs", "epochs", int, "Pretraining epochs per layer."),
        _per_layer("--batch-size", "batch_size", int, "Global batch size per layer."),
        _per_layer("--lr", "learning_rate", float, "Learning rate per layer."),
        _per_layer("--optimizer", "optimizer", str, "Keras optimizer per layer (sgd, adam, ...)."),
        _per_layer("--l2", "l2", float, "L2 weight decay per layer."),
        _per_layer("--sparsity", "sparsity", float, "KL sparsity weight per layer."),
        _per_layer(
            "--sparsity-target", "sparsity_target", float, "Target mean activation per layer."
        ),
        _per_layer("--contraction", "contraction", float, "Contractive penalty weight per layer."),
    ]
)
@click.option(
    "--seed",
    type=int,
    default=CONFIG.DEFAULT_SEED,
    show_default=True,
    help="Seed of weights, data order and noise.",
)
@click.option(
    "--out", type=click.Path(file_okay=False), help="Run directory.  [default: runs/<date-time>]"
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out from its last finished epoch."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@click.option(
    "--tensorboard",
    is_flag=True,
    help="Write TensorBoard logs (scalars, filter images) into the run.",
)
@strategy_option
@_options(verbosity)
@_failures
def pretrain(
    layers,
    data,
    limit,
    valid_size,
    label_column,
    scale,
    corruption,
    noise,
    loss,
    epochs,
    batch_size,
    lr,
    optimizer,
    l2,
    sparsity,
    sparsity_target,
    contraction,
    seed,
    out,
    resume,
    overwrite,
    tensorboard,
    strategy,
    quiet,
    verbose,
):
    """Pretrain a stack of denoising autoencoders greedily, layer by layer."""
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    if resume and not out:
        raise click.UsageError("--resume needs --out RUN")
    settings = dict(
        corruption=corruption,
        noise=noise,
        loss=loss,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        optimizer=optimizer,
        l2=l2,
        sparsity=sparsity,
        sparsity_target=sparsity_target,
        contraction=contraction,
    )
    strategy = _library(verbose, strategy)
    from stackae import TiedAutoEncoderLayer, jobs
    from stackae.distribute import is_chief
    from stackae.runs import Run
    from stackae.stack import layer_specs

    try:
        specs = layer_specs(layers, **settings)
        for spec in specs:  # the library checks each combination the way AutoEncoder does
            spec.autoencoder(TiedAutoEncoderLayer(spec.units), seed=0)
    except ValueError as err:
        raise click.BadParameter(str(err).splitlines()[0]) from None
    out = out or os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    chief_out = out
    if not is_chief(strategy):
        # Workers must save what the chief saves (saving runs collective ops), but
        # into a scratch copy of their own, so nothing they write can collide.
        out = jobs.worker_scratch(out, resume)
    with strategy.scope():
        if resume:
            run = Run.open(out)
            stack = jobs.load_stack(run)
            dataset = _load_for_run(run, data, limit, valid_size, label_column, scale)
        else:
            dataset, options = _load(data, limit, valid_size, label_column, scale, specs[0].loss)
            run, stack = jobs.new_run(
                out,
                dataset,
                specs,
                seed=seed,
                overwrite=overwrite,
                data_options=options,
            )
        rows, width = dataset.train.x.shape
        click.echo(f"data: {dataset.name}, {rows} training rows of {width}")
        jobs.pretrain_run(
            run,
            stack,
            dataset,
            verbose=0 if quiet else "auto",
            tensorboard=tensorboard,
        )
    if out != chief_out:
        jobs.remove_scratch(out)
        return
    _summary(run, jobs)
    click.echo(f"run saved in {run.path}")


def _summary(run, jobs):
    click.echo(
        f"{'layer':>5} {'size':>6} {'corruption':>10} {'epochs':>6} {'cost':>10} {'seconds':>8}"
    )
    for layer, size, corruption, epochs, cost, seconds in jobs.summary_rows(run):
        click.echo(
            f"{layer:>5} {size:>6} {corruption:>10g} {epochs:>6} {cost:>10.4f} {seconds:>8.1f}"
        )


def _open(run_dir):
    from stackae.runs import Run

    return Run.open(run_dir)


run_argument = click.argument("run_dir", metavar="RUN", type=click.Path())


def _finetune_option(flag, kind, text, name=None):
    """An option setting the FinetuneSpec field `name` (the flag's own name by default)."""
    name = name or flag[2:].replace("-", "_")
    default = getattr(FINETUNE, name)
    return click.option(flag, name, type=kind, default=default, show_default=True, help=text)


FRACTION = click.FloatRange(0, 1, max_open=True)
finetune_options = _options(
    [
        _finetune_option("--epochs", click.IntRange(min=1), "Most fine-tuning epochs."),
        _finetune_option(
            "--lr", click.FloatRange(min=0, min_open=True), "Learning rate.", "learning_rate"
        ),
        _finetune_option("--batch-size", click.IntRange(min=1), "Global batch size."),
        _finetune_option(
            "--patience",
            click.IntRange(min=1),
            "Epochs without a better validation error before stopping.",
        ),
        _finetune_option("--optimizer", str, "Keras optimizer name."),
        _finetune_option("--momentum", FRACTION, "SGD momentum."),
        _finetune_option(
            "--lr-decay", click.FloatRange(0, 1, min_open=True), "Learning rate factor per epoch."
        ),
        _finetune_option("--dropout", FRACTION, "Dropout after each hidden layer, in training."),
        _finetune_option("--input-dropout", FRACTION, "Dropout on the input, in training."),
    ]
)


@cli.command()
@run_argument
@_data_options()
@finetune_options
@strategy_option
@_options(verbosity)
@_failures
def finetune(
    run_dir, data, limit, valid_size, label_column, scale, strategy, quiet, verbose, **settings
):
    """Fine-tune the pretrained stack with labels; saves classifier.keras."""
    if settings["momentum"] and settings["optimizer"].lower() != "sgd":
        raise click.BadParameter(
            f"momentum is an SGD setting, not {settings['optimizer']}'s", param_hint="--momentum"
        )
    strategy = _library(verbose, strategy)
    from stackae import jobs
    from stackae.config import FinetuneSpec

    run = _open(run_dir)
    dataset = _load_for_run(run, data, limit, valid_size, label_column, scale)
    spec = FinetuneSpec(**settings)
    with strategy.scope():
        result = jobs.finetune_run(run, dataset, spec, verbose=0 if quiet else "auto")
    if result["valid_error"] is not None:
        click.echo(f"validation error {100 * result['valid_error']:.2f} %")
    if result["test_error"] is not None:
        click.echo(f"test error {100 * result['test_error']:.2f} %")
    click.echo(f"classifier saved in {run.path / 'classifier.keras'}")


@cli.command()
@run_argument
@_data_options()
@click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's own log lines.")
@_failures
def evaluate(run_dir, data, limit, valid_size, label_column, scale, verbose):
    """Test error and confusion counts of the classifier, reconstruction cost of each layer."""
    _library(verbose)
    from stackae import jobs

    run = _open(run_dir)
    result = jobs.evaluate_run(
        run, _load_for_run(run, data, limit, valid_size, label_column, scale)
    )
    for k, cost in enumerate(result["reconstruction"]):
        click.echo(f"layer {k + 1} reconstruction cost {cost:.4f}")
    if "error" in result:
        click.echo(f"test error {100 * result['error']:.2f} % on {result['rows']} rows")
        confusion = result["confusion"]
        click.echo("confusion (rows: true class, columns: predicted):")
        click.echo("      " + " ".join(f"{j:>5}" for j in range(len(confusion))))
        for i, row in enumerate(confusion):
            click.echo(f"{i:>5} " + " ".join(f"{c:>5}" for c in row))
    else:
        click.echo("no fine-tuned classifier yet: run `stackae finetune` for the test error")


@cli.command()
@run_argument
@click.option(
    "--data", required=True, help="The rows to encode: a name or a path, as for pretrain."
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the codes (.npz).",
)
@click.option(
    "--layer", type=click.IntRange(min=1), help="Codes after this layer.  [default: the top]"
)
@click.option("--limit", type=click.IntRange(min=1), help="Encode only the first N rows.")
@click.option("--scale", is_flag=True, help="Min-max scale float data into [0, 1].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's own log lines.")
@_failures
def encode(run_dir, data, out_path, layer, limit, scale, overwrite, verbose):
    """Write the codes of your data (top layer, or --layer k) to an .npz file."""
    if os.path.exists(out_path) and not overwrite:
        raise click.ClickException(f"{out_path}: exists; use --overwrite to replace it")
    _library(verbose)
    import numpy as np

    from stackae import jobs, runs

    run = _open(run_dir)
    dataset = _load_for_run(run, data, limit, 0, None, scale)
    arrays = {"train": jobs.encode_run(run, dataset.train.x, layer)}
    for name, split in (("valid", dataset.valid), ("test", dataset.test)):
        if split is not None:
            arrays[name] = jobs.encode_run(run, split.x, layer)
    for name, split in (("train", dataset.train), ("valid", dataset.valid), ("test", dataset.test)):
        if split is not None and split.y is not None:
            arrays[f"y_{name}"] = split.y
    runs.atomic_write(out_path, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")
    shapes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items() if not k.startswith("y_"))
    click.echo(f"wrote {out_path}: {shapes}")


@cli.command()
@run_argument
@click.option(
    "--layer",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Which layer's filters.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    help="PNG to write.  [default: RUN/filters_layer_K.png]",
)
@click.option("--grid", default="10x10", show_default=True, help="Tiles per column x per row.")
@click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's own log lines.")
@_failures
def filters(run_dir, layer, out_path, grid, verbose):
    """Draw each hidden unit's weights as a tile, like the tutorial's filters picture."""
    try:
        grid = tuple(int(n) for n in grid.lower().split("x"))
        assert len(grid) == 2 and min(grid) > 0
    except (ValueError, AssertionError):
        raise click.BadParameter(f"{grid!r} is not ROWSxCOLUMNS", param_hint="--grid") from None
    _library(verbose)
    from stackae import images, jobs

    run = _open(run_dir)
    stack = jobs.load_stack(run)
    if layer > len(stack.specs):
        raise click.BadParameter(f"the run has {len(stack.specs)} layers", param_hint="--layer")
    kernel = stack.encoder_layers[layer - 1].kernel.numpy()
    shape = run.manifest["data"]["image_shape"] if layer == 1 else None
    out_path = out_path or run.file(f"filters_layer_{layer}.png")
    images.save_filters(kernel, out_path, image_shape=tuple(shape) if shape else None, grid=grid)
    click.echo(f"wrote {out_path}")


@cli.command()
@run_argument
@_data_options()
@click.option(
    "--n", type=click.IntRange(min=1), default=20, show_default=True, help="Number of examples."
)
@click.option(
    "--corruption",
    type=click.FloatRange(0, 1, max_open=True),
    help="Masking level.  [default: layer 1's]",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    help="PNG to write.  [default: RUN/reconstructions.png]",
)
@click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's own log lines.")
@_failures
def reconstruct(
    run_dir, data, limit, valid_size, label_column, scale, n, corruption, out_path, verbose
):
    """Rows of input, corrupted input and reconstruction through the whole stack."""
    _library(verbose)
    from stackae import jobs

    run = _open(run_dir)
    dataset = _load_for_run(run, data, limit, valid_size, label_column, scale)
    out_path = out_path or run.file("reconstructions.png")
    jobs.reconstruct_run(run, dataset, out_path, n=n, corruption=corruption)
    click.echo(f"wrote {out_path}")


@cli.command()
@run_argument
@_failures
def info(run_dir):
    """What a run holds: config, data, per-layer costs and timings, versions, status."""
    _library(False)
    run = _open(run_dir)
    m = run.manifest
    click.echo(f"run: {run.path}")
    click.echo(f"status: {m.get('status')}")
    data = m["data"]
    click.echo(
        f"data: {data.get('name')} ({data.get('origin')}), {data['n_features']} features, "
        f"shapes {data.get('shapes')}"
    )
    click.echo(f"seed: {m['config']['seed']}")
    versions = m.get("versions", {})
    click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    header = ("layer", "size", "noise", "epochs", "cost", "seconds")
    click.echo("{:>5} {:>6} {:>16} {:>9} {:>10} {:>8}  finished".format(*header))
    for k, (layer, spec) in enumerate(zip(m["layers"], m["config"]["specs"])):
        losses = layer["history"].get("loss") or [float("nan")]
        noise = f"{spec.get('noise')} {spec.get('corruption')}"
        epochs = f"{layer['epochs_done']}/{spec.get('epochs')}"
        click.echo(
            f"{k + 1:>5} {layer['units']:>6} {noise:>16} {epochs:>9} "
            f"{losses[-1]:>10.4f} {layer.get('seconds', 0):>8.1f}  {layer['finished']}"
        )
    tune = m.get("finetune")
    if tune:
        parts = [f"{tune['epochs']} epochs, {tune['seconds']:.1f} s"]
        if tune.get("valid_error") is not None:
            parts.append(f"validation error {100 * tune['valid_error']:.2f} %")
        if tune.get("test_error") is not None:
            parts.append(f"test error {100 * tune['test_error']:.2f} %")
        click.echo("fine-tuned: " + ", ".join(parts))
