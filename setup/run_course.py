"""Execute every notebook of the course in reading order and keep what they produce.

    python setup/run_course.py               # the whole course
    python setup/run_course.py ch03 ch04     # only notebooks whose path contains one of these

Each notebook runs in a fresh kernel, in its own folder, with a progress bar over its cells.
The executed copy goes to `runs/latest/notebooks/...` and every figure it drew to
`runs/latest/figures/<notebook>/`; `runs/latest/summary.md` lists the wall time of each
notebook. The run stops at the first notebook that fails and says which cell raised; the
executed copy of that notebook, with the error in it, is kept for reading.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from tqdm.auto import tqdm

from chapters.course import REPO_ROOT, atomic_write, course_notebooks, run_dir

CELL_TIMEOUT_SECONDS = 900


def save_figures(notebook: nbformat.NotebookNode, folder: Path) -> int:
    """Write every PNG output of an executed notebook to `folder`; return how many."""
    count = 0
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                count += 1
                with atomic_write(folder / f"cell{index:03d}-{count:02d}.png", "wb") as file:
                    file.write(base64.b64decode(png))
    return count


def run_notebook(path: Path, position: int, total: int) -> tuple[float, int, str | None]:
    """Execute one notebook; return (seconds, figures saved, error message or None)."""
    relative = path.relative_to(REPO_ROOT)
    notebook = nbformat.read(path, as_version=4)
    code_cells = sum(cell.cell_type == "code" for cell in notebook.cells)
    bar = tqdm(total=code_cells, desc=f"[{position}/{total}] {relative}", unit="cell")
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_SECONDS,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_executed=lambda cell, **_: bar.update(1) if cell.cell_type == "code" else None,
    )
    error = None
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as failure:
        error = str(failure).strip().splitlines()[-1]
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    nbformat.write(notebook, run_dir("notebooks", *relative.parent.parts) / relative.name)
    figures = save_figures(notebook, run_dir("figures", relative.stem))
    return seconds, figures, error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("only", nargs="*", help="run only notebooks whose path contains these")
    arguments = parser.parse_args()

    notebooks = [
        path
        for path in course_notebooks()
        if not arguments.only or any(word in str(path) for word in arguments.only)
    ]
    if not notebooks:
        print("No notebook matches; nothing to run.")
        return 1

    rows = []
    for position, path in enumerate(notebooks, start=1):
        seconds, figures, error = run_notebook(path, position, len(notebooks))
        rows.append((path.relative_to(REPO_ROOT).as_posix(), seconds, figures, error))
        if error:
            break

    lines = ["| notebook | wall time (s) | figures | result |", "|---|---:|---:|---|"]
    lines += [
        f"| {name} | {seconds:.1f} | {figures} | {'FAILED: ' + error if error else 'ok'} |"
        for name, seconds, figures, error in rows
    ]
    total = sum(row[1] for row in rows)
    lines.append(f"| all | {total:.1f} | {sum(row[2] for row in rows)} | |")
    with atomic_write(run_dir() / "summary.md") as file:
        file.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nExecuted notebooks, figures and summary.md are in {run_dir()}")
    failed = [row for row in rows if row[3]]
    if failed:
        name, _, _, error = failed[0]
        print(f"\n{name} failed: {error}\nOpen its executed copy under {run_dir('notebooks')}.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
