"""The few helpers every chapter shares: device, seeds, paths, plot style, atomic writes,
downloads and exercise checks.

This is deliberately one small module, not a framework. Anything that belongs to one idea
of the course lives in that chapter's module instead.

Environment variables (all optional):
    LLM_COURSE_DEVICE     force a device: "cpu", "cuda", "cuda:1", "mps"
    LLM_COURSE_ARTIFACTS  where chapters leave what later chapters reuse (default: artifacts/)
    LLM_COURSE_RUN_DIR    where a course run writes executed notebooks, figures and reports
                          (default: runs/latest/)
    LLM_COURSE_CACHE      where downloads are cached (default: ~/.cache/llm-from-scratch)
    LLM_COURSE_DATA_DIRS  extra folders (os.pathsep-separated) searched for a download
                          before the network is tried, e.g. a class's shared data folder
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: data-only chapters never pay for it
    import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_FOLDERS = ("chapters", "appendix", "supplementary")


# ---------------------------------------------------------------------------------------
# Device and seeds
# ---------------------------------------------------------------------------------------


def pick_device() -> torch.device:
    """The fastest device available: cuda > mps > cpu, unless LLM_COURSE_DEVICE says otherwise."""
    import torch

    forced = os.environ.get("LLM_COURSE_DEVICE")
    if forced:
        device = torch.device(forced)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"LLM_COURSE_DEVICE={forced!r} but torch sees no CUDA device. "
                "Unset the variable to fall back to the CPU, or install a CUDA build of torch."
            )
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(
                f"LLM_COURSE_DEVICE={forced!r} but MPS is not available on this machine. "
                "Unset the variable to fall back to the CPU."
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a torch generator with that seed.

    Handing the returned generator to the code that samples keeps a cell reproducible even
    when another cell draws random numbers in between.
    """
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


# ---------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------


def _folder_from_env(variable: str, default: Path) -> Path:
    folder = Path(os.environ.get(variable, default)).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def artifacts_dir(*parts: str) -> Path:
    """The git-ignored folder where a chapter leaves what a later chapter reuses.

    `artifacts_dir("ch01")` is created on first use (pass folder names only, not file names). The tests point LLM_COURSE_ARTIFACTS at a
    fresh folder, so that every test run builds the chain from scratch.
    """
    folder = _folder_from_env("LLM_COURSE_ARTIFACTS", REPO_ROOT / "artifacts").joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_dir(*parts: str) -> Path:
    """The git-ignored folder of the current course run (executed notebooks, figures, reports)."""
    folder = _folder_from_env("LLM_COURSE_RUN_DIR", REPO_ROOT / "runs" / "latest").joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cache_dir() -> Path:
    """Where downloaded files are kept between runs."""
    return _folder_from_env("LLM_COURSE_CACHE", Path.home() / ".cache" / "llm-from-scratch")


def reading_order(path: Path) -> tuple:
    """Sort key for the course's files: tests, then chapters by number (each main notebook
    before its solutions), then the appendix, then supplementary material."""
    parts = Path(path).parts
    if "tests" in parts:
        return (0, str(path))
    for rank, folder in enumerate(NOTEBOOK_FOLDERS, start=1):
        if folder in parts:
            match = re.search(r"ch(\d+)", str(path))
            chapter = int(match.group(1)) if match else 0
            is_solution = "solution" in Path(path).name
            return (rank, chapter, str(Path(path).parent), is_solution, Path(path).name)
    return (9, str(path))


def course_notebooks(root: Path = REPO_ROOT) -> list[Path]:
    """Every notebook of the course in reading order (checkpoints and run folders excluded)."""
    notebooks = [
        path
        for folder in NOTEBOOK_FOLDERS
        for path in (root / folder).rglob("*.ipynb")
        if ".ipynb_checkpoints" not in path.parts
    ]
    return sorted(notebooks, key=lambda path: reading_order(path.relative_to(root)))


# ---------------------------------------------------------------------------------------
# Writing files safely
# ---------------------------------------------------------------------------------------


OUTPUT_MARKER = ".written-by-llm-course"  # names the writer of a folder the course built
# What a saved model folder holds: such a folder inside artifacts_dir(), written before folders
# carried OUTPUT_MARKER, is recognised as the course's own.
MODEL_FOLDER_FILES = frozenset(
    {"config.json", "model.safetensors", "training_history.json", "build.json", "body", "head.pt"}
)
_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)-[^/]*$")  # .NAME.tmp-PID-RANDOM[.tmp]


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def _temporary_prefix(path: Path) -> str:
    # the pid lets a later run tell a killed run's leftovers from a running one's
    return f".{path.name}.tmp-{os.getpid()}-"


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def sweep_temporaries(folder: str | Path, min_age_seconds: float = 60.0) -> list[Path]:
    """Remove the temporary files and folders that killed runs left in `folder`; return them.

    Only names the course's writers give (`.NAME.tmp-PID-...`) whose process is gone and that
    nothing touched for `min_age_seconds` are removed, never anything else.
    """
    folder = Path(folder)
    if os.name != "posix" or not folder.is_dir():
        return []  # on Windows os.kill would terminate the process instead of asking about it
    removed = []
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            too_recent = time.time() - entry.lstat().st_mtime < min_age_seconds
        except FileNotFoundError:
            continue
        if too_recent or _process_is_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file next to `path`; rename it over `path` only if the block succeeds.

    A crash or an exception half-way leaves the old file (or no file), never a truncated one.
    The file gets the permissions the umask gives any new file (mkstemp alone would make it
    private to its owner, unreadable from a class's shared folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path.parent)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp"
    )
    os.close(handle)
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        with open(temporary, mode, **open_kwargs) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def _is_replaceable(path: Path, writer: str, legacy_files: frozenset[str]) -> bool:
    if not path.exists():
        return True
    if not path.is_dir() or path.is_symlink():
        return False
    names = {entry.name for entry in path.iterdir()}
    if not names:
        return True
    marker = path / OUTPUT_MARKER
    if marker.is_file():
        return marker.read_text(encoding="utf-8", errors="replace").strip() == writer
    artifacts = Path(os.environ.get("LLM_COURSE_ARTIFACTS", REPO_ROOT / "artifacts"))
    inside_artifacts = path.resolve().is_relative_to(artifacts.expanduser().resolve())
    return inside_artifacts and names <= legacy_files


def check_replaceable(
    path: str | Path,
    *,
    writer: str = "chapters.course",
    legacy_files: frozenset[str] = MODEL_FOLDER_FILES,
    overwrite: bool = False,
) -> None:
    """Raise FileExistsError unless `path` may be replaced by `writer`: it is absent or empty,
    it carries `writer`'s OUTPUT_MARKER, it is a pre-marker course folder in the artifacts
    (holding only `legacy_files`), or `overwrite` is True. Nothing the course did not write is
    ever deleted by accident."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a folder; choose another output folder.")
    if overwrite or _is_replaceable(path, writer, legacy_files):
        return
    names = sorted(entry.name for entry in path.iterdir())
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise FileExistsError(
        f"{path} already holds files that {writer} did not write ({shown}); refusing to replace "
        "it, which would delete them. Choose a new or empty folder, or pass overwrite=True to "
        "replace the folder and everything in it."
    )


def replace_folder(new: str | Path, target: str | Path) -> None:
    """Rename the folder `new` to `target`; an existing `target` is moved aside first and only
    deleted once `new` is in place."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=_temporary_prefix(target)))
    os.replace(target, aside / "previous")
    os.replace(new, target)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(
    path: str | Path,
    *,
    writer: str = "chapters.course",
    legacy_files: frozenset[str] = MODEL_FOLDER_FILES,
    overwrite: bool = False,
) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; when the block succeeds it replaces `path`.

    For artifacts made of several files (a model's weights, config and history): a crash or
    an exception half-way leaves the old folder (or none), never a half-written one. The new
    folder carries OUTPUT_MARKER naming `writer`; an existing `path` is replaced only when
    `check_replaceable` allows it (checked before the work and again before the rename).
    """
    path = Path(path)
    check = dict(writer=writer, legacy_files=legacy_files, overwrite=overwrite)
    check_replaceable(path, **check)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path.parent)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temporary_prefix(path)))
    try:
        os.chmod(temporary, 0o777 & ~_umask())
        yield temporary
        (temporary / OUTPUT_MARKER).write_text(writer + "\n", encoding="utf-8")
        check_replaceable(path, **check)
        replace_folder(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def sha256_of(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so that large files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# What built an artifact: later chapters rebuild what no longer matches, never load it stale.


def digest_of(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder's files (their names and contents, hidden files such as
    the writer's marker left out): what a recipe records about an input."""
    path = Path(path)
    if path.is_file():
        return sha256_of(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if not any(part.startswith(".") for part in relative.parts):
            digest.update(f"{relative.as_posix()}\0{sha256_of(file)}\n".encode())
    return digest.hexdigest()


def recipe_path(artifact: str | Path) -> Path:
    """Where the recipe of `artifact` is kept: `NAME.recipe.json` beside it."""
    artifact = Path(artifact)
    return artifact.with_name(f"{artifact.name}.recipe.json")


def _canonical(recipe: dict) -> dict:
    return json.loads(json.dumps(recipe, sort_keys=True, default=str))


def record_recipe(artifact: str | Path, recipe: dict) -> Path:
    """Write what built `artifact` (its settings and its inputs' digests) beside it, atomically,
    after the artifact itself is complete."""
    with atomic_write(recipe_path(artifact)) as file:
        json.dump(_canonical(recipe), file, indent=1, sort_keys=True)
    return recipe_path(artifact)


def stale_reason(artifact: str | Path, recipe: dict) -> str | None:
    """None if `artifact` exists and was built by `recipe`; otherwise why it must be rebuilt."""
    artifact = Path(artifact)
    if not artifact.exists():
        return "it is not there yet"
    try:
        recorded = json.loads(recipe_path(artifact).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "it has no record of what built it (an older version of the course made it)"
    except (ValueError, OSError):
        return f"its record {recipe_path(artifact).name} is damaged"
    current = _canonical(recipe)
    if not isinstance(recorded, dict):
        return f"its record {recipe_path(artifact).name} is damaged"
    changed = sorted(
        key for key in current.keys() | recorded.keys() if current.get(key) != recorded.get(key)
    )
    return f"what builds it has changed since ({', '.join(changed)})" if changed else None


# ---------------------------------------------------------------------------------------
# Downloads (only ever optional: the embedded corpus needs none)
# ---------------------------------------------------------------------------------------


class DownloadError(RuntimeError):
    """A file could not be fetched or did not match its checksum; the message says what to do."""


def _data_dirs() -> list[Path]:
    extra = os.environ.get("LLM_COURSE_DATA_DIRS", "")
    return [Path(folder).expanduser() for folder in extra.split(os.pathsep) if folder]


def download(url: str, filename: str, sha256: str, timeout: float = 30.0) -> Path:
    """Return the local path of `url`, downloading it into the cache if it is not there yet.

    The file is looked up first in the cache and in LLM_COURSE_DATA_DIRS, and accepted only if
    its SHA-256 matches. A download streams into a temporary file with a progress bar, is
    checked, and only then renamed into place.
    """
    from tqdm.auto import tqdm

    for folder in [cache_dir(), *_data_dirs()]:
        candidate = folder / filename
        if candidate.is_file():
            if sha256_of(candidate) == sha256:
                return candidate
            if folder == cache_dir():
                candidate.unlink()  # a corrupt cached copy: fetch it again

    target = cache_dir() / filename
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                atomic_write(target, "wb") as file,
                tqdm(total=total, unit="B", unit_scale=True, desc=filename) as bar,
            ):
                digest = hashlib.sha256()
                while chunk := response.read(1 << 16):
                    file.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                if digest.hexdigest() != sha256:
                    raise DownloadError(
                        f"{url} downloaded, but its SHA-256 is {digest.hexdigest()}, "
                        f"not the expected {sha256}. The file may have changed upstream or the "
                        "download was corrupted; nothing was saved. Try again, or place a "
                        f"verified copy at {target}."
                    )
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise DownloadError(
            f"Could not download {filename} from {url} ({error}). You may be offline. "
            f"Copy the file to {target} (or to a folder listed in LLM_COURSE_DATA_DIRS) and "
            "run again; the embedded default corpus needs no download at all."
        ) from error
    return target


# ---------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------


def use_course_style() -> None:
    """One look for every figure in the course: readable sizes, light grid, no top/right spines."""
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.figsize": (7.0, 4.0),
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 12,
            "axes.labelsize": 11,
            "legend.frameon": False,
            "font.size": 10,
        }
    )


# ---------------------------------------------------------------------------------------
# Exercises
# ---------------------------------------------------------------------------------------


class NotRightYet(AssertionError):
    """Raised by an exercise check; its message tells the student what is wrong."""


def check_exercise(name: str, check: Callable[[], None]) -> bool:
    """Run one exercise check and say, in plain words, whether the exercise is solved.

    A stub raises NotImplementedError: that is reported as "not solved yet", never as an error,
    so that a notebook with unsolved exercises still runs top to bottom. A wrong answer is
    reported with the check's message. Returns True only when the check passes.
    """
    try:
        check()
    except NotImplementedError:
        print(f"[{name}] not solved yet: fill in the stub above and run this cell again.")
        return False
    except NotRightYet as problem:
        print(f"[{name}] not right yet: {problem}")
        return False
    print(f"[{name}] solved. Well done!")
    return True
