"""The `stackae` command: a thin click shell over stackae.workflows."""

import datetime
import functools
import logging
import math
import os
import shlex
import signal
import sys
from importlib.metadata import version

import click

from stackae import config, stopping, workflows
from stackae.errors import BadOption, ParameterError, StackaeError

LAYER = config.DEFAULTS
FINETUNE = config.FINETUNE_DEFAULTS


# ---------------------------------------------------------------- option types


class Number(click.ParamType):
    """A finite int or float."""

    def __init__(self, kind):
        self.kind = kind
        self.name = "integer" if kind is int else "number"

    def parse(self, value):
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None

    def convert(self, value, param, ctx):
        number = self.parse(value)
        if number is None:
            self.fail(f"{value!r} is not a finite {self.name}", param, ctx)
        return number


class _FieldNumber:
    """A number a spec field takes (stackae.config's tables): its range shows in --help,
    and a value out of it is refused in the library's words."""

    def __init__(self, field):
        super().__init__(field.low, field.high, field.low_open, field.high_open)
        self.field = field
        self.name = "integer" if field.kind is int else "number"

    def parse(self, value):
        return Number(self.field.kind).parse(value)

    def range_text(self):
        """The range as click shows it in --help: x>=1, 0<=x<1."""
        field = self.field
        low = None if field.low is None else f"{field.low:g}{'<' if field.low_open else '<='}"
        high = None if field.high is None else f"{'<' if field.high_open else '<='}{field.high:g}"
        if high is None:
            return f"x{'>' if field.low_open else '>='}{field.low:g}"
        return f"{low or ''}x{high}"

    def convert(self, value, param, ctx):
        number = self.parse(value)
        if number is None:
            self.fail(f"{value!r} is not a finite {self.name}", param, ctx)
        try:
            self.field.check(number)
        except ParameterError as err:
            self.fail(_one_line(err), param, ctx)
        return number


class IntField(_FieldNumber, click.IntRange):
    pass


class FloatField(_FieldNumber, click.FloatRange):
    pass


def field_type(field):
    """The click type of a spec field: a choice, a name, or a number in the field's range."""
    if field.choices:
        return click.Choice(field.choices)
    if field.kind is str:
        return click.STRING
    return IntField(field) if field.kind is int else FloatField(field)


class CommaList(click.ParamType):
    """'0.1,0.2' -> (0.1, 0.2), each item converted by a click type (Number, Choice, ...)."""

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


class Layers(click.ParamType):
    """'conv32x5,pool2,500' -> config.parse_layers's tuple (ints: dense units)."""

    name = "layers"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return config.parse_layers(str(value))
        except ParameterError as err:
            text = _one_line(err)
            if " token " in text:  # the token it names, without the whole list again
                text = f"{value!r} is not a comma list of layers: {text.split('. Received')[0]}"
            self.fail(text, param, ctx)


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


class Size(click.ParamType):
    """A number of rows (an integer >= 0) or a fraction of them (config.is_split_size)."""

    name = "ROWS|FRACTION"

    def convert(self, value, param, ctx):
        if isinstance(value, int | float):
            return value
        for kind in (int, float):
            try:
                number = kind(value)
            except ValueError:
                continue
            if config.is_split_size(number):
                return number
        self.fail(f"{value!r} is neither a count >= 0 nor a fraction in [0, 1)", param, ctx)


class Contamination(click.ParamType):
    """'auto' or a fraction of outliers in (0, 0.5] (stackae.anomaly.check_contamination)."""

    name = "auto|FRACTION"

    def convert(self, value, param, ctx):
        from stackae.anomaly import check_contamination

        if not isinstance(value, str):
            return value
        number = Number(float).parse(value)
        try:
            return check_contamination(value if number is None else number)
        except ValueError:
            self.fail(f"{value!r} is neither 'auto' nor a fraction in (0, 0.5]", param, ctx)


INT = Number(int)
POSITIVE_INT = click.IntRange(min=1)  # counts that belong to no spec (--limit, --n, --layer)


# ---------------------------------------------------------------- errors and signals


class StackaeGroup(click.Group):
    """The one place where expected failures become one line and a stop request a hint."""

    def invoke(self, ctx):
        notes = _Notes()
        logging.getLogger("stackae.data").addHandler(notes)
        try:
            with stopping.honour_signals():
                return super().invoke(ctx)
        except (KeyboardInterrupt, stopping.StopRequested) as err:
            signum = getattr(err, "signum", signal.SIGINT)
            text = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
            verb, path = ctx.meta.get("job", (None, None))
            hint = workflows.stop_hint(verb, path) if path else None
            if hint:
                text += f"; every finished epoch is saved. Resume with: {hint}"
            elif verb:
                text += "; no epoch of this job was recorded"
            exception = click.ClickException(text)
            exception.exit_code = stopping.EXIT_CODES[signum]
            raise exception from None
        except ParameterError as err:  # blamed on the option that sets the parameter
            command = self.get_command(ctx, ctx.invoked_subcommand or "")
            option = _option_of(command, err.param)
            hint = None if option is not None or err.param is None else _flag(err.param)
            text = _one_line(err, command)
            raise click.BadParameter(text, param=option, param_hint=hint) from None
        except BadOption as err:
            command = self.get_command(ctx, ctx.invoked_subcommand or "")
            raise click.UsageError(_one_line(err, command)) from None
        except BrokenPipeError:  # `stackae evaluate RUN | head`: the reader has had enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except (StackaeError, OSError) as err:
            command = self.get_command(ctx, ctx.invoked_subcommand or "")
            raise click.ClickException(_one_line(err, command)) from None
        except MemoryError:  # what the estimates before each job could not foresee
            raise click.ClickException(
                "out of memory; use --limit, smaller --layers or a smaller --batch-size"
            ) from None
        finally:
            logging.getLogger("stackae.data").removeHandler(notes)
            workflows.runs.release_locks()


def _option_of(command, name):
    """The option of `command` that sets the library parameter `name`, or None."""
    for param in getattr(command, "params", ()):
        if isinstance(param, click.Option) and param.name == name:
            return param
    return None


def _flag(name, command=None):
    """How the command line spells the library parameter `name`: its option, e.g. --lr."""
    option = _option_of(command, name)
    if option is not None:
        return max(option.opts, key=len)
    return "--" + name.replace("_", "-")


def _one_line(err, command=None):
    """The message of `err`, with the parameters it names spelled as options or commands."""

    def spell(param):
        if param.job == "pretrain":
            return f"stackae pretrain {_flag(param.name)} --out {shlex.quote(str(param.run))}"
        if param.job is not None:
            return f"stackae {param.job} {shlex.quote(str(param.run))} {_flag(param.name)}"
        value = "" if param.value is True or param.value is None else f" {param.value}"
        return _flag(param.name, command) + value

    text = err.spelled(spell) if isinstance(err, StackaeError) else " ".join(str(err).split())
    return text or type(err).__name__


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
scale_option = click.option(
    "--scale",
    type=click.Choice(config.SCALE_KINDS),
    is_flag=False,
    flag_value="global",
    help="Per-feature scaling fitted on the training split: minmax into [0, 1], standard "
    "(mean 0, variance 1), none; --scale alone is global, one min and max over all values.",
)
_data_options = _options(
    click.option(
        "--data",
        help="mnist, mnist-sample, fashion-mnist, or a path (.npz .npy .csv, IDX folder, "
        "mnist.pkl.gz). Default: full MNIST if found, else the shipped mnist-sample; "
        "for an existing run, the data it was made with.",
    ),
    click.option("--limit", type=POSITIVE_INT, help="Use only the first N rows of each split."),
    click.option(
        "--valid-size",
        type=Size(),
        help="Validation rows (a count or a fraction): from the end of the training rows of a "
        "source with splits of its own, else drawn at random.  [default: the source's, or 0.1]",
    ),
    click.option(
        "--test-size",
        type=Size(),
        help="Test rows (a count or a fraction) of a file without a test split.  [default: 0.1]",
    ),
    click.option("--label-column", help="Table column (name or index) holding the labels."),
    scale_option,
)
header_option = click.option(
    "--header/--no-header",
    default=None,
    help="Whether a CSV's first line names its columns.  [default: it does when a cell of it "
    "is not a number, empty or NA; a line of numbers only is data, and a line on stderr says so]",
)


def data_options(verb):
    """--data and the options that read it (--limit, --valid-size, --test-size,
    --label-column, --scale, --header/--no-header), for a verb that takes `data` and
    `data_options`: those options as a dict by their library names (workflows.DATA_OPTIONS),
    as the jobs take them."""

    @functools.wraps(verb)
    def with_data_options(*args, **kwargs):
        kwargs["data_options"] = {name: kwargs.pop(name) for name in workflows.DATA_OPTIONS}
        return verb(*args, **kwargs)

    return _options(_data_options, header_option)(with_data_options)


changed_ok_option = click.option(
    "--data-changed-ok",
    is_flag=True,
    help="Read the run's data file even if it changed since the run read it "
    "(its rows and split may no longer be the run's).",
)
run_argument = click.argument("run_dir", metavar="RUN", type=click.Path())
overwrite_out_option = click.option(
    "--overwrite", is_flag=True, help="Replace an existing --out file."
)


def _per_layer(flag, name):
    """A comma-list option for LayerSpec.`name`: its type, help, default and range from the
    spec's table (config.LAYER_FIELDS)."""
    field = config.LAYER_FIELDS[name]
    item = field_type(field)
    shown = f"default: {getattr(LAYER, name)}"
    if field.choices:
        text = f"{field.help} per layer: {', '.join(field.choices)}."
    else:
        text = f"{field.help} per layer."
        if isinstance(item, _FieldNumber):
            shown += f"; {item.range_text()}"
    return click.option(flag, name, type=CommaList(item), help=f"{text}  [{shown}]")


class _Notes(logging.Handler):
    """What the data layer decided on a guess, one line each on stderr."""

    def emit(self, record):
        click.echo(self.format(record), err=True)


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
    type=Layers(),
    default=str(LAYER.units),
    show_default=True,
    help="Hidden layers, bottom first, e.g. 1000,1000,1000 or, on images, "
    f"conv32x5,pool2,conv64x5,pool2,500. {config.LAYERS_GRAMMAR}. Per-layer options count "
    "layers, not pool tokens; conv layers default to a smaller --lr "
    "(stackae.kinds.Conv2DSpec's).",
)
@data_options
@_options(
    _per_layer("--corruption", "corruption"),
    _per_layer("--noise", "noise"),
    _per_layer("--loss", "loss"),
    _per_layer("--activation", "activation"),
    _per_layer("--decoder-activation", "decoder_activation"),
    _per_layer("--epochs", "epochs"),
    _per_layer("--batch-size", "batch_size"),
    _per_layer("--lr", "learning_rate"),
    _per_layer("--optimizer", "optimizer"),
    _per_layer("--l2", "l2"),
    _per_layer("--sparsity", "sparsity"),
    _per_layer("--sparsity-target", "sparsity_target"),
    _per_layer("--contraction", "contraction"),
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
@changed_ok_option
@click.option(
    "--contamination",
    type=Contamination(),
    help="Record an outlier threshold for `stackae score`: the reconstruction error above "
    "this fraction of the training rows, or 'auto' (median + 3 robust deviations).",
)
@strategy_option
@quiet_option
@verbose_option
@click.pass_context
def pretrain(
    ctx,
    layers,
    data,
    data_options,
    seed,
    out,
    resume,
    overwrite,
    tensorboard,
    data_changed_ok,
    contamination,
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
    specs, given = None, None
    if resume:
        given = {name: value for name, value in settings.items() if value is not None}
        given |= {"layers": layers if _given(ctx, "layers") else None}
        given |= {"seed": seed if _given(ctx, "seed") else None}
        given |= data_options
    else:
        # Settings not given take the library's defaults for the data's scaling.
        specs = config.layer_specs(layers, scale=data_options["scale"], **settings)
        if data is None:
            data, note = workflows.default_source()
            click.echo(note)
    out = out or os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    ctx.meta["job"] = ("pretrain", out)

    def on_data(loaded):
        rows, width = loaded.train.x.shape
        click.echo(f"data: {loaded.name}, {rows} training rows of {width}")

    run = workflows.pretrain_job(
        out,
        specs,
        data=data,
        data_options={} if resume else data_options,
        seed=seed,
        resume=resume,
        overwrite=overwrite,
        given=given,
        strategy=strategy,
        tensorboard=tensorboard,
        verbose=0 if quiet else "auto",
        quiet_backend=not verbose,
        on_data=on_data,
        data_changed_ok=data_changed_ok,
        contamination=contamination,
    )
    if run is None:  # a worker that is not the chief: the chief reports
        return
    _summary(run)
    if run.outliers is not None and run.outliers.threshold is not None:
        click.echo(f"outlier threshold: reconstruction error above {run.outliers.threshold:.6g}")
    click.echo(f"run saved in {run.path}")


def _summary(run):
    click.echo(
        f"{'layer':>5} {'size':>6} {'corruption':>10} {'epochs':>6} {'cost':>10} {'seconds':>8}"
    )
    for layer, size, corruption, epochs, cost, seconds in run.summary_rows():
        click.echo(
            f"{layer:>5} {size:>6} {corruption:>10g} {epochs:>6} {cost:>10.4f} {seconds:>8.1f}"
        )


def _finetune_option(flag, name=None):
    """An option setting the FinetuneSpec field `name` (the flag's own name by default): its
    type, help, default and range from the spec's table (config.FINETUNE_FIELDS)."""
    name = name or flag[2:].replace("-", "_")
    field = config.FINETUNE_FIELDS[name]
    kind, text = field_type(field), f"{field.help}."
    if name in config.TASK_DEFAULTS["classification"]:  # None: the task's default
        shown = "; ".join(f"{task}: {d[name]}" for task, d in config.TASK_DEFAULTS.items())
        return click.option(flag, name, type=kind, help=f"{text}  [default: {shown}]")
    default = getattr(FINETUNE, name)
    return click.option(flag, name, type=kind, default=default, show_default=True, help=text)


finetune_options = _options(
    _finetune_option("--task"),
    _finetune_option("--epochs"),
    _finetune_option("--lr", "learning_rate"),
    _finetune_option("--batch-size"),
    _finetune_option("--patience"),
    _finetune_option("--optimizer"),
    _finetune_option("--momentum"),
    _finetune_option("--lr-decay"),
    _finetune_option("--dropout"),
    _finetune_option("--input-dropout"),
)


@cli.command()
@run_argument
@data_options
@changed_ok_option
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
    data_options,
    data_changed_ok,
    resume,
    overwrite,
    strategy,
    quiet,
    verbose,
    **settings,
):
    """Fine-tune the pretrained stack with labels (or targets); saves classifier.keras
    (regressor.keras)."""
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    spec = config.FinetuneSpec(**settings)
    given = {name: value for name, value in settings.items() if _given(ctx, name)}
    ctx.meta["job"] = ("finetune", run_dir)
    result = workflows.finetune_job(
        run_dir,
        spec,
        data=data,
        data_options=data_options,
        given=given,
        resume=resume,
        overwrite=overwrite,
        strategy=strategy,
        verbose=0 if quiet else "auto",
        quiet_backend=not verbose,
        data_changed_ok=data_changed_ok,
    )
    if result.valid_error is not None:
        click.echo(f"validation error {100 * result.valid_error:.2f} %")
    if result.test_error is not None:
        click.echo(f"test error {100 * result.test_error:.2f} %")
    for split, name in (("valid", "validation"), ("test", "test")):
        if f"{split}_rmse" in result.metrics:
            click.echo(f"{name} {_regression_line(result.metrics, split + '_')}")
    model = "regressor" if result.spec.task == "regression" else "classifier"
    click.echo(f"{model} saved in {os.path.join(run_dir, model + '.keras')}")


def _regression_line(metrics, prefix=""):
    rmse, mae, r2 = (metrics[prefix + key] for key in ("rmse", "mae", "r2"))
    return f"RMSE {rmse:.6g}, MAE {mae:.6g}, R^2 {r2:.4f}"


# How evaluate names the rows of each split; figures of other rows than the test split say so.
SPLIT_FIGURES = {
    "test": ("test", ""),
    "valid": ("validation", " (the data has no test split)"),
    "train": ("training", " (the data has no test or validation split: not a test figure)"),
}


@cli.command()
@run_argument
@data_options
@changed_ok_option
@verbose_option
def evaluate(
    run_dir,
    data,
    data_options,
    data_changed_ok,
    verbose,
):
    """Test error and confusion counts of the classifier, reconstruction cost of each layer."""
    result = workflows.evaluate_job(
        run_dir,
        data,
        data_options=data_options,
        quiet_backend=not verbose,
        data_changed_ok=data_changed_ok,
    )
    name, why = SPLIT_FIGURES[result["split"]]
    click.echo(f"evaluated on the {name} split: {result['rows']} rows{why}")
    for k, cost in enumerate(result["reconstruction"]):
        click.echo(f"layer {k + 1} reconstruction cost {cost:.4f}")
    if "regression" in result:
        click.echo(f"{name} {_regression_line(result['regression'])} on {result['rows']} rows")
    elif "error" in result:
        click.echo(f"{name} error {100 * result['error']:.2f} % on {result['rows']} rows")
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
@click.option(
    "--limit", type=POSITIVE_INT, help="Encode only the first N rows.  [default: every row]"
)
@header_option
@click.option(
    "--scale",
    is_flag=True,
    hidden=True,
    help="Accepted for old scripts: the run's recorded scaling is always applied.",
)
@overwrite_out_option
@verbose_option
def encode(run_dir, data, out_path, layer, limit, header, scale, overwrite, verbose):
    """Write the codes of your data (top layer, or --layer k) to an .npz file."""
    arrays = workflows.encode_job(
        run_dir,
        data,
        out_path,
        layer,
        overwrite,
        limit=limit,
        header=header,
        quiet_backend=not verbose,
    )
    shapes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items() if not k.startswith("y_"))
    click.echo(f"wrote {out_path}: {shapes}")


@cli.command()
@run_argument
@click.option(
    "--data",
    required=True,
    help="The rows to score (images for a conv run): a name or a path, as for pretrain.",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write one line per row: its reconstruction error (and outlier flag), .csv.",
)
@click.option(
    "--contamination",
    type=Contamination(),
    help="Flag rows above the threshold this fraction (or 'auto') gives on the run's "
    "training split.  [default: the threshold the run recorded, if any]",
)
@click.option(
    "--threshold",
    type=click.FloatRange(min=0),
    help="Flag rows whose reconstruction error is above this.",
)
@click.option(
    "--per-feature",
    is_flag=True,
    help="Add each feature's squared error (error_J; images: one per pixel, row-major, "
    "so a row reshapes to the image's error map).",
)
@click.option("--limit", type=POSITIVE_INT, help="Score only the first N rows.")
@click.option("--label-column", help="Table column (name or index) holding labels, left out.")
@overwrite_out_option
@quiet_option
@verbose_option
def score(
    run_dir,
    data,
    out_path,
    contamination,
    threshold,
    per_feature,
    limit,
    label_column,
    overwrite,
    quiet,
    verbose,
):
    """Write each row's reconstruction error, and where a threshold is known its outlier flag."""
    from stackae import anomaly

    if contamination is not None and threshold is not None:
        raise click.UsageError("--contamination and --threshold exclude each other")
    bar = None

    def on_start(total):
        nonlocal bar
        if not quiet:
            bar = click.progressbar(length=total, label="scoring", file=sys.stderr)
            bar.__enter__()

    try:
        result = anomaly.score_job(
            run_dir,
            data,
            out_path,
            contamination=contamination,
            threshold=threshold,
            per_feature=per_feature,
            limit=limit,
            label_column=label_column,
            overwrite=overwrite,
            on_start=on_start,
            on_progress=lambda n: bar.update(n) if bar is not None else None,
            quiet_backend=not verbose,
        )
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    text = f"wrote {out_path}: {result['rows']} rows"
    if result["threshold"] is not None:
        text += f", {result['flagged']} above the threshold {result['threshold']:.6g} (outlier = 1)"
    else:
        text += "; no threshold recorded or given: errors only"
    click.echo(text)


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
@overwrite_out_option
@verbose_option
def filters(run_dir, layer, out_path, grid, overwrite, verbose):
    """Draw each hidden unit's weights as a tile, like the tutorial's filters picture."""
    path = workflows.filters_run(
        run_dir, layer, out_path, grid, overwrite, quiet_backend=not verbose
    )
    click.echo(f"wrote {path}")


@cli.command()
@run_argument
@data_options
@changed_ok_option
@click.option("--n", type=POSITIVE_INT, default=20, show_default=True, help="Number of examples.")
@click.option(
    "--corruption",
    type=field_type(config.LAYER_FIELDS["corruption"]),
    help="Noise level of layer 1's noise kind (below 1 but for Gaussian noise's stddev).  "
    "[default: layer 1's]",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    help="PNG to write.  [default: RUN/reconstructions.png]",
)
@overwrite_out_option
@verbose_option
def reconstruct(
    run_dir,
    data,
    data_options,
    data_changed_ok,
    n,
    corruption,
    out_path,
    overwrite,
    verbose,
):
    """Rows of input, corrupted input and reconstruction through the whole stack."""
    path = workflows.reconstruct_run(
        run_dir,
        data,
        out_path,
        n,
        corruption,
        overwrite,
        data_options=data_options,
        quiet_backend=not verbose,
        data_changed_ok=data_changed_ok,
    )
    click.echo(f"wrote {path}")


@cli.command()
@run_argument
def info(run_dir):
    """What a run holds: config, data, per-layer costs and timings, versions, status."""
    run = workflows.open_run(run_dir)  # reads the manifest only: no backend is imported
    click.echo(f"run: {run.path}")
    click.echo(f"status: {run.status}")
    record = run.data
    click.echo(
        f"data: {record.name} ({run.data_origin}), {record.n_features} features, "
        f"shapes {run.data_shapes}"
    )
    if len(run.input_shape) > 1:  # a conv stack: what it reads and its layers' tokens
        click.echo(f"input: {'x'.join(map(str, run.input_shape))} images")
        click.echo(f"layers: {','.join(config.layer_token(spec) for spec in run.specs)}")
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
            f"{k + 1:>5} {run.layer_size(k):>6} {noise:>16} {epochs:>9} "
            f"{cost:>10.4f} {state.seconds:>8.1f}  {state.finished}"
        )
    outliers = run.outliers
    if outliers is not None:
        found = "not fitted yet" if outliers.threshold is None else f"{outliers.threshold:.6g}"
        click.echo(f"outliers: contamination {outliers.contamination}, error threshold {found}")
    tune = run.finetune
    if tune:
        parts = [f"{tune.epochs_done}/{tune.spec.epochs} epochs, {tune.seconds:.1f} s"]
        if tune.valid_error is not None:
            parts.append(f"validation error {100 * tune.valid_error:.2f} %")
        if tune.test_error is not None:
            parts.append(f"test error {100 * tune.test_error:.2f} %")
        for split, name in (("valid", "validation"), ("test", "test")):
            if f"{split}_rmse" in tune.metrics:
                parts.append(f"{name} {_regression_line(tune.metrics, split + '_')}")
        label = "fine-tuned" if tune.finished else "fine-tuning (interrupted)"
        click.echo(f"{label}: " + ", ".join(parts))
