# Generated from chapters/ch01_data/ch01_data.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""Chapter 1's data pipeline: raw documents in, a clean, deduplicated, split corpus out.

The stages, in the order a document meets them:
    decode and normalize -> path filters -> quality filters -> exact dedup
    -> MinHash-LSH near dedup -> hash-based train/validation split -> sharded JSONL + manifest
"""

import hashlib
import json
import os
import re
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

from chapters.corpus_sources import RawDocument, iter_embedded_corpus, stdlib_source_paths
from chapters.course import artifacts_dir, atomic_folder, sha256_of


class CorpusError(ValueError):
    """A corpus, document or setting the pipeline cannot use; the message says how to fix it."""


class DocumentError(CorpusError):
    """One document that cannot be used; `reason` names the pipeline row that counts it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CleanDocument:
    """One document after the pipeline: where it came from and its normalized text."""

    origin: str
    text: str


def decode_document(raw: RawDocument) -> str:
    """The text of a raw document, or a DocumentError saying why it is not text."""
    if not isinstance(raw, RawDocument) or not isinstance(raw.data, bytes):
        raise DocumentError(
            "malformed",
            f"expected a RawDocument(origin, data: bytes), got {type(raw).__name__}: {raw!r:.80}",
        )
    if b"\x00" in raw.data:
        # Real text never contains NUL; compiled files, images and archives almost always do.
        raise DocumentError("binary", f"{raw.origin}: contains NUL bytes, so it is binary data")
    try:
        text = raw.data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DocumentError(
            "not_utf8",
            f"{raw.origin}: not UTF-8 (byte 0x{raw.data[error.start]:02x} at offset "
            f"{error.start}); re-encode the file as UTF-8 to include it",
        ) from error
    return text.removeprefix("\ufeff")  # a byte-order mark is an encoding detail, not text


def normalize_text(text: str) -> str:
    """Deterministic cleanup: NFC Unicode, "\\n" line endings, no trailing whitespace.

    The result has no leading or trailing blank lines and ends with exactly one newline
    (or is empty), so two files that differ only in such details become byte-identical.
    """
    text = unicodedata.normalize("NFC", text)  # one code-point sequence per visible character
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")
    return text + "\n" if text else ""


def documents_from_folder(root: Path, pattern: str = "*.py") -> Iterator[RawDocument]:
    """Every file under `root` matching `pattern`, in sorted order, as raw documents.

    A file that cannot be read is skipped with a warning that names it; the run goes on. Only
    regular files inside `root` are read: a symlink that leads outside it, or a FIFO or device
    (reading one can block forever), is skipped with a warning too.
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"{root} is not a folder; pass the folder that holds the documents")
    inside = root.resolve()
    for path in sorted(root.rglob(pattern)):
        resolved = path.resolve()
        if not resolved.is_relative_to(inside) or not resolved.is_file():
            warnings.warn(
                f"skipped {path}: not a regular file inside {root} (a link out, a FIFO or a "
                "device); copy the file into the folder to include it",
                stacklevel=2,
            )
            continue
        try:
            data = path.read_bytes()
        except OSError as error:
            warnings.warn(f"skipped unreadable file {path}: {error}", stacklevel=2)
            continue
        yield RawDocument(origin=f"{root.name}:{path.relative_to(root).as_posix()}", data=data)


# Folder names whose files are not what we want the model to imitate: tests (often
# deliberately broken or odd code) and vendored copies of someone else's project.
TEST_FOLDERS = frozenset({"test", "tests", "idle_test", "__phello__"})
VENDORED_FOLDERS = frozenset({"_vendor", "vendor", "vendored", "third_party", "site-packages"})


def path_filter_reason(origin: str) -> str | None:
    """'test_folder' or 'vendored' when the origin's path says to skip it, else None.

    An origin looks like `stdlib:json/decoder.py`: the path is what follows the first colon.
    """
    path = origin.split(":", 1)[-1]
    *folders, name = path.split("/")
    if TEST_FOLDERS.intersection(folders) or name.startswith("test_") or name == "conftest.py":
        return "test_folder"
    if VENDORED_FOLDERS.intersection(folders):
        return "vendored"
    return None


@dataclass(frozen=True)
class QualityThresholds:
    """Every number the quality filters use, with the reason for its value.

    Measured on the stdlib (tests excluded): median length 6.9k characters, longest line
    175 characters, alphabetic fraction between 0.28 and 0.81, repeated long lines at most
    29% of the characters. The thresholds sit outside that range except where a document
    really is unwanted, so that the train split keeps real code and documentation.
    """

    min_chars: int = 200  # below this a file is an empty __init__ or a one-line re-export
    max_chars: int = 300_000  # above this, a generated data dump (pydoc_data/topics.py: 756k)
    max_line_chars: int = 1_000  # minified or generated files; hand-written code stays < 200
    min_alphabetic_fraction: float = 0.25  # binary-ish tables and number dumps; code >= 0.28
    repeated_line_min_chars: int = 30  # shorter lines ("else:", "return None") repeat naturally
    max_repeated_line_fraction: float = 0.35  # Gopher uses 0.2 for prose; code repeats more
    generated_header_lines: int = 5  # where generators write "DO NOT EDIT"

    def __post_init__(self) -> None:
        for name in ("min_chars", "max_chars", "max_line_chars", "repeated_line_min_chars"):
            if getattr(self, name) < 0:
                raise CorpusError(f"QualityThresholds.{name} = {getattr(self, name)} is negative")
        if self.min_chars >= self.max_chars:
            raise CorpusError(
                f"QualityThresholds: min_chars ({self.min_chars}) must be below "
                f"max_chars ({self.max_chars}), or every document is removed"
            )
        for name in ("min_alphabetic_fraction", "max_repeated_line_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise CorpusError(f"QualityThresholds.{name} = {value} is not a fraction in [0, 1]")


GENERATED_MARKERS = (
    "do not edit",
    "auto-generated",
    "autogenerated",
    "automatically generated",
    "this file is generated",
)


def is_too_short(text: str, limits: QualityThresholds) -> bool:
    """Too little text to teach anything."""
    return len(text) < limits.min_chars


def is_too_long(text: str, limits: QualityThresholds) -> bool:
    """So long that it is almost surely a data dump, not prose or code."""
    return len(text) > limits.max_chars


def has_very_long_lines(text: str, limits: QualityThresholds) -> bool:
    """A line longer than any a person writes: minified or machine-written content."""
    return any(len(line) > limits.max_line_chars for line in text.split("\n"))


def has_low_alphabetic_fraction(text: str, limits: QualityThresholds) -> bool:
    """Mostly digits, symbols or whitespace: tables of numbers, encoded blobs."""
    letters = sum(character.isalpha() for character in text)
    return letters < limits.min_alphabetic_fraction * max(len(text), 1)


def looks_auto_generated(text: str, limits: QualityThresholds) -> bool:
    """A generator's "do not edit" marker in the first lines of the file."""
    header = "\n".join(text.split("\n", limits.generated_header_lines)[:-1]).lower()
    if text.count("\n") < limits.generated_header_lines:
        header = text.lower()
    return any(marker in header for marker in GENERATED_MARKERS)


def has_repeated_lines(text: str, limits: QualityThresholds) -> bool:
    """Gopher's repetition rule adapted to code: the fraction of characters, among lines of
    at least `repeated_line_min_chars`, that belong to a line already seen in the document."""
    seen: set[str] = set()
    repeated = total = 0
    for line in text.split("\n"):
        line = line.strip()
        if len(line) < limits.repeated_line_min_chars:
            continue
        total += len(line)
        if line in seen:
            repeated += len(line)
        seen.add(line)
    return total > 0 and repeated > limits.max_repeated_line_fraction * total


# The filters in the order they run; the first that fires names the row a document counts in.
QUALITY_FILTERS: dict[str, Callable[[str, QualityThresholds], bool]] = {
    "too_short": is_too_short,
    "too_long": is_too_long,
    "very_long_lines": has_very_long_lines,
    "low_alphabetic_fraction": has_low_alphabetic_fraction,
    "auto_generated": looks_auto_generated,
    "repeated_lines": has_repeated_lines,
}


def first_failed_filter(
    text: str,
    limits: QualityThresholds | None = None,
    filters: dict[str, Callable[[str, QualityThresholds], bool]] | None = None,
) -> str | None:
    """The name of the first quality filter that removes `text`, or None if it passes all."""
    limits = limits or QualityThresholds()
    for name, removes in (filters or QUALITY_FILTERS).items():
        if removes(text, limits):
            return name
    return None


def content_hash(text: str) -> str:
    """SHA-256 of the normalized text: equal hashes mean byte-identical documents."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ExactDeduplicator:
    """Remembers one hash per kept document (64 bytes each, never the text)."""

    def __init__(self) -> None:
        self.first_origin: dict[str, str] = {}

    def duplicate_of(self, origin: str, text: str) -> str | None:
        """The origin of an earlier identical document, or None (and remember this one)."""
        digest = content_hash(text)
        earlier = self.first_origin.get(digest)
        if earlier is None:
            self.first_origin[digest] = origin
        return earlier


WORD = re.compile(r"\w+")


def word_shingles(text: str, n: int = 5) -> set[str]:
    """The set of n consecutive words (identifiers, keywords, numbers), lowercased.

    Punctuation and layout are dropped, so re-indenting or re-wrapping a document does not
    change its shingles. A document with fewer than n words is one shingle of all its words.
    """
    if n < 1:
        raise CorpusError(f"shingle size n = {n}; it must be at least 1 word")
    words = WORD.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def random_set_pair(size: int, similarity: float, rng: np.random.Generator) -> tuple[set, set]:
    """Two random sets of `size` strings each whose Jaccard similarity is as close to
    `similarity` as whole elements allow (for testing estimators)."""
    if size < 1 or not 0.0 <= similarity <= 1.0:
        raise CorpusError(f"need size >= 1 and similarity in [0, 1]; got {size}, {similarity}")
    shared = round(2 * size * similarity / (1 + similarity))  # J = s / (2 * size - s)
    needed = 2 * size - shared
    words: list[str] = []
    while len(words) < needed:  # random 62-bit numbers; a repeat is astronomically rare
        fresh = (f"w{value}" for value in rng.integers(0, 1 << 62, size=needed))
        words = list(dict.fromkeys([*words, *fresh]))[:needed]
    return set(words[:size]), set(words[:shared] + words[size:])


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|, exactly; two empty sets count as identical (1.0)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


EMPTY_SLOT = np.iinfo(np.uint64).max  # the signature value of an empty set


def shingle_hashes(shingles: Iterable[str]) -> np.ndarray:
    """A 64-bit hash of each shingle, shape (S,) uint64; stable across runs and machines
    (Python's own `hash()` of a string changes from one process to the next)."""
    values = [
        int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")
        for s in shingles
    ]
    return np.array(values, dtype=np.uint64)


@lru_cache(maxsize=16)
def permutation_parameters(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of `num_perm` random permutations x -> (a * x + b) mod 2**64.

    With `a` odd, the map is a bijection of the 64-bit numbers (a random reordering of
    every possible shingle hash), and uint64 arithmetic does the mod 2**64 for free.
    """
    if num_perm < 1:
        raise CorpusError(f"num_perm = {num_perm}; MinHash needs at least one permutation")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True)
    a.flags.writeable = b.flags.writeable = False  # cached: nobody may change them
    return a, b


def minhash_signature(
    shingles: Iterable[str], num_perm: int = 128, seed: int = 1, chunk: int = 4096
) -> np.ndarray:
    """The MinHash signature of a set of shingles, shape (num_perm,) uint64.

    Entry k is the smallest value the k-th random permutation takes on the set; two sets
    agree at entry k with probability (close to) their Jaccard similarity. An empty set
    gets EMPTY_SLOT everywhere. Shingles are processed `chunk` at a time, so memory stays at
    chunk x num_perm numbers however long the document is.
    """
    hashes = shingle_hashes(shingles)  # (S,)
    a, b = permutation_parameters(num_perm, seed)  # (P,), (P,)
    signature = np.full(num_perm, EMPTY_SLOT, dtype=np.uint64)
    for start in range(0, hashes.size, chunk):
        block = hashes[start : start + chunk, None]  # (C, 1)
        permuted = block * a + b  # (C, P); uint64 arithmetic wraps: mod 2**64
        np.minimum(signature, permuted.min(axis=0), out=signature)
    return signature


def estimate_jaccard(signature_a: np.ndarray, signature_b: np.ndarray) -> float:
    """The fraction of positions where two MinHash signatures agree: an unbiased estimate of
    the Jaccard similarity, with standard error sqrt(J (1 - J) / num_perm)."""
    if signature_a.shape != signature_b.shape:
        raise CorpusError(
            f"signatures of shapes {signature_a.shape} and {signature_b.shape} cannot be "
            "compared; compute both with the same num_perm and seed"
        )
    return float(np.mean(signature_a == signature_b))


def datasketch_minhash(
    shingles: Iterable[str], num_perm: int = 128, seed: int = 1, chunk: int = 4096
) -> MinHash:
    """The same idea as `minhash_signature`, computed by the datasketch library.

    Shingles go in `chunk` at a time: datasketch builds a (num_perm, batch) array per batch,
    which for the largest stdlib file in one batch would be about 30 MB.
    """
    sketch = MinHash(num_perm=num_perm, seed=seed)
    batch = []
    for shingle in shingles:
        batch.append(shingle.encode("utf-8"))
        if len(batch) == chunk:
            sketch.update_batch(batch)
            batch = []
    if batch:
        sketch.update_batch(batch)
    return sketch


@dataclass(frozen=True)
class NearDuplicateSettings:
    """How near-duplicates are found: 5-word shingles, MinHash with 128 permutations, LSH
    with 20 bands of 6 rows (120 of the 128 values), confirmed at Jaccard 0.7.

    Two documents become candidates when all 6 rows of at least one band agree, which
    happens with probability 1 - (1 - J**6)**20: 8% at J = 0.4, 27% at J = 0.5, 92% at
    J = 0.7 and 99.8% at J = 0.8. The steep part of that S-curve sits just below the
    threshold on purpose: banding only proposes candidates, and the estimated Jaccard
    similarity over all 128 values decides (>= 0.7, a common choice for 5-gram shingles).
    """

    shingle_size: int = 5
    num_perm: int = 128
    bands: int = 20
    rows: int = 6
    threshold: float = 0.7
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise CorpusError(
                f"near-duplicate threshold = {self.threshold}; it must be a Jaccard "
                "similarity in (0, 1], for example 0.7"
            )
        if self.shingle_size < 1 or self.bands < 1 or self.rows < 1:
            raise CorpusError(
                f"shingle_size, bands and rows must be positive; got {self.shingle_size}, "
                f"{self.bands}, {self.rows}"
            )
        if self.bands * self.rows > self.num_perm:
            raise CorpusError(
                f"bands x rows = {self.bands} x {self.rows} = {self.bands * self.rows} "
                f"exceeds num_perm = {self.num_perm}: each band needs its own rows"
            )


def candidate_probability(similarity: np.ndarray | float, bands: int, rows: int):
    """The LSH S-curve: probability that two sets of this Jaccard similarity share a bucket."""
    return 1.0 - (1.0 - np.asarray(similarity, dtype=float) ** rows) ** bands


class NearDuplicateIndex:
    """A `datasketch.MinHashLSH` index plus the sketches needed to confirm its candidates."""

    def __init__(self, settings: NearDuplicateSettings | None = None) -> None:
        self.settings = settings or NearDuplicateSettings()
        s = self.settings
        self.lsh = MinHashLSH(threshold=s.threshold, num_perm=s.num_perm, params=(s.bands, s.rows))
        self.sketches: dict[str, MinHash] = {}

    def sketch(self, text: str) -> MinHash:
        """The MinHash of a document's word shingles."""
        s = self.settings
        return datasketch_minhash(word_shingles(text, s.shingle_size), s.num_perm, s.seed)

    def add(self, origin: str, sketch: MinHash) -> None:
        """Index a document under its origin (origins must be unique)."""
        if origin in self.sketches:
            raise CorpusError(f"origin {origin!r} is already in the index; origins must be unique")
        self.lsh.insert(origin, sketch)
        self.sketches[origin] = sketch

    def matches(self, sketch: MinHash) -> list[tuple[str, float]]:
        """Indexed documents whose estimated Jaccard with `sketch` reaches the threshold,
        most similar first (LSH candidates that fall short are dropped)."""
        found = []
        for origin in self.lsh.query(sketch):
            similarity = sketch.jaccard(self.sketches[origin])
            if similarity >= self.settings.threshold:
                found.append((origin, similarity))
        return sorted(found, key=lambda pair: (-pair[1], pair[0]))

    def duplicate_of(self, origin: str, text: str) -> tuple[str, float] | None:
        """Streaming dedup: the earlier document this one nearly duplicates (and how
        similar), or None, in which case the document is indexed as a keeper."""
        sketch = self.sketch(text)
        found = self.matches(sketch)
        if found:
            return found[0]
        self.add(origin, sketch)
        return None


def build_lsh_index(
    documents: Iterable[CleanDocument], settings: NearDuplicateSettings | None = None
) -> NearDuplicateIndex:
    """Index every document (no dedup): for searching one collection against another, as
    chapter 10 does to look for evaluation texts that leaked into the training data."""
    index = NearDuplicateIndex(settings)
    for document in documents:
        index.add(document.origin, index.sketch(document.text))
    return index


def near_duplicate_clusters(
    documents: Iterable[CleanDocument], settings: NearDuplicateSettings | None = None
) -> list[list[str]]:
    """Groups of origins linked by confirmed near-duplicate pairs (each group sorted, groups
    of two or more only, ordered by their first origin)."""
    index = build_lsh_index(documents, settings)
    parent = {origin: origin for origin in index.sketches}

    def root(origin: str) -> str:  # union-find with path halving
        while parent[origin] != origin:
            parent[origin] = parent[parent[origin]]
            origin = parent[origin]
        return origin

    for origin, sketch in index.sketches.items():
        for other, _ in index.matches(sketch):
            parent[root(other)] = root(origin)
    groups: dict[str, list[str]] = {}
    for origin in index.sketches:
        groups.setdefault(root(origin), []).append(origin)
    return sorted(sorted(group) for group in groups.values() if len(group) > 1)


VALIDATION_FRACTION = 0.05
SPLITS = ("train", "validation")


def split_of(origin: str, validation_fraction: float = VALIDATION_FRACTION) -> str:
    """'validation' or 'train', decided by a hash of the origin alone.

    The origin's SHA-256 is read as a number in [0, 1); documents below the fraction go to
    validation. Adding or removing other documents never moves this one, and the same origin
    lands in the same split on every machine and every run.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise CorpusError(f"validation_fraction = {validation_fraction}; it must be in [0, 1)")
    position = int.from_bytes(hashlib.sha256(origin.encode("utf-8")).digest()[:8], "big")
    return "validation" if position < validation_fraction * 2**64 else "train"


class ShardWriter:
    """Writes one split as JSONL shards of about `shard_bytes` each, hashing as it writes."""

    def __init__(self, folder: Path, split: str, shard_bytes: int) -> None:
        self.folder, self.split, self.shard_bytes = folder, split, shard_bytes
        self.shards: list[dict] = []
        self._file = None
        self._open_next()

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.shards):05d}.jsonl"
        self._file = open(self.folder / name, "wb")  # noqa: SIM115 (closed in close())
        self._digest = hashlib.sha256()
        self.shards.append({"file": name, "documents": 0, "bytes": 0, "sha256": ""})

    def write(self, document: CleanDocument) -> None:
        """Append one document as a JSON line, starting a new shard when this one is full."""
        line = json.dumps({"origin": document.origin, "text": document.text}, ensure_ascii=False)
        data = (line + "\n").encode("utf-8")
        shard = self.shards[-1]
        if shard["documents"] and shard["bytes"] + len(data) > self.shard_bytes:
            self._open_next()
            shard = self.shards[-1]
        self._file.write(data)
        self._digest.update(data)
        shard["documents"] += 1
        shard["bytes"] += len(data)
        shard["sha256"] = self._digest.hexdigest()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "llm-course-clean-corpus/1"
SHARD_BYTES = 4 << 20  # 4 MiB: big enough to stream fast, small enough to open in an editor
REMOVAL_ROWS = (
    "malformed",
    "binary",
    "not_utf8",
    "duplicate_origin",
    "test_folder",
    "vendored",
    *QUALITY_FILTERS,
    "exact_duplicate",
    "near_duplicate",
)


def pipeline_settings(
    limits: QualityThresholds,
    near: NearDuplicateSettings,
    validation_fraction: float,
    shard_bytes: int,
) -> dict:
    """Everything that decides the output, as stored in the manifest."""
    return {
        "quality": asdict(limits),
        "quality_filters": list(QUALITY_FILTERS),
        "near_duplicates": asdict(near),
        "validation_fraction": validation_fraction,
        "shard_bytes": shard_bytes,
        "test_folders": sorted(TEST_FOLDERS),
        "vendored_folders": sorted(VENDORED_FOLDERS),
    }


def clean_documents(
    documents: Iterable[RawDocument],
    limits: QualityThresholds | None = None,
    near: NearDuplicateSettings | None = None,
    report: dict | None = None,
) -> Iterator[CleanDocument]:
    """The pipeline as a generator: yield every document that survives all stages.

    `report`, if given, is filled as documents stream through: "removed" counts per row of
    REMOVAL_ROWS, "examples" (the first origin removed by each row), "errors" (the first
    messages of documents that could not be read), "exact_duplicates" and
    "near_duplicates" (removed origin -> kept origin), plus document and byte counts.
    """
    limits = limits or QualityThresholds()
    exact = ExactDeduplicator()
    near_index = NearDuplicateIndex(near)
    origins: set[str] = set()
    report = report if report is not None else {}
    removed = report.setdefault("removed", dict.fromkeys(REMOVAL_ROWS, 0))
    examples = report.setdefault("examples", {})
    errors = report.setdefault("errors", [])
    report.setdefault("exact_duplicates", {})
    report.setdefault("near_duplicates", {})
    report.setdefault("documents_in", 0)
    report.setdefault("bytes_in", 0)

    def drop(row: str, origin: str) -> None:
        removed[row] += 1
        examples.setdefault(row, origin)

    for raw in documents:
        report["documents_in"] += 1
        try:
            text = decode_document(raw)
        except DocumentError as error:
            origin = getattr(raw, "origin", f"<item {report['documents_in']}>")
            drop(error.reason, str(origin))
            if len(errors) < 20:  # keep a few messages, never one per document
                errors.append(str(error))
            continue
        report["bytes_in"] += len(raw.data)
        origin = raw.origin
        if origin in origins:  # two documents, one name: the split and the shards need unique ones
            drop("duplicate_origin", origin)
            if len(errors) < 20:
                errors.append(f"{origin}: this origin was already seen; the second one is skipped")
            continue
        origins.add(origin)
        if (reason := path_filter_reason(origin)) is not None:
            drop(reason, origin)
            continue
        text = normalize_text(text)
        if (reason := first_failed_filter(text, limits)) is not None:
            drop(reason, origin)
            continue
        if (kept := exact.duplicate_of(origin, text)) is not None:
            drop("exact_duplicate", origin)
            if len(report["exact_duplicates"]) < 1000:
                report["exact_duplicates"][origin] = kept
            continue
        if (match := near_index.duplicate_of(origin, text)) is not None:
            drop("near_duplicate", origin)
            report["near_duplicates"][origin] = {
                "kept": match[0],
                "estimated_jaccard": round(match[1], 4),
            }
            continue
        yield CleanDocument(origin, text)


def build_clean_corpus(
    documents: Iterable[RawDocument],
    output_dir: Path,
    limits: QualityThresholds | None = None,
    near: NearDuplicateSettings | None = None,
    validation_fraction: float = VALIDATION_FRACTION,
    shard_bytes: int = SHARD_BYTES,
    overwrite: bool = False,
) -> dict:
    """Run the pipeline and write `output_dir` (shards + manifest.json); return the manifest.

    Everything is written into a temporary folder next to `output_dir`, which replaces
    `output_dir` only when the whole corpus is done: an exception half-way leaves the old
    output (or none) and no half-written files. An existing `output_dir` is replaced only if
    it is empty or an earlier corpus (or `overwrite=True`): never the folder of the sources.
    """
    limits = limits or QualityThresholds()
    near = near or NearDuplicateSettings()
    split_of("", validation_fraction)  # fail on a bad fraction before any work
    if shard_bytes < 1:
        raise CorpusError(f"shard_bytes = {shard_bytes}; a shard must hold at least one byte")
    output_dir = Path(output_dir)
    # a corpus written before folders carried the course's marker is still ours to replace
    overwrite = overwrite or _holds_only_corpus_files(output_dir)
    report: dict = {}
    with atomic_folder(output_dir, writer=CORPUS_WRITER, overwrite=overwrite) as building:
        writers = {split: ShardWriter(building, split, shard_bytes) for split in SPLITS}
        try:
            for document in clean_documents(documents, limits, near, report):
                writers[split_of(document.origin, validation_fraction)].write(document)
        finally:
            for writer in writers.values():
                writer.close()
        if report["documents_in"] == 0:
            raise CorpusError("the corpus is empty: the iterator yielded no documents")
        splits = {
            split: {
                "documents": sum(shard["documents"] for shard in writer.shards),
                "bytes": sum(shard["bytes"] for shard in writer.shards),
                "shards": writer.shards,
            }
            for split, writer in writers.items()
        }
        if splits["train"]["documents"] == 0:
            raise CorpusError(
                f"every document was removed, the train split is empty; removed: "
                f"{ {row: n for row, n in report['removed'].items() if n} }. "
                "Check the thresholds or the input."
            )
        manifest = {
            "format": MANIFEST_FORMAT,
            "settings": pipeline_settings(limits, near, validation_fraction, shard_bytes),
            "documents_in": report["documents_in"],
            "bytes_in": report["bytes_in"],
            "documents_out": sum(split["documents"] for split in splits.values()),
            "removed": report["removed"],
            "examples": report["examples"],
            "errors": report["errors"],
            "exact_duplicates": report["exact_duplicates"],
            "near_duplicates": report["near_duplicates"],
            "splits": splits,
        }
        with open(building / MANIFEST_NAME, "w", encoding="utf-8") as file:
            json.dump(manifest, file, indent=1, ensure_ascii=False)
            file.flush()
            os.fsync(file.fileno())
    return manifest


CORPUS_WRITER = "ch01_data.build_clean_corpus"  # the name in the corpus folder's marker


SHARD_FILE = re.compile(r"(train|validation)-\d{5}\.jsonl")  # what ShardWriter names


def _holds_only_corpus_files(folder: Path) -> bool:
    return folder.is_dir() and all(
        path.name == MANIFEST_NAME or SHARD_FILE.fullmatch(path.name) for path in folder.iterdir()
    )


def _check_manifest(manifest: object, path: Path) -> None:
    """Raise CorpusError unless the manifest has the shape build_clean_corpus writes: both
    splits, each a non-empty list of shards named like ShardWriter's (so that no name can
    point outside the folder), a train split with documents."""

    def fail(problem: str) -> None:
        raise CorpusError(
            f"{path}: {problem}; the corpus is corrupt, delete the folder and rebuild"
        )

    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        fail(f"not a {MANIFEST_FORMAT} manifest")
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        fail(f"'splits' must name exactly {', '.join(SPLITS)}")
    for split in SPLITS:
        shards = splits[split].get("shards") if isinstance(splits[split], dict) else None
        if not isinstance(shards, list) or not shards:
            fail(f"split {split!r} has no list of shards")
        for shard in shards:
            if not isinstance(shard, dict) or not isinstance(shard.get("file"), str):
                fail(f"split {split!r} has a shard without a file name")
            if not SHARD_FILE.fullmatch(shard["file"]) or not shard["file"].startswith(split):
                fail(f"shard name {shard['file']!r} is not one that build_clean_corpus writes")
            for key in ("bytes", "documents"):
                if not isinstance(shard.get(key), int) or shard[key] < 0:
                    fail(f"shard {shard['file']} has no valid {key!r} count")
            if not isinstance(shard.get("sha256"), str):
                fail(f"shard {shard['file']} has no SHA-256")
        if splits[split].get("documents") != sum(shard["documents"] for shard in shards):
            fail(f"split {split!r}: its document count disagrees with its shards")
    if splits["train"]["documents"] == 0:
        fail("the train split holds no documents")


def load_manifest(corpus_dir: Path, verify_checksums: bool = False) -> dict:
    """The manifest of a corpus folder, after checking that every shard is there and has the
    recorded size (and SHA-256, if asked). Raises CorpusError saying what is wrong."""
    corpus_dir = Path(corpus_dir)
    path = corpus_dir / MANIFEST_NAME
    if not path.is_file():
        raise CorpusError(
            f"no clean corpus at {corpus_dir} ({MANIFEST_NAME} is missing). "
            "Build it with ensure_clean_corpus() or build_clean_corpus(...)."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorpusError(
            f"{path} is not valid JSON ({error}); delete the folder and rebuild"
        ) from error
    _check_manifest(manifest, path)
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            shard_path = corpus_dir / shard["file"]
            if not shard_path.is_file() or shard_path.stat().st_size != shard["bytes"]:
                raise CorpusError(
                    f"shard {shard_path} is missing or not {shard['bytes']} bytes as the "
                    "manifest says; the corpus is corrupt, delete the folder and rebuild"
                )
            if verify_checksums and sha256_of(shard_path) != shard["sha256"]:
                raise CorpusError(
                    f"shard {shard_path} does not match its SHA-256 in the manifest; the "
                    "corpus is corrupt, delete the folder and rebuild"
                )
    return manifest


def iter_split(split: str, corpus_dir: Path | None = None) -> Iterator[CleanDocument]:
    """Stream the documents of "train" or "validation", shard by shard, in a fixed order.

    Without `corpus_dir`, the chapter's corpus is used (and built first if it is absent).
    """
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    corpus_dir = ensure_clean_corpus() if corpus_dir is None else Path(corpus_dir)
    manifest = load_manifest(corpus_dir)
    for shard in manifest["splits"][split]["shards"]:
        with open(corpus_dir / shard["file"], encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                try:
                    record = json.loads(line)
                    yield CleanDocument(origin=record["origin"], text=record["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise CorpusError(
                        f"{corpus_dir / shard['file']}, line {number}: not a JSON object with "
                        f"'origin' and 'text' ({error}); the corpus is corrupt, rebuild it"
                    ) from error


def embedded_corpus_size() -> int:
    """How many raw documents the embedded corpus has (counting paths, not reading files)."""
    from pydoc_data.topics import topics

    return sum(1 for _ in stdlib_source_paths()) + len(topics)


def ensure_clean_corpus() -> Path:
    """The chapter's clean corpus folder, artifacts_dir("ch01"): checked if it exists,
    (re)built from the embedded corpus if it is absent, corrupt or built with other settings."""
    from tqdm.auto import tqdm

    folder = artifacts_dir("ch01")
    expected = pipeline_settings(
        QualityThresholds(), NearDuplicateSettings(), VALIDATION_FRACTION, SHARD_BYTES
    )
    try:
        manifest = load_manifest(folder, verify_checksums=True)
        if manifest.get("settings") == expected:
            return folder
        print(f"{folder} was built with other settings; rebuilding it.")
    except CorpusError as problem:
        if (folder / MANIFEST_NAME).exists():
            print(f"{problem}\nRebuilding it.")
    documents = tqdm(
        iter_embedded_corpus(), total=embedded_corpus_size(), desc="cleaning corpus", unit="doc"
    )
    build_clean_corpus(documents, folder)
    return folder
