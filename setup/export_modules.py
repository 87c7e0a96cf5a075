"""Regenerate every chapter module from its notebook.

    python setup/export_modules.py            # rewrite the modules
    python setup/export_modules.py --check    # exit 1, listing the stale ones, if any differ

A code cell belongs in a module when it carries a cell tag (JupyterLab: the gear icon on the
right, "Cell Tags"):
    export            -> the notebook's default module, named in the notebook metadata
                         {"course": {"module": "attention.py"}}
    export:NAME.py    -> NAME.py in the notebook's folder (for a notebook that feeds two modules)
Exported cells are written in notebook order, separated by two blank lines, under a header that
names the source notebook. Modules are written atomically and only when their text changes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from chapters.course import course_notebooks

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPORT_COMMAND = "python setup/export_modules.py"


def _cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _export_targets(cell: dict, default_module: str | None, notebook: Path) -> list[str]:
    targets = []
    for tag in cell.get("metadata", {}).get("tags", []):
        if tag == "export":
            if not default_module:
                raise ValueError(
                    f"{notebook}: a cell is tagged 'export' but the notebook metadata has no "
                    '{"course": {"module": "NAME.py"}}. Add it, or tag the cell "export:NAME.py".'
                )
            targets.append(default_module)
        elif tag.startswith("export:"):
            targets.append(tag.removeprefix("export:"))
    return targets


def modules_from_notebook(notebook: Path, root: Path = REPO_ROOT) -> dict[Path, str]:
    """The text of every module that `notebook` exports, keyed by the module's path."""
    content = json.loads(notebook.read_text(encoding="utf-8"))
    default_module = content.get("metadata", {}).get("course", {}).get("module")
    cells_by_module: dict[str, list[str]] = {}
    for cell in content.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        for target in _export_targets(cell, default_module, notebook):
            cells_by_module.setdefault(target, []).append(_cell_source(cell).strip("\n"))

    relative = notebook.relative_to(root).as_posix()
    modules = {}
    for name, cells in cells_by_module.items():
        header = (
            f"# Generated from {relative} by `{EXPORT_COMMAND}`. Do not edit:\n"
            "# change the notebook's cells tagged for export and run that command again.\n"
        )
        modules[notebook.parent / name] = header + "\n\n" + "\n\n\n".join(cells) + "\n"
    return modules


def all_modules(root: Path = REPO_ROOT) -> dict[Path, str]:
    modules: dict[Path, str] = {}
    for notebook in course_notebooks(root):
        for path, text in modules_from_notebook(notebook, root).items():
            if path in modules:
                raise ValueError(f"{path} is exported by more than one notebook")
            modules[path] = text
    return modules


def stale_modules(root: Path = REPO_ROOT) -> list[Path]:
    """Modules whose file is missing or differs from what their notebook exports."""
    return [
        path
        for path, text in all_modules(root).items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]


def _write_atomically(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as file:
        file.write(text)
    os.replace(temporary, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale modules")
    arguments = parser.parse_args()

    if arguments.check:
        stale = stale_modules()
        for path in stale:
            print(f"stale: {path.relative_to(REPO_ROOT)}")
        if stale:
            print(f"Run `{EXPORT_COMMAND}` to regenerate them.")
        return 1 if stale else 0

    for path, text in all_modules().items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            _write_atomically(path, text)
            print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
