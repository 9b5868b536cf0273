"""Runs written by stackae 0.1.0 (manifest format 1) are read by every verb of this version.

The folders in tests/fixtures/runs/ were written before the manifest was
redefined (tests/fixtures/make_run_fixtures.py says how); they are copied,
never changed in place, and never regenerated.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from stackae_cli.main import cli

FIXTURES = Path(__file__).parent / "fixtures" / "runs"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.fixture
def runs_copy(tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "runs")
    return tmp_path / "runs"


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", ["finetuned", "finetune_interrupted", "pretrain_interrupted"])
def test_info_reads_every_fixture(runs_copy, name):
    out = invoke("info", runs_copy / name)
    assert "backend: tensorflow" in out
    assert "status: " in out


def test_finetuned_fixture_evaluates_and_encodes_as_it_did(runs_copy, tmp_path):
    run = runs_copy / "finetuned"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    out = invoke("evaluate", run)
    expected = EXPECTED["finetuned"]
    assert f"test error {100 * expected['test_error']:.2f} %" in out
    codes = tmp_path / "codes.npz"
    invoke("encode", run, "--data", "mnist-sample", "--limit", 300, "--out", codes)
    with np.load(codes) as saved:
        np.testing.assert_allclose(saved["test"][:5], expected["codes"], atol=1e-5)
    invoke("filters", run, "--out", tmp_path / "f.png")
    after = {p.name: p.read_bytes() for p in run.iterdir()}
    assert after == before  # reading an old run changes none of its files


def test_interrupted_fixtures_resume(runs_copy):
    out = invoke("finetune", runs_copy / "finetune_interrupted", "--resume", "-q")
    assert "validation error" in out
    assert json.loads((runs_copy / "finetune_interrupted" / "manifest.json").read_text())[
        "finetune"
    ]["finished"]
    out = invoke("pretrain", "--resume", "--out", runs_copy / "pretrain_interrupted", "-q")
    assert "run saved in" in out
    manifest = json.loads((runs_copy / "pretrain_interrupted" / "manifest.json").read_text())
    assert [layer["epochs_done"] for layer in manifest["layers"]] == [2, 2]


def test_table_fixture_reads_its_relative_data(runs_copy):
    run = runs_copy / "table"
    out = invoke("evaluate", run)
    assert "layer 1 reconstruction cost" in out
    codes = runs_copy / "table_codes.npz"
    invoke("encode", run, "--data", runs_copy / "table.csv", "--out", codes)
    with np.load(codes) as saved:
        # The old --scale (one min and max over the run's data) is applied, not refitted.
        np.testing.assert_allclose(saved["train"][:5], EXPECTED["table"]["codes"], atol=1e-5)
    out = invoke("finetune", run, "--overwrite", "--epochs", 2, "-q")
    assert "validation error" in out
