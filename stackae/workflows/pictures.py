"""A run's pictures: its filters and its reconstructions, written as PNGs."""

from pathlib import Path

import numpy as np

from stackae import backend, stopping
from stackae.config import check_noise
from stackae.errors import Param, RunError
from stackae.files import refuse_existing
from stackae.runs import Run
from stackae.workflows.common import as_input, check_layer, load_stack, open_run
from stackae.workflows.data import load_run_data


def _write_picture(run, image, out_path, default, overwrite):
    """Write `image` to `out_path`, else to `default` inside the run; never clobbers.

    A picture inside the run is the run's own output (written under the run's
    lock, recorded, replaceable); an `out_path` that exists is replaced only
    with `overwrite`. Returns the path.
    """
    from stackae.images import save_png

    if out_path is None:
        refuse_existing(run.file(default), overwrite, owned=run.owns(default))
        _lock_for_picture(run)
        return run.write_output(
            default, lambda tmp: save_png(image, tmp), suffix=".png", replace=overwrite
        )
    refuse_existing(out_path, overwrite)
    run.refuse_output(out_path)
    return save_png(image, Path(out_path))


def _open_for_picture(run, out_path, default, overwrite):
    """The run (opened if a path), its picture's target checked before the backend starts.

    A picture written inside the run needs the run's lock: a busy run is refused
    at once, not after the backend's import.
    """
    if isinstance(run, Run):
        return run, False
    run = open_run(run)
    if out_path is None:
        refuse_existing(run.file(default), overwrite, owned=run.owns(default))
        _lock_for_picture(run)
    else:
        refuse_existing(out_path, overwrite)
        run.refuse_output(out_path)
    return run, True


def _lock_for_picture(run):
    try:
        run.lock()
    except RunError as err:
        raise RunError(
            f"{err}; or write the picture elsewhere with", Param("out_path", "FILE")
        ) from None


def filters_run(run, layer=1, out_path=None, grid=(10, 10), overwrite=False, quiet_backend=True):
    """PNG of layer `layer`'s filters (one tile per hidden unit); returns its path."""
    with stopping.at_once():
        return _filters_run(run, layer, out_path, grid, overwrite, quiet_backend)


def _filters_run(run, layer, out_path, grid, overwrite, quiet_backend):
    default = f"filters_layer_{layer}.png"
    run, opened = _open_for_picture(run, out_path, default, overwrite)
    check_layer(layer, run.n_layers)  # load_stack checks the stack has the run's layers
    if opened:
        backend.start(verbose=not quiet_backend)
    stopping.check()
    import keras

    from stackae.images import filters_image

    stack = load_stack(run)
    tied = stack.encoder_layers[layer - 1]
    if stack.layer_kinds[layer - 1].name == "dense":
        kernel = keras.ops.convert_to_numpy(tied.kernel)
        shape = run.data.image_shape if layer == 1 else None
    else:  # one tile per filter, from its kind's filter images: (n, h, w), or (n, h, w, 3)
        images = np.asarray(stack.layer_kinds[layer - 1].filter_images(tied))
        shape = images.shape[1:]
        kernel = images.reshape(len(images), -1).T
    image = filters_image(kernel, shape, grid)
    stopping.check()
    return _write_picture(run, image, out_path, default, overwrite)


def reconstruct_run(
    run,
    data=None,
    out_path=None,
    n=20,
    corruption=None,
    overwrite=False,
    data_options=None,
    quiet_backend=True,
    data_changed_ok=False,
):
    """PNG of n rows: input | corrupted input | reconstruction through the whole stack."""
    with stopping.at_once():
        return _reconstruct_run(
            run,
            data,
            out_path,
            n,
            corruption,
            overwrite,
            data_options,
            quiet_backend,
            data_changed_ok,
        )


def _reconstruct_run(
    run, data, out_path, n, corruption, overwrite, data_options, quiet_backend, data_changed_ok
):
    default = "reconstructions.png"
    run, opened = _open_for_picture(run, out_path, default, overwrite)
    if opened:
        backend.start(verbose=not quiet_backend)
    stopping.check()
    import keras

    from stackae.data import check_width
    from stackae.images import reconstructions_image
    from stackae.noise import corrupt

    if corruption is not None:  # a level layer 1's noise takes (Gaussian's may pass 1)
        check_noise(run.specs[0].noise, corruption)
    if not hasattr(data, "train"):
        data = load_run_data(run, data, changed_ok=data_changed_ok, **(data_options or {}))
    stopping.check()
    stack = load_stack(run)
    split = data.test if data.test is not None else data.train
    check_width(split.x, run.data.n_features, "data")
    x = np.asarray(split.x[:n], dtype="float32")
    level = stack.specs[0].corruption if corruption is None else corruption
    seed = keras.ops.convert_to_tensor(np.array([stack.seed, 0], "int64"))
    noisy = corrupt(
        keras.ops.convert_to_tensor(as_input(x, run.input_shape)), stack.specs[0].noise, level, seed
    )
    recon = _reconstruct(stack, noisy)
    image = reconstructions_image(
        x,
        keras.ops.convert_to_numpy(noisy).reshape(len(x), -1),
        keras.ops.convert_to_numpy(recon).reshape(len(x), -1),
        run.data.image_shape,
    )
    stopping.check()
    return _write_picture(run, image, out_path, default, overwrite)


def _reconstruct(stack, x):
    """Up the whole stack and back down: a pooling conv layer decodes from its own maxima."""
    return stack.reconstruct(x)
