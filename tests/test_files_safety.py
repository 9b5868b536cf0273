"""Nothing of the user's is ever lost: --overwrite, locks, refusals before writing, outputs."""

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from stackae import runs
from stackae.errors import RunError
from stackae_cli.main import cli

SMALL = ["--data", "mnist-sample", "--limit", "200", "--epochs", "1", "-q"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, code=1):
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


def tree(folder):
    """{relative path: sha256 or link target} of everything under `folder`, links not followed."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            key = os.path.relpath(path, folder)
            if os.path.islink(path):
                found[key] = "link:" + os.readlink(path)
            elif os.path.isfile(path):
                found[key] = hashlib.sha256(open(path, "rb").read()).hexdigest()
            else:
                found[key] = "dir"
    return found


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A pretrained and fine-tuned run (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = invoke("pretrain", "--layers", "8", *SMALL, "--out", out)
    assert result.exit_code == 0, result.output
    result = invoke("finetune", out, "--epochs", "1", "-q")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


# 1. --overwrite never follows a link out of the run directory.
def test_overwrite_keeps_what_a_link_points_to(run_copy, tmp_path):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "a.txt").write_text("a")
    (victim / "sub" / "b.txt").write_text("b")
    (run_copy / "link").symlink_to(victim)
    before = tree(victim)
    result = invoke("pretrain", "--layers", "16", *SMALL, "--out", run_copy, "--overwrite")
    assert result.exit_code == 0, result.output
    assert tree(victim) == before
    assert (run_copy / "link").is_symlink()  # not the run's: left alone
    assert json.loads((run_copy / "manifest.json").read_text())["layers"][0]["units"] == 16


# 2. A folder that is not a stackae run is refused, and a user's file in a run is kept.
def test_overwrite_refuses_a_foreign_manifest(tmp_path):
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "manifest.json").write_text('{"name": "app"}')
    (project / "notes.txt").write_text("x")
    (project / "src" / "main.py").write_text("y")
    before = tree(project)
    line = one_line_error(
        invoke("pretrain", "--layers", "16", *SMALL, "--out", project, "--overwrite")
    )
    assert "not a stackae run directory" in line
    assert tree(project) == before


def test_overwrite_keeps_the_users_own_files_in_a_run(run_copy):
    (run_copy / "my_notes.txt").write_text("mine")
    (run_copy / "figures").mkdir()
    (run_copy / "figures" / "plot.svg").write_text("<svg/>")
    result = invoke("pretrain", "--layers", "16", *SMALL, "--out", run_copy, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (run_copy / "my_notes.txt").read_text() == "mine"
    assert (run_copy / "figures" / "plot.svg").read_text() == "<svg/>"
    assert not (run_copy / "classifier.keras").exists()  # the old run's own file went
    runs.Run.open(run_copy)


# 3, 5, 6, 10. Every check that can fail runs before anything is written.
@pytest.mark.parametrize(
    "extra, code, words",
    [
        (["--batch-size", "100000"], 1, "fewer than one batch"),
        (["--batch-size", "0"], 2, "positive integer"),
        (["--optimizer", "bogus"], 2, "not a Keras optimizer"),
        (["--epochs", "0"], 2, "positive integer"),
        (["--corruption", "1.5"], 2, "corruption"),
    ],
)
def test_failing_overwrite_leaves_the_old_run_byte_identical(run_copy, extra, code, words):
    before = tree(run_copy)
    args = ["pretrain", "--layers", "8", *SMALL, *extra, "--out", run_copy, "--overwrite"]
    line = one_line_error(invoke(*args), code)
    assert words in line
    assert tree(run_copy) == before


@pytest.mark.parametrize(
    "extra, code", [(["--batch-size", "100000"], 1), (["--optimizer", "bogus"], 2)]
)
def test_refusals_leave_no_half_made_directory(tmp_path, extra, code):
    out = tmp_path / "new"
    one_line_error(invoke("pretrain", "--layers", "8", *SMALL, *extra, "--out", out), code)
    assert not out.exists()
    result = invoke("pretrain", "--layers", "8", *SMALL, "--out", out)  # the same command works
    assert result.exit_code == 0, result.output


# 8. --resume refuses options that contradict the recorded run.
def test_resume_refuses_contradicting_options(run_copy):
    before = tree(run_copy)
    args = ["pretrain", *SMALL, "--out", run_copy, "--resume", "--layers", "9", "--lr", "5"]
    line = one_line_error(invoke(*args, "--corruption", "0.9"), 2)
    assert "layers 8" in line and "learning_rate 0.1" in line and "corruption 0.0" in line
    assert tree(run_copy) == before
    result = invoke("pretrain", "--out", run_copy, "--resume", "--epochs", "1", "-q")
    assert result.exit_code == 0, result.output  # options equal to the recorded ones are fine


# 9. One process per run: a second one is refused at once, naming the holder.
def test_a_locked_run_is_refused_at_once(run_copy):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from stackae.runs import Run\n"
            f"Run.open({str(run_copy)!r}).lock(); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = tree(run_copy)
        started = time.monotonic()
        line = one_line_error(invoke("finetune", run_copy, "--overwrite", "--epochs", "1", "-q"))
        assert time.monotonic() - started < 30
        assert f"in use by process {holder.pid}" in line
        args = ["pretrain", "--layers", "8", *SMALL, "--out", run_copy, "--overwrite"]
        assert f"process {holder.pid}" in one_line_error(invoke(*args))
        assert tree(run_copy) == before
    finally:
        holder.kill()
        holder.wait()


# 11. No verb overwrites an output file silently.
@pytest.mark.parametrize("verb", ["filters", "reconstruct", "encode"])
def test_outputs_are_not_overwritten_without_asking(run_copy, tmp_path, verb):
    target = tmp_path / ("codes.npz" if verb == "encode" else "picture.png")
    target.write_bytes(b"precious")
    extra = ["--data", "mnist-sample", "--limit", "5"] if verb == "encode" else []
    line = one_line_error(invoke(verb, run_copy, *extra, "--out", target))
    assert "exists" in line and "--overwrite" in line
    assert target.read_bytes() == b"precious"
    result = invoke(verb, run_copy, *extra, "--out", target, "--overwrite")
    assert result.exit_code == 0, result.output
    assert target.read_bytes() != b"precious"


def test_pictures_inside_the_run_are_the_runs_own(run_copy):
    assert invoke("filters", run_copy).exit_code == 0
    again = invoke("filters", run_copy)  # its own file: replaced without --overwrite
    assert again.exit_code == 0, again.output
    (run_copy / "reconstructions.png").write_bytes(b"the user's")
    line = one_line_error(invoke("reconstruct", run_copy))
    assert "exists" in line
    assert (run_copy / "reconstructions.png").read_bytes() == b"the user's"


def test_finetune_twice_asks_before_replacing_the_classifier(run_copy):
    before = tree(run_copy)
    line = one_line_error(invoke("finetune", run_copy, "--epochs", "1", "-q"))
    assert "already fine-tuned" in line and "--overwrite" in line
    assert tree(run_copy) == before


# 13. Smaller points: the umask, a missing output folder, relative data paths.
@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_run_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        out = tmp_path / "run"
        assert invoke("pretrain", "--layers", "4", *SMALL, "--out", out).exit_code == 0
    finally:
        os.umask(old)
    for name in ("manifest.json", "stack.keras", "encoder.keras", "history.csv"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_missing_output_folder_names_the_users_path(run_copy, tmp_path):
    target = tmp_path / "no" / "such" / "f.png"
    line = one_line_error(invoke("filters", run_copy, "--out", target))
    assert str(target) in line and ".tmp" not in line


def test_relative_data_paths_resolve_from_where_they_were_given(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "x.npz", x=rng.random((60, 12)).astype("float32"))
    monkeypatch.chdir(tmp_path)
    args = ["pretrain", "--layers", "3", "--data", "data/x.npz", "--epochs", "1", "-q"]
    assert invoke(*args, "--batch-size", "10", "--out", "run").exit_code == 0
    monkeypatch.chdir(tmp_path / "data")  # somewhere else: the recorded path still holds
    result = invoke(
        "encode", tmp_path / "run", "--data", tmp_path / "data" / "x.npz", "--out", "c.npz"
    )
    assert result.exit_code == 0, result.output
    assert invoke("evaluate", tmp_path / "run").exit_code == 0


# 5. Hand-edited manifests: every verb refuses in one line and changes nothing.
EDITS = {
    "limit -5": lambda m: m["data"]["options"].update(limit=-5),
    "limit abc": lambda m: m["data"]["options"].update(limit="abc"),
    "loss evil": lambda m: m["config"]["specs"][0].update(loss="evil"),
    "loss missing": lambda m: m["config"]["specs"][0].pop("loss"),
    "seed 2**80": lambda m: m["config"].update(seed=2**80),
    "image_shape 5": lambda m: m["data"].update(image_shape=5),
    "image_shape 3x3": lambda m: m["data"].update(image_shape=[3, 3]),
    "versions abc": lambda m: m.update(versions="abc"),
    "seconds text": lambda m: m["layers"][0].update(seconds="fast"),
    "epochs 0": lambda m: m["config"]["specs"][0].update(epochs=0),
    "units text": lambda m: m["layers"][0].update(units="8"),
    "status odd": lambda m: m.update(status="done"),
    "finetune spec": lambda m: m["finetune"]["spec"].update(dropout=2),
    "finetune error": lambda m: m["finetune"].update(test_error="low"),
    "outputs path": lambda m: m.update(outputs=["../../etc/passwd"]),
}
VERBS = [
    ["info"],
    ["evaluate"],
    ["filters", "--out", "{tmp}/f.png"],
    ["reconstruct", "--out", "{tmp}/r.png"],
    ["encode", "--data", "mnist-sample", "--limit", "3", "--out", "{tmp}/c.npz"],
    ["finetune", "--overwrite", "--epochs", "1", "-q"],
]


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_edited_manifest_is_refused_by_every_verb(run_copy, tmp_path, edit):
    manifest = json.loads((run_copy / "manifest.json").read_text())
    EDITS[edit](manifest)
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    before = tree(run_copy)
    for verb in VERBS:
        args = [verb[0], run_copy, *[a.format(tmp=tmp_path) for a in verb[1:]]]
        assert "bad manifest" in one_line_error(invoke(*args)), verb
        assert tree(run_copy) == before, verb
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.npz"))


PATHS = [
    ("status",),
    ("versions",),
    ("config", "seed"),
    ("config", "specs", 0, "units"),
    ("config", "specs", 0, "corruption"),
    ("config", "specs", 0, "noise"),
    ("config", "specs", 0, "batch_size"),
    ("layers", 0, "epochs_done"),
    ("layers", 0, "history"),
    ("layers", 0, "finished"),
    ("data", "n_features"),
    ("data", "image_shape"),
    ("data", "options", "valid_size"),
    ("data", "path"),
    ("finetune", "spec", "patience"),
    ("finetune", "n_classes"),
    ("finetune", "history"),
    ("files",),
]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**90), max_value=2**90),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-3, 900), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATHS), VALUES)
def test_manifest_fuzz_every_accepted_value_is_usable(finished_manifest, path, value):
    manifest = copy.deepcopy(finished_manifest)
    target = manifest
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    try:
        parsed = runs.validate_manifest(manifest)
    except RunError as err:
        assert "\n" not in str(err)
        return
    # Accepted: every view a verb reads works on it.
    run = runs.Run("/nonexistent", parsed)
    run.specs, run.data, run.resolve_data_path(run.data), run.summary_rows(), run.finetune
    assert isinstance(run.versions, dict)
    for k in range(run.n_layers):
        run.layer(k)


@pytest.fixture(scope="module")
def finished_manifest(finished):
    return json.loads((finished / "manifest.json").read_text())


def test_keras_safe_mode_refusal_is_one_whole_line(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2)])
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(RunError) as info:
        runs.load_model(tmp_path / "lambda.keras")
    text = str(info.value)
    assert "\n" not in text and "Lambda" in text
    assert text.endswith("enable_unsafe_deserialization().)")  # not cut mid-sentence


# Issue 30, 10. --overwrite of an output never replaces a file the run vouches for.
@pytest.mark.parametrize(
    "verb, name",
    [
        ("filters", "stack.keras"),
        ("reconstruct", "classifier.keras"),
        ("encode", "manifest.json"),
        ("encode", "encoder.keras"),
    ],
)
def test_overwrite_of_an_output_never_replaces_the_runs_own_files(run_copy, verb, name):
    before = tree(run_copy)
    extra = ["--data", "mnist-sample", "--limit", "5"] if verb == "encode" else []
    line = one_line_error(invoke(verb, run_copy, *extra, "--out", run_copy / name, "--overwrite"))
    assert name in line and "never replaces" in line
    assert tree(run_copy) == before
    runs.Run.open(run_copy)


# Issue 30, 11. A user's file bearing a checkpoint's name is refused, never written over.
@pytest.mark.parametrize(
    "verb, name",
    [
        ("finetune", "finetune_epoch_1.weights.h5"),
        ("finetune", "finetune_best_1.npz"),
        ("finetune", "classifier.keras"),
        ("pretrain", "layer_2_epoch_1.weights.h5"),
        ("pretrain", "split.npz"),
    ],
)
def test_a_users_file_named_like_a_checkpoint_is_refused_not_overwritten(run_copy, verb, name):
    run = runs.Run.open(run_copy)
    if verb == "finetune":  # a pretrained run, its classifier never written
        path = run_copy / "classifier.keras"
        if name != "classifier.keras":
            path.unlink()
        manifest = json.loads((run_copy / "manifest.json").read_text())
        manifest["files"].pop("classifier.keras")
        manifest["finetune"], manifest["status"] = None, "pretrained"
        (run_copy / "manifest.json").write_text(json.dumps(manifest))
        args = ["finetune", run_copy, "--epochs", "1", "-q"]
    else:
        args = ["pretrain", "--layers", "8,4", *SMALL, "--out", run_copy, "--overwrite"]
    assert run.owns(name) is (name == "classifier.keras")
    (run_copy / name).write_bytes(b"the user's")
    before = tree(run_copy)
    line = one_line_error(invoke(*args))
    assert str(run_copy / name) in line and "did not write" in line
    assert (run_copy / name).read_bytes() == b"the user's"
    assert tree(run_copy) == before  # refused before anything was written


def test_a_users_picture_in_the_run_is_replaced_only_when_asked(run_copy):
    (run_copy / "filters_layer_1.png").write_bytes(b"the user's")
    assert "exists" in one_line_error(invoke("filters", run_copy))
    assert (run_copy / "filters_layer_1.png").read_bytes() == b"the user's"
    result = invoke("filters", run_copy, "--overwrite")  # asked: the picture is the run's now
    assert result.exit_code == 0, result.output
    assert runs.Run.open(run_copy).owns("filters_layer_1.png")


# Issue 30, 12. An edited manifest cannot make --overwrite remove a user's file or folder.
def test_an_edited_manifest_cannot_make_overwrite_remove_the_users_files(run_copy):
    (run_copy / "thesis").mkdir()
    (run_copy / "thesis" / "chapter.tex").write_text("years of work")
    (run_copy / "data.csv").write_text("1,2\n")
    (run_copy / "notes.txt").write_text("mine")
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["outputs"] += ["thesis", "data.csv"]
    manifest["pending"] = ["notes.txt"]
    manifest["files"]["notes.txt"] = hashlib.sha256(b"mine").hexdigest()
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("pretrain", "--layers", "16", *SMALL, "--out", run_copy, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (run_copy / "thesis" / "chapter.tex").read_text() == "years of work"
    assert (run_copy / "data.csv").read_text() == "1,2\n"
    assert (run_copy / "notes.txt").read_text() == "mine"
    assert not (run_copy / "classifier.keras").exists()  # the old run's own file went


# Issue 30, 21. A folder that is not a run is named once.
def test_not_a_run_directory_is_said_once(tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "x").write_text("x")
    line = one_line_error(invoke("pretrain", *SMALL, "--out", tmp_path / "project", "--overwrite"))
    assert line.count("not a stackae run directory") == 1, line


# Issue 30, 21. A link loop and a folder that cannot be written get a message naming them.
def test_a_link_loop_is_named(tmp_path, run_copy):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for args in (
        ["pretrain", "--data", loop, "--out", tmp_path / "r", "-q"],
        ["info", loop],
        ["pretrain", *SMALL, "--out", loop],
        ["encode", run_copy, "--data", loop, "--out", tmp_path / "c.npz"],
    ):
        line = one_line_error(invoke(*args))
        assert f"{loop}: is a loop of symbolic links" in line, (args, line)


def test_a_folder_that_cannot_be_written_is_named(tmp_path, run_copy, monkeypatch):
    import tempfile

    def denied(*args, **kwargs):  # as in a read-only folder (root may write anywhere)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    out = tmp_path / "codes.npz"
    line = one_line_error(invoke("encode", run_copy, "--data", "mnist-sample", "--out", out))
    assert line == f"Error: {out}: cannot write in {tmp_path} (permission denied)"
