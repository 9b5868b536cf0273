"""The stackae command line end to end on small data, and its refusals."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from stackae_cli.main import cli

SMALL = ["--data", "mnist-sample", "--limit", "200", "--epochs", "2", "-q"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("pretrain", "--layers", "16,8", *SMALL, "--corruption", "0.2,0.3", "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_pretrain_writes_a_run(run_dir):
    out, output = run_dir
    for name in ("manifest.json", "stack.keras", "encoder.keras", "history.csv"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "pretrained"
    assert [layer["units"] for layer in manifest["layers"]] == [16, 8]
    assert [s["corruption"] for s in manifest["config"]["specs"]] == [0.2, 0.3]
    assert all(layer["finished"] and layer["epochs_done"] == 2 for layer in manifest["layers"])
    assert "mnist-sample" in output
    assert "layer 2/2: 16 -> 8" in output
    # The summary table: a header and one row per layer with its final cost.
    rows = [line.split() for line in output.splitlines() if line.strip().startswith(("1 ", "2 "))]
    assert [r[1] for r in rows] == ["16", "8"]
    lines = (out / "history.csv").read_text().splitlines()
    assert lines[0] == "layer,epoch,loss,val_loss" and len(lines) == 5


def test_finetune_then_evaluate(run_dir):
    out, _ = run_dir
    result = invoke(
        "finetune", out, "--epochs", "2", "--momentum", "0.5", "--lr-decay", "0.5",
        "--dropout", "0.2", "--input-dropout", "0.1", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "validation error" in result.output and "test error" in result.output
    assert (out / "classifier.keras").is_file()
    result = invoke("evaluate", out)
    assert result.exit_code == 0, result.output
    assert "layer 2 reconstruction cost" in result.output
    error = float(result.output.split("test error ")[1].split(" %")[0])
    recorded = json.loads((out / "manifest.json").read_text())["finetune"]["test_error"]
    assert error == round(100 * recorded, 2)  # evaluate reads the same rows and classifier
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finetune"]["spec"]["momentum"] == 0.5
    assert manifest["finetune"]["spec"]["dropout"] == 0.2
    import keras

    classifier = keras.saving.load_model(out / "classifier.keras")
    rates = [layer.rate for layer in classifier.layers if isinstance(layer, keras.layers.Dropout)]
    assert rates == [0.1, 0.2, 0.2]
    assert float(classifier.optimizer.learning_rate.numpy()) == pytest.approx(0.1 * 0.5)
    info = invoke("info", out)
    assert info.exit_code == 0 and "fine-tuned" in info.output and "finetuned" in info.output


def test_filters_png_has_the_tutorial_layout(run_dir, tmp_path):
    out, _ = run_dir
    png = tmp_path / "f.png"
    result = invoke("filters", out, "--grid", "4x4", "--out", png)
    assert result.exit_code == 0, result.output
    # 4 x 4 tiles of 28 x 28 with 1-pixel spacing.
    assert Image.open(png).size == (4 * 29 - 1, 4 * 29 - 1)


def test_encode_and_reconstruct(run_dir, tmp_path):
    out, _ = run_dir
    codes = tmp_path / "codes.npz"
    result = invoke("encode", out, "--data", "mnist-sample", "--limit", "30", "--out", codes)
    assert result.exit_code == 0, result.output
    with np.load(codes) as saved:
        assert saved["train"].shape == (30, 8)
    result = invoke(
        "encode", out, "--data", "mnist-sample", "--limit", "30", "--layer", "1", "--out", codes
    )
    assert result.exit_code == 1 and "exists" in result.output
    png = tmp_path / "r.png"
    result = invoke("reconstruct", out, "--n", "3", "--out", png)
    assert result.exit_code == 0, result.output
    assert Image.open(png).size[1] == 3 * 29 - 1


@pytest.mark.parametrize(
    "layers, message",
    [("500,,x", "comma list"), ("0", "positive"), ("-5", "positive"), ("10,abc", "comma list")],
)
def test_bad_layers_exit_2(layers, message, tmp_path):
    result = invoke("pretrain", "--layers", layers, "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "r").exists()


def test_list_of_wrong_length_exits_2(tmp_path):
    result = invoke(
        "pretrain", "--layers", "10,10", "--corruption", "0.1,0.2,0.3", "--out", tmp_path / "r"
    )
    assert result.exit_code == 2
    assert "3 values for 2 layers" in result.output


def test_bad_corruption_exits_2(tmp_path):
    result = invoke("pretrain", "--layers", "10", "--corruption", "1.5", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "corruption" in result.output


def test_existing_out_is_refused_and_kept(run_dir):
    out, _ = run_dir
    before = (out / "manifest.json").read_bytes()
    result = invoke("pretrain", "--layers", "16,8", *SMALL, "--out", out)
    assert result.exit_code == 1
    assert "--resume" in result.output and "--overwrite" in result.output
    assert (out / "manifest.json").read_bytes() == before


def test_not_a_run_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for verb in ("info", "finetune", "evaluate"):
        result = invoke(verb, tmp_path)
        assert result.exit_code == 1
        assert "not a stackae run directory" in result.output
        assert len(result.output.strip().splitlines()) == 1
    result = invoke("pretrain", "--layers", "4", *SMALL, "--out", tmp_path)
    assert result.exit_code == 1 and (tmp_path / "notes.txt").read_text() == "hello"


def test_data_of_the_wrong_width(run_dir, tmp_path):
    out, _ = run_dir
    path = tmp_path / "narrow.npy"
    np.save(path, np.random.default_rng(0).random((40, 30)).astype("float32"))
    result = invoke("encode", out, "--data", path, "--out", tmp_path / "c.npz")
    assert result.exit_code == 1
    assert "30 features" in result.output and "784" in result.output
    assert not (tmp_path / "c.npz").exists()


def test_help_and_version():
    for verb in ("pretrain", "finetune", "evaluate", "encode", "filters", "reconstruct", "info"):
        for flag in ("-h", "--help"):
            result = invoke(verb, flag)
            assert result.exit_code == 0 and "Usage:" in result.output
    assert "stackae, version" in invoke("--version").output
    # Defaults shown come from stackae.config (the tutorial's).
    text = " ".join(invoke("pretrain", "--help").output.split())
    assert "Global batch size per layer. [default: 20; x>=1]" in text
    assert "Learning rate per layer. [default: 0.1; x>0]" in text
    # Ranges come from the specs' tables (stackae.config), and so do the task's defaults.
    text = " ".join(invoke("finetune", "--help").output.split())
    assert "[default: 0.0; 0.0<=x<1.0]" in text  # --dropout
    assert "[default: classification: 0.1; regression: 0.01]" in text  # --lr


@pytest.mark.parametrize(
    "option, value",
    [("--dropout", "1"), ("--input-dropout", "-0.1"), ("--lr-decay", "0"), ("--lr-decay", "1.5")],
)
def test_bad_finetune_settings_exit_2_and_change_nothing(run_dir, option, value):
    out, _ = run_dir
    manifest = (out / "manifest.json").read_bytes()
    result = invoke("finetune", out, option, value)
    assert result.exit_code == 2 and option in result.output
    assert (out / "manifest.json").read_bytes() == manifest


def test_momentum_needs_sgd(run_dir):
    out, _ = run_dir
    result = invoke("finetune", out, "--optimizer", "adam", "--momentum", "0.9")
    assert result.exit_code == 2 and "SGD" in result.output


def test_progress_never_counts_past_its_total(tmp_path):
    import re

    out = tmp_path / "run"
    args = ["--layers", "16", "--data", "mnist-sample", "--limit", "700", "--epochs", "2"]
    pretrained = invoke("pretrain", *args, "--out", out)
    assert pretrained.exit_code == 0, pretrained.output
    tuned = invoke("finetune", out, "--epochs", "2")
    assert tuned.exit_code == 0, tuned.output
    for output in (pretrained.output, tuned.output):
        # Keras's bar: "\r" or a bold escape, then done/total, then a space or an escape.
        found = re.findall(r"(?:\x1b\[1m|\r|^)(\d+)/(\d+)(?:\x1b\[0m)? ", output, re.M)
        counts = [(int(done), int(total)) for done, total in found]
        assert counts, output[-2000:]
        assert all(done <= total for done, total in counts), counts
    assert "layer 1/1: 784 -> 16" in pretrained.output
    assert "fine-tuning 784-16-10" in tuned.output


def test_an_unsupported_backend_is_one_line(tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {**os.environ, "KERAS_BACKEND": "numpy"}  # Keras's inference-only backend
    command = [sys.executable, "-m", "stackae_cli", "pretrain", "--layers", "4", *SMALL]
    done = subprocess.run(
        [*command, "--out", str(out)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "numpy" in lines[0]
    assert not out.exists()


def test_strategy_gpu_without_a_gpu_is_one_line(tmp_path, monkeypatch):
    import tensorflow as tf

    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: [])  # no GPU
    out = tmp_path / "run"
    result = invoke("pretrain", "--layers", "4", *SMALL, "--strategy", "gpu", "--out", out)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-1] == "Error: strategy 'gpu' was asked for but TensorFlow sees no GPU"
    assert "Traceback" not in result.output
