"""Course-wide pytest set-up: a fresh artifacts folder, notebooks in chapter order, and a
table of each notebook's wall time at the end of the run."""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest

from chapters.course import reading_order

NOTEBOOK_BUDGET_SECONDS = 300
_notebook_seconds: dict[str, float] = defaultdict(float)


def pytest_configure(config: pytest.Config) -> None:
    # Notebook kernels inherit this environment: every test run builds the chapters' artifacts
    # from scratch in a throw-away folder instead of reusing (possibly stale) ones.
    if "LLM_COURSE_ARTIFACTS" not in os.environ:
        os.environ["LLM_COURSE_ARTIFACTS"] = tempfile.mkdtemp(prefix="llm-course-artifacts-")
    os.environ.setdefault("LLM_COURSE_RUN_DIR", tempfile.mkdtemp(prefix="llm-course-run-"))
    os.environ.setdefault("TQDM_MININTERVAL", "5")  # keep notebook outputs short


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort keeps the cells of one notebook in their own order.
    root = Path(__file__).resolve().parent
    items.sort(key=lambda item: reading_order(Path(str(item.path)).relative_to(root)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _notebook_seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _notebook_seconds:
        return
    terminalreporter.section("notebook wall time")
    total = 0.0
    for path, seconds in _notebook_seconds.items():
        flag = "  OVER BUDGET" if seconds > NOTEBOOK_BUDGET_SECONDS else ""
        terminalreporter.write_line(f"{seconds:8.1f} s  {path}{flag}")
        total += seconds
    terminalreporter.write_line(
        f"{total:8.1f} s  all notebooks ({time.strftime('%Y-%m-%d %H:%M')})"
    )
