"""Tests of stackae.images: tile layout, per-tile scaling, PNG files and atomic writes."""

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from stackae import images


def test_tile_images_size_of_100_mnist_filters(rng):
    out = images.tile_images(rng.random((100, 784)), (28, 28), (10, 10))
    assert out.shape == (289, 289)
    assert out.dtype == np.uint8


def test_tile_images_places_rows_in_order():
    arrays = np.arange(6 * 4, dtype="float64").reshape(6, 4)
    out = images.tile_images(arrays, (2, 2), (2, 3), spacing=0, scale_each=False)
    # With scale_each=False values are clipped to [0, 1]: row 0 is [0, 1, 1, 1].
    np.testing.assert_array_equal(out[:2, :2], [[0, 255], [255, 255]])
    assert out.shape == (4, 6)


def test_each_tile_scaled_to_its_own_range(rng):
    # Tiles with very different ranges must each use the full [0, 255].
    arrays = rng.random((4, 25)) * np.array([[1e-3], [1.0], [1e3], [-5.0]])
    out = images.tile_images(arrays, (5, 5), (2, 2), spacing=1)
    for r in range(2):
        for c in range(2):
            tile = out[r * 6 : r * 6 + 5, c * 6 : c * 6 + 5]
            assert tile.min() == 0 and tile.max() == 255


def test_tile_keeps_pixel_order(rng):
    row = rng.random(12)
    out = images.tile_images(row[None, :], (3, 4), (1, 1))
    expected = np.rint((row - row.min()) / np.ptp(row) * 255).reshape(3, 4)
    np.testing.assert_array_equal(out, expected)


def test_spacing_and_unused_cells_are_zero(rng):
    # Values in [0.5, 1] so that no tile pixel is 0 without scaling.
    arrays = 0.5 + 0.5 * rng.random((5, 16))
    out = images.tile_images(arrays, (4, 4), (2, 3), spacing=2, scale_each=False)
    assert out.shape == (2 * 6 - 2, 3 * 6 - 2)
    assert (out[4:6, :] == 0).all()  # horizontal gap
    assert (out[:, 4:6] == 0).all() and (out[:, 10:12] == 0).all()  # vertical gaps
    assert (out[6:10, 12:16] == 0).all()  # the sixth cell has no row
    assert (out[:4, :4] > 0).all()


def test_constant_tile_gives_no_nan_or_warning():
    arrays = np.full((2, 9), 0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = images.tile_images(arrays, (3, 3), (1, 2))
    assert out.shape == (3, 7)
    assert (out == 0).all()


def test_tile_images_rejects_wrong_width(rng):
    with pytest.raises(ValueError, match="shape"):
        images.tile_images(rng.random((3, 10)), (3, 3), (1, 3))


@pytest.mark.parametrize(
    "n_visible, shape",
    [(784, (28, 28)), (30, (5, 6)), (100, (10, 10)), (12, (3, 4)), (13, (1, 13)), (1, (1, 1))],
)
def test_filter_shape_is_square_ish(n_visible, shape):
    assert images.filter_shape(n_visible) == shape


def test_filter_shape_uses_given_image_shape():
    assert images.filter_shape(784, (14, 56)) == (14, 56)
    with pytest.raises(ValueError, match="does not hold"):
        images.filter_shape(784, (20, 20))


def test_filters_image_tiles_columns_of_kernel(rng):
    kernel = rng.random((784, 500))
    out = images.filters_image(kernel)
    assert out.shape == (289, 289)
    np.testing.assert_array_equal(
        out[:28, 29:57], images.tile_images(kernel.T[1:2], (28, 28), (1, 1))
    )


def test_fewer_units_than_grid_keeps_ten_columns(rng):
    out = images.filters_image(rng.random((30, 7)))  # 7 filters of 5 x 6
    assert out.shape == (5, 10 * 7 - 1)
    out = images.filters_image(rng.random((784, 23)))  # 3 rows of 10
    assert out.shape == (3 * 29 - 1, 289)


def test_save_filters_writes_a_readable_png(tmp_path, rng):
    path = images.save_filters(rng.normal(size=(784, 100)), tmp_path / "filters.png")
    assert os.fspath(path) == os.fspath(tmp_path / "filters.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.mode == "L"
        assert image.size == (289, 289)
    assert os.listdir(tmp_path) == ["filters.png"]  # no temporary file left behind


def test_reconstruction_grid(tmp_path, rng):
    x = rng.random((4, 784))
    corrupted = x * (rng.random(x.shape) > 0.3)
    reconstructed = rng.random(x.shape) * 1.5 - 0.25  # out of [0, 1]: clipped
    out = images.reconstructions_image(x, corrupted, reconstructed)
    assert out.shape == (4 * 29 - 1, 3 * 29 - 1)
    # No per-tile scaling: the input tile is x * 255 itself.
    np.testing.assert_array_equal(out[29:57, :28], np.rint(x[1] * 255).reshape(28, 28))
    np.testing.assert_array_equal(
        out[:28, 58:], np.rint(np.clip(reconstructed[0], 0, 1) * 255).reshape(28, 28)
    )
    path = images.save_reconstructions(x, corrupted, reconstructed, tmp_path / "rec.png")
    with Image.open(path) as image:
        assert image.size == (3 * 29 - 1, 4 * 29 - 1)


def test_reconstructions_reject_mismatched_shapes(rng):
    with pytest.raises(ValueError, match="one shape"):
        images.reconstructions_image(rng.random((2, 4)), rng.random((2, 4)), rng.random((3, 4)))


def test_failed_write_leaves_existing_file_intact(tmp_path, rng, monkeypatch):
    path = tmp_path / "filters.png"
    path.write_bytes(b"previous contents")

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        images.save_filters(rng.random((784, 10)), path)
    assert path.read_bytes() == b"previous contents"
    assert os.listdir(tmp_path) == ["filters.png"]
