"""The shared helpers: atomic writes, seeds, devices, downloads and exercise checks."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from chapters import corpus_sources, course


def test_atomic_write_replaces_the_file_when_the_block_succeeds(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with course.atomic_write(target) as file:
        file.write("new")
    assert target.read_text() == "new"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_write_keeps_the_old_file_and_no_temporary_when_the_block_fails(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), course.atomic_write(target) as file:
        file.write("half")
        raise RuntimeError("crash half-way")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_folder_replaces_a_folder_it_wrote_when_the_block_succeeds(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with course.atomic_folder(target) as folder:
        (folder / "old.txt").write_text("old")
    with course.atomic_folder(target) as folder:
        (folder / "weights.bin").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == [course.OUTPUT_MARKER, "weights.bin"]
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_folder_keeps_the_old_folder_when_the_block_fails(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), course.atomic_folder(target, overwrite=True) as folder:
        (folder / "weights.bin").write_bytes(b"half")
        raise RuntimeError("crash half-way")
    assert (target / "old.txt").read_text() == "old" and not (target / "weights.bin").exists()
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_folder_refuses_a_folder_it_did_not_write_and_says_how_to_override(
    tmp_path: Path,
) -> None:
    target = tmp_path / "sources"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"), course.atomic_folder(target):
        pass
    assert (target / "notes.txt").read_text() == "mine"
    assert list(tmp_path.iterdir()) == [target]  # no temporary left behind
    with course.atomic_folder(target, overwrite=True) as folder:
        (folder / "new.txt").write_text("new")
    assert not (target / "notes.txt").exists()


def test_atomic_folder_of_one_writer_refuses_another_writers_folder(tmp_path: Path) -> None:
    target = tmp_path / "base"
    with course.atomic_folder(target) as folder:
        (folder / "model.safetensors").write_bytes(b"weights")
    other_writer = course.atomic_folder(target, writer="supplementary.hf_export")
    with pytest.raises(FileExistsError, match="supplementary.hf_export"), other_writer:
        pass
    assert (target / "model.safetensors").read_bytes() == b"weights"


def test_atomic_folder_replaces_a_model_folder_the_course_wrote_before_markers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_COURSE_ARTIFACTS", str(tmp_path))
    base = tmp_path / "ch06" / "base"  # what earlier versions of ensure_base_model left
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"old")
    with course.atomic_folder(base) as folder:
        (folder / "model.safetensors").write_bytes(b"new")
    assert (base / "model.safetensors").read_bytes() == b"new"
    (base / course.OUTPUT_MARKER).unlink()
    (base / "notes.txt").write_text("mine")  # the same folder with a file of the user's
    with pytest.raises(FileExistsError, match="notes.txt"), course.atomic_folder(base):
        pass


def test_atomic_writes_keep_the_permissions_the_umask_gives(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        with course.atomic_write(tmp_path / "shared.txt") as file:
            file.write("for the class")
        with course.atomic_folder(tmp_path / "shared") as folder:
            (folder / "data.txt").write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o755


@pytest.mark.skipif(os.name != "posix", reason="the sweep runs on POSIX only")
def test_sweep_removes_what_killed_runs_left_and_nothing_else(tmp_path: Path) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # a process that no longer exists, like a killed run
    dead, alive = finished.pid, os.getppid()
    leftover = tmp_path / f".corpus.tmp-{dead}-abc"
    leftover.mkdir()
    (leftover / "shard.jsonl").write_text("half")
    (tmp_path / f".out.txt.tmp-{dead}-xyz.tmp").write_text("half")
    running = tmp_path / f".corpus.tmp-{alive}-def"
    running.mkdir()
    mine = tmp_path / f".notes.tmp-{dead}"  # not a name the course gives
    mine.write_text("mine")
    old = time.time() - 3600
    for path in tmp_path.iterdir():
        os.utime(path, (old, old))
    with course.atomic_folder(tmp_path / "corpus") as folder:  # writing next to them sweeps
        (folder / "shard.jsonl").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["corpus", running.name, mine.name])


def test_seed_everything_makes_torch_draws_repeat() -> None:
    generator = course.seed_everything(123)
    first = (torch.rand(3), torch.rand(3, generator=generator))
    generator = course.seed_everything(123)
    second = (torch.rand(3), torch.rand(3, generator=generator))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_device_can_be_forced_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_COURSE_DEVICE", "cpu")
    assert course.pick_device() == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_forcing_a_missing_cuda_device_says_how_to_fall_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_COURSE_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="Unset the variable"):
        course.pick_device()


def test_artifacts_dir_creates_the_folder_under_the_configured_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_COURSE_ARTIFACTS", str(tmp_path))
    folder = course.artifacts_dir("ch42", "sub")
    assert folder == tmp_path / "ch42" / "sub" and folder.is_dir()


def test_reading_order_puts_chapters_by_number_and_solutions_after_their_notebook() -> None:
    paths = [
        Path("chapters/ch10_evaluation/ch10_evaluation.ipynb"),
        Path("supplementary/lora.ipynb"),
        Path("chapters/ch02_tokenizer/ch02_tokenizer_solutions.ipynb"),
        Path("appendix/a_pytorch.ipynb"),
        Path("chapters/ch02_tokenizer/ch02_tokenizer.ipynb"),
        Path("tests/test_course.py"),
    ]
    assert sorted(paths, key=course.reading_order) == [
        Path("tests/test_course.py"),
        Path("chapters/ch02_tokenizer/ch02_tokenizer.ipynb"),
        Path("chapters/ch02_tokenizer/ch02_tokenizer_solutions.ipynb"),
        Path("chapters/ch10_evaluation/ch10_evaluation.ipynb"),
        Path("appendix/a_pytorch.ipynb"),
        Path("supplementary/lora.ipynb"),
    ]


# ----------------------------------------------------------------------------------------
# Exercise checks
# ----------------------------------------------------------------------------------------


def _unsolved() -> None:
    raise NotImplementedError


def _wrong() -> None:
    raise course.NotRightYet("the answer should be 4, not 5")


def test_check_exercise_reports_an_unsolved_stub_without_raising(
    capsys: pytest.CaptureFixture,
) -> None:
    assert course.check_exercise("demo", _unsolved) is False
    assert "not solved yet" in capsys.readouterr().out


def test_check_exercise_reports_a_wrong_answer_with_the_check_message(
    capsys: pytest.CaptureFixture,
) -> None:
    assert course.check_exercise("demo", _wrong) is False
    assert "should be 4, not 5" in capsys.readouterr().out


def test_check_exercise_accepts_a_right_answer(capsys: pytest.CaptureFixture) -> None:
    assert course.check_exercise("demo", lambda: None) is True
    assert "solved" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------
# Downloads, against a file served on 127.0.0.1 (never the internet)
# ----------------------------------------------------------------------------------------

PAYLOAD = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[str]:
    """Serve tmp_path/served/ over HTTP on 127.0.0.1; yield the base URL."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "input.txt").write_bytes(PAYLOAD)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLM_COURSE_CACHE", str(cache))
    monkeypatch.delenv("LLM_COURSE_DATA_DIRS", raising=False)
    return cache


def test_download_fetches_verifies_and_caches(local_server: str, empty_cache: Path) -> None:
    path = course.download(f"{local_server}/input.txt", "shakespeare.txt", PAYLOAD_SHA256)
    assert path == empty_cache / "shakespeare.txt" and path.read_bytes() == PAYLOAD
    # The second call is served from the cache: a dead URL does not matter any more.
    assert course.download("http://127.0.0.1:9/none", "shakespeare.txt", PAYLOAD_SHA256) == path


def test_download_with_a_wrong_checksum_keeps_nothing(local_server: str, empty_cache: Path) -> None:
    with pytest.raises(course.DownloadError, match="SHA-256"):
        course.download(f"{local_server}/input.txt", "shakespeare.txt", "0" * 64)
    assert not any(empty_cache.iterdir())


def test_download_replaces_a_corrupt_cached_copy(local_server: str, empty_cache: Path) -> None:
    empty_cache.mkdir(parents=True, exist_ok=True)
    (empty_cache / "shakespeare.txt").write_bytes(b"truncated")
    path = course.download(f"{local_server}/input.txt", "shakespeare.txt", PAYLOAD_SHA256)
    assert path.read_bytes() == PAYLOAD


def test_download_when_offline_says_where_to_put_the_file(empty_cache: Path) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(course.DownloadError, match="offline") as error:
        course.download(f"http://127.0.0.1:{port}/input.txt", "shakespeare.txt", PAYLOAD_SHA256)
    assert str(empty_cache / "shakespeare.txt") in str(error.value)


def test_download_finds_a_verified_copy_in_a_shared_data_folder(
    tmp_path: Path, empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "class-data"
    shared.mkdir()
    (shared / "shakespeare.txt").write_bytes(PAYLOAD)
    monkeypatch.setenv("LLM_COURSE_DATA_DIRS", str(shared))
    path = course.download("http://127.0.0.1:9/none", "shakespeare.txt", PAYLOAD_SHA256)
    assert path == shared / "shakespeare.txt"


def test_tinyshakespeare_loader_reads_through_the_download_helper(
    local_server: str, empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corpus_sources, "TINYSHAKESPEARE_URL", f"{local_server}/input.txt")
    monkeypatch.setattr(corpus_sources, "TINYSHAKESPEARE_SHA256", PAYLOAD_SHA256)
    (document,) = corpus_sources.iter_tinyshakespeare()
    assert document.origin == "tinyshakespeare:input.txt" and document.data == PAYLOAD
