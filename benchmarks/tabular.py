"""Tables end to end: the stackae CLI against scikit-learn's MLP on the same split, in one process.

For each data set (scikit-learn's shipped ones and synthetic ones with features
on scales from 1e-3 to 1e4) the script writes a CSV, runs `stackae pretrain`,
`stackae finetune` (and reads `evaluate`'s numbers) through the CLI with the
settings the README recommends for tables, reads the split the run recorded
(RUN/split.npz), fits `StandardScaler + MLPClassifier / MLPRegressor` with the
same hidden sizes on the same training and validation rows and scores it on the
same test rows. It also fine-tunes the same stack from its initial (untrained)
weights with the same fine-tuning settings, through the same library path the
CLI's `finetune` takes, to show what pretraining is worth.

    python benchmarks/tabular.py            # every data set, about 5 minutes on 2 cores
    python benchmarks/tabular.py --only cancer,friedman
    python benchmarks/tabular.py --grid     # the settings search (validation error only)
    python benchmarks/tabular.py --only digits --grid-wide   # pixel-like tables' search
"""

import argparse
import os
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from sklearn import datasets  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from stackae_cli.main import cli  # noqa: E402

SEED = 0
# The split every data set gets (a fraction of its rows; the rest trains).
VALID_SIZE, TEST_SIZE = "0.2", "0.2"
# The README's recommendation for tables (chosen with --grid on validation error).
PRETRAIN = ["--scale", "standard", "--epochs", "30"]
FINETUNE = ["--momentum", "0.9", "--lr", "0.01", "--epochs", "200", "--patience", "20"]


# ---------------------------------------------------------------- data sets


def spread_scales(x, rng):
    """Multiply feature j by 10**k, k cycling through -3..4, and shift it: scales 1e-3 .. 1e4."""
    powers = np.arange(x.shape[1]) % 8 - 3
    shift = rng.normal(0, 5, x.shape[1]) * 10.0**powers
    return x * 10.0**powers + shift


def synthetic_classification():
    """3 classes on clusters of a 6-d hypercube, 2 redundant and 8 useless features.

    `flip_y=0.02` relabels 2 % of rows at random, so the best error possible is
    about 2 % x 2/3 = 1.3 %; the class boundaries are not linear (2 clusters a class).
    """
    rng = np.random.default_rng(SEED)
    x, y = datasets.make_classification(
        n_samples=2000,
        n_features=16,
        n_informative=6,
        n_redundant=2,
        n_classes=3,
        n_clusters_per_class=2,
        flip_y=0.02,
        class_sep=1.0,
        random_state=SEED,
    )
    return spread_scales(x, rng), y, "classification"


def friedman():
    """Friedman #1: y = 10 sin(pi x1 x2) + 20 (x3 - 1/2)^2 + 10 x4 + 5 x5 + N(0, 1), 5 useless
    features; the best RMSE possible is the noise's, 1.0."""
    rng = np.random.default_rng(SEED)
    x, y = datasets.make_friedman1(n_samples=2000, n_features=10, noise=1.0, random_state=SEED)
    return spread_scales(x, rng), y, "regression"


def shipped(loader, task):
    def load():
        x, y = loader(return_X_y=True)
        return x.astype(np.float64), y, task

    load.__doc__ = f"scikit-learn's {loader.__name__[5:]} (shipped, no download)"
    return load


DATASETS = {
    "cancer": (shipped(datasets.load_breast_cancer, "classification"), (100,)),
    "wine": (shipped(datasets.load_wine, "classification"), (100,)),
    # 500 units: --grid-wide's lowest validation error (tied with four settings that
    # change more than the layer's width; docs in benchmarks/README.md).
    "digits": (shipped(datasets.load_digits, "classification"), (500,)),
    "synthetic": (synthetic_classification, (100,)),
    "diabetes": (shipped(datasets.load_diabetes, "regression"), (100,)),
    "friedman": (friedman, (100,)),
}


def write_csv(path, x, y):
    names = [f"f{j}" for j in range(x.shape[1])]
    rows = np.column_stack([x, y])
    np.savetxt(path, rows, delimiter=",", header=",".join([*names, "y"]), comments="", fmt="%.10g")


# ---------------------------------------------------------------- the three models


def stackae_cli(*args):
    """Run one stackae verb in this process; its printed output."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"stackae {shlex.join(map(str, args))} failed:\n{result.output}")
    return result.output


def stackae_run(csv, out, layers, task, pretrain=PRETRAIN, finetune=FINETUNE):
    """Pretrain and fine-tune through the CLI; (Run, seconds of pretraining, of fine-tuning)."""
    from stackae import runs

    sizes = ",".join(str(n) for n in layers)
    data = ["--data", csv, "--label-column", "y", "--valid-size", VALID_SIZE]
    data += ["--test-size", TEST_SIZE]
    start = time.perf_counter()
    stackae_cli("pretrain", "--layers", sizes, *data, *pretrain, "--out", out, "-q")
    middle = time.perf_counter()
    stackae_cli("finetune", out, "--task", task, *finetune, "-q")
    end = time.perf_counter()
    return runs.Run.open(out), middle - start, end - middle


def stackae_result(run):
    """(validation, test) error of a classifier or RMSE of a regressor, from the run's record."""
    record = run.finetune
    if record.spec.task == "regression":
        return record.metrics["valid_rmse"], record.metrics["test_rmse"]
    return record.valid_error, record.test_error


def from_random_init(run):
    """Fine-tune the run's stack from its initial weights, as `stackae finetune` would.

    The same path as `workflows.finetune_run` without the run's bookkeeping:
    the run's data and split, the stack its pretraining started from (seeded as
    `workflows.new_run` seeds it), the same exporter, fine-tuning settings and seed.
    Returns ((validation, test) error or RMSE, seconds).
    """
    import keras

    from stackae import workflows
    from stackae.finetuning import error_rate, finetune, regression_metrics, task_model
    from stackae.stack import Stack

    start = time.perf_counter()
    data = workflows.load_run_data(run)
    spec = run.finetune.spec
    keras.utils.set_random_seed(run.seed)
    stack = Stack(run.specs, seed=run.seed)
    stack.build((None, run.data.n_features))
    keras.utils.set_random_seed(run.seed)
    regression = spec.task == "regression"
    if regression:
        train = workflows.targets(data.train, "train")
        valid = workflows.targets(data.valid, "valid")
        test = workflows.targets(data.test, "test")
        model = task_model(stack, spec, 1, train[1])
    else:
        train, valid, test = ((s.x, s.y) for s in (data.train, data.valid, data.test))
        model = task_model(stack, spec, run.finetune.n_classes)
    finetune(model, train, valid, spec, verbose=0, seed=run.seed)
    if regression:
        found = [regression_metrics(model, *s)["rmse"] for s in (valid, test)]
    else:
        found = [error_rate(model, *s) for s in (valid, test)]
    return tuple(found), time.perf_counter() - start


def mlp_result(x, y, split, layers, task):
    """StandardScaler + MLP fitted on the run's training and validation rows; (test, seconds)."""
    fit_rows = np.concatenate([split["train"], split["valid"]])
    test = split["test"]
    kind = MLPRegressor if task == "regression" else MLPClassifier
    model = make_pipeline(
        StandardScaler(), kind(hidden_layer_sizes=layers, max_iter=2000, random_state=SEED)
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x[fit_rows], y[fit_rows])
    seconds = time.perf_counter() - start
    predicted = model.predict(x[test])
    if task == "regression":
        return float(np.sqrt(np.mean(np.square(predicted - y[test])))), seconds
    return float(np.mean(predicted != y[test])), seconds


# ---------------------------------------------------------------- the table


def benchmark(names, folder):
    rows = []
    for name in names:
        make, layers = DATASETS[name]
        x, y, task = make()
        csv = folder / f"{name}.csv"
        write_csv(csv, x, y)
        run, pre_s, tune_s = stackae_run(csv, folder / name, layers, task)
        valid, test = stackae_result(run)
        with np.load(run.file("split.npz")) as saved:
            split = {k: saved[k] for k in saved.files}
        mlp, mlp_s = mlp_result(x, y, split, layers, task)
        (random_valid, random_test), random_s = from_random_init(run)
        rows.append(
            dict(
                name=name,
                task=task,
                shape=f"{x.shape[0]}x{x.shape[1]}",
                split="/".join(str(len(split[k])) for k in ("train", "valid", "test")),
                layers="-".join(str(n) for n in layers),
                valid=valid,
                test=test,
                mlp=mlp,
                random_valid=random_valid,
                random_test=random_test,
                seconds=(pre_s, tune_s, mlp_s, random_s),
                epochs=run.finetune.epochs_done,
            )
        )
        print(table_row(rows[-1]), flush=True)
    return rows


HEADER = (
    "| data set | rows x features | train/valid/test | hidden | stackae valid | stackae test "
    "| MLP test | difference | random-init valid | random-init test | fine-tuning epochs "
    "| seconds: pretrain + finetune, MLP, random init |\n" + "|---" * 12 + "|"
)


def table_row(r):
    if r["task"] == "regression":

        def show(v):
            return f"RMSE {v:.4g}"

        diff = f"{100 * (r['test'] / r['mlp'] - 1):+.1f} %"
    else:

        def show(v):
            return f"{100 * v:.2f} %"

        diff = f"{100 * (r['test'] - r['mlp']):+.2f} points"
    pre, tune, mlp, random = r["seconds"]
    cells = [
        r["name"],
        r["shape"],
        r["split"],
        r["layers"],
        show(r["valid"]),
        show(r["test"]),
        show(r["mlp"]),
        diff,
        show(r["random_valid"]),
        show(r["random_test"]),
        str(r["epochs"]),
        f"{pre:.1f} + {tune:.1f}, {mlp:.1f}, {random:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


# ---------------------------------------------------------------- the settings search


GRID = {
    "pretrain": {
        "e30": ["--scale", "standard", "--epochs", "30"],
        "e30-c0.1": ["--scale", "standard", "--epochs", "30", "--corruption", "0.1"],
    },
    "finetune": {
        "default": [],
        "m0.9-lr0.01": ["--momentum", "0.9", "--lr", "0.01", "--epochs", "200", "--patience", "20"],
        "lr0.1-p20": ["--epochs", "200", "--patience", "20"],
    },
}


# `--grid-wide`: for tables of pixel-like features (digits: counts 0-16), the MNIST
# tutorial's kind of settings too: features scaled to [0, 1] (the cross-entropy, a
# sigmoid decoder), corruption, wider and deeper layers, a larger fine-tuning rate.
WIDE_GRID = {
    "layers": [(100,), (300,), (500,), (300, 300)],
    "pretrain": {
        "e30": PRETRAIN,
        "minmax-c0.2": ["--scale", "minmax", "--epochs", "30", "--corruption", "0.2"],
    },
    "finetune": {
        "m0.9-lr0.01": FINETUNE,
        "m0.9-lr0.03": ["--momentum", "0.9", "--lr", "0.03", "--epochs", "200", "--patience", "20"],
    },
}


def grid(names, folder, settings=None):
    """Validation error (or RMSE) of each layers x pretraining x fine-tuning setting (`GRID`
    with each data set's layers, or `settings`) on each data set; never the test rows."""
    for name in names:
        make, layers = DATASETS[name]
        x, y, task = make()
        csv = folder / f"{name}.csv"
        write_csv(csv, x, y)
        search = settings or {**GRID, "layers": [layers]}
        for sizes in search["layers"]:
            for pname, pre in search["pretrain"].items():
                for fname, tune in search["finetune"].items():
                    shape = "-".join(map(str, sizes))
                    out = folder / f"{name}-{shape}-{pname}-{fname}"
                    run, pre_s, tune_s = stackae_run(csv, out, sizes, task, pre, tune)
                    valid, _ = stackae_result(run)
                    print(
                        f"{name:10} {shape:8} {pname:12} {fname:12} valid {valid:.4f} "
                        f"epochs {run.finetune.epochs_done:3} ({pre_s:.0f} + {tune_s:.0f} s)",
                        flush=True,
                    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="Comma list of data sets: " + ", ".join(DATASETS))
    parser.add_argument("--grid", action="store_true", help="Search the settings instead.")
    parser.add_argument(
        "--grid-wide", action="store_true", help="Search WIDE_GRID's settings (pixel-like tables)."
    )
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(DATASETS)
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        parser.error(f"unknown data sets {unknown}")
    with tempfile.TemporaryDirectory(prefix="stackae-tabular-") as folder:
        if args.grid or args.grid_wide:
            grid(names, Path(folder), WIDE_GRID if args.grid_wide else None)
            return
        start = time.perf_counter()
        print("stackae pretrain " + shlex.join(PRETRAIN))
        print("stackae finetune " + shlex.join(FINETUNE))
        print(HEADER, flush=True)
        benchmark(names, Path(folder))
        print(f"total {time.perf_counter() - start:.0f} s wall", file=sys.stderr)


if __name__ == "__main__":
    main()
