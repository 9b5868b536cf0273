"""Encoding rows with a run's stack: codes in memory, or every split written to an .npz."""

import numpy as np

from stackae import backend, stopping
from stackae.files import atomic_write, refuse_existing
from stackae.runs import Run
from stackae.workflows.common import as_input, check_layer, load_stack, open_run
from stackae.workflows.data import load_rows


def encode_run(run, x, layer=None):
    """Codes of `x` after `layer` layers (all by default), as a float32 array."""
    from stackae.data import check_width

    stack = load_stack(run)
    check_width(x, run.data.n_features, "data")
    depth = len(stack.specs) if layer is None else layer
    check_layer(depth, len(stack.specs))
    codes = stack.codes(as_input(x, run.input_shape), depth)
    return codes.reshape(len(codes), -1)  # rows: a conv layer's feature maps flattened


def encode_job(
    run,
    data,
    out_path,
    layer=None,
    overwrite=False,
    *,
    limit=None,
    header=None,
    quiet_backend=True,
):
    """Write the codes of every split of `data` (and its labels) to an .npz; returns its arrays.

    `run` is a Run or a run directory, `data` a loaded Data or a source to load
    with `load_rows` (every row, or its first `limit`). A stop request (Ctrl-C,
    SIGTERM) stops it where it lands: the file is written atomically, whole or
    not at all.
    """
    with stopping.at_once():
        return _encode_job(run, data, out_path, layer, overwrite, limit, header, quiet_backend)


def _encode_job(run, data, out_path, layer, overwrite, limit, header, quiet_backend):
    refuse_existing(out_path, overwrite)
    if not isinstance(run, Run):
        run = open_run(run)
        run.refuse_output(out_path)
        backend.start(verbose=not quiet_backend)
    run.refuse_output(out_path)
    if not hasattr(data, "train"):
        data = load_rows(run, data, limit=limit, header=header)
    if layer is not None:
        check_layer(layer, run.n_layers)  # before any row is read
    arrays = {}
    for name, split in (("train", data.train), ("valid", data.valid), ("test", data.test)):
        if split is not None:
            arrays[name] = encode_run(run, split.x, layer)
            if split.y is not None:
                arrays[f"y_{name}"] = split.y
            stopping.check()
    atomic_write(out_path, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")
    return arrays
