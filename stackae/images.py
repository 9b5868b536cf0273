"""Filter tiles and reconstruction grids as PNG images (Pillow): grayscale, or RGB where the
images have 3 channels (an image shape (h, w, 3), its rows row-major: a pixel's channels
side by side)."""

import math

import numpy as np
from PIL import Image

from stackae.files import atomic_write

# Filters are shown ten to a row, like the tutorial's 10 x 10 tile of 100 units.
FILTER_COLUMNS = 10


def tile_images(arrays, image_shape, tile_grid, spacing=1, scale_each=True):
    """Lay out the rows of `arrays` (n, h*w) as h x w tiles in a (rows, cols) grid.

    The tutorial's `tile_raster_images`: tiles fill the grid row by row,
    `spacing` pixels of 0 separate them, unused cells stay 0. With
    `scale_each`, each tile is stretched from its own [min, max] to [0, 255]
    (over its three channels together for colour, which keeps its hues);
    otherwise values are taken to be in [0, 1] and clipped there.
    `image_shape` (h, w), or (h, w, 3) for colour rows of h*w*3 values.
    Returns a uint8 array of shape (rows*(h+spacing)-spacing, cols*(w+spacing)-spacing),
    with a last axis of 3 for colour.
    """
    arrays = np.asarray(arrays, dtype="float64")
    h, w, *colour = _checked_shape(image_shape)
    size = h * w * (colour[0] if colour else 1)
    rows, cols = tile_grid
    if arrays.ndim != 2 or arrays.shape[1] != size:
        raise ValueError(
            f"`arrays` must have shape (n, {size}) for image_shape={image_shape}. "
            f"Received: shape={arrays.shape}"
        )
    if rows <= 0 or cols <= 0 or spacing < 0:
        raise ValueError(
            f"`tile_grid` must be positive and `spacing` >= 0. "
            f"Received: tile_grid={tile_grid}, spacing={spacing}"
        )
    out = np.zeros(
        (rows * (h + spacing) - spacing, cols * (w + spacing) - spacing, *colour), "uint8"
    )
    for i, row in enumerate(arrays[: rows * cols]):
        r, c = divmod(i, cols)
        top, left = r * (h + spacing), c * (w + spacing)
        out[top : top + h, left : left + w] = _to_uint8(row, scale_each).reshape(h, w, *colour)
    return out


def _checked_shape(image_shape):
    """`image_shape` as a tuple (h, w) or (h, w, 3); ValueError for anything else."""
    shape = tuple(image_shape)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 3):
        raise ValueError(
            "`image_shape` must be (height, width) or (height, width, 3). "
            f"Received: image_shape={image_shape}"
        )
    return shape


def _to_uint8(values, scale_each):
    if scale_each:
        low, high = values.min(), values.max()
        # A constant tile has no range to stretch; show it black rather than divide by 0.
        span = high - low
        values = (values - low) / span if span > 0 else np.zeros_like(values)
    else:
        values = np.clip(values, 0.0, 1.0)
    # NaN would cast to an arbitrary byte; show it as 0 like the spacing.
    return np.rint(np.nan_to_num(values) * 255).astype("uint8")


def filter_shape(n_visible, image_shape=None):
    """The shape of one filter tile: `image_shape` ((h, w), or (h, w, 3) for colour), (28, 28)
    for 784, else the most square factors."""
    if image_shape is not None:
        shape = _checked_shape(image_shape)
        if math.prod(shape) != n_visible:
            raise ValueError(
                f"`image_shape` {image_shape} does not hold {n_visible} values. "
                f"Received: image_shape={image_shape}, n_visible={n_visible}"
            )
        return shape
    if n_visible <= 0:
        raise ValueError(f"`n_visible` must be positive. Received: n_visible={n_visible}")
    # The largest divisor not above the square root; a prime gives (1, n). 784 -> (28, 28).
    h = next(d for d in range(math.isqrt(n_visible), 0, -1) if n_visible % d == 0)
    return (h, n_visible // h)


def filters_image(kernel, image_shape=None, grid=(10, 10)):
    """uint8 image of the first grid[0]*grid[1] filters of `kernel` (n_visible, n_hidden).

    Each hidden unit's column of weights is one tile, scaled to its own range.
    With fewer units than cells, the grid drops empty rows, and columns beyond
    ten and beyond the units (so a grid of 1 x 10**9 asks for no more than the
    units' tiles, and a few filters still sit in a row of the usual ten).
    """
    kernel = np.asarray(kernel)
    if kernel.ndim != 2:
        raise ValueError(
            f"`kernel` must be 2-D (n_visible, n_hidden). Received: shape={kernel.shape}"
        )
    n_visible, n_hidden = kernel.shape
    rows, cols = grid
    n_tiles = min(n_hidden, rows * cols)
    rows = min(rows, math.ceil(n_tiles / cols))
    cols = min(cols, max(n_tiles, 10))
    return tile_images(kernel.T[:n_tiles], filter_shape(n_visible, image_shape), (rows, cols))


def save_filters(kernel, path, image_shape=None, grid=(10, 10)):
    """Write the filters of `kernel` (n_visible, n_hidden) as a PNG; returns `path`."""
    return save_png(filters_image(kernel, image_shape, grid), path)


def reconstructions_image(x, corrupted, reconstructed, image_shape=None):
    """uint8 image with one row per example: input | corrupted input | reconstruction.

    Values are taken to be in [0, 1] and clipped there (no per-tile scaling,
    so the three tiles of a row are directly comparable).
    """
    x, corrupted, reconstructed = (np.asarray(a) for a in (x, corrupted, reconstructed))
    if not x.shape == corrupted.shape == reconstructed.shape or x.ndim != 2:
        raise ValueError(
            "`x`, `corrupted` and `reconstructed` must be 2-D arrays of one shape. "
            f"Received: shapes {x.shape}, {corrupted.shape}, {reconstructed.shape}"
        )
    n, n_visible = x.shape
    # (n * 3, n_visible): the three versions of each example next to each other.
    rows = np.stack([x, corrupted, reconstructed], axis=1).reshape(n * 3, n_visible)
    return tile_images(rows, filter_shape(n_visible, image_shape), (n, 3), scale_each=False)


def save_reconstructions(x, corrupted, reconstructed, path, image_shape=None):
    """Write the input | corrupted | reconstruction grid as a PNG; returns `path`."""
    return save_png(reconstructions_image(x, corrupted, reconstructed, image_shape), path)


def save_png(image, path):
    """Write a uint8 (h, w) array as a grayscale PNG, or (h, w, 3) as an RGB one, atomically;
    returns `path`.

    A reader never sees a half-written file and a failed write leaves any
    earlier file as it was (`stackae.files.atomic_write`).
    """
    image = np.asarray(image)
    colour = image.ndim == 3 and image.shape[2] == 3
    if not (image.ndim == 2 or colour) or image.dtype != np.uint8:
        raise ValueError(
            "`image` must be a uint8 array (h, w) or (h, w, 3). "
            f"Received: shape={image.shape}, dtype={image.dtype}"
        )

    def write(tmp):
        with open(tmp, "wb") as f:
            # A 2-D uint8 array becomes a grayscale ("L") image, (h, w, 3) an "RGB" one.
            Image.fromarray(image).save(f, format="PNG")

    atomic_write(path, write, suffix=".png")
    return path
