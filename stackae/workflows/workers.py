"""Where a job runs: a worker's scratch folder and the distribution strategy's scope."""

import contextlib
import shutil
import tempfile
from pathlib import Path

from stackae import runs


@contextlib.contextmanager
def worker_scratch(out, resume, chief):
    """Where this process writes: `out` on the chief, a scratch copy on other workers.

    Workers of a MultiWorkerMirroredStrategy must make the same saves as the
    chief (saving runs collective ops), so each writes into a scratch folder of
    its own, removed at the end, and nothing they write can collide.
    """
    if chief:
        yield out
        return
    folder = Path(tempfile.mkdtemp(prefix="stackae-worker-"))
    scratch = folder / "run"
    try:
        if resume:
            shutil.copytree(out, scratch, ignore=shutil.ignore_patterns(runs.LOCK))
        yield str(scratch)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def strategy_scope(strategy):
    """The strategy's scope (tf.distribute), or no scope where there is none (JAX)."""
    scope = getattr(strategy, "scope", None)
    return scope() if scope is not None else contextlib.nullcontext()
