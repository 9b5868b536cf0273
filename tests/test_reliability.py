"""A run survives SIGKILL, SIGINT, a full disk, damaged files and nonsense manifests."""

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from stackae import runs
from stackae.runs import RunError, validate_manifest
from stackae_cli.main import cli
from tests.processes import DEADLINE, signal_when

ARGS = ["--layers", "24,12", "--data", "mnist-sample", "--limit", "1000", "--epochs", "4"]
ARGS += ["--corruption", "0.2,0.3", "-q"]


def command(out, *extra):
    return [sys.executable, "-m", "stackae_cli", "pretrain", *ARGS, "--out", str(out), *extra]


def run_child(out, *extra):
    done = subprocess.run(command(out, *extra), capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def progress(out):
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return [layer["epochs_done"] for layer in manifest["layers"]]


def start_and_stop(out, layer, epochs, sig, *extra):
    """Start pretraining, wait until `layer` has `epochs` epochs, then send `sig`."""

    def ready():
        done = progress(out)
        return bool(done) and done[layer] >= epochs

    return signal_when(command(out, *extra), ready, sig)


def stack_weights(out):
    stack = keras.saving.load_model(out / "stack.keras")
    return [keras.ops.convert_to_numpy(w) for w in stack.weights]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run_child(out)
    return out


def test_killed_and_resumed_run_ends_with_the_same_weights(uninterrupted, tmp_path):
    out = tmp_path / "run"
    random.seed(0)
    # Two kills: inside layer 1 and inside layer 2.
    for layer, epochs in ((0, 2), (1, 1)):
        extra = ("--resume",) if out.exists() else ()
        code, _ = start_and_stop(out, layer, epochs, signal.SIGKILL, *extra)
        assert code == -signal.SIGKILL
        runs.Run.open(out)  # still a valid run: manifest and checksums agree
    run_child(out, "--resume")
    for got, want in zip(stack_weights(out), stack_weights(uninterrupted)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    ours = json.loads((out / "manifest.json").read_text())["layers"]
    theirs = json.loads((uninterrupted / "manifest.json").read_text())["layers"]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a["history"]["loss"], b["history"]["loss"], rtol=1e-5)


@pytest.mark.slow
def test_sigint_leaves_a_resumable_run(tmp_path):
    out = tmp_path / "run"
    code, err = start_and_stop(out, 0, 1, signal.SIGINT)
    assert code == 130  # what shells expect of a job stopped by Ctrl-C
    assert f"stackae pretrain --resume --out {out}" in err
    runs.Run.open(out)
    run_child(out, "--resume")
    assert all(
        layer["finished"] for layer in json.loads((out / "manifest.json").read_text())["layers"]
    )


def digests(folder):
    """Every file's digest but the lock's (a refused writer takes the lock before it reads)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.name != runs.LOCK
    }


@pytest.fixture(scope="module")
def finished_run(uninterrupted, tmp_path_factory):
    out = tmp_path_factory.mktemp("done") / "run"
    shutil.copytree(uninterrupted, out)
    result = CliRunner().invoke(cli, ["finetune", str(out), "--epochs", "1", "-q"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("partial") / "run"
    code, _ = start_and_stop(out, 1, 1, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert any(name.endswith(".weights.h5") for name in runs.Run.open(out).files)
    return out


def damage(path, how):
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip-first":
        path.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    else:  # flip a byte in the middle of the file
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x55]) + data[middle + 1 :])


CASES = [
    (kind, name, how)
    for kind, names in (
        ("finished", ("manifest.json", "stack.keras", "encoder.keras", "classifier.keras")),
        ("partial", ("manifest.json", "stack.keras", "checkpoint")),
    )
    for name in names
    for how in ("truncate", "flip-first" if name == "manifest.json" else "flip-middle")
]


@pytest.mark.parametrize("kind, name, how", CASES, ids=["-".join(c) for c in CASES])
def test_damaged_files_are_refused_and_nothing_changes(kind, name, how, request, tmp_path):
    source = request.getfixturevalue(f"{kind}_run")
    out = tmp_path / "run"
    shutil.copytree(source, out)
    if name == "checkpoint":
        name = next(n for n in runs.Run.open(out).files if n.endswith(".weights.h5"))
    damage(out / name, how)
    before = digests(out)
    verbs = [["info", out], ["finetune", out, "-q"], ["evaluate", out]]
    if kind == "partial" and name.endswith(".weights.h5"):
        verbs = [["finetune", out, "-q"]]  # a checkpoint is read by a resume only (below)
    verbs.append(["pretrain", *ARGS, "--out", out, "--resume"])
    for verb in verbs:
        result = CliRunner().invoke(cli, [str(a) for a in verb])
        assert result.exit_code == 1, (verb, result.output)
        lines = result.output.strip().splitlines()
        assert lines[-1].startswith("Error: ") and str(out) in lines[-1], result.output
        assert digests(out) == before, verb


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(format=99), "newer stackae"),
        (lambda m: m["layers"][0].update(epochs_done=-3), "epochs_done"),
        (lambda m: m["layers"].pop(), "layers do not match"),
        (lambda m: m.update(tool="other"), "not written by stackae"),
        (lambda m: m.update(files=["stack.keras"]), "files is not an object"),
        (lambda m: m["config"].update(seed="abc"), "seed"),
    ],
)
def test_nonsense_manifest_is_refused(finished_run, tmp_path, edit, message):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunError, match=message):
        runs.Run.open(out)


def test_a_directory_from_another_tool(tmp_path):
    (tmp_path / "manifest.json").write_text('{"name": "something else"}')
    result = CliRunner().invoke(cli, ["info", str(tmp_path)])
    assert result.exit_code == 1 and "not written by stackae" in result.output


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = runs.atomic_write

    def disk_fills_during_epoch_2_checkpoint(path, write, suffix=""):
        if not str(path).endswith("layer_1_epoch_2.weights.h5"):
            return real(path, write, suffix)

        def half_then_full(tmp):
            write(tmp)
            with open(tmp, "r+b") as f:
                f.truncate(os.path.getsize(tmp) // 2)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        return real(path, half_then_full, suffix)

    monkeypatch.setattr(runs, "atomic_write", disk_fills_during_epoch_2_checkpoint)
    result = CliRunner().invoke(cli, ["pretrain", *ARGS, "--out", str(out)])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert "No space left on device" in last and "layer_1_epoch_2" in last
    monkeypatch.setattr(runs, "atomic_write", real)
    run = runs.Run.open(out)  # checksums still agree with what is on disk
    assert run.layer(0).epochs_done == 1
    assert run.layer(0).checkpoint in run.files
    assert not [p for p in out.iterdir() if ".tmp" in p.name or "epoch_2" in p.name]
    result = CliRunner().invoke(cli, ["pretrain", *ARGS, "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output


def test_diverging_training_stops_with_a_hint(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "pretrain",
            "--layers",
            "8",
            "--data",
            "mnist-sample",
            "--limit",
            "200",
            "--epochs",
            "2",
            "--lr",
            "1e38",
            "-q",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert "layer 1, epoch 1" in line and "lower the learning rate" in line
    run = runs.Run.open(out)
    assert run.layer(0).epochs_done == 0  # no NaN checkpoint was recorded
    weights = stack_weights(out)
    assert all(np.isfinite(w).all() for w in weights)


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_manifest_reader_fuzz_random_json(value):
    try:
        validate_manifest(value)
    except RunError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_manifest_reader_fuzz_random_bytes(tmp_path_factory, blob):
    folder = Path(tmp_path_factory.mktemp("fuzz"))
    (folder / "manifest.json").write_bytes(blob)
    with pytest.raises(RunError):
        runs.Run.open(folder)
    os.remove(folder / "manifest.json")


@pytest.mark.slow
def test_sigterm_is_like_ctrl_c_and_resumes_exactly(uninterrupted, tmp_path):
    out = tmp_path / "run"
    code, err = start_and_stop(out, 0, 2, signal.SIGTERM)
    assert code == 143, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "terminated (SIGTERM)" in last
    assert f"Resume with: stackae pretrain --resume --out {out}" in last
    runs.Run.open(out)
    run_child(out, "--resume")
    for got, want in zip(stack_weights(out), stack_weights(uninterrupted)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_help_and_info_import_no_backend(uninterrupted):
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from stackae_cli.main import cli\n"
        "for args in (['--help'], ['pretrain', '--help'], ['info', sys.argv[1]]):\n"
        "    result = CliRunner().invoke(cli, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "loaded = [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(uninterrupted)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_pretraining_checkpoints_on_a_budget_and_resumes_exactly(
    uninterrupted, tmp_path, monkeypatch
):
    """Tiny epochs do not pay a checkpoint each; a resume re-runs the unrecorded epochs exactly."""
    from stackae import callbacks

    # A budget no 4-epoch layer reaches: checkpoints after the first two epochs and the last.
    monkeypatch.setattr(callbacks.LayerCheckpoint, "RATIO", float("inf"))
    monkeypatch.setattr(callbacks.LayerCheckpoint, "EVERY", 1e9)
    record = runs.Run.record_epoch
    seen = []

    def recorded(self, k, epoch, *args, **kwargs):
        record(self, k, epoch, *args, **kwargs)
        entry = self.manifest.layers[k]
        seen.append((k, epoch, entry.epochs_done, len(entry.history["loss"]), entry.checkpoint))
        if (k, epoch) == (0, 1):  # the run as a kill right after this checkpoint would leave it
            shutil.copytree(self.path, tmp_path / "killed", ignore=shutil.ignore_patterns("*.lock"))

    monkeypatch.setattr(runs.Run, "record_epoch", recorded)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["pretrain", *ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [s[:4] for s in seen] == [(k, e, e + 1, e + 1) for k in (0, 1) for e in (0, 1, 3)]
    assert seen[1][4] == "layer_1_epoch_2.weights.h5"
    killed = json.loads((tmp_path / "killed" / "manifest.json").read_text())["layers"][0]
    assert killed["epochs_done"] == 2 and not killed["finished"]

    # Resumed after epoch 2 of layer 1, epochs 3 and 4 run again and end as the uninterrupted run.
    monkeypatch.setattr(runs.Run, "record_epoch", record)
    resumed = CliRunner().invoke(
        cli, ["pretrain", *ARGS, "--out", str(tmp_path / "killed"), "--resume"]
    )
    assert resumed.exit_code == 0, resumed.output
    theirs = json.loads((uninterrupted / "manifest.json").read_text())["layers"]
    for name in ("run", "killed"):
        for got, want in zip(stack_weights(tmp_path / name), stack_weights(uninterrupted)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        ours = json.loads((tmp_path / name / "manifest.json").read_text())["layers"]
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a["history"]["loss"], b["history"]["loss"], rtol=1e-5)
