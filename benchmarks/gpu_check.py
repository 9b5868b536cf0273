"""GPU check: dA pretraining speed against the GPU's matmul floor, and its costs against the CPU.

Runs under Keras's TensorFlow or JAX backend (`KERAS_BACKEND`); under JAX it
needs no TensorFlow installed (benchmarks/README.md gives the recipe).
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from keras import ops  # noqa: E402
from pretrain_throughput import (  # noqa: E402
    DEFAULT_DATA,
    SEED,
    EpochTimer,
    floor_seconds,
    load_rows,
)

from stackae.stack import Stack, layer_specs, pretrain  # noqa: E402

N_HIDDEN = 500
CHECK_ROWS = 5_000
# float32 sums in another order on another device; float16 matmuls keep ~3 digits.
RTOL = {"float32": 1e-3, "mixed_float16": 1e-2}


class Output:
    """print() that also appends to the --out file."""

    def __init__(self, path):
        self.file = open(path, "w") if path else None  # noqa: SIM115 - closed in close()

    def __call__(self, line=""):
        print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self):
        if self.file:
            self.file.close()


def gpus():
    """The GPUs the backend sees, as printable strings."""
    if keras.backend.backend() == "jax":
        import jax

        return [f"{d} {d.device_kind}" for d in jax.devices() if d.platform == "gpu"]
    import tensorflow as tf

    return [
        f"{gpu.name} {tf.config.experimental.get_device_details(gpu)}"
        for gpu in tf.config.list_physical_devices("GPU")
    ]


def versions():
    import importlib.metadata

    backend = keras.backend.backend()
    return f"{backend} {importlib.metadata.version(backend)}, Keras {keras.__version__}"


def on_cpu():
    """A context in which the backend computes on the CPU (the reference run)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_device(jax.devices("cpu")[0])
    import tensorflow as tf

    return tf.device("/CPU:0")


def initial_weights(n_visible):
    with on_cpu():
        keras.utils.set_random_seed(SEED)
        layer = Stack(layer_specs((N_HIDDEN,)), seed=SEED).encoder_layers[0]
        layer.build((None, n_visible))
        return [ops.convert_to_numpy(v) for v in layer.weights]


def pretrain_layer(x, batch, epochs, initial, policy):
    """Epoch times and costs of one layer pretrained by `stackae.stack.pretrain` under `policy`."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        # Built after the policy is set, so its layers take it.
        stack = Stack(layer_specs((N_HIDDEN,), batch_size=batch, epochs=epochs), seed=SEED)
        stack.build((None, x.shape[1]))
        stack.encoder_layers[0].set_weights(initial)
        timer = EpochTimer()
        history = pretrain(stack, x, callbacks=lambda k: [timer], verbose=0)[0]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return timer.times, history.history["loss"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", nargs="?", default=DEFAULT_DATA, help="MNIST .npz (Keras layout).")
    parser.add_argument("--out", help="Also write the output to this file.")
    parser.add_argument("--quick", action="store_true", help="Small run (for CPU-only machines).")
    args = parser.parse_args(argv)
    out = Output(args.out)
    out(f"# {versions()}")
    for gpu in gpus():
        out(f"# device: {gpu}")
    if not gpus():
        out("# device: no GPU visible; running on the CPU (the CPU check compares CPU with CPU)")
    rows = CHECK_ROWS if args.quick else 50_000
    batches = (20, 256) if args.quick else (20, 256, 4096)
    x, origin = load_rows(args.data, rows)
    out(f"# data: {origin}, {len(x)} rows; 2 epochs each, epoch 2 timed")
    initial = initial_weights(x.shape[1])

    out(
        f"{'policy':<14} {'batch':>6} {'s/epoch':>8} {'samples/s':>10} {'floor s':>8} {'/floor':>7}"
    )
    for policy, dtype in (("float32", "float32"), ("mixed_float16", "float16")):
        for batch in batches:
            times, _ = pretrain_layer(x, batch, 2, initial, policy)
            floor = floor_seconds(rows, batch, N_HIDDEN, dtype=dtype)
            seconds = times[-1]
            samples = (rows // batch) * batch / seconds
            out(
                f"{policy:<14} {batch:>6} {seconds:8.3f} {samples:10.0f} {floor:8.3f} "
                f"{seconds / floor:7.2f}"
            )

    # Epoch-1 cost at corruption 0 on the default device against the CPU, same start.
    subset = x[:CHECK_ROWS]
    with on_cpu():
        _, reference = pretrain_layer(subset, 20, 1, initial, "float32")
    failed = False
    for policy in ("float32", "mixed_float16"):
        _, costs = pretrain_layer(subset, 20, 1, initial, policy)
        relative = abs(costs[0] - reference[0]) / abs(reference[0])
        ok = relative <= RTOL[policy]
        failed |= not ok
        out(
            f"epoch-1 cost, {len(subset)} rows, b=20, {policy}: {costs[0]:.6f} vs CPU float32 "
            f"{reference[0]:.6f}, relative {relative:.1e} (<= {RTOL[policy]:g}): "
            f"{'PASS' if ok else 'FAIL'}"
        )
    out.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
