"""Where a small fit's time goes: stackae's estimators and CLI against scikit-learn's MLP.

    python benchmarks/small_fit.py                 # estimators: wine, breast cancer, digits
    python benchmarks/small_fit.py --rounds 5
    python benchmarks/small_fit.py --cli           # also the CLI on a 2,000-row table CSV
    python benchmarks/small_fit.py --all           # also SdARegressor and the transformer

Estimators: on three quarters of each data set (the rows a search's fold would
see), `SdAClassifier()` with its defaults and `MLPClassifier(hidden_layer_sizes=(100,))`
(with StandardScaler) are fitted in turn, interleaved, for `--rounds` rounds in
one process after a first warm-up fit of each (the first fit's extra cost, imports
and first traces, is printed on its own). Printed: best and median seconds and
their ratio. Then one more stackae fit per data set runs under cProfile and its
time is split into parts (tf.data iterators made and dropped, tracing, running
the compiled programs, Keras's evaluate per epoch, the rest).

`--cli`: writes a 2,000 x 20 classification table as CSV and times, as
separate processes (start-up included), `stackae pretrain` and `stackae
finetune` with the README's table settings; then runs the fine-tuning once
more in this process with `Run.record_finetune_epoch` timed (checkpoint,
best weights, their sha256, the manifest) against the epochs.
"""

import argparse
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from sklearn import datasets  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from stackae.sklearn import (  # noqa: E402
    SdAClassifier,
    SdARegressor,
    StackedDenoisingAutoencoder,
)

DATA = {
    "wine": datasets.load_wine,
    "cancer": datasets.load_breast_cancer,
    "digits": datasets.load_digits,
}
# The README's table settings (its "tables" section).
PRETRAIN = ["--scale", "standard", "--layers", "100", "--epochs", "30"]
PRETRAIN += ["--valid-size", "0.2", "--test-size", "0.2", "--seed", "0"]
FINETUNE = ["--momentum", "0.9", "--lr", "0.01", "--epochs", "200", "--patience", "20"]

# Parts of a profiled fit: (label, substrings of "file:function" whose cumulative time counts).
PARTS = [
    ("tf.data iterators made", ("gen_dataset_ops.py:make_iterator",)),
    ("tracing programs", ("tracing_compilation.py:_create_concrete_function",)),
    ("running programs", ("context.py:call_function",)),
    ("Keras evaluate (validation)", ("tensorflow/trainer.py:evaluate",)),
    ("checkpoints, manifest", ("runs.py:record_finetune_epoch", "runs.py:record_epoch")),
    ("pretraining (all of it)", ("stack.py:pretrain",)),
    ("fine-tuning (all of it)", ("finetuning.py:finetune",)),
]


def table(name):
    x, y = DATA[name](return_X_y=True)
    x_train, _, y_train, _ = train_test_split(x, y, train_size=0.75, random_state=0, stratify=y)
    return x_train, y_train


def timed(function):
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def mlp_fit(x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        make_pipeline(StandardScaler(), MLPClassifier((100,), random_state=0)).fit(x, y)


def sda_fit(x, y):
    return SdAClassifier(random_state=0).fit(x, y)


# `--all`: the other two estimators with their defaults, against the same MLPClassifier fit
# (the regressor fits the class numbers as targets; the transformer pretrains only).
OTHERS = {
    "SdARegressor": lambda x, y: SdARegressor(random_state=0).fit(x, y.astype(np.float64)),
    "StackedDenoisingAutoencoder": lambda x, y: StackedDenoisingAutoencoder(random_state=0).fit(x),
}


def parts(profile):
    stats = pstats.Stats(profile).stats
    found = {}
    for label, keys in PARTS:
        total = 0.0
        for (file, _, function), (_, _, _, cumulative, _) in stats.items():
            where = f"{file}:{function}"
            if any(where.endswith(key) or key in where for key in keys):
                total += cumulative
        found[label] = total
    return found


def estimators(rounds, others=False):
    tables = {name: table(name) for name in DATA}
    first = timed(lambda: sda_fit(*tables["wine"]))
    mlp_fit(*tables["wine"])
    print(f"first SdAClassifier fit in the process (wine, imports and first traces): {first:.2f} s")
    fits = {"sda": sda_fit, **(OTHERS if others else {})}
    for fit in list(fits.values())[1:]:  # their first fits: imports and first traces
        for x, y in tables.values():
            fit(x, y)
    times = {name: {kind: [] for kind in ["mlp", *fits]} for name in DATA}
    for _ in range(rounds):
        for name, (x, y) in tables.items():
            times[name]["mlp"].append(timed(lambda x=x, y=y: mlp_fit(x, y)))
            for kind, fit in fits.items():
                times[name][kind].append(timed(lambda x=x, y=y, fit=fit: fit(x, y)))
    for kind in list(fits)[1:]:
        print(f"\n{kind}, second and later fits against MLPClassifier(100) (seconds):")
        for name, found in times.items():
            ours, mlp = found[kind], found["mlp"]
            print(
                f"{name:8} best {min(ours):5.2f} median {statistics.median(ours):5.2f}"
                f"  ratio best {min(ours) / min(mlp):5.1f}"
                f" median {statistics.median(ours) / statistics.median(mlp):5.1f}"
            )
    print(f"\nsecond and later fits, {rounds} rounds interleaved (seconds):")
    print(
        f"{'data':8} {'rows':>5} {'SdA best':>9} {'median':>7} {'MLP best':>9} {'median':>7}"
        f" {'ratio best':>10} {'median':>7}"
    )
    for name, found in times.items():
        sda, mlp = found["sda"], found["mlp"]
        print(
            f"{name:8} {len(tables[name][0]):5d} {min(sda):9.2f} {statistics.median(sda):7.2f}"
            f" {min(mlp):9.2f} {statistics.median(mlp):7.2f} {min(sda) / min(mlp):10.1f}"
            f" {statistics.median(sda) / statistics.median(mlp):7.1f}"
        )
    print("\none profiled stackae fit per data set (cProfile adds its own overhead):")
    for name, (x, y) in tables.items():
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        model = sda_fit(x, y)
        profile.disable()
        total = time.perf_counter() - started
        print(f"{name}: {total:.2f} s, {model.n_iter_} fine-tuning epochs")
        for label, seconds in parts(profile).items():
            print(f"  {label:32} {seconds:6.2f} s  {100 * seconds / total:5.1f} %")


def cli(folder):
    from sklearn.datasets import make_classification

    x, y = make_classification(2000, 20, n_informative=8, n_classes=3, random_state=0)
    path = os.path.join(folder, "table.csv")
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["y"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%g")
    run = os.path.join(folder, "run")
    stackae = [sys.executable, "-m", "stackae_cli"]
    started = time.perf_counter()
    pretrain = [*stackae, "pretrain", "--data", path, "--label-column", "y", *PRETRAIN]
    subprocess.run([*pretrain, "--out", run], check=True, capture_output=True)
    pretrain_s = time.perf_counter() - started
    started = time.perf_counter()
    done = subprocess.run([*stackae, "finetune", run, *FINETUNE], check=True, capture_output=True)
    finetune_s = time.perf_counter() - started
    mlp = timed(lambda: mlp_fit(x[:1200], y[:1200]))
    start_up = timed(lambda: subprocess.run([*stackae, "--help"], check=True, capture_output=True))
    print("\nCLI on a 2,000 x 20 table (1,200 training rows), README table settings:")
    print(f"  `stackae --help` (process start-up): {start_up:.2f} s")
    print(f"  stackae pretrain: {pretrain_s:.2f} s wall; stackae finetune: {finetune_s:.2f} s wall")
    print(f"  MLPClassifier(100) on the 1,200 rows, same process as this script: {mlp:.2f} s")
    lines = done.stdout.decode().strip().splitlines()
    print("  finetune said: " + (lines[-1] if lines else ""))
    return path


def cli_epoch_parts(folder, path):
    """The fine-tuning again, in this process, with the run's per-epoch writes timed."""
    from click.testing import CliRunner

    from stackae import runs
    from stackae_cli.main import cli as command

    writes, epochs, files = [], [], set()
    record = runs.Run.record_finetune_epoch

    def timed_record(self, epoch, logs, seconds, *args, **kwargs):
        started = time.perf_counter()
        record(self, epoch, logs, seconds, *args, **kwargs)
        writes.append(time.perf_counter() - started)
        epochs.append(seconds)
        files.add(self.manifest.finetune.checkpoint)

    runs.Run.record_finetune_epoch = timed_record
    try:
        run = os.path.join(folder, "run2")
        runner = CliRunner()
        args = ["pretrain", "--data", path, "--label-column", "y", *PRETRAIN, "--out", run]
        assert runner.invoke(command, args).exit_code == 0
        started = time.perf_counter()
        result = runner.invoke(command, ["finetune", run, *FINETUNE])
        total = time.perf_counter() - started
        assert result.exit_code == 0, result.output
    finally:
        runs.Run.record_finetune_epoch = record
    done = runs.Run.open(run).finetune.epochs_done
    print(
        f"  in process: fine-tuning {total:.2f} s, {done} epochs; {len(writes)} checkpoints"
        f" written ({len(files)} names), {sum(writes):.2f} s in them"
        f" (median {1000 * statistics.median(writes):.1f} ms each); epochs between them"
        f" {sum(epochs):.2f} s"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cli", action="store_true", help="Also time the CLI on a table CSV.")
    parser.add_argument("--only-cli", action="store_true", help="Only the CLI part.")
    parser.add_argument("--all", action="store_true", help="Also SdARegressor and the transformer.")
    args = parser.parse_args(argv)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs")
    if not args.only_cli:
        estimators(args.rounds, others=args.all)
    if args.cli or args.only_cli:
        with tempfile.TemporaryDirectory() as folder:
            path = cli(folder)
            cli_epoch_parts(folder, path)


if __name__ == "__main__":
    main()
