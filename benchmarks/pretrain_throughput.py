"""Pretraining throughput of one dA layer against the machine's matmul floor and a naive fit.

The TensorFlow rows run in this process; the JAX backend's stackae rows run in
a subprocess (the backend is fixed when Keras is imported) and are printed
against the same floor.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from stackae.data import DataError, load, training_dataset  # noqa: E402
from stackae.stack import Stack, layer_specs, pretrain  # noqa: E402

# As the CLI: "mnist" (STACKAE_MNIST, Keras's cache or a download), or any path.
DEFAULT_DATA = "mnist"
ROWS = 50_000
N_VISIBLE = 784
LEARNING_RATE = 0.1
SEED = 123
MATMULS = 5  # x~W, hW^T and three for the gradients of the tied W
COST_RTOL = 1e-3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=DEFAULT_DATA, help="MNIST: a source name or a path.")
    parser.add_argument("--epochs", type=int, default=5, help="Epochs per configuration (>= 2).")
    parser.add_argument("--gpu", action="store_true", help="Run on the first GPU, not the CPU.")
    parser.add_argument("--quick", action="store_true", help="A reduced run (< 1 minute).")
    parser.add_argument("--no-jax", action="store_true", help="Skip the JAX backend's rows.")
    parser.add_argument("--jax-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch includes compilation")
    return args


def load_rows(path, rows):
    """The first `rows` MNIST training rows, float32 in [0, 1]; mnist-sample tiled if absent."""
    try:
        x = load(path, valid_size=10_000).train.x
        origin = path
    except DataError as err:
        print(f"# {err}; using mnist-sample tiled", file=sys.stderr)
        x = load("mnist-sample", valid_size=0).train.x
        origin = "mnist-sample (tiled)"
    x = np.asarray(x, dtype="float32")
    x = np.tile(x, (-(-rows // len(x)), 1))[:rows]
    return np.ascontiguousarray(x), origin


def flops_per_epoch(steps, batch, n_hidden):
    return MATMULS * 2.0 * batch * N_VISIBLE * n_hidden * steps


def peak_rss_mib():
    # ru_maxrss is in KiB on Linux and only grows: the peak of the whole run so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch of fit()."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def steady(times):
    """The fastest epoch after the first (which includes tracing and compiling).

    On a shared machine other tenants only ever add time (epochs of one run
    here moved between 1.2x and 2.7x the floor), so the fastest epoch is the
    estimate of what the code itself costs; the median is printed beside it.
    """
    return min(times[1:])


def median(times):
    return statistics.median(times[1:])


def floor_seconds(rows, batch, n_hidden, repeats=5, dtype="float32"):
    """Seconds per epoch of only the five matmuls of each step, looped inside one XLA program."""
    if keras.backend.backend() == "jax":
        return jax_floor_seconds(rows, batch, n_hidden, repeats, dtype)
    import tensorflow as tf

    steps = rows // batch
    rng = np.random.default_rng(0)
    data = tf.constant(rng.random((steps * batch, N_VISIBLE), dtype="float32").astype(dtype))
    kernel = tf.constant(rng.uniform(-0.1, 0.1, (N_VISIBLE, n_hidden)).astype(dtype))

    @tf.function(jit_compile=True)
    def epoch(data, kernel):
        def body(i, w):
            x = tf.slice(data, [i * batch, 0], [batch, N_VISIBLE])  # (batch, n_visible)
            h = tf.matmul(x, w)  # (batch, n_hidden)
            z = tf.matmul(h, w, transpose_b=True)  # (batch, n_visible)
            dh = tf.matmul(z, w)  # (batch, n_hidden)
            grad = tf.matmul(x, dh, transpose_a=True) + tf.matmul(z, h, transpose_a=True)
            # The update carries w to the next step, so XLA cannot hoist or drop any matmul.
            return i + 1, w - tf.cast(1e-9, w.dtype) * grad

        return tf.while_loop(lambda i, w: i < steps, body, (tf.constant(0), kernel))[1]

    epoch(data, kernel).numpy()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        epoch(data, kernel).numpy()
        times.append(time.perf_counter() - start)
    return min(times)  # as steady(): the run least disturbed by other tenants


def whole_epoch_step_seconds(x, n_hidden, batch, repeats=5):
    """An epoch as one `AutoEncoder.train_step` call on all its batches at once.

    The same updates as `pretrain`, with no Keras loop and no tf.data: what the
    arithmetic of stackae's step costs beyond the floor's five matmuls.
    """
    if keras.backend.backend() == "jax":
        return jax_whole_epoch_step_seconds(x, n_hidden, batch, repeats)
    import tensorflow as tf

    steps = len(x) // batch
    epoch = tf.constant(x[: steps * batch].reshape(steps, batch, N_VISIBLE))
    model = Stack(layer_specs((n_hidden,)), seed=SEED).autoencoder(0)
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE))
    model.build((None, N_VISIBLE))
    model.optimizer.build(model.trainable_variables)
    step = tf.function(model.train_step, jit_compile=True)
    step(epoch)  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        float(step(epoch)["loss"])
        times.append(time.perf_counter() - start)
    return min(times)


def run_stackae(x, n_hidden, batch, corruption, epochs, group=None):
    """Epoch times, costs and initial weights of `stackae.stack.pretrain` with its defaults."""
    keras.utils.set_random_seed(SEED)
    specs = layer_specs(
        (n_hidden,),
        corruption=corruption,
        batch_size=batch,
        epochs=epochs,
        learning_rate=LEARNING_RATE,
    )
    stack = Stack(specs, seed=SEED)
    stack.build((None, x.shape[1]))
    initial = [ops.convert_to_numpy(v) for v in stack.encoder_layers[0].weights]
    timer = EpochTimer()
    history = pretrain(stack, x, callbacks=lambda k: [timer], verbose=0, group=group)[0]
    return timer.times, history.history["loss"], initial


class NaiveTiedAutoEncoder(keras.Model):
    """The same tied model as a typical user would write it: logits out, loss in compile()."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        n_in = input_shape[-1]
        self.w = self.add_weight(shape=(n_in, self.units), name="kernel")
        self.b = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")
        self.b_prime = self.add_weight(shape=(n_in,), initializer="zeros", name="decoder_bias")

    def call(self, x):
        h = ops.sigmoid(ops.matmul(x, self.w) + self.b)
        return ops.matmul(h, ops.transpose(self.w)) + self.b_prime


def summed_cross_entropy(y_true, logits):
    return ops.sum(ops.softplus(logits) - y_true * logits, axis=-1)


def run_naive(x, n_hidden, batch, epochs, initial):
    model = NaiveTiedAutoEncoder(n_hidden)
    model.build((None, x.shape[1]))
    model.set_weights(initial)
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=summed_cross_entropy)
    timer = EpochTimer()
    history = model.fit(
        x, x, batch_size=batch, epochs=epochs, shuffle=False, callbacks=[timer], verbose=0
    )
    return timer.times, history.history["loss"]


def epoch_zero_order(x, batch):
    """The rows of pretrain's first epoch (layer 0) in the order it visits them."""
    ds, _ = training_dataset(x, batch, seed=SEED)  # its EpochOrder starts at epoch 0
    return np.concatenate([ops.convert_to_numpy(b) for b in ds])


def jax_floor_seconds(rows, batch, n_hidden, repeats=5, dtype="float32"):
    """floor_seconds under JAX: the same five matmuls in one `lax.fori_loop`."""
    import jax
    import jax.numpy as jnp

    steps = rows // batch
    rng = np.random.default_rng(0)
    data = jnp.asarray(rng.random((steps * batch, N_VISIBLE), dtype="float32").astype(dtype))
    kernel = jnp.asarray(rng.uniform(-0.1, 0.1, (N_VISIBLE, n_hidden)).astype(dtype))

    @jax.jit
    def epoch(data, kernel):
        def body(i, w):
            x = jax.lax.dynamic_slice(data, (i * batch, 0), (batch, N_VISIBLE))
            h = x @ w  # (batch, n_hidden)
            z = h @ w.T  # (batch, n_visible)
            dh = z @ w  # (batch, n_hidden)
            grad = x.T @ dh + z.T @ h
            return w - jnp.asarray(1e-9, w.dtype) * grad

        return jax.lax.fori_loop(0, steps, body, kernel)

    epoch(data, kernel).block_until_ready()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        epoch(data, kernel).block_until_ready()
        times.append(time.perf_counter() - start)
    return min(times)


def jax_whole_epoch_step_seconds(x, n_hidden, batch, repeats=5):
    """whole_epoch_step_seconds under JAX: one jitted `AutoEncoder.train_step(state, epoch)`."""
    import jax

    steps = len(x) // batch
    epoch = x[: steps * batch].reshape(steps, batch, N_VISIBLE)
    model = Stack(layer_specs((n_hidden,)), seed=SEED).autoencoder(0)
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE))
    model.build((None, N_VISIBLE))
    model.optimizer.build(model.trainable_variables)
    state = [
        [v.value for v in variables]
        for variables in (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        )
    ]
    step = jax.jit(model.train_step)
    jax.block_until_ready(step(state, epoch))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        logs, _ = step(state, epoch)
        float(logs["loss"])
        times.append(time.perf_counter() - start)
    return min(times)


def jax_worker(args):
    """Under KERAS_BACKEND=jax: the stackae rows as JSON lines, for the parent to print."""
    rows, epochs, batches, corruptions = settings(args)
    x, _ = load_rows(args.data, rows)
    for batch in batches:
        result = {"batch": batch, "step": whole_epoch_step_seconds(x, 500, batch)}
        for corruption in corruptions:
            times, costs, _ = run_stackae(x, 500, batch, corruption, epochs)
            result[f"corruption={corruption}"] = {"times": times, "costs": costs}
        print(json.dumps(result), flush=True)


def jax_rows(args):
    """Run jax_worker in a subprocess with KERAS_BACKEND=jax; its results, one per batch size."""
    command = [sys.executable, os.path.abspath(__file__), "--jax-worker", "--data", args.data]
    command += ["--epochs", str(args.epochs)] + (["--quick"] if args.quick else [])
    env = dict(os.environ, KERAS_BACKEND="jax")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"the JAX rows failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def settings(args):
    """(rows, epochs, batch sizes, corruptions) of this run."""
    rows = 5_000 if args.quick else ROWS
    epochs = 3 if args.quick else args.epochs  # two timed epochs: one can be another tenant's
    return rows, epochs, (20, 256), (0.0, 0.3)


class Table:
    """Rows of the results table, printed as they come so a long run shows progress."""

    HEADER = (
        f"{'configuration':<34} {'s/epoch':>8} {'samples/s':>10} {'GFLOP/s':>8} "
        f"{'/floor':>7} {'/naive':>7} {'RSS MiB':>8} {'median':>7}"
    )

    def __init__(self):
        self.lines = [self.HEADER, "-" * len(self.HEADER)]
        print(self.HEADER, flush=True)

    def add(self, name, seconds, rows, batch, n_hidden, floor=None, naive=None, typical=None):
        steps = rows // batch
        gflops = flops_per_epoch(steps, batch, n_hidden) / seconds / 1e9
        ratio_floor = f"{seconds / floor:7.2f}" if floor else f"{'':>7}"
        ratio_naive = f"{naive / seconds:6.2f}x" if naive else f"{'':>7}"
        line = (
            f"{name:<34} {seconds:8.3f} {steps * batch / seconds:10.0f} {gflops:8.1f} "
            f"{ratio_floor} {ratio_naive} {peak_rss_mib():8.0f}"
            + (f" {typical:7.3f}" if typical else "")
        )
        self.note(line)

    def note(self, line):
        self.lines.append(line)
        print(line, flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.jax_worker:
        return jax_worker(args)
    import tensorflow as tf

    if args.gpu:
        if not tf.config.list_physical_devices("GPU"):
            sys.exit("--gpu: TensorFlow sees no GPU")
        device = "/GPU:0"
    else:
        # Hide any GPU, so Keras's defaults are the ones a CPU-only user gets.
        tf.config.set_visible_devices([], "GPU")
        device = "/CPU:0"
    rows, epochs, batches, corruptions = settings(args)
    scale_rows = (2_000, 5_000) if args.quick else (10_000, 25_000, 50_000)
    scale_hidden = (250, 500) if args.quick else (250, 500, 1000)

    x, origin = load_rows(args.data, rows)
    versions = f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    if not args.no_jax:
        import importlib.metadata

        versions += f", JAX {importlib.metadata.version('jax')} (its rows: KERAS_BACKEND=jax)"
    print(f"# {device}, {os.cpu_count()} cores, {versions}")
    print(
        f"# data: {origin}, {len(x)} rows; {epochs} epochs per run; s/epoch: the fastest of "
        "epochs 2.. (the floor: of 5 repeats), median: their median"
    )
    print("# ratios: /floor = s/epoch over the floor's; /naive = naive s/epoch over this one's")
    # The JAX subprocess first, alone: the two backends never share the 2 cores.
    jax_results = {} if args.no_jax else {r["batch"]: r for r in jax_rows(args)}
    failures = []
    with tf.device(device):
        floors = {b: floor_seconds(rows, b, 500) for b in batches}
        table = Table()
        naive = {}
        for batch in batches:
            table.add(f"floor (5 matmuls, in-graph) b={batch}", floors[batch], rows, batch, 500)
            table.add(
                f"stackae train_step, 1 call/epoch b={batch}",
                whole_epoch_step_seconds(x, 500, batch),
                rows,
                batch,
                500,
                floors[batch],
            )
            times, costs, initial = run_stackae(x, 500, batch, 0.0, epochs)
            n_times, n_costs = run_naive(epoch_zero_order(x, batch), 500, batch, epochs, initial)
            naive[batch] = steady(n_times)
            table.add(
                f"naive model.fit b={batch}",
                naive[batch],
                rows,
                batch,
                500,
                floors[batch],
                typical=median(n_times),
            )

            def stackae_row(name, times, batch=batch):
                table.add(
                    name,
                    steady(times),
                    rows,
                    batch,
                    500,
                    floors[batch],
                    naive[batch],
                    median(times),
                )

            stackae_row(f"stackae b={batch} corruption=0", times)
            relative = abs(costs[0] - n_costs[0]) / abs(n_costs[0])
            verdict = "PASS" if relative <= COST_RTOL else "FAIL"
            if verdict == "FAIL":
                failures.append(batch)
            table.note(
                f"  epoch-1 cost b={batch}: stackae {costs[0]:.6f}, naive {n_costs[0]:.6f}, "
                f"relative difference {relative:.1e} (<= {COST_RTOL:g}): {verdict}"
            )
            # Without grouping: one batch per training step, the Keras loop around each.
            times, single_costs, _ = run_stackae(x, 500, batch, 0.0, epochs, group=1)
            stackae_row(f"stackae b={batch} corruption=0 group=1", times)
            if not np.allclose(single_costs, costs, rtol=1e-6, atol=0):
                failures.append(batch)
                table.note(f"  group=1 costs differ: {single_costs} vs {costs}: FAIL")
            for corruption in corruptions[1:]:
                stackae_row(
                    f"stackae b={batch} corruption={corruption}",
                    run_stackae(x, 500, batch, corruption, epochs)[0],
                )
            if batch in jax_results:
                jax_result = jax_results[batch]
                table.add(
                    f"jax: train_step, 1 call/epoch b={batch}",
                    jax_result["step"],
                    rows,
                    batch,
                    500,
                    floors[batch],
                )
                for corruption in corruptions:
                    stackae_row(
                        f"jax: stackae b={batch} corruption={corruption:g}",
                        jax_result[f"corruption={corruption}"]["times"],
                    )
                jax_cost = jax_result["corruption=0.0"]["costs"][0]
                # Each backend's pipeline draws its own epoch order: close, not equal.
                table.note(
                    f"  epoch-1 cost b={batch}: jax {jax_cost:.6f}, tensorflow {costs[0]:.6f} "
                    f"(other batch order), relative {abs(jax_cost - costs[0]) / costs[0]:.1e}"
                )

        table.note("scaling (stackae, b=20, corruption 0):")
        for n in scale_rows:
            seconds = steady(run_stackae(x[:n], 500, 20, 0.0, epochs)[0])
            table.add(f"  rows={n} hidden=500", seconds, n, 20, 500, floor_seconds(n, 20, 500))
        for units in scale_hidden:
            seconds = steady(run_stackae(x, units, 20, 0.0, epochs)[0])
            table.add(
                f"  rows={rows} hidden={units}",
                seconds,
                rows,
                20,
                units,
                floor_seconds(rows, 20, units),
            )
    print()
    print("\n".join(table.lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
