# Generated from chapters/ch02_tokenizer/ch02_tokenizer.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""Byte-level BPE from scratch: a tiny tokenizer family in the spirit of minbpe.

    Tokenizer            the shared verbs: train, encode, decode, encode_iterable, save, load
    NaiveBPETokenizer    learns merges by recounting every pair after every merge (plain, slow)
    BPETokenizer         learns the same merges by counting pre-tokens once and updating pair
                         counts incrementally (what the benchmark and the chapter use)

Ids 0..255 are the raw bytes, id 256 + k is the k-th merge, and special tokens come last.
Text is first cut at special tokens (they are never merged across), then each ordinary stretch
is split with GPT-2's pre-tokenization pattern, and merges happen only inside one pre-token.
Among equally frequent pairs the lexicographically greatest pair of byte strings is merged,
so training is deterministic.
"""

import heapq
import json
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from chapters.course import atomic_write

SAVE_FORMAT = "course-byte-bpe"
SAVE_FORMAT_VERSION = 1


def _class_of(code_points: list[int]) -> str:
    """Code points as the body of a regex character class, consecutive runs as ranges."""
    parts, start = [], None
    for index, point in enumerate(code_points):
        if start is None:
            start = point
        if index + 1 == len(code_points) or code_points[index + 1] != point + 1:
            parts.append(rf"\U{start:08x}" if start == point else rf"\U{start:08x}-\U{point:08x}")
            start = None
    return "".join(parts)


def gpt2_split_pattern() -> str:
    """GPT-2's pre-tokenization pattern written for Python's `re`.

    The original needs the `regex` package for \\p{L} (letters) and \\p{N} (numbers). In `re`,
    \\d is exactly the decimal digits (Nd), so \\p{N} is \\d plus the few letter-like and other
    numbers (Nl, No, e.g. "Ⅻ", "²"), and \\p{L} is what remains of \\w after removing numbers and
    "_". Whitespace is Unicode's White_Space list (`re`'s \\s would add four control codes).
    """
    other_numbers = _class_of(
        [p for p in range(sys.maxunicode + 1) if unicodedata.category(chr(p)) in ("Nl", "No")]
    )
    space = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
    letters = rf"[^\W\d_{other_numbers}]"
    numbers = rf"[\d{other_numbers}]"
    others = rf"(?:[^\w{space}]|_)"  # neither space nor letter nor number
    return "|".join(
        [
            r"'(?:[sdmt]|ll|ve|re)",  # English contractions: 's 't 're 've 'm 'll 'd
            rf" ?{letters}+",  # a word, with the space before it
            rf" ?{numbers}+",  # a number, with the space before it
            rf" ?{others}+",  # punctuation and symbols, with the space before them
            rf"[{space}]+(?![^{space}])",  # spaces, leaving the last one to the next word
            rf"[{space}]+",  # trailing spaces
        ]
    )


GPT2_SPLIT_PATTERN = gpt2_split_pattern()


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair` in `ids`, left to right, by `new_id`."""
    merged, index = [], 0
    while index < len(ids):
        if index + 1 < len(ids) and ids[index] == pair[0] and ids[index + 1] == pair[1]:
            merged.append(new_id)
            index += 2
        else:
            merged.append(ids[index])
            index += 1
    return merged


def best_pair(pair_counts: dict[tuple[int, int], int], vocab: dict[int, bytes]) -> tuple[int, int]:
    """The most frequent pair; ties go to the lexicographically greatest pair of byte strings."""
    return max(pair_counts, key=lambda pair: (pair_counts[pair], vocab[pair[0]], vocab[pair[1]]))


class Tokenizer:
    """Byte-level BPE: the shared verbs. Subclasses only decide how merges are learned."""

    def __init__(self, pattern: str = GPT2_SPLIT_PATTERN) -> None:
        self.pattern = pattern
        self.compiled_pattern = re.compile(pattern)
        self.merges: dict[tuple[int, int], int] = {}  # (left id, right id) -> merged id
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        self.special_tokens: dict[str, int] = {}  # "<|endoftext|>" -> id
        self._piece_cache: dict[str, list[int]] = {}  # pre-token -> ids, filled by encode

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self.special_tokens)

    # ---- training -----------------------------------------------------------------------
    def train(self, text: str, vocab_size: int, special_tokens: Iterable[str] = ()) -> None:
        """Learn `vocab_size - 256 - len(special_tokens)` merges from `text`."""
        special_tokens = list(dict.fromkeys(special_tokens))
        smallest = 256 + len(special_tokens)
        if vocab_size < smallest:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: a byte-level vocabulary needs the 256 "
                f"bytes plus {len(special_tokens)} special tokens, so at least {smallest}."
            )
        if any(not token for token in special_tokens):
            raise ValueError("A special token must be a non-empty string.")
        pieces = (
            piece
            for stretch in self._split_specials(text, special_tokens)
            if stretch not in special_tokens
            for piece in self.compiled_pattern.findall(stretch)
        )
        merge_list = self._learn_merges(pieces, vocab_size - smallest)
        self.merges, self.vocab = {}, {i: bytes([i]) for i in range(256)}
        for pair in merge_list:
            new_id = len(self.vocab)
            self.merges[pair] = new_id
            self.vocab[new_id] = self.vocab[pair[0]] + self.vocab[pair[1]]
        self.special_tokens = {token: len(self.vocab) + i for i, token in enumerate(special_tokens)}
        self._piece_cache = {}

    def _learn_merges(self, pieces: Iterable[str], num_merges: int) -> list[tuple[int, int]]:
        """The merges, in order; merge k creates id 256 + k. Subclasses implement this."""
        raise NotImplementedError

    # ---- encoding -----------------------------------------------------------------------
    @staticmethod
    def _split_specials(text: str, special_tokens: Iterable[str]) -> list[str]:
        """`text` cut around special tokens; the longest special wins where two overlap."""
        specials = sorted(special_tokens, key=len, reverse=True)
        if not specials:
            return [text] if text else []
        pattern = "(" + "|".join(re.escape(token) for token in specials) + ")"
        return [stretch for stretch in re.split(pattern, text) if stretch]

    def _encode_piece(self, piece: str) -> list[int]:
        ids = list(piece.encode("utf-8"))
        while len(ids) >= 2:
            # the pair that was merged earliest in training goes first, exactly as in training
            pair = min(
                zip(ids, ids[1:], strict=False), key=lambda p: self.merges.get(p, sys.maxsize)
            )
            if pair not in self.merges:
                break
            ids = merge(ids, pair, self.merges[pair])
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token strings as ordinary text."""
        ids = []
        for piece in self.compiled_pattern.findall(text):
            cached = self._piece_cache.get(piece)
            if cached is None:
                cached = self._piece_cache[piece] = self._encode_piece(piece)
            ids.extend(cached)
        return ids

    def encode(self, text: str) -> list[int]:
        """Encode text; registered special tokens become their single id."""
        ids = []
        for stretch in self._split_specials(text, self.special_tokens):
            if stretch in self.special_tokens:
                ids.append(self.special_tokens[stretch])
            else:
                ids.extend(self.encode_ordinary(stretch))
        return ids

    def _safe_prefix_length(self, text: str) -> int:
        """How much of `text` encodes the same whatever text follows it.

        Held back: a possible start of a special token at the very end, and the last pre-token
        (more letters or spaces may still join it).
        """
        end = len(text)
        for token in self.special_tokens:
            for length in range(min(len(token) - 1, len(text)), 0, -1):
                if text.endswith(token[:length]):
                    end = min(end, len(text) - length)
                    break
        start = 0  # the ordinary text after the last complete special token
        if self.special_tokens:
            specials = "|".join(re.escape(t) for t in sorted(self.special_tokens, key=len)[::-1])
            for match in re.finditer(specials, text[:end]):
                start = match.end()
        piece_starts = [piece.start() for piece in self.compiled_pattern.finditer(text, start, end)]
        return piece_starts[-1] if piece_starts else start

    def encode_iterable(self, chunks: Iterable[str]) -> Iterator[int]:
        """Encode a stream of text (e.g. an open file) lazily, in constant memory.

        The result equals `encode("".join(chunks))`, however the text is cut into chunks.
        """
        buffer = ""
        for chunk in chunks:
            buffer += chunk
            cut = self._safe_prefix_length(buffer)
            if cut:
                yield from self.encode(buffer[:cut])
                buffer = buffer[cut:]
        if buffer:
            yield from self.encode(buffer)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids back to text; byte sequences that are not valid UTF-8 become U+FFFD."""
        id_to_special = {i: token.encode("utf-8") for token, i in self.special_tokens.items()}
        parts = []
        for i in ids:
            part = self.vocab.get(i) or id_to_special.get(i)
            if part is None:
                raise ValueError(
                    f"Token id {i} is not in this tokenizer (valid ids: 0 to {self.vocab_size - 1})."
                )
            parts.append(part)
        return b"".join(parts).decode("utf-8", errors="replace")

    def special_token_id(self, token: str) -> int:
        """The id of a registered special token; a clear error for an unknown one."""
        if token not in self.special_tokens:
            raise KeyError(
                f"{token!r} is not a special token of this tokenizer; it knows "
                f"{sorted(self.special_tokens)}. Pass it to train(..., special_tokens=...)."
            )
        return self.special_tokens[token]

    # ---- saving -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON (written atomically):

            {"format": "course-byte-bpe", "version": 1, "pattern": <regex>,
             "merges": [[left id, right id], ...],      # merge k creates id 256 + k
             "special_tokens": {"<|endoftext|>": id, ...}}

        The vocabulary is not stored: bytes 0..255 plus the merges rebuild it exactly.
        """
        state = {
            "format": SAVE_FORMAT,
            "version": SAVE_FORMAT_VERSION,
            "pattern": self.pattern,
            "merges": [list(pair) for pair in self.merges],
            "special_tokens": self.special_tokens,
        }
        with atomic_write(path) as file:
            json.dump(state, file)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Read a tokenizer written by `save`; clear errors for a missing or damaged file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No tokenizer file at {path}. Train one and call save().")
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if state.get("format") != SAVE_FORMAT or state.get("version") != SAVE_FORMAT_VERSION:
                raise ValueError(f"not a {SAVE_FORMAT} v{SAVE_FORMAT_VERSION} file")
            tokenizer = cls(state["pattern"])
            for left, right in state["merges"]:
                new_id = len(tokenizer.vocab)
                tokenizer.merges[(left, right)] = new_id
                tokenizer.vocab[new_id] = tokenizer.vocab[left] + tokenizer.vocab[right]
            tokenizer.special_tokens = {str(t): int(i) for t, i in state["special_tokens"].items()}
            ids = sorted(tokenizer.special_tokens.values())
            # a special id inside the byte/merge range would make a token decode as other text
            if any(i < len(tokenizer.vocab) for i in ids) or len(set(ids)) < len(ids):
                raise ValueError(
                    f"special ids {ids} must be distinct and >= {len(tokenizer.vocab)} (the bytes "
                    "and merges use the ids below)"
                )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(
                f"{path} is not a valid tokenizer file ({error}). It may be truncated or from "
                "another program: delete it and train again."
            ) from error
        return tokenizer


class NaiveBPETokenizer(Tokenizer):
    """Learns merges the plain way: after every merge, recount every pair in the whole text."""

    def _learn_merges(self, pieces: Iterable[str], num_merges: int) -> list[tuple[int, int]]:
        chunks = [list(piece.encode("utf-8")) for piece in pieces]  # every pre-token, repeats too
        vocab = {i: bytes([i]) for i in range(256)}
        merges = []
        for step in range(num_merges):
            pair_counts = Counter()
            for ids in chunks:
                pair_counts.update(zip(ids, ids[1:], strict=False))
            if not pair_counts:
                break  # every pre-token is a single token already
            pair = best_pair(pair_counts, vocab)
            new_id = 256 + step
            chunks = [merge(ids, pair, new_id) for ids in chunks]
            vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
            merges.append(pair)
        return merges


def _descending(token: bytes) -> tuple[int, ...]:
    """A key that sorts byte strings in *reverse* lexicographic order (for a min-heap).

    Flipping each byte reverses the order of differing bytes; the end marker 256 puts a
    string after every longer string that starts with it (b"ab" > b"a").
    """
    return tuple(255 - byte for byte in token) + (256,)


class BPETokenizer(Tokenizer):
    """Learns the same merges fast: count each distinct pre-token once, keep pair counts in a
    heap, and after a merge update only the pre-tokens that contained the merged pair."""

    def _learn_merges(self, pieces: Iterable[str], num_merges: int) -> list[tuple[int, int]]:
        piece_counts = Counter(pieces)
        words = [list(piece.encode("utf-8")) for piece in piece_counts]  # distinct pre-tokens
        frequency = list(piece_counts.values())
        vocab = {i: bytes([i]) for i in range(256)}
        order = {i: _descending(vocab[i]) for i in range(256)}

        pair_counts: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words holding it
        for w, ids in enumerate(words):
            for pair in zip(ids, ids[1:], strict=False):
                pair_counts[pair] += frequency[w]
                where[pair].add(w)
        # max-heap by (count, pair of byte strings); outdated entries are skipped when popped
        heap = [(-count, order[a], order[b], (a, b)) for (a, b), count in pair_counts.items()]
        heapq.heapify(heap)

        merges = []
        while heap and len(merges) < num_merges:
            negative_count, _, _, pair = heapq.heappop(heap)
            if pair_counts.get(pair) != -negative_count:
                continue  # the count changed after this entry was pushed
            new_id = 256 + len(merges)
            merges.append(pair)
            vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
            order[new_id] = _descending(vocab[new_id])

            changed = set()
            for w in where.pop(pair):
                ids = words[w]
                merged = merge(ids, pair, new_id)
                if len(merged) == len(ids):
                    continue  # an outdated entry of `where`: the pair has left this word
                for old in zip(ids, ids[1:], strict=False):
                    pair_counts[old] -= frequency[w]
                    changed.add(old)
                for new in zip(merged, merged[1:], strict=False):
                    pair_counts[new] += frequency[w]
                    changed.add(new)
                    where[new].add(w)
                words[w] = merged
            for changed_pair in changed:
                count = pair_counts[changed_pair]
                if count > 0:
                    a, b = changed_pair
                    heapq.heappush(heap, (-count, order[a], order[b], changed_pair))
                else:
                    del pair_counts[changed_pair]
        return merges
