"""Check that this machine can run the course, and say how to fix what is missing.

    python setup/check_environment.py

Prints the Python version, each pinned package with the version installed, the device the
course will use (cuda, mps or cpu), and one line for every problem found, with its fix.
Exits 1 if anything is missing.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
from pathlib import Path

from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parent.parent
MINIMUM_PYTHON = (3, 10)
FIX_INSTALL = "run `python3 setup/bootstrap.py check` (it installs requirements.txt into .venv)"


def pinned_requirements() -> list[Requirement]:
    """The requirements of requirements.txt that apply to this Python."""
    requirements = []
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate():
                requirements.append(requirement)
    return requirements


def package_problems() -> list[str]:
    problems = []
    for requirement in pinned_requirements():
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            print(f"  {requirement.name:<12} MISSING (wants {requirement.specifier})")
            problems.append(f"{requirement.name} is not installed: {FIX_INSTALL}.")
            continue
        # A local tag such as +cpu is the same release for our purposes.
        matches = requirement.specifier.contains(installed.split("+")[0], prereleases=True)
        print(f"  {requirement.name:<12} {installed:<14} {'ok' if matches else 'WRONG VERSION'}")
        if not matches:
            problems.append(
                f"{requirement.name} {installed} is installed but the course pins "
                f"{requirement.specifier}: {FIX_INSTALL}."
            )
    return problems


def device_report() -> list[str]:
    try:
        import torch

        from chapters.course import pick_device
    except ImportError as error:
        return [f"cannot import the course ({error}): {FIX_INSTALL}."]
    try:
        device = pick_device()
    except RuntimeError as error:
        return [str(error)]
    print(f"\ndevice: {device}  (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    if device.type == "cuda":
        print(f"  GPU: {torch.cuda.get_device_name(device)}")
    elif device.type == "cpu" and "+cpu" not in torch.__version__:
        print("  (a CUDA build of torch with no GPU visible: see setup/SETUP.md)")
    return []


def tool_problems() -> list[str]:
    problems = []
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        problems.append("torchrun is not on PATH (chapter 7 needs it): activate .venv first.")
    return problems


def main() -> int:
    print(f"Python {platform.python_version()} on {platform.system()} {platform.machine()}")
    print(f"CPU cores: {os.cpu_count()}\n\npackages:")
    problems = []
    if sys.version_info[:2] < MINIMUM_PYTHON:
        problems.append("Python 3.10 or newer is needed: install it and create .venv with it.")
    problems += package_problems()
    problems += device_report()
    problems += tool_problems()
    if problems:
        print("\nTo fix:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print("\nEverything the course needs is here.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
