"""The notebook is the source: every module must be exactly what its notebook exports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "setup"))
import export_modules  # noqa: E402  (a script folder, not a package)

from chapters.course import REPO_ROOT  # noqa: E402


def _write_notebook(path: Path, cells: list[dict], module: str | None = "demo.py") -> None:
    metadata = {"course": {"module": module}} if module else {}
    notebook = {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook), encoding="utf-8")


def _code_cell(source: str, tags: list[str]) -> dict:
    return {
        "cell_type": "code",
        "metadata": {"tags": tags},
        "source": source,
        "outputs": [],
        "execution_count": None,
    }


@pytest.fixture
def toy_course(tmp_path: Path) -> Path:
    _write_notebook(
        tmp_path / "chapters" / "ch99_demo" / "ch99_demo.ipynb",
        [
            _code_cell("def answer() -> int:\n    return 42\n", ["export"]),
            _code_cell("print(answer())", []),
            _code_cell("HELPER = 1\n", ["export:helpers.py"]),
        ],
    )
    return tmp_path


def test_every_course_module_matches_its_notebook() -> None:
    stale = export_modules.stale_modules(REPO_ROOT)
    assert not stale, (
        f"These modules differ from their notebooks: {[str(p) for p in stale]}. "
        f"Run `{export_modules.EXPORT_COMMAND}` and commit the result."
    )


def test_only_tagged_cells_are_exported_in_notebook_order(toy_course: Path) -> None:
    modules = export_modules.all_modules(toy_course)
    folder = toy_course / "chapters" / "ch99_demo"
    assert set(modules) == {folder / "demo.py", folder / "helpers.py"}
    demo = modules[folder / "demo.py"]
    assert demo.startswith("# Generated from chapters/ch99_demo/ch99_demo.ipynb")
    assert "def answer()" in demo and "print(answer())" not in demo
    assert modules[folder / "helpers.py"].rstrip().endswith("HELPER = 1")


def test_check_reports_a_module_whose_exported_cell_was_edited(toy_course: Path) -> None:
    for path, text in export_modules.all_modules(toy_course).items():
        path.write_text(text, encoding="utf-8")
    assert export_modules.stale_modules(toy_course) == []

    notebook_path = toy_course / "chapters" / "ch99_demo" / "ch99_demo.ipynb"
    notebook = json.loads(notebook_path.read_text())
    notebook["cells"][0]["source"] = "def answer() -> int:\n    return 43\n"
    notebook_path.write_text(json.dumps(notebook))
    assert export_modules.stale_modules(toy_course) == [notebook_path.parent / "demo.py"]


def test_export_tag_without_a_module_name_says_how_to_fix_it(tmp_path: Path) -> None:
    _write_notebook(
        tmp_path / "chapters" / "ch98" / "ch98.ipynb",
        [_code_cell("x = 1", ["export"])],
        module=None,
    )
    with pytest.raises(ValueError, match="course"):
        export_modules.all_modules(tmp_path)
