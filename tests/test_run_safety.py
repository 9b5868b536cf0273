"""A run survives its own users: the lock before the read, stops that always stop, resume that
refuses different data or another backend, one line for every refusal.

Most tests start from the format-1 runs in tests/fixtures/runs (copied), so they also show
that an old run goes on working.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from stackae import runs, workflows
from stackae.config import FinetuneSpec
from stackae_cli.main import cli
from tests.processes import DEADLINE, default_signals, signal_when

FIXTURES = Path(__file__).parent / "fixtures" / "runs"
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
# SIGTERM takes the same path as Ctrl-C (stackae.stopping); its end-to-end cases run with -m slow.
SIGTERM_SLOW = pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)


@pytest.fixture
def fixtures(tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "runs")
    return tmp_path / "runs"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line(result, code):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


def manifest(run):
    return json.loads((Path(run) / "manifest.json").read_text())


def cli_command(*args):
    return [sys.executable, "-m", "stackae_cli", *map(str, args)]


def locked_by_child(run, child):
    try:
        return f"process {child.pid} " in (Path(run) / runs.LOCK).read_text()
    except OSError:
        return False


# 1. A reader that changes a run takes the lock and reads the manifest again first.
def test_a_picture_written_after_another_job_keeps_that_jobs_record(fixtures, tmp_path):
    run = fixtures / "pretrain_interrupted"
    gate = tmp_path / "go"
    # The picture writer opens the run (as `filters` does), then waits with its stale copy.
    script = (
        "import sys, time, pathlib\n"
        "from stackae import workflows\n"
        f"run = workflows.open_run({str(run)!r})\n"
        "print('opened', flush=True)\n"
        f"while not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.05)\n"
        "print(workflows.filters_run(run, 1, None, (2, 2)), flush=True)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "opened"
        result = invoke("pretrain", "--resume", "--out", run, "-q")
        assert result.exit_code == 0, result.output
        gate.touch()
        out, err = child.communicate(timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err[-2000:]
    record = manifest(run)
    assert [layer["epochs_done"] for layer in record["layers"]] == [2, 2]
    assert record["status"] == "pretrained"
    assert "filters_layer_1.png" in record["outputs"]
    runs.Run.open(run)  # every checksum agrees: nothing stale was written back
    assert invoke("info", run).exit_code == 0


def test_a_second_finetune_is_refused_before_its_backend_starts(fixtures):
    run = fixtures / "finetuned"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time; from stackae.runs import Run\nRun.open({str(run)!r}, write=True)\n"
            "print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        script = (
            "import sys\nfrom click.testing import CliRunner\nfrom stackae_cli.main import cli\n"
            f"r = CliRunner().invoke(cli, ['finetune', {str(run)!r}, '--overwrite'])\n"
            "print(r.exit_code, 'keras' in sys.modules, r.output.strip().splitlines()[-1])\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=DEADLINE
        )
    finally:
        holder.kill()
        holder.wait()
    code, imported, line = done.stdout.strip().split(" ", 2)
    assert code == "1" and imported == "False", done.stdout
    assert f"in use by process {holder.pid}" in line


# 2. Files a user put in a run are never taken for stray checkpoints.
def test_resume_keeps_user_files_named_like_checkpoints(fixtures):
    run = fixtures / "pretrain_interrupted"
    mine = ["layer_1_epoch_1_mybackup.weights.h5", "layer_9_epoch_keep.weights.h5"]
    mine += ["finetune_best_notes.npz", "finetune_epoch_7.weights.h5"]
    for name in mine:
        (run / name).write_text("mine")
    result = invoke("pretrain", "--resume", "--out", run, "-q")
    assert result.exit_code == 0, result.output
    assert all((run / name).read_text() == "mine" for name in mine)


def test_a_file_a_killed_write_left_is_removed_only_when_named_pending(fixtures):
    run_dir = fixtures / "pretrain_interrupted"
    run = runs.Run.open(run_dir, write=True)
    run._begin_write("layer_1_epoch_2.weights.h5")  # as a process killed mid-write leaves it
    (run_dir / "layer_1_epoch_2.weights.h5").write_text("half")
    run.unlock()
    assert manifest(run_dir)["pending"] == ["layer_1_epoch_2.weights.h5"]
    result = invoke("pretrain", "--resume", "--out", run_dir, "-q")
    assert result.exit_code == 0, result.output
    assert manifest(run_dir)["pending"] == []
    assert not (run_dir / "layer_1_epoch_2.weights.h5").exists()


def test_a_checkpoint_a_killed_process_was_dropping_stays_the_runs_own(fixtures, monkeypatch):
    # Killed after the manifest let go of an old checkpoint, before its file was removed:
    # the next process takes the file for the run's own (and removes it), not for a user's.
    run_dir = fixtures / "pretrain_interrupted"
    old = "layer_1_epoch_9.weights.h5"  # a checkpoint the run no longer needs
    run = runs.Run.open(run_dir, write=True)
    run.write(old, lambda tmp: Path(tmp).write_text("old"))

    def killed(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "_remove", killed)
    with pytest.raises(KeyboardInterrupt):
        run._drop([old])
    monkeypatch.undo()
    run.unlock()
    assert old not in manifest(run_dir)["files"] and (run_dir / old).exists()
    again = runs.Run.open(run_dir, write=True)
    again.claim(old)  # not refused: named pending
    again.remove_pending()
    again.unlock()
    assert not (run_dir / old).exists() and manifest(run_dir)["pending"] == []


# 3, 4. SIGTERM and Ctrl-C always stop the job, with a hint that is true and an exit code.
@pytest.mark.parametrize("sig, code", [SIGTERM_SLOW, (signal.SIGINT, 130)])
def test_a_stop_right_after_the_lock_stops_a_finetune_with_a_true_hint(fixtures, sig, code):
    run = fixtures / "finetuned"
    command = cli_command("finetune", run, "--overwrite", "--epochs", 3, "-q")
    holder = {}

    def ready():
        return locked_by_child(run, holder["child"])

    child = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=default_signals
    )
    holder["child"] = child
    try:
        deadline = time.monotonic() + DEADLINE
        while not ready() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.005)
        time.sleep(0.3)  # inside the backend's start-up (JAX is imported by Keras there)
        child.send_signal(sig)
        _, err = child.communicate(timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == code, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert "--resume" not in line  # no fine-tuning epoch was recorded: nothing to resume
    assert manifest(run)["status"] == "finetuned"  # the old result stands
    assert (run / "classifier.keras").exists()


@pytest.mark.parametrize("sig, code", [SIGTERM_SLOW, (signal.SIGINT, 130)])
def test_a_stop_during_training_resumes_to_the_uninterrupted_result(fixtures, tmp_path, sig, code):
    run = fixtures / "finetuned"
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    settings = ["--epochs", "30", "--patience", "30", "--dropout", "0.2", "-q"]

    def ready():
        record = manifest(run).get("finetune") or {}
        return not record.get("finished", True) and record.get("epochs_done", 0) >= 2

    command = cli_command("finetune", run, "--overwrite", *settings)
    returncode, err = signal_when(command, ready, sig, env=ENV)
    assert returncode == code, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert f"Resume with: stackae finetune {run} --resume" in line
    assert invoke("finetune", run, "--resume", "-q").exit_code == 0
    assert invoke("finetune", twin, "--overwrite", *settings).exit_code == 0
    ours, theirs = manifest(run)["finetune"], manifest(twin)["finetune"]
    for key, values in theirs["history"].items():
        assert ours["history"][key] == pytest.approx(values)
    assert ours["valid_error"] == theirs["valid_error"]


def test_the_hint_is_shell_quoted(fixtures, tmp_path):
    strange = tmp_path / "my runs" / "été 1"
    strange.parent.mkdir()
    shutil.copytree(fixtures / "pretrain_interrupted", strange)
    assert workflows.stop_hint("pretrain", strange) == (
        f"stackae pretrain --resume --out '{strange}'"
    )
    assert workflows.stop_hint("finetune", strange) is None


# 6, 7. Resume refuses other data and another backend.
@pytest.mark.parametrize(
    "extra",
    [
        ["--data", "mnist"],
        ["--limit", "100"],
        ["--valid-size", "5"],
        ["--test-size", "5"],
        ["--label-column", "y"],
        ["--scale"],
    ],
)
def test_pretrain_resume_refuses_other_data(fixtures, extra):
    run = fixtures / "pretrain_interrupted"
    before = (run / "manifest.json").read_bytes()
    line = one_line(invoke("pretrain", "--resume", "--out", run, *extra), 2)
    assert "differ" in line and extra[0].lstrip("-").replace("-", "_") in line
    assert (run / "manifest.json").read_bytes() == before


def test_finetune_resume_refuses_other_data(fixtures):
    run = fixtures / "finetune_interrupted"
    line = one_line(invoke("finetune", run, "--resume", "--limit", "200"), 2)
    assert "limit 300 (given 200)" in line


def test_resume_under_another_backend_is_refused(fixtures):
    run = fixtures / "pretrain_interrupted"
    before = (run / "manifest.json").read_bytes()
    done = subprocess.run(
        [*cli_command("pretrain", "--resume", "--out", run, "-q")],
        capture_output=True,
        text=True,
        env={**ENV, "KERAS_BACKEND": "jax"},
        timeout=DEADLINE,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "tensorflow" in lines[0] and "jax" in lines[0], done.stderr
    assert (run / "manifest.json").read_bytes() == before


# 9. An interrupted fine-tuning again does not leave the old classifier looking current.
def test_evaluate_after_an_interrupted_refinetune_has_no_classifier(fixtures):
    run_dir = fixtures / "finetuned"
    run = runs.Run.open(run_dir, write=True)
    run.start_finetune(FinetuneSpec(epochs=2), n_classes=10)  # then the process is killed
    run.unlock()
    result = invoke("evaluate", run_dir)
    assert result.exit_code == 0, result.output
    assert "test error " not in result.output.replace("the test error", "")
    assert "no fine-tuned classifier" in result.output
    assert not (run_dir / "classifier.keras").exists()


# 10. One line, not a traceback.
def test_tensorboard_without_its_package_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    args = ["--layers", "4", "--data", "mnist-sample", "--limit", "200", "--epochs", "1"]
    line = one_line(invoke("pretrain", *args, "--tensorboard", "--out", out), 1)
    assert "tensorboard" in line
    assert not out.exists()


def test_an_unknown_backend_is_one_line(tmp_path):
    done = subprocess.run(
        cli_command("pretrain", "--layers", "4", "--out", tmp_path / "r"),
        capture_output=True,
        text=True,
        env={**ENV, "KERAS_BACKEND": "bogus"},
        timeout=DEADLINE,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "bogus" in lines[0], done.stderr


@pytest.mark.parametrize(
    "where, value",
    [
        (("data", "shapes"), 5),
        (("data", "shapes"), "abc"),
        (("finetune", "stopper"), {"best": "abc", "best_epoch": 0, "wait": 0}),
        (("finetune", "stopper"), {"best": 0.5, "wait": 0}),
        (("data", "options", "scale"), "sideways"),
    ],
)
def test_edited_manifest_fields_are_one_line(fixtures, where, value):
    run = fixtures / "finetune_interrupted"
    raw = manifest(run)
    target = raw
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    (run / "manifest.json").write_text(json.dumps(raw))
    for args in (["info", run], ["finetune", run, "--resume"]):
        assert "bad manifest" in one_line(invoke(*args), 1)


def test_a_stack_too_large_for_memory_is_one_line(tmp_path):
    out = tmp_path / "r"
    args = ["--layers", "100000000", "--data", "mnist-sample", "--limit", "200"]
    line = one_line(invoke("pretrain", *args, "--out", out), 1)
    assert "GiB" in line and not out.exists()


def test_a_huge_grid_is_capped_by_the_number_of_units(fixtures, tmp_path):
    from PIL import Image

    picture = tmp_path / "f.png"
    result = invoke("filters", fixtures / "finetuned", "--grid", "1x1000000000", "--out", picture)
    assert result.exit_code == 0, result.output
    width, height = Image.open(picture).size
    assert width < 16 * 30 and height < 30  # 16 units: one row of at most 16 tiles


def test_best_weights_of_the_wrong_shape_are_refused_before_training(fixtures):
    run = fixtures / "finetune_interrupted"
    raw = manifest(run)
    best = raw["finetune"]["best_checkpoint"]
    np.savez(run / best, np.zeros((3, 3)), np.zeros(3))
    raw["files"][best] = runs.sha256(run / best)
    (run / "manifest.json").write_text(json.dumps(raw))
    line = one_line(invoke("finetune", run, "--resume", "-q"), 1)
    assert best in line and "do not fit" in line
    assert manifest(run)["finetune"]["epochs_done"] == 1


# 11. Smaller items.
@pytest.mark.parametrize(
    "option, value",
    [("--valid-size", "1.5"), ("--test-size", "-3"), ("--corruption", "nan"), ("--lr", "inf")],
)
def test_sizes_and_numbers_the_options_cannot_take_exit_2(tmp_path, option, value):
    out = tmp_path / "run"
    line = one_line(invoke("pretrain", "--layers", "4", option, value, "--out", out), 2)
    assert option in line and value in line
    assert not out.exists()


def test_reconstruct_refuses_nan_corruption(fixtures):
    result = invoke("reconstruct", fixtures / "finetuned", "--corruption", "nan")
    assert result.exit_code == 2


def test_a_missing_disposable_checkpoint_blocks_only_the_resume(fixtures):
    run = fixtures / "finetune_interrupted"
    checkpoint = manifest(run)["finetune"]["checkpoint"]
    (run / checkpoint).unlink()
    assert invoke("info", run).exit_code == 0
    assert checkpoint in one_line(invoke("finetune", run, "--resume", "-q"), 1)
    result = invoke("finetune", run, "--overwrite", "--epochs", "1", "-q")
    assert result.exit_code == 0, result.output


def test_an_edited_batch_size_is_refused_not_ignored(fixtures):
    run = fixtures / "pretrain_interrupted"
    raw = manifest(run)
    raw["config"]["specs"][0]["batch_size"] = 7
    (run / "manifest.json").write_text(json.dumps(raw))
    line = one_line(invoke("pretrain", "--resume", "--out", run, "-q"), 1)
    assert "differ from the manifest" in line


def test_a_long_run_name_works(tmp_path):
    out = tmp_path / ("r" * 240)
    args = ["--layers", "4", "--data", "mnist-sample", "--limit", "200", "--epochs", "1", "-q"]
    result = invoke("pretrain", *args, "--out", out)
    assert result.exit_code == 0, result.output


def test_a_link_to_a_run_reads_and_resumes_it(fixtures, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(fixtures / "pretrain_interrupted")
    assert invoke("info", link).exit_code == 0
    result = invoke("pretrain", "--resume", "--out", link, "-q")
    assert result.exit_code == 0, result.output
    assert manifest(link)["status"] == "pretrained"


def test_best_weights_declaring_gigabytes_are_refused_before_inflating(tmp_path, monkeypatch):
    import zipfile

    path = tmp_path / "finetune_best_1.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("arr_0.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f4", "fortran_order": False, "shape": (250_000_000,)}
            np.lib.format.write_array_header_1_0(member, header)
            for _ in range(60):  # 1 GB of zeros, about 1 MB on disk
                member.write(bytes(1 << 24))
    assert path.stat().st_size < 2 << 20

    def no_inflating(*args, **kwargs):
        raise AssertionError("np.load was called")

    monkeypatch.setattr(np, "load", no_inflating)
    with pytest.raises(runs.CheckpointError, match="do not fit"):
        workflows._load_arrays(path, [np.zeros((3, 3), "float32")])


def test_finetune_with_other_data_options_records_them_for_resume_and_evaluate(fixtures):
    run = fixtures / "finetuned"
    result = invoke("finetune", run, "--overwrite", "--limit", "200", "--epochs", "1", "-q")
    assert result.exit_code == 0, result.output
    record = manifest(run)["finetune"]
    assert record["data"]["options"]["limit"] == 200
    assert "on 200 rows" in invoke("evaluate", run).output  # the rows fine-tuning used


def test_a_disk_too_full_for_a_checkpoint_is_one_line_and_the_run_resumes(tmp_path, monkeypatch):
    import collections

    import stackae.files

    out = tmp_path / "run"
    args = ["--layers", "16", "--data", "mnist-sample", "--limit", "200", "--epochs", "2", "-q"]
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(stackae.files.shutil, "disk_usage", lambda path: usage(1, 1, 1000))
    line = one_line(invoke("pretrain", *args, "--out", out), 1)
    assert "no room for layer 1's checkpoint" in line
    assert not [p for p in out.iterdir() if p.name.endswith(".h5")]  # nothing half-written
    monkeypatch.undo()
    result = invoke("pretrain", "--resume", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert manifest(out)["status"] == "pretrained"


# Issue 30, 18. evaluate and encode stop on a signal, leaving no output.
@pytest.mark.parametrize(
    "verb, sig, code",
    [("evaluate", signal.SIGINT, 130), ("encode", signal.SIGTERM, 143)],
)
def test_evaluate_and_encode_stop_on_a_signal_and_write_nothing(
    fixtures, tmp_path, verb, sig, code
):
    out = tmp_path / "codes.npz"
    extra = ["--data", "mnist-sample", "--out", out] if verb == "encode" else []
    command = cli_command(verb, fixtures / "finetuned", *extra)
    started = time.monotonic()
    returncode, err = signal_when(
        command, lambda: time.monotonic() - started > 2, sig, env=ENV, wait=(0, 1)
    )
    assert returncode == code, err[-2000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-2000:]
    assert not out.exists() and not list(tmp_path.glob(".stackae-*"))


# Issue 30, 19. A stop while the command starts (its imports) is one line, not a traceback.
@pytest.mark.parametrize(
    "delay, sig, code", [(0.2, signal.SIGINT, 130), (0.4, signal.SIGTERM, 143)]
)
def test_a_stop_while_the_command_starts_is_one_line(fixtures, delay, sig, code):
    started = time.monotonic()
    returncode, err = signal_when(
        cli_command("evaluate", fixtures / "finetuned"),  # alive long after its imports
        lambda: time.monotonic() - started > delay,
        sig,
        env=ENV,
    )
    assert returncode == code, err[-2000:]
    assert err.strip().splitlines() == [
        "Error: interrupted" if sig == signal.SIGINT else "Error: terminated (SIGTERM)"
    ]


# Issue 30, 20. filters and reconstruct are quiet without -v, and refuse a busy run at once.
@pytest.mark.parametrize("verb", ["filters", pytest.param("reconstruct", marks=pytest.mark.slow)])
def test_pictures_are_quiet_and_refuse_a_busy_run_before_the_backend(fixtures, tmp_path, verb):
    run = fixtures / "finetuned"
    done = subprocess.run(
        cli_command(verb, run, "--out", tmp_path / "p.png"),
        capture_output=True,
        text=True,
        env=dict(os.environ),  # no TF_CPP_MIN_LOG_LEVEL: stackae quiets the backend itself
        timeout=DEADLINE,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time; from stackae.runs import Run\nRun.open({str(run)!r}, write=True)\n"
            "print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        script = (
            "import sys\nfrom click.testing import CliRunner\nfrom stackae_cli.main import cli\n"
            f"r = CliRunner().invoke(cli, [{verb!r}, {str(run)!r}])\n"
            "print(r.exit_code, 'keras' in sys.modules, r.output.strip().splitlines()[-1])\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=DEADLINE
        )
    finally:
        holder.kill()
        holder.wait()
    code, imported, line = done.stdout.strip().split(" ", 2)
    assert code == "1" and imported == "False", done.stdout + done.stderr[-2000:]
    assert f"in use by process {holder.pid}" in line


# Issue 30, item 5: a run's data file replaced by other rows of the same shape is refused.
def test_resume_refuses_a_data_file_changed_since_the_run_read_it(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "swap.npz"
    np.savez(path, x=rng.random((120, 6)), y=np.arange(120) % 2)
    run = tmp_path / "run"
    args = ["--data", path, "--layers", "8,4", "--epochs", "1", "--batch-size", "20", "-q"]
    assert invoke("pretrain", *args, "--out", run).exit_code == 0
    # As if stopped before its second layer: its manifest says so.
    raw = manifest(run)
    raw["status"] = "pretraining"
    raw["layers"][1] |= {"epochs_done": 0, "finished": False, "history": {}, "seconds": 0.0}
    (run / "manifest.json").write_text(json.dumps(raw))
    np.savez(path, x=rng.random((120, 6)), y=np.arange(120) % 2)  # other rows, same shape
    before = (run / "manifest.json").read_bytes()
    line = one_line(invoke("pretrain", "--resume", "--out", run), 1)
    assert f"{path}: the file changed since the run read it" in line
    assert "--data-changed-ok" in line
    assert (run / "manifest.json").read_bytes() == before
    result = invoke("pretrain", "--resume", "--out", run, "--data-changed-ok", "-q")
    assert result.exit_code == 0, result.output
    assert manifest(run)["status"] == "pretrained"
