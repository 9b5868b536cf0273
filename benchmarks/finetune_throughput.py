"""Fine-tuning throughput of the SdA classifier against the matmul floor and a plain fit."""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from pretrain_throughput import EpochTimer, median, steady  # noqa: E402

from stackae.config import FinetuneSpec  # noqa: E402
from stackae.data import DataError, load  # noqa: E402
from stackae.finetuning import finetune, make_finetuner  # noqa: E402

SIZES = (784, 1000, 1000, 1000, 10)  # the SdA example's classifier
ROWS = 50_000
BATCH = 20
LEARNING_RATE = 0.1
MOMENTUM = 0.9
DROPOUT = (0.1, 0.2)  # the example's: on the input, after each hidden layer
SEED = 123


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data",
        default="mnist",
        help="A stackae.data source or file (default: mnist, found as stackae.data.load finds it; "
        "mnist-sample tiled when absent).",
    )
    parser.add_argument("--epochs", type=int, default=4, help="Epochs per stackae run (>= 2).")
    parser.add_argument("--old-epochs", type=int, default=2, help="Epochs per plain-fit run.")
    parser.add_argument("--quick", action="store_true", help="A reduced run (about 1 minute).")
    args = parser.parse_args(argv)
    if min(args.epochs, args.old_epochs) < 2:
        parser.error("--epochs and --old-epochs must be >= 2: the first epoch includes compiling")
    return args


def load_rows(source, rows):
    """The first `rows` training rows and labels; mnist-sample tiled if `source` is absent."""
    try:
        split = load(source, valid_size=10_000).train
        origin = source
    except DataError as err:
        print(f"# {err}; using mnist-sample tiled", file=sys.stderr)
        split = load("mnist-sample", valid_size=0).train
        origin = "mnist-sample (tiled)"
    reps = -(-rows // len(split.x))
    x = np.tile(np.asarray(split.x, dtype="float32"), (reps, 1))[:rows]
    y = np.tile(np.asarray(split.y, dtype="int64"), reps)[:rows]
    return np.ascontiguousarray(x), y, origin


def classifier(dropout):
    """The 784-1000-1000-1000-10 sigmoid classifier, as export.classifier lays it out."""
    keras.utils.set_random_seed(SEED)
    input_rate, hidden_rate = DROPOUT if dropout else (0.0, 0.0)
    layers = [keras.Input((SIZES[0],))]
    if input_rate:
        layers.append(keras.layers.Dropout(input_rate))
    for units in SIZES[1:-1]:
        layers.append(keras.layers.Dense(units, activation="sigmoid"))
        if hidden_rate:
            layers.append(keras.layers.Dropout(hidden_rate))
    layers.append(keras.layers.Dense(SIZES[-1], activation="softmax"))
    return keras.Sequential(layers)


def spec(epochs, dropout, momentum=MOMENTUM):
    input_rate, hidden_rate = DROPOUT if dropout else (0.0, 0.0)
    return FinetuneSpec(
        epochs=epochs,
        batch_size=BATCH,
        learning_rate=LEARNING_RATE,
        momentum=momentum,
        dropout=hidden_rate,
        input_dropout=input_rate,
    )


def matmul_flops(steps):
    """Forward (4), weight-gradient (4) and input-gradient (3) matmuls of each step."""
    pairs = list(zip(SIZES[:-1], SIZES[1:]))
    forward = sum(2.0 * BATCH * a * b for a, b in pairs)
    return steps * (2 * forward + sum(2.0 * BATCH * a * b for a, b in pairs[1:]))


def floor_seconds(rows, momentum, repeats=3):
    """Seconds per epoch of the 11 matmuls of each step and the SGD update, in one XLA loop.

    The weights (and with `momentum`, the momentum: m = 0.9 m - lr g, w += m)
    are variables updated in place each step, as a Keras optimizer holds them;
    the update carries the weights to the next step, so XLA can neither hoist
    nor drop a matmul. No activations, biases or loss: this is the floor, not
    a model.
    """
    steps = rows // BATCH
    rng = np.random.default_rng(0)
    data = tf.constant(rng.random((steps * BATCH, SIZES[0]), dtype="float32"))
    kernels = [
        tf.Variable(rng.uniform(-0.05, 0.05, (a, b)).astype("float32"))
        for a, b in zip(SIZES[:-1], SIZES[1:])
    ]
    moments = [tf.Variable(tf.zeros_like(w)) for w in kernels]

    def gradients(i):
        acts = [tf.slice(data, [i * BATCH, 0], [BATCH, SIZES[0]])]  # (batch, 784)
        for w in kernels:
            acts.append(tf.matmul(acts[-1], w))
        delta, grads = acts[-1], []
        for k in reversed(range(len(kernels))):
            grads.insert(0, tf.matmul(acts[k], delta, transpose_a=True))
            if k:
                delta = tf.matmul(delta, kernels[k], transpose_b=True)
        return grads

    @tf.function(jit_compile=True)
    def epoch():
        def body(i):
            for w, m, g in zip(kernels, moments, gradients(i)):
                if momentum:
                    m.assign(momentum * m - 1e-9 * g)
                    w.assign_add(m)
                else:
                    w.assign_sub(1e-9 * g)
            return i + 1

        tf.while_loop(lambda i: i < steps, body, (tf.constant(0),))
        return kernels[0].read_value()

    epoch().numpy()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        epoch().numpy()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def run_stackae(x, y, epochs, dropout, momentum=MOMENTUM):
    """Epoch times of `stackae.finetune` with its defaults (no validation set)."""
    model = classifier(dropout)
    timer = EpochTimer()
    settings = spec(epochs, dropout, momentum)
    finetune(model, (x, y), spec=settings, seed=SEED, callbacks=[timer], verbose=0)
    return timer.times


def whole_epoch_step_seconds(x, y, dropout, repeats=3):
    """An epoch as one `Finetuner.train_step` call: stackae's arithmetic, no Keras loop."""
    steps = len(x) // BATCH
    data = (
        tf.constant(x[: steps * BATCH].reshape(steps, BATCH, -1)),
        tf.constant(y[: steps * BATCH].reshape(steps, BATCH)),
    )
    finetuner = make_finetuner(classifier(dropout), spec(1, dropout), seed=SEED)
    finetuner.build((None, SIZES[0]))
    finetuner.optimizer.build(finetuner.trainable_variables)
    step = tf.function(finetuner.train_step, jit_compile=True)
    step(data)  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        float(step(data)["loss"])
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def run_plain_fit(x, y, epochs, dropout):
    """The path fine-tuning took before: model.fit on arrays, XLA, 64 steps per call,
    Keras's Dropout layers."""
    model = classifier(dropout)
    model.compile(
        optimizer=spec(epochs, dropout).make_optimizer(),
        loss="sparse_categorical_crossentropy",
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=True,
        steps_per_execution=64,
    )
    timer = EpochTimer()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, callbacks=[timer], verbose=0)
    return timer.times


class Table:
    HEADER = (
        f"{'configuration':<44} {'s/epoch':>8} {'rows/s':>8} {'GFLOP/s':>8} "
        f"{'/floor':>7} {'/floor+m':>8} {'median':>7}"
    )

    def __init__(self, rows):
        self.rows = rows
        self.floors = {}
        self.lines = [self.HEADER, "-" * len(self.HEADER)]
        print(self.HEADER, flush=True)

    def add(self, name, seconds, typical):
        gflops = matmul_flops(self.rows // BATCH) / seconds / 1e9
        ratios = [
            f"{seconds / self.floors[k]:{w}.2f}" if k in self.floors else " " * w
            for k, w in ((0.0, 7), (MOMENTUM, 8))
        ]
        line = (
            f"{name:<44} {seconds:8.3f} {self.rows / seconds:8.0f} {gflops:8.1f} "
            f"{ratios[0]} {ratios[1]} {typical:7.3f}"
        )
        self.lines.append(line)
        print(line, flush=True)


def main(argv=None):
    args = parse_args(argv)
    tf.config.set_visible_devices([], "GPU")  # the defaults a CPU-only user gets
    rows = 5_000 if args.quick else ROWS
    epochs = 2 if args.quick else args.epochs
    old_epochs = 2 if args.quick else args.old_epochs
    x, y, origin = load_rows(args.data, rows)
    sizes = "-".join(map(str, SIZES))
    print(
        f"# {os.cpu_count()} cores, TensorFlow {tf.__version__}, Keras {keras.__version__}\n"
        f"# {sizes} classifier, {len(x)} rows of {origin}, batch {BATCH}, SGD lr "
        f"{LEARNING_RATE} momentum {MOMENTUM}; dropout {DROPOUT[0]} input / {DROPOUT[1]} hidden "
        "where on\n"
        f"# s/epoch: the fastest epoch after the first ({epochs} epochs a stackae run, "
        f"{old_epochs} a plain-fit run; floors and train_step: of 3 repeats); median beside it\n"
        "# /floor: over the floor with plain SGD; /floor+m: over the floor with momentum; "
        "GFLOP/s counts the 11 matmuls only; no validation set"
    )
    with tf.device("/CPU:0"):
        table = Table(len(x))
        floors = {
            0.0: "floor: 11 matmuls + SGD update, 1 XLA loop",
            MOMENTUM: f"floor: 11 matmuls + momentum {MOMENTUM} update",
        }
        for momentum, name in floors.items():
            seconds, typical = floor_seconds(len(x), momentum)
            table.floors[momentum] = seconds
            table.add(name, seconds, typical)
        for dropout in (False, True):
            label = "dropout" if dropout else "no dropout"
            times = run_stackae(x, y, epochs, dropout)
            table.add(f"stackae finetune, {label}", steady(times), median(times))
        table.add(
            "stackae train_step, 1 call/epoch, dropout", *whole_epoch_step_seconds(x, y, True)
        )
        times = run_stackae(x, y, epochs, True, momentum=0.0)
        table.add("stackae finetune, dropout, momentum 0", steady(times), median(times))
        for dropout in (False, True):
            label = "dropout" if dropout else "no dropout"
            times = run_plain_fit(x, y, old_epochs, dropout)
            table.add(f"plain model.fit (before), {label}", steady(times), median(times))
    print()
    print("\n".join(table.lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
