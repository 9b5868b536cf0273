"""The `stackae` command: a thin click shell over stackae.workflows."""

import contextlib
import datetime
import importlib.util
import os
import signal
import sys
from importlib.metadata import version

import click

from stackae import config
from stackae.errors import StackaeError

LAYER = config.DEFAULTS
FINETUNE = config.FINETUNE_DEFAULTS
EXIT_TERMINATED = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


# ---------------------------------------------------------------- option types


class Number(click.ParamType):
    """An int or float within bounds; the message says which bound a value crossed."""

    def __init__(self, kind, low, low_open=False, high=None, high_open=False):
        self.kind, self.low, self.low_open = kind, low, low_open
        self.high, self.high_open = high, high_open
        self.name = "integer" if kind is int else "number"

    def parse(self, value):
        try:
            return self.kind(value)
        except (TypeError, ValueError):
            return None

    def convert(self, value, param, ctx):
        number = self.parse(value)
        if number is None:
            self.fail(f"{value!r} is not a {self.name}", param, ctx)
        if number < 0 <= self.low:
            self.fail(f"{number} is negative: values must not be negative", param, ctx)
        if (
            number < self.low
            or (self.low_open and number == self.low)
            or (self.high is not None and number > self.high)
            or (self.high_open and number == self.high)
        ):
            self.fail(f"{number} is not {self.describe()}", param, ctx)
        return number

    def describe(self):
        if self.kind is int and self.low == 1 and self.high is None:
            return "a positive integer"
        left = "(" if self.low_open else "["
        right = ")" if self.high is None or self.high_open else "]"
        return f"in {left}{self.low:g}, {'inf' if self.high is None else f'{self.high:g}'}{right}"


class CommaList(click.ParamType):
    """'0.1,0.2' -> (0.1, 0.2), each item checked by a click type (Number, Choice, ...)."""

    def __init__(self, item):
        self.item = item
        self.name = f"{item.name} list"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        items = [item.strip() for item in str(value).split(",")]
        parse = getattr(self.item, "parse", None)
        if any(not item for item in items) or (
            parse and any(parse(item) is None for item in items)
        ):
            self.fail(f"{value!r} is not a comma list of {self.item.name}s", param, ctx)
        try:
            return tuple(self.item.convert(item, param, ctx) for item in items)
        except click.BadParameter as err:
            self.fail(f"{value!r}: {err.message}", param, ctx)


class Grid(click.ParamType):
    """'10x10' -> (10, 10): tiles per column x per row."""

    name = "ROWSxCOLUMNS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = str(value).lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            self.fail(f"{value!r} is not ROWSxCOLUMNS (two positive integers)", param, ctx)
        return tuple(int(p) for p in parts)


POSITIVE_INT = Number(int, 1)
NON_NEGATIVE = Number(float, 0)
POSITIVE = Number(float, 0, low_open=True)
FRACTION = Number(float, 0, high=1, high_open=True)


# ---------------------------------------------------------------- errors and signals


class Terminated(BaseException):
    """SIGTERM arrived: stop like Ctrl-C does (a BaseException, like KeyboardInterrupt)."""


def _on_sigterm(signum, frame):
    raise Terminated()


class StackaeGroup(click.Group):
    """The one place where expected failures become one line (exit 1) and signals a hint."""

    def invoke(self, ctx):
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, Terminated) as err:
            hint = ctx.meta.get("resume_hint")
            text = "interrupted" if isinstance(err, KeyboardInterrupt) else "terminated (SIGTERM)"
            if hint:
                text += f"; every finished epoch is saved. Resume with: {hint}"
            exception = click.ClickException(text)
            if isinstance(err, Terminated):
                exception.exit_code = EXIT_TERMINATED
            raise exception from None
        except (StackaeError, OSError) as err:
            raise click.ClickException(_one_line(err)) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            if "stackae.runs" in sys.modules:
                sys.modules["stackae.runs"].release_locks()


def _one_line(err):
    text = " ".join(str(err).split())
    return text or type(err).__name__


@contextlib.contextmanager
def _quiet_stderr(enabled):
    """Silence fd 2 while the backend starts: TensorFlow's C++ start-up lines bypass Python."""
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


def _library(verbose, strategy=None):
    """Import Keras and its backend quietly unless -v; make the distribution strategy.

    The strategy is made before the backend's devices start: TensorFlow's
    MultiWorkerMirroredStrategy must configure TensorFlow first.
    """
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _quiet_stderr(not verbose):
        try:
            import keras
        except ImportError as err:  # KERAS_BACKEND names a backend that is not installed
            raise click.ClickException(f"Keras could not start: {_one_line(err)}") from None
        from stackae.compat import check_backend

        check_backend()  # one line under a backend stackae does not train on
        import stackae.workflows  # noqa: F401
        from stackae.distribute import get_strategy

        chosen = get_strategy(strategy) if strategy else None
        tf = None
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_logical_devices()  # device start-up logs, silenced here too
        elif importlib.util.find_spec("tensorflow") is not None:
            # Keras's data adapters import an installed TensorFlow on any backend during
            # fit; importing it here keeps its start-up lines out of the terminal.
            import tensorflow as tf
    if tf is not None and not verbose:
        tf.get_logger().setLevel("ERROR")
    return chosen


def _bad(err, hint=None):
    """A library ValueError about an option, as click's usage error (exit 2)."""
    return click.BadParameter(_one_line(err), param_hint=hint)


# ---------------------------------------------------------------- shared options


def _options(*options):
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


verbose_option = click.option(
    "-v", "--verbose", is_flag=True, help="Show the backend's own log lines."
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Print no progress bars.")
strategy_option = click.option(
    "--strategy",
    type=click.Choice(config.STRATEGIES),
    default="auto",
    show_default=True,
    help="tf.distribute strategy (TensorFlow backend); --batch-size is global.",
)
data_options = _options(
    click.option(
        "--data",
        help="mnist, mnist-sample, fashion-mnist, or a path (.npz .npy .csv, IDX folder, "
        "mnist.pkl.gz). Default: full MNIST if found, else the shipped mnist-sample; "
        "for an existing run, the data it was made with.",
    ),
    click.option("--limit", type=POSITIVE_INT, help="Use only the first N rows of each split."),
    click.option(
        "--valid-size",
        type=click.IntRange(min=0),
        help="Rows held out from the end of the training set for validation.",
    ),
    click.option("--label-column", help="CSV column holding the labels."),
    click.option("--scale", is_flag=True, help="Min-max scale float data into [0, 1]."),
)
run_argument = click.argument("run_dir", metavar="RUN", type=click.Path())


def _per_layer(flag, field, item, text):
    """A comma-list option whose help shows the library's default for LayerSpec.`field`."""
    if isinstance(item, click.Choice):
        text = f"{text} {', '.join(item.choices)}."
    return click.option(
        flag,
        field,
        type=CommaList(item),
        help=f"{text}  [default: {getattr(LAYER, field)}]",
    )


def _data_kwargs(limit, valid_size, label_column, scale):
    return {"limit": limit, "valid_size": valid_size, "label_column": label_column, "scale": scale}


def _resolve_source(data):
    """The --data given, or the default source with its one-line note printed."""
    if data is not None:
        return data
    from stackae.data import default_source

    name, note = default_source()
    click.echo(note)
    return name


def _given(ctx, name):
    return ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT


# ---------------------------------------------------------------- the verbs


@click.group(
    cls=StackaeGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(version("stackae"), prog_name="stackae")
def cli():
    """Denoising and stacked denoising autoencoders for Keras 3.

    Pretrain a stack, fine-tune it with labels, evaluate it, encode data with
    it, and draw its filters and reconstructions.
    """


@cli.command()
@click.option(
    "--layers",
    type=CommaList(POSITIVE_INT),
    default=str(LAYER.units),
    show_default=True,
    help="Hidden layer sizes, bottom first, e.g. 1000,1000,1000.",
)
@data_options
@_options(
    _per_layer("--corruption", "corruption", NON_NEGATIVE, "Noise level per layer."),
    _per_layer("--noise", "noise", click.Choice(config.NOISE_KINDS), "Noise kind per layer:"),
    _per_layer("--loss", "loss", click.Choice(config.LOSSES), "Reconstruction loss per layer:"),
    _per_layer("--epochs", "epochs", POSITIVE_INT, "Pretraining epochs per layer."),
    _per_layer("--batch-size", "batch_size", POSITIVE_INT, "Global batch size per layer."),
    _per_layer("--lr", "learning_rate", POSITIVE, "Learning rate per layer."),
    _per_layer(
        "--optimizer", "optimizer", click.STRING, "Keras optimizer per layer (sgd, adam, ...)."
    ),
    _per_layer("--l2", "l2", NON_NEGATIVE, "L2 weight decay per layer."),
    _per_layer("--sparsity", "sparsity", NON_NEGATIVE, "KL sparsity weight per layer."),
    _per_layer(
        "--sparsity-target", "sparsity_target", FRACTION, "Target mean activation per layer."
    ),
    _per_layer(
        "--contraction", "contraction", NON_NEGATIVE, "Contractive penalty weight per layer."
    ),
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**63 - 1),
    default=config.DEFAULT_SEED,
    show_default=True,
    help="Seed of weights, data order and noise.",
)
@click.option(
    "--out", type=click.Path(file_okay=False), help="Run directory.  [default: runs/<date-time>]"
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out from its last finished epoch."
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the stackae run in --out (only the files it wrote are removed).",
)
@click.option(
    "--tensorboard",
    is_flag=True,
    help="Write TensorBoard logs (scalars, filter images) into the run.",
)
@strategy_option
@quiet_option
@verbose_option
@click.pass_context
def pretrain(
    ctx,
    layers,
    data,
    limit,
    valid_size,
    label_column,
    scale,
    seed,
    out,
    resume,
    overwrite,
    tensorboard,
    strategy,
    quiet,
    verbose,
    **settings,
):
    """Pretrain a stack of denoising autoencoders greedily, layer by layer."""
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    if resume and not out:
        raise click.UsageError("--resume needs --out RUN")
    from stackae.config import layer_specs

    if resume:
        from stackae.runs import Run

        # Only the manifest is read here; the workflow checks every file when it opens the run.
        conflicts = Run.open(out, verify=False).resume_conflicts(
            layers=layers if _given(ctx, "layers") else None,
            seed=seed if _given(ctx, "seed") else None,
            **settings,
        )
        if conflicts:
            raise click.UsageError(
                "--resume continues the recorded run; these options differ from it: "
                + "; ".join(conflicts)
            )
        specs = None
    else:
        try:
            specs = layer_specs(layers, **settings)
        except ValueError as err:
            raise _bad(err) from None
        data = _resolve_source(data)
    out = out or os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    chosen = _library(verbose, strategy)
    from stackae import workflows

    if specs is not None:
        try:
            for spec in specs:
                spec.make_optimizer()
        except ValueError as err:
            raise _bad(err, "--optimizer") from None

    def on_data(loaded):
        rows, width = loaded.train.x.shape
        click.echo(f"data: {loaded.name}, {rows} training rows of {width}")
        ctx.meta["resume_hint"] = f"stackae pretrain --resume --out {out}"

    run = workflows.pretrain_job(
        out,
        specs,
        data=data,
        data_options=_data_kwargs(limit, valid_size, label_column, scale),
        seed=seed,
        resume=resume,
        overwrite=overwrite,
        strategy=chosen,
        tensorboard=tensorboard,
        verbose=0 if quiet else "auto",
        on_data=on_data,
    )
    if run is None:  # a worker that is not the chief: the chief reports
        return
    _summary(run)
    click.echo(f"run saved in {run.path}")


def _summary(run):
    click.echo(
        f"{'layer':>5} {'size':>6} {'corruption':>10} {'epochs':>6} {'cost':>10} {'seconds':>8}"
    )
    for layer, size, corruption, epochs, cost, seconds in run.summary_rows():
        click.echo(
            f"{layer:>5} {size:>6} {corruption:>10g} {epochs:>6} {cost:>10.4f} {seconds:>8.1f}"
        )


def _finetune_option(flag, kind, text, name=None):
    """An option setting the FinetuneSpec field `name` (the flag's own name by default)."""
    name = name or flag[2:].replace("-", "_")
    default = getattr(FINETUNE, name)
    return click.option(flag, name, type=kind, default=default, show_default=True, help=text)


finetune_options = _options(
    _finetune_option("--epochs", POSITIVE_INT, "Most fine-tuning epochs."),
    _finetune_option("--lr", POSITIVE, "Learning rate.", "learning_rate"),
    _finetune_option("--batch-size", POSITIVE_INT, "Global batch size."),
    _finetune_option(
        "--patience", POSITIVE_INT, "Epochs without a better validation error before stopping."
    ),
    _finetune_option("--optimizer", str, "Keras optimizer name."),
    _finetune_option("--momentum", FRACTION, "SGD momentum."),
    _finetune_option(
        "--lr-decay", Number(float, 0, low_open=True, high=1), "Learning rate factor per epoch."
    ),
    _finetune_option("--dropout", FRACTION, "Dropout after each hidden layer, in training."),
    _finetune_option("--input-dropout", FRACTION, "Dropout on the input, in training."),
)


@cli.command()
@run_argument
@data_options
@finetune_options
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted fine-tuning from its last epoch."
)
@click.option("--overwrite", is_flag=True, help="Fine-tune again, replacing the run's classifier.")
@strategy_option
@quiet_option
@verbose_option
@click.pass_context
def finetune(
    ctx,
    run_dir,
    data,
    limit,
    valid_size,
    label_column,
    scale,
    resume,
    overwrite,
    strategy,
    quiet,
    verbose,
    **settings,
):
    """Fine-tune the pretrained stack with labels; saves classifier.keras."""
    from stackae.config import FinetuneSpec
    from stackae.runs import Run

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    try:
        spec = FinetuneSpec(**settings)
    except ValueError as err:
        raise _bad(err) from None
    run = Run.open(run_dir)
    run.check_finetune(resume, overwrite)
    if resume:
        given = {name: value for name, value in settings.items() if _given(ctx, name)}
        differ = run.finetune_conflicts(**given)
        if differ:
            raise click.UsageError(
                "--resume continues the recorded fine-tuning; these options differ from it: "
                + "; ".join(differ)
            )
        spec = run.finetune.spec
    chosen = _library(verbose, strategy)
    from stackae import workflows

    try:
        spec.make_optimizer()
    except ValueError as err:
        raise _bad(err, "--optimizer") from None
    run.lock()
    loaded = workflows.load_run_data(
        run, data, **_data_kwargs(limit, valid_size, label_column, scale)
    )
    ctx.meta["resume_hint"] = f"stackae finetune {run.path} --resume"
    with workflows.strategy_scope(chosen):
        result = workflows.finetune_run(
            run, loaded, spec, resume=resume, verbose=0 if quiet else "auto"
        )
    if result.valid_error is not None:
        click.echo(f"validation error {100 * result.valid_error:.2f} %")
    if result.test_error is not None:
        click.echo(f"test error {100 * result.test_error:.2f} %")
    click.echo(f"classifier saved in {run.path / 'classifier.keras'}")


@cli.command()
@run_argument
@data_options
@verbose_option
def evaluate(run_dir, data, limit, valid_size, label_column, scale, verbose):
    """Test error and confusion counts of the classifier, reconstruction cost of each layer."""
    from stackae.runs import Run

    run = Run.open(run_dir)
    _library(verbose)
    from stackae import workflows

    loaded = workflows.load_run_data(
        run, data, **_data_kwargs(limit, valid_size, label_column, scale)
    )
    result = workflows.evaluate_run(run, loaded)
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
@click.option("--layer", type=POSITIVE_INT, help="Codes after this layer.  [default: the top]")
@click.option("--limit", type=POSITIVE_INT, help="Encode only the first N rows.")
@click.option("--scale", is_flag=True, help="Min-max scale float data into [0, 1].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@verbose_option
def encode(run_dir, data, out_path, layer, limit, scale, overwrite, verbose):
    """Write the codes of your data (top layer, or --layer k) to an .npz file."""
    from stackae.files import refuse_existing
    from stackae.runs import Run

    refuse_existing(out_path, overwrite)
    run = Run.open(run_dir)
    _library(verbose)
    from stackae import workflows

    loaded = workflows.load_run_data(run, data, limit=limit, valid_size=0, scale=scale)
    arrays = workflows.encode_job(run, loaded, out_path, layer, overwrite)
    shapes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items() if not k.startswith("y_"))
    click.echo(f"wrote {out_path}: {shapes}")


@cli.command()
@run_argument
@click.option(
    "--layer", type=POSITIVE_INT, default=1, show_default=True, help="Which layer's filters."
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    help="PNG to write.  [default: RUN/filters_layer_K.png]",
)
@click.option(
    "--grid", type=Grid(), default="10x10", show_default=True, help="Tiles per column x per row."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@verbose_option
def filters(run_dir, layer, out_path, grid, overwrite, verbose):
    """Draw each hidden unit's weights as a tile, like the tutorial's filters picture."""
    from stackae.runs import Run

    run = Run.open(run_dir)
    if layer > run.n_layers:
        raise click.BadParameter(f"the run has {run.n_layers} layers", param_hint="--layer")
    _library(verbose)
    from stackae import workflows

    path = workflows.filters_run(run, layer, out_path, grid, overwrite)
    click.echo(f"wrote {path}")


@cli.command()
@run_argument
@data_options
@click.option("--n", type=POSITIVE_INT, default=20, show_default=True, help="Number of examples.")
@click.option("--corruption", type=FRACTION, help="Masking level.  [default: layer 1's]")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    help="PNG to write.  [default: RUN/reconstructions.png]",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@verbose_option
def reconstruct(
    run_dir,
    data,
    limit,
    valid_size,
    label_column,
    scale,
    n,
    corruption,
    out_path,
    overwrite,
    verbose,
):
    """Rows of input, corrupted input and reconstruction through the whole stack."""
    from stackae.runs import Run

    run = Run.open(run_dir)
    _library(verbose)
    from stackae import workflows

    loaded = workflows.load_run_data(
        run, data, **_data_kwargs(limit, valid_size, label_column, scale)
    )
    path = workflows.reconstruct_run(run, loaded, out_path, n, corruption, overwrite)
    click.echo(f"wrote {path}")


@cli.command()
@run_argument
def info(run_dir):
    """What a run holds: config, data, per-layer costs and timings, versions, status."""
    from stackae.runs import Run  # reads the manifest only: no backend is imported

    run = Run.open(run_dir)
    click.echo(f"run: {run.path}")
    click.echo(f"status: {run.status}")
    record = run.data
    click.echo(
        f"data: {record.name} ({run.data_origin}), {record.n_features} features, "
        f"shapes {run.data_shapes}"
    )
    click.echo(f"seed: {run.seed}")
    click.echo(f"backend: {run.backend}")
    click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in run.versions.items()))
    header = ("layer", "size", "noise", "epochs", "cost", "seconds")
    click.echo("{:>5} {:>6} {:>16} {:>9} {:>10} {:>8}  finished".format(*header))
    for k, spec in enumerate(run.specs):
        state = run.layer(k)
        cost = (state.history.get("loss") or [float("nan")])[-1]
        noise = f"{spec.noise} {spec.corruption}"
        epochs = f"{state.epochs_done}/{spec.epochs}"
        click.echo(
            f"{k + 1:>5} {spec.units:>6} {noise:>16} {epochs:>9} "
            f"{cost:>10.4f} {state.seconds:>8.1f}  {state.finished}"
        )
    tune = run.finetune
    if tune:
        parts = [f"{tune.epochs_done}/{tune.spec.epochs} epochs, {tune.seconds:.1f} s"]
        if tune.valid_error is not None:
            parts.append(f"validation error {100 * tune.valid_error:.2f} %")
        if tune.test_error is not None:
            parts.append(f"test error {100 * tune.test_error:.2f} %")
        label = "fine-tuned" if tune.finished else "fine-tuning (interrupted)"
        click.echo(f"{label}: " + ", ".join(parts))
