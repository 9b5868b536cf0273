"""A convolutional stack from the command line: the --layers grammar, every verb on a conv run,
the refusals, and a kill during pretraining resumed to the uninterrupted run's weights."""

import json
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from stackae import config
from stackae.kinds import Conv2DSpec
from stackae_cli.main import cli
from tests.processes import DEADLINE, signal_when

SMALL = ["--data", "mnist-sample", "--limit", "300", "--batch-size", "20", "-q"]
CONV = ["--layers", "conv4x5,pool2,16", "--epochs", "1", *SMALL]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line(result, code):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_the_grammar_makes_the_library_specs():
    specs = config.layer_specs("conv8x5s2same,pool2,conv16x3,32", epochs=(1, 2, 3))
    assert [type(s).__name__ for s in specs] == ["Conv2DSpec", "Conv2DSpec", "LayerSpec"]
    assert (specs[0].filters, specs[0].kernel_size, specs[0].strides) == (8, 5, 2)
    assert (specs[0].padding, specs[0].pool_size, specs[1].pool_size) == ("same", 2, None)
    assert [s.epochs for s in specs] == [1, 2, 3]  # per-layer settings count layers, not pools
    # Conv layers take their kind's learning rate; dense layers the tutorial's.
    assert specs[0].learning_rate == Conv2DSpec(filters=1).learning_rate != specs[2].learning_rate
    assert ",".join(config.layer_token(s) for s in specs) == "conv8x5s2same,pool2,conv16x3,32"
    assert config.layer_specs("500,500") == config.layer_specs((500, 500))  # as before


@pytest.mark.parametrize(
    "layers, token",
    [("conv4x5,pool2,pool2", "pool2"), ("pool2,16", "pool2"), ("conv4,16", "conv4")],
)
def test_a_bad_token_is_one_line_naming_it(layers, token, tmp_path):
    line = one_line(invoke("pretrain", "--layers", layers, "--out", tmp_path / "r"), 2)
    assert f"token '{token}'" in line
    assert not (tmp_path / "r").exists()


def test_a_conv_stack_on_a_table_is_refused(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("a,b,c,label\n" + "".join(f"0.{i},0.5,0.1,{i % 2}\n" for i in range(40)))
    result = invoke(
        "pretrain", "--data", table, "--layers", "conv2x2,4", "--epochs", "1", "--out",
        tmp_path / "r",
    )  # fmt: skip
    line = one_line(result, 1)
    assert "conv2d first layer needs images" in line and "a table of" in line
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "run"
    result = invoke("pretrain", *CONV, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_every_verb_on_a_conv_run(conv_run, tmp_path):
    out = conv_run
    manifest = json.loads((out / "manifest.json").read_text())
    first, second = manifest["config"]["specs"]
    assert first["kind"] == "conv2d" and first["pool_size"] == 2 and "kind" not in second
    assert manifest["data"]["input_shape"] == [28, 28, 1]
    assert [layer["input_shape"] for layer in manifest["layers"]] == [[28, 28, 1], [576]]
    assert [layer["units"] for layer in manifest["layers"]] == [4, 16]

    result = invoke("finetune", out, "--epochs", "2", "-q")
    assert result.exit_code == 0, result.output
    classifier = keras.saving.load_model(out / "classifier.keras")  # plain Keras: a CNN
    assert [type(layer).__name__ for layer in classifier.layers][:3] == [
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
    ]
    result = invoke("evaluate", out)
    assert result.exit_code == 0, result.output
    assert "layer 2 reconstruction cost" in result.output
    error = float(result.output.split("test error ")[1].split(" %")[0])
    recorded = json.loads((out / "manifest.json").read_text())["finetune"]["test_error"]
    assert error == round(100 * recorded, 2)

    codes = tmp_path / "codes.npz"
    result = invoke("encode", out, "--data", "mnist-sample", "--limit", "30", "--out", codes)
    assert result.exit_code == 0, result.output
    assert np.load(codes)["train"].shape[1:] == (16,)
    result = invoke("encode", out, "--data", "mnist-sample", "--limit", "30", "--layer", "1",
                    "--out", tmp_path / "maps.npz")  # fmt: skip
    assert np.load(tmp_path / "maps.npz")["train"].shape[1:] == (12 * 12 * 4,)

    result = invoke("info", out)
    assert result.exit_code == 0, result.output
    assert "input: 28x28x1 images" in result.output
    assert "layers: conv4x5,pool2,16" in result.output

    result = invoke("filters", out, "--grid", "2x2")
    assert result.exit_code == 0, result.output
    picture = np.asarray(Image.open(out / "filters_layer_1.png"))
    assert picture.shape[:2] == (2 * 5 + 1, 2 * 5 + 1)  # 5x5 kernels, one pixel between
    result = invoke("reconstruct", out, "--n", "3")
    assert result.exit_code == 0, result.output
    assert (out / "reconstructions.png").is_file()


RESUME = ["--layers", "conv3x5,pool2,8", "--epochs", "3,1", *SMALL]


def command(out, *extra):
    return [sys.executable, "-m", "stackae_cli", "pretrain", *RESUME, "--out", str(out), *extra]


def stack_weights(out):
    stack = keras.saving.load_model(out / "stack.keras")
    return [keras.ops.convert_to_numpy(w) for w in stack.weights]


# By default: a conv + user-kind run resumes exactly in process (test_user_kind.py) and
# dense runs are killed and resumed (test_reliability.py).
@pytest.mark.slow
def test_a_conv_pretraining_killed_after_an_epoch_resumes_exactly(tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run(command(reference), capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "run"

    def ready():
        try:
            layers = json.loads((out / "manifest.json").read_text())["layers"]
        except (OSError, ValueError):
            return False
        return layers[0]["epochs_done"] >= 1

    code, _ = signal_when(command(out), ready, signal.SIGKILL)
    assert code == -signal.SIGKILL
    layers = json.loads((out / "manifest.json").read_text())["layers"]
    assert not layers[1]["finished"]  # stopped before the end
    done = subprocess.run(
        command(out, "--resume"), capture_output=True, text=True, timeout=DEADLINE
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for got, want in zip(stack_weights(out), stack_weights(reference), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
