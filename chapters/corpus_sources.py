"""Where the course's raw text comes from.

The default corpus needs no download: it is the text that every Python installation carries,
the standard library's source files (code, comments, docstrings) and its documentation topics
(`pydoc_data`), read from the running interpreter. Chapter 1 turns these raw documents into a
clean training set; downloadable corpora (TinyShakespeare, TinyStories) come through the same
`RawDocument` interface, so the same pipeline handles them.

Documents are yielded one at a time, in a stable order (sorted paths, sorted topic names), so
that the corpus never needs to sit in memory at once and every run sees the same sequence.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chapters.course import download

# Folders under the stdlib root that are not the standard library itself.
_NOT_STDLIB = {"site-packages", "dist-packages", "__pycache__"}


@dataclass(frozen=True)
class RawDocument:
    """One document as found: undecoded bytes plus where they came from.

    `origin` is a stable, human-readable id such as `stdlib:json/decoder.py` or
    `pydoc_data:assert`. Decoding is left to the pipeline, which must cope with bytes that are
    not UTF-8.
    """

    origin: str
    data: bytes


def stdlib_root() -> Path:
    """The folder of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_paths(root: Path | None = None) -> Iterator[Path]:
    """Every `.py` file of the standard library, tests included, in sorted order.

    Test folders are kept on purpose: deciding what to skip is chapter 1's job.
    """
    root = root or stdlib_root()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if _NOT_STDLIB.isdisjoint(relative.parts):
            yield path


def iter_stdlib_files(root: Path | None = None) -> Iterator[RawDocument]:
    """The standard library's source files as raw documents, one at a time."""
    root = root or stdlib_root()
    for path in stdlib_source_paths(root):
        yield RawDocument(
            origin=f"stdlib:{path.relative_to(root).as_posix()}", data=path.read_bytes()
        )


def iter_pydoc_topics() -> Iterator[RawDocument]:
    """The documentation topics that `help("assert")` shows, one document per topic."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield RawDocument(origin=f"pydoc_data:{name}", data=topics[name].encode("utf-8"))


def iter_embedded_corpus() -> Iterator[RawDocument]:
    """The course's default corpus: the stdlib sources, then the documentation topics."""
    yield from iter_stdlib_files()
    yield from iter_pydoc_topics()


# ---------------------------------------------------------------------------------------
# Downloadable corpora: optional, cached and checksummed (see chapters.course.download)
# ---------------------------------------------------------------------------------------

TINYSHAKESPEARE_URL = (  # url: the file nanoGPT and char-rnn use
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def tinyshakespeare_path() -> Path:
    """Local path of TinyShakespeare (1,115,394 characters), downloaded once into the cache."""
    return download(TINYSHAKESPEARE_URL, "tinyshakespeare.txt", TINYSHAKESPEARE_SHA256)


def iter_tinyshakespeare() -> Iterator[RawDocument]:
    """TinyShakespeare as a single raw document."""
    yield RawDocument(origin="tinyshakespeare:input.txt", data=tinyshakespeare_path().read_bytes())
