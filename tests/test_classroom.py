"""The classroom edition: the student copy holds no answers, and `grade` scores what it gets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chapters.course import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "setup"))
import classroom  # noqa: E402

GRADED = sorted(classroom.CORE)  # every chapter: about a minute for the three gradings
ANSWERS_ONCE_IN_CHECKS = [  # reference answers that exercise checks and tests used to hold
    "_reference_min_p",
    "_reference_masked_batch_norm",
    "reference_predicted_loss",
    "reference_accumulate_and_step",
    "reference_largest_model_zero3",
    "reference_apply_checkpointing",
    "reference_microbatches_needed",
    "reference_items_needed",
    "k.repeat_interleave(",  # the grouped-query attention answer in the chapter 3 tests
]


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def student_copy(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    folder = tmp_path_factory.mktemp("classroom") / "student"
    return folder, classroom.build_student_copy(folder)


def _grade(folder: Path, *chapters: str) -> str:
    result = subprocess.run(
        [sys.executable, "setup/classroom.py", "grade", *chapters],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(folder)},
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def _points(report: str, chapter: str) -> tuple[int, int]:
    earned, total = re.search(rf"^{chapter}: (\d+)/(\d+) points", report, re.M).groups()
    return int(earned), int(total)


def test_student_copy_leaves_out_the_answer_key(student_copy):
    folder, _ = student_copy
    names = [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]
    assert not [name for name in names if classroom._is_instructor_only(Path(name))]
    assert "chapters/ch04_blocks/ch04_blocks.ipynb" in names  # the book itself is there


def test_no_file_in_the_student_copy_holds_a_removed_body_or_a_reference_answer(student_copy):
    folder, removed = student_copy
    assert sum(len(bodies) for bodies in removed.values()) >= 25
    texts = {
        path: _flat(path.read_text(encoding="utf-8", errors="ignore"))
        for path in folder.rglob("*")
        if path.is_file()
    }
    for chapter, bodies in removed.items():
        for body in bodies:
            leaks = [path for path, text in texts.items() if _flat(body) in text]
            assert not leaks, f"{chapter}: {body[:60]!r} is still in {leaks}"
    for answer in ANSWERS_ONCE_IN_CHECKS:
        assert not [path for path, text in texts.items() if answer in text], answer


def test_stubs_keep_signature_and_docstring(student_copy):
    folder, _ = student_copy
    module = (folder / "chapters/ch06_pretraining/trainer.py").read_text(encoding="utf-8")
    start = module.index("def lr_at(step: int, config: TrainingConfig) -> float:")
    definition = module[start : module.index("\n\n\n", start)]
    assert '"""' in definition and definition.rstrip().endswith(classroom.STUB)


def test_student_build_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        classroom.build_student_copy(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_fresh_copy_scores_nothing_and_says_which_stub_stopped_each_test(student_copy):
    folder, _ = student_copy
    report = _grade(folder, *GRADED)
    for chapter in GRADED:
        assert _points(report, chapter)[0] == 0, report
    verdicts = [line for line in report.splitlines() if line.startswith("  ")]
    assert verdicts and all("not written yet" in line or "first" in line for line in verdicts)


def test_reference_answers_score_full_marks_and_a_typical_mistake_loses_its_points(
    student_copy, tmp_path
):
    folder = tmp_path / "filled"
    shutil.copytree(student_copy[0], folder)
    for chapter in GRADED:  # fill the stubs with the course's own answers
        notebook = folder / classroom.CORE[chapter].notebook
        shutil.copy2(REPO_ROOT / classroom.CORE[chapter].notebook, notebook)
        for module in (REPO_ROOT / notebook.parent.relative_to(folder)).glob("*.py"):
            shutil.copy2(module, notebook.parent / module.name)
    report = _grade(folder, *GRADED)
    for chapter in GRADED:
        earned, total = _points(report, chapter)
        assert earned == total > 0, report

    trainer = folder / "chapters/ch06_pretraining/trainer.py"
    text = trainer.read_text(encoding="utf-8")
    start = text.index("def lr_at(")
    end = text.index("\n\n\n", start)
    no_warm_up = (  # a typical mistake: cosine decay from the first step, no warm-up
        "def lr_at(step: int, config: TrainingConfig) -> float:\n"
        "    progress = min(1.0, step / max(1, config.steps - 1))\n"
        "    cosine = 0.5 * (1 + math.cos(math.pi * progress))\n"
        "    return config.min_lr + (config.learning_rate - config.min_lr) * cosine"
    )
    trainer.write_text(text[:start] + no_warm_up + text[end:], encoding="utf-8")
    report = _grade(folder, "ch06")
    lr_line = next(line for line in report.splitlines() if line.strip().startswith("lr_at"))
    assert " 0/2 " in lr_line and "passed" not in lr_line, report
    assert _points(report, "ch06")[0] == _points(report, "ch06")[1] - 2, report


def test_the_instructors_guide_counts_what_core_lists():
    guide = (REPO_ROOT / "setup/INSTRUCTORS.md").read_text(encoding="utf-8")
    items, points = map(
        int, re.search(r"\((\d+) functions,\s+classes and methods, (\d+) points\)", guide).groups()
    )
    core = [item for chapter in classroom.CORE.values() for item in chapter.core]
    assert (items, points) == (len(core), sum(item.points for item in core))
