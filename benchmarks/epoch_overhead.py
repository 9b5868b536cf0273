"""What a run's bookkeeping costs per epoch: checkpoint, checksums, fsync, manifest, history.

    python benchmarks/epoch_overhead.py [--data mnist] [--epochs 6] [--batch-size 256]

Pretrains one 784-500 layer through `stackae.workflows.pretrain_job` (what
`stackae pretrain` runs) and times, in the same process, each epoch's
training and the per-epoch work that makes resume exact
(`Run.record_epoch`: weights + optimizer state written atomically with fsync,
its sha256, the manifest, history.csv). Prints both per epoch and their
ratio; the target is at most 5 % at batch 256 on full MNIST. `--data` takes
what the CLI takes (`mnist` reads STACKAE_MNIST, Keras's cache or downloads).
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


from pretrain_throughput import EpochTimer  # noqa: E402

from stackae import runs, workflows  # noqa: E402
from stackae.config import LayerSpec  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", help="A source name or path, as for the CLI.")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--units", type=int, default=500)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)

    bookkeeping = []
    record_epoch = runs.Run.record_epoch

    def timed_record_epoch(self, *a, **kw):
        started = time.perf_counter()
        record_epoch(self, *a, **kw)
        bookkeeping.append(time.perf_counter() - started)

    runs.Run.record_epoch = timed_record_epoch
    timer = EpochTimer()
    spec = LayerSpec(units=args.units, epochs=args.epochs, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        run = workflows.pretrain_job(
            os.path.join(folder, "run"),
            [spec],
            data=args.data,
            data_options={"limit": args.limit},
            verbose=0,
            callbacks=[timer],
        )
        size = os.path.getsize(run.file(runs.STACK))
    print(f"data: {run.data.name}, {run.data_shapes['train'][0]} rows; batch {args.batch_size}")
    print(f"checkpoint size about {size / 1e6:.1f} MB (stack.keras)")
    print(f"{'epoch':>5} {'train s':>8} {'bookkeeping s':>14} {'ratio %':>8}")
    for e, (train, extra) in enumerate(zip(timer.times, bookkeeping)):
        print(f"{e + 1:>5} {train:>8.3f} {extra:>14.4f} {100 * extra / train:>8.2f}")
    later = list(zip(timer.times[1:], bookkeeping[1:]))  # the first epoch compiles
    ratios = [extra / train for train, extra in later]
    median = statistics.median(extra for _, extra in later)
    print(
        f"after the first epoch: bookkeeping median {median:.4f} s, "
        f"ratio median {100 * statistics.median(ratios):.2f} %, "
        f"max {100 * max(ratios):.2f} % (target <= 5 %)"
    )


if __name__ == "__main__":
    main()
