"""Anomaly detection: rows scored by their reconstruction error, thresholds, `stackae score`.

A row's error is the mean over its features of the squared difference between
the row and the stack's reconstruction of it (encoded up every layer, decoded
back down every tied decoder, no noise), both in the units the stack was
trained on: the features after the run's (or the estimator's) scaling, so
every feature counts alike whatever its raw units; pixels are in [0, 1]. It is
the squared error whatever loss trained the layers. Rows are scaled but never
clipped here: a value outside the training range counts in full.

A stack whose first layer is convolutional scores images: an image's error
is the mean over its pixels (and channels) of the squared difference, and
its per-feature errors are per pixel, in the image's row-major order (pixel
(i, j) in channel k of an h x w x c image is feature (i w + j) c + k), so each
row of them reshapes to the image's (h, w, c) error map. A pooling layer
reconstructs from the positions of its own maxima (`Stack.reconstruct`).

A threshold turns errors into outlier flags: a row whose error is above it is
an outlier. It is fitted on the training rows' errors from `contamination`:

- a fraction c in (0, 0.5]: the (1 - c) quantile of the errors (linear
  interpolation, as `numpy.percentile`), so a fraction c of the training rows
  lies above it, as scikit-learn's `IsolationForest` does with its own score;
- "auto": the errors' median plus 3 robust standard deviations (1.4826 times
  the median absolute deviation from the median), the Hampel identifier: it
  needs no guess of the outlier fraction, and on skewed error distributions
  (errors are sums of squares) flags a few percent of normal rows.

The estimator's side is `stackae.sklearn.StackedDenoisingAutoencoder`
(`contamination`, `offset_` = minus the threshold, `decision_function`,
`predict`); the command line's `stackae pretrain --contamination` and
`stackae score` use the functions here. Importing this module imports no backend.
"""

import numbers

import numpy as np

from stackae.config import PREDICT_BATCH

AUTO = "auto"
# Times the median absolute deviation that estimates a normal distribution's standard deviation.
MAD_TO_STD = 1.4826
# "auto": robust standard deviations above the median where outliers begin.
AUTO_DEVIATIONS = 3.0
MAX_CONTAMINATION = 0.5


def check_contamination(contamination, name="contamination"):
    """`contamination` itself if it is "auto" or a number in (0, 0.5]; ValueError otherwise."""
    if isinstance(contamination, str) and contamination == AUTO:
        return contamination
    if (
        isinstance(contamination, numbers.Real)
        and not isinstance(contamination, bool)
        and 0 < contamination <= MAX_CONTAMINATION
    ):
        return float(contamination)
    raise ValueError(
        f"`{name}` must be 'auto' or a number in (0, 0.5]. Received: {name}={contamination!r}"
    )


def threshold(errors, contamination=AUTO):
    """The error above which a row is an outlier, fitted on `errors` (see the module's text)."""
    contamination = check_contamination(contamination)
    errors = np.asarray(errors, dtype=np.float64).reshape(-1)
    if errors.size == 0:
        raise ValueError("a threshold needs the errors of at least one row")
    if contamination == AUTO:
        median = np.median(errors)
        deviation = MAD_TO_STD * np.median(np.abs(errors - median))
        return float(median + AUTO_DEVIATIONS * deviation)
    return float(np.percentile(errors, 100.0 * (1.0 - contamination)))


def reconstruction_errors(stack, x, *, per_feature=False, on_block=None, block_rows=None):
    """Each row's reconstruction error through `stack`, in float64.

    `x`: rows already scaled as the stack was trained (an array, a memmap or a
    `stackae.data.Rows` view, read a block at a time, so memory stays bounded);
    for a stack that encodes images, images (rows, *shape) or the same images
    flattened to rows (row-major). Returns (rows,) mean squared errors, or
    with `per_feature` the (rows, features) squared errors, whose row means
    are those errors (for images: per pixel and channel, row-major).
    `on_block(start, errors)` is called after each block (progress, writing
    as the rows go) with the block's first row and its result.
    """
    n, width = len(x), int(np.prod(example_shape(stack, x)))
    out = np.empty((n, width) if per_feature else (n,), np.float64)
    for start, squared in _squared_errors(stack, x, block_rows):
        found = squared if per_feature else squared.mean(axis=1)
        out[start : start + len(squared)] = found
        if on_block is not None:
            on_block(start, found)
    return out


def iter_errors(stack, x, block_rows=None):
    """(first row, (rows, features) squared errors) of each block of scaled rows `x`, in order."""
    yield from _squared_errors(stack, x, block_rows)


def example_shape(stack, x):
    """The shape of one example `stack` encodes; ValueError (one line) unless `x` holds such
    examples, or rows of their size (images flattened row-major)."""
    from stackae.export import _input_shape

    shape = tuple(_input_shape(stack))
    found = tuple(int(d) for d in x.shape[1:])
    if found != shape and found != (int(np.prod(shape)),):
        what = "rows of" if len(shape) == 1 else "images of shape"
        size = shape[0] if len(shape) == 1 else shape
        raise ValueError(
            f"The stack reconstructs {what} {size}. Received: x with shape {tuple(x.shape)}"
        )
    return shape


def _squared_errors(stack, x, block_rows):
    shape = example_shape(stack, x)
    width = int(np.prod(shape))
    block_rows = block_rows or _block_rows(width)
    for start in range(0, len(x), block_rows):
        block = np.asarray(x[start : start + block_rows], dtype=np.float32)
        block = block.reshape(len(block), *shape)
        rebuilt = np.concatenate(
            [
                _reconstruct(stack, block[i : i + PREDICT_BATCH])
                for i in range(0, len(block), PREDICT_BATCH)
            ]
        )
        squared = np.square(block.astype(np.float64) - rebuilt)
        yield start, squared.reshape(len(block), width)


def full_batch(rows):
    """`rows` padded with zero rows to PREDICT_BATCH rows.

    The CPU's matrix kernels round a row's result differently by where it
    falls in a small batch; in a full batch each row's result is its own,
    so a row scores the same alone, among others, or in any order.
    """
    missing = PREDICT_BATCH - len(rows)
    if missing <= 0:
        return rows
    return np.concatenate([rows, np.zeros((missing, *rows.shape[1:]), rows.dtype)])


def _block_rows(width):
    """Rows per block: about 32 MB of float64 errors, whole prediction batches."""
    rows = max(1, (1 << 25) // (8 * max(width, 1)))
    return max(PREDICT_BATCH, rows // PREDICT_BATCH * PREDICT_BATCH)


def _reconstruct(stack, block):
    """The stack's reconstruction of float32 examples, as a float32 NumPy array."""
    import keras

    rebuilt = stack.reconstruct(keras.ops.convert_to_tensor(full_batch(block)))
    if keras.backend.backend() == "tensorflow":
        # A TensorFlow tensor's own .numpy(): ops.convert_to_numpy trips a NumPy 2 warning.
        return rebuilt.numpy()[: len(block)]
    return keras.ops.convert_to_numpy(rebuilt)[: len(block)]


# ---------------------------------------------------------------- runs: the command line's side

SCORE_COLUMNS = ("row", "error")


def fit_run_threshold(run, stack, x):
    """Fit the run's recorded contamination on the errors of its training rows `x` (scaled)."""
    errors = reconstruction_errors(stack, x)
    found = threshold(errors, run.outliers.contamination)
    run.record_outliers(run.outliers.contamination, found)
    return found


def run_threshold(run, stack, contamination=None, threshold_given=None):
    """The threshold scoring uses: given, fitted now on the training split, recorded, or None."""
    if threshold_given is not None:
        return float(threshold_given)
    if contamination is not None:
        from stackae.workflows import load_run_data

        return threshold(reconstruction_errors(stack, load_run_data(run).train.x), contamination)
    recorded = run.outliers
    return None if recorded is None else recorded.threshold


def check_out_path(run, out_path, overwrite):
    """RunError unless `out_path` may be written: never a run's own file, else `refuse_existing`."""
    import os

    from stackae.errors import RunError
    from stackae.files import refuse_existing
    from stackae.manifest import LOCK, MANIFEST

    folder = os.path.realpath(os.path.dirname(os.path.abspath(out_path)))
    name = os.path.basename(out_path)
    if folder == os.path.realpath(run.path) and (
        name in (MANIFEST, LOCK) or run.owns(name) or name in run.manifest.pending
    ):
        raise RunError(f"{out_path}: a file of the run {run.path}; write the scores elsewhere")
    refuse_existing(out_path, overwrite)


def score_job(
    run_dir,
    data,
    out_path,
    *,
    contamination=None,
    threshold=None,
    per_feature=False,
    limit=None,
    label_column=None,
    overwrite=False,
    on_start=None,
    on_progress=None,
    quiet_backend=True,
):
    """Write each row's reconstruction error (and outlier flag) to the CSV `out_path`.

    `data`: a source or path, read as `stackae encode` reads it (every row,
    the run's scaling, a label column left out; the rows are not clipped).
    The flag column `outlier` (1 or 0) is written where a threshold is known:
    `threshold` (an error) if given, else one fitted now on the run's training
    split from `contamination`, else the one the run recorded. `per_feature`
    adds each feature's squared error (`error_<j>`, j the feature's position;
    for a run on images, j is the pixel's row-major position: see the module's
    text).
    A source with several splits (train, test) gets a `split` column and
    `row` counts within each. The file is written atomically, never over a
    file of the run, and over an existing file only with `overwrite`.
    `on_start(total_rows)` and `on_progress(rows_done)` report progress.
    Returns {"rows", "flagged", "threshold", "path"}.
    """
    from stackae import backend, workflows
    from stackae.errors import Param, ParameterError
    from stackae.files import atomic_write

    if contamination is not None and threshold is not None:
        raise ParameterError(
            Param("contamination", None), "and", Param("threshold", None), "exclude each other"
        )
    if contamination is not None:
        try:
            contamination = check_contamination(contamination)
        except ValueError as err:
            raise ParameterError(str(err), param="contamination") from None
    if threshold is not None and not (np.isfinite(threshold) and threshold >= 0):
        raise ParameterError(
            f"`threshold` must be a finite error >= 0. Received: threshold={threshold}",
            param="threshold",
        )
    run = workflows.open_run(run_dir)
    check_out_path(run, out_path, overwrite)
    backend.start(verbose=not quiet_backend)
    stack = workflows.load_stack(run)
    loaded = workflows.load_rows(
        run,
        data,
        loss="squared-error",  # any range: scores are squared errors, rows are not clipped
        limit=limit,
        label_column=label_column,
    )
    cut = run_threshold(run, stack, contamination, threshold)
    splits = [
        (name, split.x)
        for name, split in (("train", loaded.train), ("valid", loaded.valid), ("test", loaded.test))
        if split is not None
    ]
    named = len(splits) > 1
    width = run.data.n_features
    header = (["split"] if named else []) + list(SCORE_COLUMNS)
    header += ["outlier"] if cut is not None else []
    header += [f"error_{j}" for j in range(width)] if per_feature else []
    total = sum(len(x) for _, x in splits)
    if on_start is not None:
        on_start(total)
    counts = {"rows": 0, "flagged": 0}

    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(",".join(header) + "\n")
            for name, x in splits:
                for start, squared in iter_errors(stack, x):
                    errors = squared.mean(axis=1)
                    flags = None if cut is None else errors > cut
                    lines = []
                    for i, error in enumerate(errors.tolist()):
                        cells = [name] if named else []
                        cells += [str(start + i), repr(error)]
                        if flags is not None:
                            cells.append("1" if flags[i] else "0")
                        if per_feature:
                            cells += map(repr, squared[i].tolist())
                        lines.append(",".join(cells))
                    f.write("\n".join(lines) + "\n")
                    counts["rows"] += len(errors)
                    counts["flagged"] += 0 if flags is None else int(np.count_nonzero(flags))
                    if on_progress is not None:
                        on_progress(len(errors))

    atomic_write(out_path, write, suffix=".csv")
    return {**counts, "threshold": cut, "path": str(out_path)}


__all__ = [
    "AUTO",
    "AUTO_DEVIATIONS",
    "MAD_TO_STD",
    "check_contamination",
    "check_out_path",
    "fit_run_threshold",
    "full_batch",
    "iter_errors",
    "reconstruction_errors",
    "run_threshold",
    "score_job",
    "threshold",
]
