# Generated from chapters/ch02_tokenizer/ch02_tokenizer.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""The course tokenizer: byte-level BPE trained with the `tokenizers` library, and the token
shards that pre-training reads.

    SPECIAL_TOKENS, EOT_ID, PAD_ID, USER_ID, ASSISTANT_ID, DEFAULT_VOCAB_SIZE
    train_course_tokenizer(texts, vocab_size) -> tokenizers.Tokenizer
    ensure_tokenizer() -> tokenizers.Tokenizer        # artifacts/ch02/tokenizer.json
    load_tokenizer(path) -> tokenizers.Tokenizer      # clear errors for missing/corrupt files
    decode_ids(tokenizer, ids) -> str                 # decode, refusing ids outside the vocabulary
    encode_text(tokenizer, text) -> list[int]         # text as text: never a special id
    token_bytes(tokenizer) -> dict[int, bytes]        # the exact bytes behind every id
    ensure_token_shards() -> Path                     # train.bin, validation.bin, meta.json
    load_tokens(split) -> np.memmap                   # uint16, read-only
"""

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm

from chapters.course import artifacts_dir, atomic_write, sha256_of

# The ids are part of the contract with the model chapters: keep this order.
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>"]
EOT_ID, PAD_ID, USER_ID, ASSISTANT_ID = 0, 1, 2, 3
DEFAULT_VOCAB_SIZE = 4096
SPLITS = ("train", "validation")
SHARD_DTYPE = np.uint16  # 2 bytes per token: enough for any vocabulary up to 65,536


def corpus_texts(split: str) -> Iterator[str]:
    """The clean documents of chapter 1's `split` ("train" or "validation") as strings: the
    only place this chapter reads the corpus."""
    from chapters.ch01_data.data_pipeline import iter_split

    for document in iter_split(split):
        yield document.text


def train_course_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE
) -> tokenizers.Tokenizer:
    """Train a byte-level BPE tokenizer (GPT-2 pre-tokenization) on `texts`.

    The special tokens get ids 0..3 in the order of SPECIAL_TOKENS; the 256 byte symbols are
    always in the vocabulary, so any text encodes and decodes back exactly.
    """
    smallest = 256 + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: 256 bytes plus {len(SPECIAL_TOKENS)} "
            f"special tokens need at least {smallest}."
        )
    if vocab_size > np.iinfo(SHARD_DTYPE).max + 1:
        raise ValueError(f"vocab_size={vocab_size} does not fit the uint16 token shards.")
    tokenizer = tokenizers.Tokenizer(models.BPE())
    # add_prefix_space=False keeps decode(encode(s)) == s; use_regex applies GPT-2's pattern
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    seen = {"characters": 0}

    def counted(texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            seen["characters"] += len(text)
            yield text

    tokenizer.train_from_iterator(counted(texts), trainer=trainer)
    if seen["characters"] == 0:
        raise ValueError(
            "train_course_tokenizer got no text: the iterable was empty (or held only empty "
            "strings). Pass the documents to learn merges from, e.g. corpus_texts('train')."
        )
    check_special_ids(tokenizer)
    return tokenizer


def check_special_ids(tokenizer: tokenizers.Tokenizer) -> None:
    """Raise if the special tokens do not have the ids the model chapters expect."""
    for expected, token in enumerate(SPECIAL_TOKENS):
        actual = tokenizer.token_to_id(token)
        if actual != expected:
            raise ValueError(
                f"The tokenizer maps {token!r} to id {actual}, but the course expects {expected}. "
                "Train it with train_course_tokenizer so that the special tokens come first."
            )


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a visible character (the library stores
    tokens in this form, e.g. a space is "Ġ"). Printable bytes map to themselves, the rest
    to the characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    others = [b for b in range(256) if b not in printable]
    return {
        **{b: chr(b) for b in printable},
        **{b: chr(256 + k) for k, b in enumerate(others)},
    }


def token_bytes(tokenizer: tokenizers.Tokenizer) -> dict[int, bytes]:
    """Every id of a byte-level tokenizer with the exact bytes it stands for."""
    unicode_to_byte = {c: b for b, c in byte_to_unicode().items()}
    added = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    return {
        i: token.encode("utf-8") if token in added else bytes(unicode_to_byte[c] for c in token)
        for token, i in tokenizer.get_vocab().items()
    }


def tokenizer_path() -> Path:
    return artifacts_dir("ch02") / "tokenizer.json"


def load_tokenizer(path: str | Path, vocab_size: int | None = None) -> tokenizers.Tokenizer:
    """Load a `tokenizer.json`; clear errors for a missing or damaged file, and for one whose
    vocabulary does not fit the course (the special tokens, 256 bytes, uint16 shards) or is not
    `vocab_size`, if given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No tokenizer at {path}. Run ensure_tokenizer() (chapter 2) to train and save it."
        )
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as error:  # the library raises a bare Exception for bad JSON
        raise ValueError(
            f"{path} is not a valid tokenizer file ({error}). It may be truncated or from an "
            "incompatible version: delete it and run ensure_tokenizer() to train it again."
        ) from error
    check_special_ids(tokenizer)
    size = max(tokenizer.get_vocab().values()) + 1  # ids run 0..size-1; the shards store them
    smallest, largest = 256 + len(SPECIAL_TOKENS), 1 << 16
    if not smallest <= size <= largest or (vocab_size is not None and size != vocab_size):
        wanted = vocab_size if vocab_size is not None else f"between {smallest} and {largest}"
        raise ValueError(
            f"{path} has a vocabulary of {size} tokens, expected {wanted}. It is not the course "
            "tokenizer: delete it and run ensure_tokenizer() to train it again."
        )
    return tokenizer


def decode_ids(
    tokenizer: tokenizers.Tokenizer, ids: Iterable[int], skip_special_tokens: bool = True
) -> str:
    """`tokenizer.decode(ids)`, but an id outside the vocabulary is an error: the library
    silently drops it (decode([4096]) is '')."""
    ids = [int(i) for i in ids]
    size = tokenizer.get_vocab_size()
    if bad := [i for i in ids if not 0 <= i < size]:
        raise ValueError(
            f"token ids {bad[:5]} are outside this tokenizer's vocabulary [0, {size}); were they "
            "produced by a model with a larger vocabulary?"
        )
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def ensure_tokenizer() -> tokenizers.Tokenizer:
    """The course tokenizer: loaded from artifacts/ch02/tokenizer.json, or trained on
    chapter 1's training split and saved there first."""
    path = tokenizer_path()
    if path.is_file():
        return load_tokenizer(path)
    texts = tqdm(corpus_texts("train"), desc="training the tokenizer", unit=" docs")
    tokenizer = train_course_tokenizer(texts)
    with atomic_write(path) as file:
        file.write(tokenizer.to_str())
    return tokenizer


@contextmanager
def ordinary_text(tokenizer: tokenizers.Tokenizer) -> Iterator[tokenizers.Tokenizer]:
    """Within the block, `tokenizer` encodes special-token strings as ordinary text.

    A stand-in without the library's switch (the tests' character tokenizers) has no
    special-token matching to turn off and is used as it is."""
    if not hasattr(tokenizer, "encode_special_tokens"):
        yield tokenizer
        return
    previous = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True
    try:
        yield tokenizer
    finally:
        tokenizer.encode_special_tokens = previous


def lone_surrogate_at(text: str) -> int | None:
    """Index of the first code point of `text` that has no UTF-8 bytes (a lone surrogate, which
    a JSON escape such as "\\ud800" can produce), or None when every character encodes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def encode_text(tokenizer: tokenizers.Tokenizer, text: str) -> list[int]:
    """Token ids of `text` read as text: a literal "<|user|>" becomes the tokens that spell it,
    never USER_ID. Special ids are placed by the caller (chapter 8's chat template)."""
    if not isinstance(text, str):
        raise TypeError(f"encode_text expects a str, got {type(text).__name__}.")
    if (index := lone_surrogate_at(text)) is not None:  # the library's error: "must be str"
        raise ValueError(
            f"the text holds a lone surrogate {text[index]!r} at index {index}, "
            "which is not a character and has no UTF-8 bytes; it usually comes from a JSON "
            'escape such as "\\ud800" or from decoding with errors="surrogateescape". '
            'Clean it first, e.g. text.encode("utf-8", "replace").decode("utf-8").'
        ) from None
    with ordinary_text(tokenizer):
        return tokenizer.encode(text, add_special_tokens=False).ids


def encode_documents(
    tokenizer: tokenizers.Tokenizer, texts: Iterable[str], batch_size: int = 256
) -> Iterator[np.ndarray]:
    """Each document's token ids followed by EOT_ID, as a uint16 array. Documents are encoded
    in batches because the library spreads a batch over all cores."""

    def encode(batch: list[str]) -> Iterator[np.ndarray]:
        with ordinary_text(tokenizer):  # a document that quotes "<|endoftext|>" stays one document
            encodings = tokenizer.encode_batch(batch, add_special_tokens=False)
        for encoding in encodings:
            yield np.array([*encoding.ids, EOT_ID], dtype=SHARD_DTYPE)

    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield from encode(batch)
            batch = []
    yield from encode(batch)


def _shards_are_current(folder: Path, tokenizer_sha256: str) -> bool:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        sizes_match = all(
            (folder / f"{split}.bin").stat().st_size
            == meta["tokens"][split] * np.dtype(SHARD_DTYPE).itemsize
            for split in SPLITS
        )
    except (ValueError, KeyError, OSError):
        return False
    return (
        sizes_match
        and meta.get("tokenizer_sha256") == tokenizer_sha256
        and meta.get("special_tokens_in_text") == "ordinary"  # shards from before encode_text
    )


def ensure_token_shards() -> Path:
    """Folder with `train.bin` and `validation.bin` (flat uint16 token ids, every document
    followed by EOT_ID) and `meta.json`; built from chapter 1's splits if absent or stale."""
    tokenizer = ensure_tokenizer()
    folder = artifacts_dir("ch02")
    tokenizer_sha256 = sha256_of(tokenizer_path())
    if _shards_are_current(folder, tokenizer_sha256):
        return folder
    (folder / "meta.json").unlink(missing_ok=True)  # from here on, the old shards are invalid
    tokens, documents = {}, {}
    for split in SPLITS:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{split}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                tokens[split] = documents[split] = 0
                texts = tqdm(corpus_texts(split), desc=f"encoding {split}", unit=" docs")
                for ids in encode_documents(tokenizer, texts):
                    ids.tofile(file)
                    tokens[split] += len(ids)
                    documents[split] += 1
            os.replace(temporary, folder / f"{split}.bin")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    meta = {
        "vocab_size": tokenizer.get_vocab_size(),
        "dtype": np.dtype(SHARD_DTYPE).name,
        "tokens": tokens,
        "documents": documents,
        "special_ids": {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS},
        "tokenizer_sha256": tokenizer_sha256,
        "special_tokens_in_text": "ordinary",  # see ordinary_text
    }
    with atomic_write(folder / "meta.json") as file:  # written last: marks the shards complete
        json.dump(meta, file, indent=2)
    return folder


def load_tokens(split: str) -> np.memmap:
    """The token ids of `split` ("train" or "validation") as a read-only uint16 memmap."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}.")
    folder = ensure_token_shards()
    return np.memmap(folder / f"{split}.bin", dtype=SHARD_DTYPE, mode="r")
