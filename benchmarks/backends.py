"""Pretraining and fine-tuning epochs under TensorFlow, JAX and PyTorch, interleaved, against
one in-graph matmul floor.

Each backend runs in a fresh subprocess (the backend is fixed when Keras is
imported), one after another and round after round (TF, JAX, torch, TF, ...),
so no two share the cores and a slow spell of a shared machine falls on every
backend alike. The floors are TensorFlow's XLA loops of pretrain_throughput.py
and finetune_throughput.py, measured in this process after the workers.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from pretrain_throughput import EpochTimer, load_rows, steady  # noqa: E402

SEED = 123
FINETUNE_SIZES = (784, 1000, 1000, 1000, 10)
# name -> (KERAS_BACKEND, extra environment)
CONFIGURATIONS = {
    "tensorflow": ("tensorflow", {}),
    "jax": ("jax", {}),
    "torch": ("torch", {}),
    "torch, 1 thread": ("torch", {"OMP_NUM_THREADS": "1"}),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="mnist", help="MNIST: a source name or a path.")
    parser.add_argument("--rows", type=int, default=50_000, help="Training rows.")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs per run (>= 2).")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds.")
    parser.add_argument("--quick", action="store_true", help="5,000 rows, 1 round.")
    parser.add_argument("--torch-compile", action="store_true", help="Add torch.compile rows.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch includes tracing and compiling")
    if args.quick:
        args.rows, args.rounds = 5_000, 1
    return args


def pretrain_times(x, batch, epochs, jit):
    from stackae.stack import Stack, layer_specs, pretrain

    keras.utils.set_random_seed(SEED)
    specs = layer_specs((500,), corruption=0.3, batch_size=batch, epochs=epochs)
    stack = Stack(specs, seed=SEED)
    timer = EpochTimer()
    if jit:  # Keras's jit_compile under torch is torch.compile
        autoencoder = stack.autoencoder
        stack.autoencoder = lambda k: _jit(autoencoder(k))
    history = pretrain(stack, x, callbacks=lambda k: [timer], verbose=0)[0]
    return timer.times, history.history["loss"]


def _jit(model):
    compile_ = model.compile
    model.compile = lambda **kwargs: compile_(jit_compile=True, **kwargs)
    return model


def finetune_times(x, y, epochs):
    """The SdA example's fine-tuning: dropout 0.1 on the input and 0.2 after each hidden layer,
    momentum 0.9, batch 20 (benchmarks/finetune_throughput.py's stackae row)."""
    from stackae.config import FinetuneSpec
    from stackae.finetuning import finetune

    keras.utils.set_random_seed(SEED)
    layers = [keras.Input((FINETUNE_SIZES[0],)), keras.layers.Dropout(0.1)]
    for units in FINETUNE_SIZES[1:-1]:
        layers += [keras.layers.Dense(units, activation="sigmoid"), keras.layers.Dropout(0.2)]
    model = keras.Sequential([*layers, keras.layers.Dense(10, activation="softmax")])
    spec = FinetuneSpec(epochs=epochs, batch_size=20, momentum=0.9, dropout=0.2, input_dropout=0.1)
    timer = EpochTimer()
    history = finetune(model, (x, y), spec=spec, seed=SEED, callbacks=[timer], verbose=0)
    return timer.times, history.history["loss"]


def labelled_rows(source, rows):
    """finetune_throughput.load_rows without its TensorFlow import: rows and labels."""
    from stackae.data import DataError, load

    try:
        split = load(source, valid_size=10_000).train
    except DataError:
        split = load("mnist-sample", valid_size=0).train
    reps = -(-rows // len(split.x))
    x = np.tile(np.asarray(split.x, dtype="float32"), (reps, 1))[:rows]
    return np.ascontiguousarray(x), np.tile(np.asarray(split.y, dtype="int64"), reps)[:rows]


def worker(args):
    """Under the backend Keras is set to: one JSON line of epoch times and costs."""
    x, _ = load_rows(args.data, args.rows)
    result = {"backend": keras.backend.backend()}
    for batch in (20, 256):
        result[f"pretrain b={batch}"] = pretrain_times(x, batch, args.epochs, args.jit)
    if not args.jit:
        x, y = labelled_rows(args.data, args.rows)
        result["finetune b=20"] = finetune_times(x, y, args.epochs)
    print(json.dumps(result), flush=True)


def run_worker(args, backend, env, jit=False):
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--data", args.data]
    command += ["--rows", str(args.rows), "--epochs", str(args.epochs)] + (["--jit"] * jit)
    environment = dict(os.environ, KERAS_BACKEND=backend, **env)
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode:
        sys.exit(f"the {backend} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def floors(rows):
    """TensorFlow's in-graph floors: the dA's five matmuls, the classifier's 11 + momentum."""
    import finetune_throughput
    import pretrain_throughput

    result = {f"pretrain b={b}": pretrain_throughput.floor_seconds(rows, b, 500) for b in (20, 256)}
    result["finetune b=20"] = finetune_throughput.floor_seconds(rows, 0.9)[0]
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    import importlib.metadata

    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("keras", "tensorflow", "jax", "torch")
    )
    print(f"# {os.cpu_count()} cores, {versions}; {args.rows} rows, {args.epochs} epochs per run")
    configurations = dict(CONFIGURATIONS)
    runs = {name: [] for name in configurations}
    if args.torch_compile:
        runs["torch, torch.compile"] = []
    started = time.time()
    for round_ in range(args.rounds):
        for name, (backend, env) in configurations.items():
            runs[name].append(run_worker(args, backend, env))
            print(f"# round {round_ + 1}: {name} done ({time.time() - started:.0f} s)", flush=True)
        if args.torch_compile:
            runs["torch, torch.compile"].append(run_worker(args, "torch", {}, jit=True))
    floor = floors(args.rows)
    header = f"{'configuration':<38} {'s/epoch':>8} {'/floor':>7} {'median':>7}  epoch-1 cost"
    print(header)
    print("-" * len(header))
    for task, seconds in floor.items():
        print(f"{'floor (TF, in-graph) ' + task:<38} {seconds:8.3f} {1:7.2f}")
        for name, results in runs.items():
            measured = [r[task] for r in results if task in r]
            if not measured:
                continue
            times = [r[0] for r in measured]  # one list of epoch times per round
            best = min(steady(t) for t in times)
            typical = statistics.median([e for t in times for e in t[1:]])
            cost = measured[0][1][0]
            print(
                f"{name + ' ' + task:<38} {best:8.3f} {best / seconds:7.2f} {typical:7.3f}"
                f"  {cost:.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
