"""Memory and speed of one pretraining epoch streamed from a .npy memmap, N rows vs 60,000."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

N_FEATURES = 784
BATCH = 256
BASELINE_ROWS = 60_000


def write_npy(path, rows, seed=0):
    """rows x 784 float32 uniform in [0, 1], written in blocks.

    Plain writes, not a writable memmap: mapped pages would count in this process's
    peak RSS, and a child forked from it inherits that peak in ru_maxrss.
    """
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, N_FEATURES)}
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(f, header)
        for start in range(0, rows, 50_000):
            block = rng.random((min(50_000, rows - start), N_FEATURES), dtype=np.float32)
            f.write(block.tobytes())


def child(path):
    """One epoch of a 784-500 AutoEncoder on the file; prints a JSON line of timings."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    import stackae
    from stackae import data

    start = time.perf_counter()
    x = data.load(path, valid_size=0).train.x
    loaded = time.perf_counter() - start
    assert isinstance(x, np.memmap), type(x)
    steps = data.steps_per_epoch(len(x), BATCH)
    model = stackae.AutoEncoder(500, seed=0)
    model.compile()
    marks = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.append((batch, time.perf_counter()))

    ds, order = data.training_dataset(x, BATCH, seed=0)
    start = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=[order, Clock()])
    total = time.perf_counter() - start
    # The first call includes XLA compilation; the rate after it is the steady one.
    first_batch, first_time = marks[0]
    steady_rows = (steps - first_batch - 1) * BATCH
    steady = steady_rows / (marks[-1][1] - first_time) if steady_rows else float("nan")
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    result = {"validate_s": loaded, "fit_s": total, "rows_per_s": steps * BATCH / total}
    result["vm_hwm_mb"] = hwm / 1024
    print(json.dumps({**result, "steady_rows_per_s": steady}))


def measure(rows, folder):
    path = os.path.join(folder, f"stream_{rows}.npy")
    try:
        start = time.perf_counter()
        write_npy(path, rows)
        written = time.perf_counter() - start
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", path], stdout=subprocess.PIPE, text=True
        )
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status:
            raise SystemExit(f"child for {rows} rows failed with status {status}")
        result = json.loads(output.strip().splitlines()[-1])
        # ru_maxrss is in KiB on Linux.
        return {"rows": rows, "write_s": written, "peak_rss_mb": usage.ru_maxrss / 1024, **result}
    finally:
        if os.path.exists(path):
            os.remove(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the big file")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write the files")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    gb = args.rows * N_FEATURES * 4 / 1e9
    print(f"file of {args.rows:,} x {N_FEATURES} float32 = {gb:.2f} GB in {args.dir}")
    print(
        f"{'rows':>10} {'file GB':>8} {'peak RSS MB':>12} {'validate s':>11} {'fit s':>7} "
        f"{'rows/s':>9} {'steady rows/s':>14}"
    )
    for rows in (BASELINE_ROWS, args.rows):
        r = measure(rows, args.dir)
        print(
            f"{rows:>10,} {rows * N_FEATURES * 4 / 1e9:>8.2f} {r['peak_rss_mb']:>12.0f} "
            f"{r['vm_hwm_mb']:>9.0f} "
            f"{r['validate_s']:>11.2f} {r['fit_s']:>7.1f} {r['rows_per_s']:>9.0f} "
            f"{r['steady_rows_per_s']:>14.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
