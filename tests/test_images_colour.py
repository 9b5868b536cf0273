"""Colour images (n, h, w, 3) from .npz/.npy: colour tiles and PNGs, and every verb on a conv run
pretrained on them (encode, evaluate, filters with channels as colour, reconstruct, score),
pixel ranges checked as for grey images."""

import json

import keras
import numpy as np
import pytest
from numpy.testing import assert_array_equal
from PIL import Image

from stackae import images
from stackae.data import load
from tests.test_anomaly import ok, read_scores, refused

N, SIZE = 40, 8


def colour_images(seed=0):
    """N uint8 8x8x3 images: a red, green or blue square on a grey ground; labels its colour."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, N)
    x = rng.integers(90, 130, (N, SIZE, SIZE, 3))
    for i, colour in enumerate(y):
        top, left = rng.integers(0, SIZE - 4, 2)
        x[i, top : top + 4, left : left + 4] = 20
        x[i, top : top + 4, left : left + 4, colour] = 240
    return x.astype(np.uint8), y


def test_colour_tiles_keep_each_pixels_channels():
    row = np.arange(2 * 2 * 3, dtype="float64") / 11  # in [0, 1]: shown as it is
    out = images.tile_images(row[None], (2, 2, 3), (1, 2), spacing=1, scale_each=False)
    assert out.shape == (2, 5, 3) and out.dtype == np.uint8
    assert_array_equal(out[:, :2], np.rint(row.reshape(2, 2, 3) * 255))
    assert_array_equal(out[:, 2:], 0)  # the spacing and the unused cell
    # Scaled per tile over its three channels together (its hues kept).
    scaled = images.tile_images(row[None] * 7 - 3, (2, 2, 3), (1, 1))
    assert_array_equal(scaled, np.rint(row.reshape(2, 2, 3) / row.max() * 255))
    assert images.filter_shape(12, (2, 2, 3)) == (2, 2, 3)
    with pytest.raises(ValueError, match=r"\(height, width, 3\)"):
        images.filter_shape(16, (2, 2, 4))


def test_a_colour_png_is_rgb(tmp_path, rng):
    picture = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
    images.save_png(picture, tmp_path / "c.png")
    loaded = Image.open(tmp_path / "c.png")
    assert loaded.mode == "RGB"
    assert_array_equal(np.asarray(loaded), picture)
    with pytest.raises(ValueError, match=r"\(h, w\) or \(h, w, 3\)"):
        images.save_png(picture[..., :2], tmp_path / "two.png")


def test_colour_arrays_keep_their_shape_and_their_range_is_checked(tmp_path):
    x, _ = colour_images()
    np.save(tmp_path / "c.npy", x)
    data = load(str(tmp_path / "c.npy"), valid_size=0, test_size=0)
    assert data.image_shape == (SIZE, SIZE, 3)
    # Row-major: a pixel's three channels side by side, pixels divided by 255.
    assert_array_equal(np.asarray(data.train.x[:2]), x[:2].reshape(2, -1) / np.float32(255))
    floats = (x / 255.0).astype("float32")
    floats[3, 2, 1, 2] = 1.5
    np.save(tmp_path / "bad.npy", floats)
    line = refused(
        "pretrain", "--data", tmp_path / "bad.npy", "--layers", "conv2x3", "--epochs", "1",
        "--out", tmp_path / "run", match="values range from",
    )  # fmt: skip
    assert "to 1.5 but the cross-entropy loss needs [0, 1]" in line
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("colour")
    x, y = colour_images()
    np.savez(folder / "images.npz", x=x, y=y)
    run = folder / "run"
    ok(
        "pretrain", "--data", folder / "images.npz", "--layers", "conv4x3,pool2,8",
        "--epochs", "2", "--batch-size", "8", "--out", run, "-q",
    )  # fmt: skip
    return run, folder, x, y


def test_every_verb_on_a_colour_conv_run(colour_run, tmp_path):
    run, folder, x, _ = colour_run
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["data"]["input_shape"] == [SIZE, SIZE, 3]
    assert manifest["data"]["image_shape"] == [SIZE, SIZE, 3]
    assert "input: 8x8x3 images" in ok("info", run)

    ok("finetune", run, "--epochs", "2", "-q")
    assert "test error" in ok("evaluate", run)
    classifier = keras.saving.load_model(run / "classifier.keras")
    assert classifier.input_shape == (None, SIZE, SIZE, 3)

    ok("encode", run, "--data", folder / "images.npz", "--out", tmp_path / "codes.npz")
    assert np.load(tmp_path / "codes.npz")["train"].shape == (N, 8)
    floats = tmp_path / "floats.npy"
    np.save(floats, (x / 255.0).astype("float32"))
    ok("encode", run, "--data", floats, "--out", tmp_path / "float_codes.npz")
    np.testing.assert_allclose(
        np.load(tmp_path / "float_codes.npz")["train"],
        np.load(tmp_path / "codes.npz")["train"],
        rtol=1e-5,
        atol=1e-6,
    )

    # One 3x3 colour tile per filter: the kernel's channels as red, green and blue.
    ok("filters", run)
    picture = np.asarray(Image.open(run / "filters_layer_1.png"))
    assert picture.shape == (3, 10 * 4 - 1, 3)
    stack = keras.saving.load_model(run / "stack.keras")
    kernel = keras.ops.convert_to_numpy(stack.encoder_layers[0].kernel)  # (3, 3, 3, 4)
    first = kernel[..., 0]
    expected = np.rint((first - first.min()) / (first.max() - first.min()) * 255)
    assert_array_equal(picture[:, :3], expected)

    ok("reconstruct", run, "--n", "3")
    grid = np.asarray(Image.open(run / "reconstructions.png"))
    assert grid.shape == (3 * 9 - 1, 3 * 9 - 1, 3)
    from stackae import workflows

    first = workflows.open_run(run).split_indices()["test"][0]  # the first test image
    assert_array_equal(grid[:8, :8], x[first])  # drawn in its colours

    ok("score", run, "--data", folder / "images.npz", "--out", tmp_path / "s.csv", "--per-feature")
    scores = read_scores(tmp_path / "s.csv")
    assert len(scores["error"]) == N and f"error_{SIZE * SIZE * 3 - 1}" in scores


def test_a_dense_run_on_colour_images_draws_colour_filters(tmp_path):
    x, _ = colour_images()
    np.save(tmp_path / "c.npy", x)
    run = tmp_path / "run"
    ok("pretrain", "--data", tmp_path / "c.npy", "--layers", "6", "--epochs", "1",
       "--batch-size", "8", "--out", run, "-q")  # fmt: skip
    ok("filters", run)
    picture = np.asarray(Image.open(run / "filters_layer_1.png"))
    assert picture.shape == (SIZE, 10 * (SIZE + 1) - 1, 3)
