"""Every solutions notebook's answers, replayed in the main notebook's namespace.

A student types the answer into the main notebook, where the classes are the ones its cells
tagged `export` define, not the module's: a check that tests class identity rejects a right
answer there ("return a LanguageModel, got LanguageModel"). This test builds that namespace
(the main notebook's exported cells, run in order in one namespace, as the kernel runs them),
adds the solutions' own imports except those of the chapter's modules, then runs each answer
(its `def`s and `class`es) and the `assert check_exercise(...)` that judges it.

An exercise whose check needs data that the solutions notebook computes first (a trained
model, the scaling sweep) is left to nbval, which runs the solutions notebook in full.
"""

from __future__ import annotations
import __future__

import ast
import builtins
import contextlib
import io
import json
import sys
import types
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from chapters.course import REPO_ROOT, course_notebooks

SOLUTIONS = [path for path in course_notebooks() if path.name.endswith("_solutions.ipynb")]
FLAGS = __future__.annotations.compiler_flag  # the exported modules all use it


def _code_cells(notebook: Path) -> list[tuple[str, list[str]]]:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return [
        ("".join(cell["source"]), cell.get("metadata", {}).get("tags", []))
        for cell in cells
        if cell["cell_type"] == "code"
    ]


def _main_notebook(solutions: Path) -> Path:
    return solutions.with_name(solutions.name.replace("_solutions", ""))


def _notebook_namespace(notebook: Path) -> types.ModuleType:
    """What the main notebook's exported cells define, run in notebook order."""
    module = types.ModuleType(f"replayed_{notebook.stem}")
    sys.modules[module.__name__] = module  # dataclasses look their module up here
    for number, (source, tags) in enumerate(_code_cells(notebook)):
        if any(tag == "export" or tag.startswith("export:") for tag in tags):
            code = compile(source, f"{notebook.name}, cell {number}", "exec", flags=FLAGS)
            exec(code, module.__dict__)
    return module


def _own_modules(notebook: Path) -> set[str]:
    package = ".".join(notebook.parent.relative_to(REPO_ROOT).parts)
    return {f"{package}.{path.stem}" for path in notebook.parent.glob("*.py")} - {
        f"{package}.exercises",
        f"{package}.__init__",
    }


def _free_names(node: ast.AST) -> set[str]:
    bound = {n.arg for n in ast.walk(node) if isinstance(n, ast.arg)}
    loaded = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    return loaded - bound - set(dir(builtins))


def _globals_of(definition: ast.AST) -> set[str]:
    """Names a def or class reads but neither binds nor receives: the globals it needs."""
    stored = {
        n.id
        for n in ast.walk(definition)
        if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)
    }
    nested = {n.name for n in ast.walk(definition) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    return _free_names(definition) - stored - nested


@pytest.mark.parametrize("solutions", SOLUTIONS, ids=lambda path: path.stem)
def test_solutions_pass_their_checks_in_the_main_notebooks_namespace(solutions, monkeypatch):
    notebook = _main_notebook(solutions)
    monkeypatch.chdir(notebook.parent)  # as nbval runs it: `import exercises` beside it
    monkeypatch.syspath_prepend(str(notebook.parent))
    namespace = _notebook_namespace(notebook).__dict__
    own = _own_modules(notebook)
    trees = [ast.parse(source) for source, _ in _code_cells(solutions)]
    imports = [
        node
        for tree in trees
        for node in tree.body
        if isinstance(node, ast.Import)
        or (isinstance(node, ast.ImportFrom) and node.module not in own)
    ]
    exec(compile(ast.Module(imports, []), "imports", "exec", flags=FLAGS), namespace)
    replayed, left = [], []
    for tree in trees:  # each cell's statements in order, as the notebook runs them
        answers = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        needs = {name for answer in answers for name in _globals_of(answer)}
        for node in tree.body:
            code = compile(ast.Module([node], []), "solutions", "exec", flags=FLAGS)
            if node in answers:
                exec(code, namespace)
            elif isinstance(node, ast.Assign) and "ensure_" not in ast.unparse(node):
                # the solutions' set-up values (a seeded generator), never their artifacts
                with contextlib.suppress(Exception):  # built from what the notebook computed
                    exec(code, namespace)
            elif isinstance(node, ast.Assert) and "check_exercise" in ast.unparse(node.test):
                missing = sorted((_free_names(node) | needs) - namespace.keys())
                if missing:
                    left.append((ast.unparse(node)[:60], missing))
                    continue
                output = io.StringIO()
                try:
                    with redirect_stdout(output):
                        exec(code, namespace)
                except AssertionError:  # check_exercise returned False: say what it printed
                    pytest.fail(f"{ast.unparse(node)[:80]}\n{output.getvalue()}")
                replayed.append(output.getvalue())
    assert replayed, f"no answer of {solutions.name} could be replayed; left: {left}"
    assert not [text for text in replayed if "not right yet" in text.lower()], replayed
