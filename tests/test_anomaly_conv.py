"""`stackae score` on a run pretrained on images with a conv stack: per-image errors, per-pixel
errors in the image's row-major order, every image door alike, tables refused."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from stackae import anomaly
from tests.test_anomaly import ok, read_scores, refused
from tests.test_data import write_idx

N, SIZE = 60, 8


def digits(seed=0):
    """N uint8 8x8 images: a bright bar at a random row on a dark, noisy ground."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (N, SIZE, SIZE))
    x[np.arange(N), rng.integers(1, SIZE - 1, N)] = 230
    return x.astype(np.uint8)


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("score_conv")
    x = digits()
    np.savez(folder / "images.npz", x=x)
    run = folder / "run"
    output = ok(
        "pretrain",
        "--data", folder / "images.npz", "--layers", "conv4x3,pool2", "--epochs", "2",
        "--batch-size", "10", "--contamination", "0.1", "--out", run, "-q",
    )  # fmt: skip
    assert "outlier threshold: reconstruction error above" in output
    return run, folder, x


def expected_errors(run, x):
    """Per-pixel squared errors of uint8 images `x` through the run's one pooling conv layer."""
    import keras

    from stackae import workflows

    layer = workflows.load_stack(workflows.open_run(run)).encoder_layers[0]
    images = (x / 255.0).astype("float32")[..., None]
    rebuilt = keras.ops.convert_to_numpy(layer.reconstruct(images)).astype(np.float64)
    return (images.astype(np.float64) - rebuilt)[..., 0] ** 2  # (n, 8, 8)


def test_score_writes_per_image_and_per_pixel_errors(conv_run, tmp_path):
    run, folder, x = conv_run
    out = tmp_path / "scores.csv"
    output = ok("score", run, "--data", folder / "images.npz", "--out", out, "--per-feature")
    assert f"wrote {out}: {N} rows" in output and "above the threshold" in output
    scores = read_scores(out)
    pixels = [f"error_{j}" for j in range(SIZE * SIZE)]
    assert list(scores) == ["row", "error", "outlier", *pixels]
    maps = np.stack([scores[name].astype(float) for name in pixels], axis=1)
    expected = expected_errors(run, x)
    # Row-major: pixel (i, j) is column error_{8 i + j}, so each row reshapes to its image.
    assert_allclose(maps.reshape(N, SIZE, SIZE), expected, rtol=1e-5, atol=1e-9)
    assert_allclose(scores["error"].astype(float), expected.mean(axis=(1, 2)), rtol=1e-5)
    assert_allclose(maps.mean(axis=1), scores["error"].astype(float), rtol=1e-12)


def test_every_image_door_scores_alike(conv_run, tmp_path):
    run, folder, x = conv_run
    ok("score", run, "--data", folder / "images.npz", "--out", tmp_path / "npz.csv")
    reference = read_scores(tmp_path / "npz.csv")
    np.save(tmp_path / "grey.npy", x)
    np.save(tmp_path / "channel.npy", x[..., None])
    (tmp_path / "idx").mkdir()
    write_idx(tmp_path / "idx" / "train-images-idx3-ubyte", x)
    for source in ("grey.npy", "channel.npy", "idx"):
        out = tmp_path / f"{source}.csv"
        ok("score", run, "--data", tmp_path / source, "--out", out)
        found = read_scores(out)
        assert_allclose(found["error"].astype(float), reference["error"].astype(float))
        assert_array_equal(found["outlier"], reference["outlier"])


def test_the_library_scores_images_or_the_same_images_as_rows(conv_run):
    from stackae import workflows

    run, _, x = conv_run
    stack = workflows.load_stack(workflows.open_run(run))
    images = (x / 255.0).astype("float32")[..., None]
    as_images = anomaly.reconstruction_errors(stack, images, per_feature=True)
    as_rows = anomaly.reconstruction_errors(stack, images.reshape(N, -1), per_feature=True)
    assert as_images.shape == (N, SIZE * SIZE)
    assert_array_equal(as_images, as_rows)
    with pytest.raises(ValueError, match=r"reconstructs images of shape \(8, 8, 1\)"):
        anomaly.reconstruction_errors(stack, images[:, :4])


def test_a_table_or_other_images_are_refused_in_one_line(conv_run, tmp_path):
    run, _, x = conv_run
    flat = (x.reshape(N, -1) / 255.0).astype("float32")
    np.save(tmp_path / "flat.npy", flat)
    with open(tmp_path / "flat.csv", "w") as f:
        f.write(",".join(f"p{j}" for j in range(SIZE * SIZE)) + "\n")
        f.writelines(",".join(map(repr, row.tolist())) + "\n" for row in flat)
    for source in ("flat.npy", "flat.csv"):
        line = refused(
            "score", run, "--data", tmp_path / source, "--out", tmp_path / "s.csv",
            match="conv2d first layer needs images",
        )  # fmt: skip
        assert f"a table of {SIZE * SIZE} features" in line
    np.save(tmp_path / "wide.npy", x.reshape(N, 4, 16))
    refused(
        "score", run, "--data", tmp_path / "wide.npy", "--out", tmp_path / "s.csv",
        match="the run reads 8x8x1 images; these are 4x16x1",
    )  # fmt: skip
    assert not (tmp_path / "s.csv").exists()
