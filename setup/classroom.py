"""The classroom edition: a student copy of the course with the core left to write, and its grader.

    python setup/classroom.py student DIR     # write a student copy of the course into DIR
    python setup/classroom.py grade [chNN]    # in a student copy: grade what the student wrote

`CORE` below is the one list of what students write. In the copy, each listed function, class
or method keeps its signature and docstring and its body becomes `raise NotImplementedError`,
in the notebook and in the module generated from it; the prose stays. The answer key (the
solutions notebooks, the tests of the exercise checks, the instructor's guide) is left out.

`grade` runs each item's tests (the chapter's own unit tests, which compare with torch or a
formula, never with a reference answer) and prints a table per chapter. A test that stops at
another chapter's stub says which chapter to finish first: the copy ships no hidden answers,
so grading a later chapter never hands out an earlier one.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as a script, in the course or in a student copy: that copy's chapters are the ones graded.
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "setup")]

from export_modules import modules_from_notebook  # noqa: E402

STUB = "raise NotImplementedError  # your code here"
MARKER = ".student-build"  # written into every student copy: only such a folder is overwritten

# What no student copy holds: the answer key and the instructor's material.
INSTRUCTOR_ONLY = (
    "*_solutions.ipynb",
    "tests/test_*_exercises.py",
    "tests/test_classroom.py",
    "setup/INSTRUCTORS.md",
)


@dataclass(frozen=True)
class Core:
    """One thing students write: `name` (a function, a class or `Class.method`) in `module`,
    worth `points`, judged by the tests in `tests` whose names contain one of `checks`."""

    name: str
    points: int
    checks: tuple[str, ...]


@dataclass(frozen=True)
class Chapter:
    notebook: str  # the notebook that exports `module`
    tests: str
    core: tuple[Core, ...]


CORE: dict[str, Chapter] = {
    "ch01": Chapter(
        "chapters/ch01_data/ch01_data.ipynb",
        "tests/test_ch01_data_pipeline.py",
        (
            Core("word_shingles", 1, ("word_shingles", "short_documents")),
            Core("jaccard", 1, ("jaccard_matches",)),
            Core("minhash_signature", 3, ("vectorised_minhash", "minhash_estimates", "unbiased")),
            Core("candidate_probability", 2, ("candidate_probability",)),
        ),
    ),
    "ch02": Chapter(
        "chapters/ch02_tokenizer/ch02_tokenizer.ipynb",
        "tests/test_ch02_bpe.py",
        (
            Core("Tokenizer.decode", 2, ("decode_inverts", "decode_replaces")),
            Core("NaiveBPETokenizer._learn_merges", 3, ("naive_and_efficient",)),
        ),
    ),
    "ch03": Chapter(
        "chapters/ch03_attention/ch03_attention.ipynb",
        "tests/test_ch03_attention.py",
        (
            Core("causal_mask", 2, ("causal_mask_matches",)),
            Core("naive_attention", 3, ("naive_attention",)),
            Core("apply_rotary_reference", 3, ("rotates_interleaved", "written_out")),
            Core("KVCache", 2, ("kv_cache",)),
        ),
    ),
    "ch04": Chapter(
        "chapters/ch04_blocks/ch04_blocks.ipynb",
        "tests/test_ch04_model.py",
        (
            Core("rms_norm_reference", 2, ("rms_norm_reference_matches",)),
            Core("_RMSNormFunction", 3, ("rmsnorm",)),
            Core("SwiGLU.forward", 2, ("swiglu_matches",)),
            Core("Block.forward", 3, ("block_is_pre_ln", "future_token_never_changes")),
        ),
    ),
    "ch05": Chapter(
        "chapters/ch05_normalization/ch05_normalization.ipynb",
        "tests/test_ch05_normalization.py",
        (
            Core("BatchNorm.forward", 3, ("batchnorm_training", "batchnorm_gradients")),
            Core("LayerNorm.forward", 2, ("layernorm_matches",)),
            Core("RMSNorm.forward", 1, ("rmsnorm_matches",)),
        ),
    ),
    "ch06": Chapter(
        "chapters/ch06_pretraining/ch06_pretraining.ipynb",
        "tests/test_ch06_trainer.py",
        (
            Core("cross_entropy_loss", 3, ("stable_cross_entropy",)),
            Core("lr_at", 2, ("test_lr_",)),
            Core("clip_by_global_norm", 2, ("clipping",)),
        ),
    ),
    "ch07": Chapter(
        "chapters/ch07_distributed/ch07_distributed.ipynb",
        "tests/test_ch07_distributed.py",
        (
            Core("shard_rows", 1, ("shard_rows",)),
            Core("pipeline_bubble_fraction", 1, ("bubble_fraction",)),
            Core("model_state_bytes", 2, ("model_states_match", "communicate")),
        ),
    ),
    "ch08": Chapter(
        "chapters/ch08_sft/ch08_sft.ipynb",
        "tests/test_ch08_sft.py",
        (Core("response_mask", 2, ("response_mask",)),),
    ),
    "ch09": Chapter(
        "chapters/ch09_alignment/ch09_alignment.ipynb",
        "tests/test_ch09_alignment.py",
        (
            Core("dpo_loss", 3, ("dpo_loss",)),
            Core("group_advantages", 2, ("advantage",)),
        ),
    ),
    "ch10": Chapter(
        "chapters/ch10_evaluation/ch10_evaluation.ipynb",
        "tests/test_ch10_evaluation.py",
        (
            Core("pass_at_k", 2, ("pass_at_k",)),
            Core("bootstrap_interval", 2, ("bootstrap_interval",)),
        ),
    ),
}


# ---------------------------------------------------------------------------------------
# Stubbing: the body of a definition becomes its docstring and `raise NotImplementedError`
# ---------------------------------------------------------------------------------------

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _definitions(tree: ast.Module, name: str) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The functions to stub for `name`: a top-level function, every method of a class, or
    one `Class.method`."""
    outer, _, method = name.partition(".")
    found = []
    for node in tree.body:
        if not isinstance(node, Definition) or node.name != outer:
            continue
        if isinstance(node, ast.ClassDef):
            found += [
                child
                for child in node.body
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                and (not method or child.name == method)
            ]
        elif not method:
            found.append(node)
    return found


def stub_source(source: str, names: list[str]) -> tuple[str, list[str]]:
    """`source` with the bodies of `names` stubbed, and the bodies that were removed."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell with IPython magics defines nothing the course grades
        return source, []
    lines = source.splitlines()
    cuts = []  # (first line, last line, indent) of each body, 0-based and inclusive
    for name in names:
        for function in _definitions(tree, name):
            body = function.body
            has_docstring = (
                isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            )
            start = body[1].lineno if has_docstring and len(body) > 1 else body[0].lineno
            if has_docstring and len(body) == 1:
                start = body[0].end_lineno + 1  # nothing but a docstring: add the raise
            indent = " " * body[0].col_offset
            cuts.append((start - 1, function.end_lineno - 1, indent))
    removed = []
    for first, last, indent in sorted(cuts, reverse=True):  # bottom up keeps line numbers valid
        removed.append("\n".join(lines[first : last + 1]))
        lines[first : last + 1] = [indent + STUB]
    return "\n".join(lines) + ("\n" if source.endswith("\n") else ""), removed


def stub_notebook(notebook: Path, names: list[str]) -> list[str]:
    """Stub `names` in every code cell of `notebook`, in place; return the removed bodies."""
    content = json.loads(notebook.read_text(encoding="utf-8"))
    removed = []
    for cell in content["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        new, cut = stub_source(source, names)
        if cut:
            cell["source"] = new.splitlines(keepends=True)
            removed += cut
    notebook.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return removed


# ---------------------------------------------------------------------------------------
# The student copy
# ---------------------------------------------------------------------------------------


def _is_instructor_only(relative: Path) -> bool:
    return any(relative.match(pattern) for pattern in INSTRUCTOR_ONLY)


def _course_files(root: Path) -> list[Path]:
    """The course's tracked files (plus new ones not yet committed), relative to `root`."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [Path(name) for name in listed if (root / name).is_file()]


def build_student_copy(target: Path, root: Path = REPO_ROOT) -> dict[str, list[str]]:
    """Write the student copy into `target`; return the removed bodies per chapter."""
    target = target.resolve()
    if target.exists() and any(target.iterdir()) and not (target / MARKER).exists():
        raise SystemExit(
            f"{target} is not empty and was not written by this command; choose an empty or "
            "new folder (nothing was changed)."
        )
    if target.exists():
        shutil.rmtree(target)  # an earlier student copy: write it afresh
    for relative in _course_files(root):
        if not _is_instructor_only(relative):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / relative, target / relative)
    removed = {}
    for chapter, spec in CORE.items():
        notebook = target / spec.notebook
        removed[chapter] = stub_notebook(notebook, [item.name for item in spec.core])
        for path, text in modules_from_notebook(notebook, target).items():
            path.write_text(text, encoding="utf-8")
    (target / MARKER).write_text("Written by `python3 setup/bootstrap.py student`.\n")
    return removed


# ---------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------


@dataclass
class Grade:
    name: str
    points: int
    earned: int
    verdict: str  # "passed" or the first failing check, in words


class _Collector:
    """A pytest plugin that keeps which tests ran and, for each failure, what stopped it."""

    def __init__(self, chapter: str) -> None:
        self.chapter = chapter
        self.failures: dict[str, str] = {}
        self.ran: list[str] = []

    def pytest_runtest_logreport(self, report) -> None:
        name = report.nodeid.split("::")[-1]
        if report.when == "call" or report.failed:
            self.ran.append(name)
        if report.failed and name not in self.failures:
            self.failures[name] = self._in_words(report)

    def _in_words(self, report) -> str:
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is None:
            return str(report.longrepr).strip().splitlines()[-1][:200]
        message = crash.message.strip().splitlines()[0]
        if not message.startswith("NotImplementedError"):
            return message
        stub = _enclosing_definition(Path(crash.path), crash.lineno)
        chapter = re.search(r"ch\d\d", crash.path)
        if chapter and chapter.group() != self.chapter:
            return f"finish {chapter.group()}'s {stub} first: this test stops at its stub"
        return f"stops at the stub of {stub}"


def _enclosing_definition(path: Path, line: int) -> str:
    """`Class.method` or `function` around `line` of `path`, as CORE names them."""
    names = []
    nodes = ast.parse(path.read_text(encoding="utf-8")).body
    while node := next(
        (n for n in nodes if isinstance(n, Definition) and n.lineno <= line <= n.end_lineno), None
    ):
        names.append(node.name)
        nodes = node.body
    return ".".join(names) or path.name


def grade_chapter(chapter: str, root: Path = REPO_ROOT) -> list[Grade]:
    """Run the chapter's graded tests in this process and score each core item."""
    import pytest

    spec = CORE[chapter]
    words = sorted({word for item in spec.core for word in item.checks})
    collector = _Collector(chapter)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        pytest.main(
            [str(root / spec.tests), "-q", "-k", " or ".join(words)],
            plugins=[collector],
        )
    grades = []
    for item in spec.core:
        mine = [test for test in collector.ran if any(word in test for word in item.checks)]
        failed = [(test, collector.failures[test]) for test in mine if test in collector.failures]
        if not mine:
            verdict = "no test ran: is the test file there?"
        elif not failed:
            verdict = "passed"
        else:
            test, why = failed[0]
            stub = why.removeprefix("stops at the stub of ")
            if stub != why:  # a stub in this chapter: this item's own, or one it builds on?
                own = stub == item.name or stub.startswith(item.name + ".")
                why = "not written yet" if own else f"finish {stub} first"
            verdict = f"{test}: {why}"
        grades.append(Grade(item.name, item.points, item.points * (verdict == "passed"), verdict))
    return grades


def print_grades(chapter: str, grades: list[Grade]) -> None:
    width = max(len(grade.name) for grade in grades)
    earned, total = sum(g.earned for g in grades), sum(g.points for g in grades)
    print(f"\n{chapter}: {earned}/{total} points")
    for grade in grades:
        print(f"  {grade.name:<{width}}  {grade.earned}/{grade.points}  {grade.verdict[:160]}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("student", help="write a student copy").add_argument("folder", type=Path)
    grade = commands.add_parser("grade", help="grade the core functions of a student copy")
    grade.add_argument("chapters", nargs="*", help="e.g. ch03 ch04 (default: every chapter)")
    arguments = parser.parse_args(argv)
    if arguments.command == "student":
        removed = build_student_copy(arguments.folder)
        count = sum(len(bodies) for bodies in removed.values())
        print(f"Wrote a student copy to {arguments.folder} ({count} bodies left to write).")
        return 0
    unknown = [chapter for chapter in arguments.chapters if chapter not in CORE]
    if unknown:
        parser.error(f"unknown chapter(s) {unknown}; choose from {', '.join(CORE)}")
    everything = []
    for chapter in arguments.chapters or list(CORE):
        grades = grade_chapter(chapter)
        print_grades(chapter, grades)
        everything += grades
    earned, total = sum(g.earned for g in everything), sum(g.points for g in everything)
    print(f"\ntotal: {earned}/{total} points")
    return 0 if earned == total else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
