"""The conventions every file of the course keeps: ruff-clean code and notebooks, notebooks
saved without outputs and opening with a title, no sys.path edits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chapters.course import REPO_ROOT, course_notebooks

NOTEBOOKS = course_notebooks()


def _ruff(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *arguments, str(REPO_ROOT)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )


def test_code_and_notebooks_pass_ruff_lint() -> None:
    result = _ruff("check", "--no-cache")
    assert result.returncode == 0, (
        f"ruff check found problems (fix with `ruff check --fix`):\n{result.stdout}"
    )


def test_code_and_notebooks_are_ruff_formatted() -> None:
    result = _ruff("format", "--check", "--no-cache")
    assert result.returncode == 0, f"Not formatted (run `ruff format`):\n{result.stdout}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_saved_without_outputs(path: Path) -> None:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    with_outputs = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and c.get("outputs")]
    assert not with_outputs, (
        f"{path.name}: cells {with_outputs} carry outputs. Clear them before committing: "
        f"jupyter nbconvert --clear-output --inplace {path.relative_to(REPO_ROOT)}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_a_title_and_never_edits_sys_path(path: Path) -> None:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    first = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and first.startswith("# "), (
        f"{path.name} should open with a markdown title cell ('# Chapter N: ...')"
    )
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "sys.path" not in code, f"{path.name} edits sys.path; import `chapters....` instead"


def test_ci_runs_the_readme_test_command_unchanged() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = "python3 setup/bootstrap.py test"
    assert command in readme and command in ci
