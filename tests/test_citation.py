"""CITATION.cff stays in step with the package; the README stays short enough to read."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def field(text, name, sep=":"):
    found = re.search(rf"^{name}\s*{sep}\s*(.+)$", text, re.M)
    assert found, name
    return found.group(1).strip().strip('"')


def test_citation_names_the_package_version_and_licence():
    cff = (ROOT / "CITATION.cff").read_text()
    project = (ROOT / "pyproject.toml").read_text()
    assert field(cff, "cff-version") == "1.2.0"
    assert field(cff, "title") == "stackae"
    assert field(cff, "version") == field(project, "version", "=")
    assert field(cff, "license") == "MIT"
    assert "Stacked denoising autoencoders" in cff and "denoising autoencoders" in cff


def test_readme_is_at_most_300_lines_and_keeps_the_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert (
        "python3 -m venv .venv && . .venv/bin/activate && pip install . && "
        "stackae pretrain --layers 500,500" in readme
    )
    assert 'pip install ".[test]" && python -m pytest' in readme
