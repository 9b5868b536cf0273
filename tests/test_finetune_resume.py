"""Fine-tuning is checkpointed every epoch: killed, it resumes to the uninterrupted result."""

import json
import random
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from stackae import runs
from stackae_cli.main import cli
from tests.processes import DEADLINE, signal_when

PRETRAIN = ["--layers", "32", "--data", "mnist-sample", "--limit", "1000", "--epochs", "1", "-q"]
TUNE = ["--epochs", "6", "--patience", "3", "--dropout", "0.2", "--input-dropout", "0.1"]
TUNE += ["--momentum", "0.5", "--lr-decay", "0.9", "-q"]


def finetune_command(out, *extra):
    return [sys.executable, "-m", "stackae_cli", "finetune", str(out), *TUNE, *extra]


def epochs_done(out):
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return (manifest.get("finetune") or {}).get("epochs_done")


def kill_after(out, epochs, sig, *extra):
    """Start fine-tuning, wait until `epochs` epochs are recorded, then send `sig`."""

    def ready():
        done = epochs_done(out)
        return done is not None and done >= epochs

    return signal_when(finetune_command(out, *extra), ready, sig)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "run"
    result = CliRunner().invoke(cli, ["pretrain", *PRETRAIN, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def uninterrupted(pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "run"
    shutil.copytree(pretrained, out)
    done = subprocess.run(finetune_command(out), capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def classifier_weights(out):
    model = keras.saving.load_model(out / "classifier.keras")
    return model.get_weights()


def test_killed_twice_then_resumed_ends_like_an_uninterrupted_run(
    pretrained, uninterrupted, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(pretrained, out)
    random.seed(1)
    code, _ = kill_after(out, 1, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert epochs_done(out) >= 1
    code, _ = kill_after(out, 3, signal.SIGKILL, "--resume")
    assert code == -signal.SIGKILL
    run = runs.Run.open(out)  # still a valid run: manifest and checksums agree
    assert run.status == "finetuning" and not run.finetune.finished
    done = subprocess.run(
        finetune_command(out, "--resume"), capture_output=True, text=True, timeout=DEADLINE
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for got, want in zip(classifier_weights(out), classifier_weights(uninterrupted)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    ours, theirs = runs.Run.open(out).finetune, runs.Run.open(uninterrupted).finetune
    assert ours.epochs_done == theirs.epochs_done
    for key in theirs.history:
        np.testing.assert_allclose(ours.history[key], theirs.history[key], rtol=1e-5)
    assert ours.valid_error == theirs.valid_error and ours.test_error == theirs.test_error
    # Only the classifier is left of fine-tuning: its checkpoints went with the end.
    assert not [p for p in out.iterdir() if p.name.startswith("finetune_")]


@pytest.mark.slow
def test_ctrl_c_names_the_finetune_resume(pretrained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(pretrained, out)
    code, err = kill_after(out, 1, signal.SIGINT)
    assert code == 130
    last = err.strip().splitlines()[-1]
    assert f"Resume with: stackae finetune {out} --resume" in last
    result = CliRunner().invoke(cli, ["finetune", str(out), "-q"])
    assert result.exit_code == 1 and "--resume" in result.output  # not restarted silently


@pytest.mark.parametrize("which", ["checkpoint", pytest.param("best", marks=pytest.mark.slow)])
def test_a_damaged_finetune_checkpoint_is_refused(pretrained, tmp_path, which):
    out = tmp_path / "run"
    shutil.copytree(pretrained, out)
    code, _ = kill_after(out, 2, signal.SIGKILL)
    assert code == -signal.SIGKILL
    record = runs.Run.open(out).finetune
    name = record.checkpoint if which == "checkpoint" else record.best_checkpoint
    data = (out / name).read_bytes()
    (out / name).write_bytes(data[: len(data) // 2])

    def files():  # the lock's holder aside: a refused writer takes the lock before it reads
        return {
            p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != runs.LOCK
        }

    before = files()
    result = CliRunner().invoke(cli, ["finetune", str(out), *TUNE, "--resume"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "damaged" in lines[0], result.output
    assert files() == before
