"""A conv layer's pretraining epoch: stackae against a compiled floor and plain PyTorch eager.

One tied convolutional autoencoder layer (32 filters 5x5 on 28x28 MNIST
images, with and without 2x2 max-pooling; masking noise, the summed
cross-entropy, SGD, batch 20: stackae's defaults for a conv layer) trained
for an epoch on the same images, three ways, in this one process:

- **stackae**: `stackae.pretrain` of a one-layer `Stack`, with its default
  (on CPUs, no XLA for a convolution) and with `jit_compile=True`;
- **floor**: the same arithmetic with no framework around it: masking noise,
  `tf.nn.conv2d` + bias + sigmoid, (max-pool and Masci's unpooling), the
  transposed convolution with the same kernel, the cross-entropy, its
  gradient (`tf.GradientTape`) and the SGD update, for every batch of the
  epoch inside one `tf.while_loop` in one `tf.function`, with XLA
  (`jit_compile=True`, as stackae compiles its steps) and without;
- **PyTorch eager**: the same model written plainly, `F.conv2d` /
  `F.max_pool2d(return_indices=True)` / `F.max_unpool2d` /
  `F.conv_transpose2d` with the same weight tensor, `torch.optim.SGD`,
  `torch.set_num_threads(2)` (and 1: on this loaded 2-core machine PyTorch
  with 2 threads was several times slower than with 1), a Python loop over
  the batches.

Each is timed over `--epochs` epochs; the figure is the fastest epoch after
the first (which includes tracing and compiling), as the other throughput
benchmarks do: on a shared machine other tenants only add time.

    python benchmarks/conv_speed.py              # about 10 minutes on 2 shared cores
    python benchmarks/conv_speed.py --quick      # a smoke run, under a minute
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from pretrain_throughput import EpochTimer, median, steady  # noqa: E402

import stackae  # noqa: E402
from stackae.data import load  # noqa: E402

FILTERS, KERNEL, BATCH, LEARNING_RATE, CORRUPTION, SEED = 32, 5, 20, 0.03, 0.3, 123


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--mnist",
        default="mnist",
        help="MNIST: a source name (mnist: $STACKAE_MNIST, Keras's cache or a download) or a path.",
    )
    p.add_argument("--rows", type=int, default=10_000, help="Training images per epoch.")
    p.add_argument("--epochs", type=int, default=3, help="Epochs per configuration (>= 2).")
    p.add_argument("--only", default="pool,nopool", help="Comma list of pool, nopool.")
    p.add_argument("--quick", action="store_true", help="A smoke run (1,000 images).")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.epochs = 1000, 2
    if args.epochs < 2:
        p.error("--epochs must be >= 2: the first epoch includes compilation")
    return args


# ---------------------------------------------------------------- stackae


def run_stackae(x, pool, epochs, jit_compile):
    """Epoch times of `stackae.pretrain` on a one-layer conv stack, and its initial weights."""
    keras.utils.set_random_seed(SEED)
    layers = f"conv{FILTERS}x{KERNEL}" + (",pool2" if pool else "")
    specs = stackae.layer_specs(
        layers, corruption=CORRUPTION, epochs=epochs, batch_size=BATCH, learning_rate=LEARNING_RATE
    )
    stack = stackae.Stack(specs, seed=SEED)
    stack.build((None, *x.shape[1:]))
    initial = [keras.ops.convert_to_numpy(v) for v in stack.encoder_layers[0].weights]
    timer = EpochTimer()
    history = stackae.pretrain(
        stack, x, callbacks=lambda k: [timer], verbose=0, jit_compile=jit_compile
    )[0]
    return timer.times, history.history["loss"], initial


# ---------------------------------------------------------------- the compiled floor


def floor_times(x, pool, epochs, initial, jit_compile):
    """Epoch times of the whole epoch's steps looped inside one tf.function."""
    import tensorflow as tf

    steps = len(x) // BATCH
    data = tf.constant(x[: steps * BATCH].reshape(steps, BATCH, *x.shape[1:]))
    kernel, bias, decoder_bias = (tf.constant(v) for v in initial)
    lr = tf.constant(LEARNING_RATE, tf.float32)
    out_shape = (BATCH, *x.shape[1:])

    def cost(x, params, step):
        k, b, c = params
        u = tf.random.stateless_uniform(tf.shape(x), tf.stack([tf.constant(SEED), step]))
        noisy = tf.where(u < CORRUPTION, tf.zeros_like(x), x)
        maps = tf.sigmoid(tf.nn.conv2d(noisy, k, 1, "VALID") + b)
        if pool:  # Masci's sparse code: each 2x2 window keeps its maximum where it was
            pooled = tf.nn.max_pool2d(maps, 2, 2, "VALID")
            up = tf.repeat(tf.repeat(pooled, 2, axis=1), 2, axis=2)
            maps = tf.where(tf.equal(tf.stop_gradient(maps), tf.stop_gradient(up)), up, 0.0)
        logits = tf.nn.conv2d_transpose(maps, k, out_shape, 1, "VALID") + c
        flat_x, flat_logits = tf.reshape(x, (BATCH, -1)), tf.reshape(logits, (BATCH, -1))
        return tf.reduce_mean(tf.reduce_sum(tf.nn.softplus(flat_logits) - flat_x * flat_logits, 1))

    @tf.function(jit_compile=jit_compile)
    def epoch(data, k, b, c):
        def body(i, k, b, c, total):
            with tf.GradientTape() as tape:
                tape.watch([k, b, c])
                loss = cost(data[i], (k, b, c), i)
            gk, gb, gc = tape.gradient(loss, [k, b, c])
            return i + 1, k - lr * gk, b - lr * gb, c - lr * gc, total + loss

        _, k, b, c, total = tf.while_loop(
            lambda i, *rest: i < steps, body, (tf.constant(0), k, b, c, tf.constant(0.0))
        )
        return k, b, c, total / steps

    times, losses, params = [], [], (kernel, bias, decoder_bias)
    for _ in range(epochs):  # each epoch goes on from the last one's weights (its own noise)
        start = time.perf_counter()
        *params, loss = epoch(data, *params)
        losses.append(float(loss))
        times.append(time.perf_counter() - start)
    return times, losses


# ---------------------------------------------------------------- PyTorch eager


def torch_times(x, pool, epochs, initial, threads):
    """Epoch times of the tied conv autoencoder written plainly in PyTorch (eager)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    images = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))  # NCHW
    kernel, bias, decoder_bias = initial
    # Keras (kh, kw, in, out) -> PyTorch conv2d (out, in, kh, kw); conv_transpose2d reads the
    # same tensor as (in=filters, out=channels, kh, kw): the adjoint, one weight.
    w = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
    b = torch.nn.Parameter(torch.from_numpy(bias.copy()))
    c = torch.nn.Parameter(torch.from_numpy(decoder_bias.copy()))
    optimizer = torch.optim.SGD([w, b, c], lr=LEARNING_RATE)
    steps = len(images) // BATCH
    times, losses = [], []
    for _ in range(epochs):
        start, total = time.perf_counter(), 0.0
        for i in range(steps):
            xb = images[i * BATCH : (i + 1) * BATCH]
            noisy = torch.where(torch.rand_like(xb) < CORRUPTION, torch.zeros_like(xb), xb)
            h = torch.sigmoid(F.conv2d(noisy, w, b))
            if pool:
                pooled, where = F.max_pool2d(h, 2, return_indices=True)
                h = F.max_unpool2d(pooled, where, 2, output_size=h.shape[-2:])
            logits = F.conv_transpose2d(h, w, c)
            loss = (F.softplus(logits) - xb * logits).sum(dim=(1, 2, 3)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        times.append(time.perf_counter() - start)
        losses.append(total / steps)
    return times, losses


# ---------------------------------------------------------------- the table


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf
    import torch

    x = np.asarray(load(args.mnist, valid_size=0).train.x[: args.rows], dtype="float32")
    x = x.reshape(-1, 28, 28, 1)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; stackae {stackae.__version__}, "
        f"Keras {keras.__version__}, TensorFlow {tf.__version__}, PyTorch {torch.__version__}, "
        f"{os.cpu_count()} CPUs; {len(x)} MNIST images, conv{FILTERS}x{KERNEL}, batch {BATCH}, "
        f"SGD lr {LEARNING_RATE}, masking {CORRUPTION}; {args.epochs} epochs each, "
        "s/epoch = fastest after the first (median)"
    )
    print("| layer | what | s/epoch | median | first epoch | mean cost, last epoch |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for config in args.only.split(","):
        pool = config == "pool"
        name = f"conv{FILTERS}x{KERNEL}" + (",pool2" if pool else "")
        rows = {}
        times, losses, initial = run_stackae(x, pool, args.epochs, True)
        rows["stackae pretrain, jit_compile=True (XLA)"] = (times, losses)
        times, losses, _ = run_stackae(x, pool, args.epochs, None)
        rows["stackae pretrain (default on CPUs: no XLA)"] = (times, losses)
        rows["floor: one tf.function, XLA"] = floor_times(x, pool, args.epochs, initial, True)
        rows["floor: one tf.function, no XLA"] = floor_times(x, pool, args.epochs, initial, False)
        rows["PyTorch eager (2 threads)"] = torch_times(x, pool, args.epochs, initial, 2)
        rows["PyTorch eager (1 thread)"] = torch_times(x, pool, args.epochs, initial, 1)
        best = {}
        for what, (times, losses) in rows.items():
            fastest, middle = steady(times), median(times)
            best[what] = fastest
            print(
                f"| {name} | {what} | {fastest:.2f} | {middle:.2f} | {times[0]:.2f} "
                f"| {losses[-1]:.2f} |",
                flush=True,
            )
        stackae_s = best["stackae pretrain, jit_compile=True (XLA)"]
        floor_xla, floor_best = (
            best["floor: one tf.function, XLA"],
            min(best["floor: one tf.function, XLA"], best["floor: one tf.function, no XLA"]),
        )
        no_xla = best["stackae pretrain (default on CPUs: no XLA)"]
        torch_2, torch_1 = best["PyTorch eager (2 threads)"], best["PyTorch eager (1 thread)"]
        ratios.append(
            f"{name}: stackae XLA / XLA floor {stackae_s / floor_xla:.2f}x, "
            f"/ fastest floor {stackae_s / floor_best:.2f}x; "
            f"stackae default (no XLA) / fastest floor {no_xla / floor_best:.2f}x; "
            f"PyTorch eager 2 threads / stackae XLA {torch_2 / stackae_s:.2f}x, "
            f"/ stackae default {torch_2 / no_xla:.2f}x; "
            f"PyTorch eager 1 thread / stackae XLA {torch_1 / stackae_s:.2f}x, "
            f"/ stackae default {torch_1 / no_xla:.2f}x"
        )
    print()
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
