"""Set up the course's virtual environment, then run the course or its tests.

    python3 setup/bootstrap.py course    # execute every notebook in chapter order
    python3 setup/bootstrap.py test      # run the unit tests and every notebook (nbval)
    python3 setup/bootstrap.py student DIR   # write the classroom edition (core left to write)
    python3 setup/bootstrap.py grade [chNN]  # in that copy: grade what the student wrote

Both first make sure `.venv/` exists and holds exactly what `requirements.txt` pins, plus the
course itself in editable mode (so that `from chapters.ch03_attention.attention import ...`
works from any folder). The install is skipped when `requirements.txt` has not changed since
the last one. Anything after the command word is passed on, e.g. `test -k ch03 -x`.

Only the standard library is used here: this file runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV = REPO_ROOT / ".venv"
REQUIREMENTS = REPO_ROOT / "requirements.txt"
STAMP = VENV / "llm-course-installed.sha256"
MINIMUM_PYTHON = (3, 10)


def venv_python() -> Path:
    folder = "Scripts" if os.name == "nt" else "bin"
    return VENV / folder / ("python.exe" if os.name == "nt" else "python")


def _fingerprint() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure_environment() -> Path:
    """Create `.venv` and install the pinned requirements unless that is already done."""
    if sys.version_info < MINIMUM_PYTHON:
        sys.exit(
            f"Python {sys.version.split()[0]} is too old: the course needs "
            f"{'.'.join(map(str, MINIMUM_PYTHON))} or newer. Run this file with a newer python3."
        )
    python = venv_python()
    if not python.exists():
        print(f"Creating the virtual environment in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists() and STAMP.read_text().strip() == _fingerprint():
        return python
    print("Installing the pinned requirements (about a minute on a fresh machine) ...", flush=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.run([*pip, "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(REPO_ROOT)], check=True)
    STAMP.write_text(_fingerprint())
    return python


def main(argv: list[str]) -> int:
    commands = {
        "course": ["setup/run_course.py"],
        "test": ["-m", "pytest"],
        "check": ["setup/check_environment.py"],
        "student": ["setup/classroom.py", "student"],  # see setup/classroom.py
        "grade": ["setup/classroom.py", "grade"],
    }
    if not argv or argv[0] not in commands:
        print(__doc__)
        print(f"Choose one of: {', '.join(commands)}")
        return 2
    python = ensure_environment()
    # a folder named on the command line is meant from where the command was typed
    rest = [str(Path(argv[1]).resolve())] if argv[0] == "student" and argv[1:] else argv[1:]
    command = [str(python), *commands[argv[0]], *rest]
    return subprocess.run(command, cwd=REPO_ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
