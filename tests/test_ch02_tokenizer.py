"""Chapter 2: the course tokenizer (`tokenizers` library) and the token shards."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chapters.ch02_tokenizer.tokenizer as course
from chapters.ch02_tokenizer.tokenizer import (
    ASSISTANT_ID,
    DEFAULT_VOCAB_SIZE,
    EOT_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    USER_ID,
    decode_ids,
    ensure_token_shards,
    ensure_tokenizer,
    load_tokenizer,
    load_tokens,
    token_bytes,
    tokenizer_path,
    train_course_tokenizer,
)


def small_corpus(seed: int, documents: int) -> list[str]:
    rng = random.Random(seed)
    words = ["def", " return", " self", " the", " model", " café", "\n    ", " 42", "(x)", "🍞"]
    return [
        "".join(rng.choice(words) for _ in range(rng.randrange(5, 60))) for _ in range(documents)
    ]


@pytest.fixture(scope="module")
def small_tokenizer():
    return train_course_tokenizer(small_corpus(0, 200), vocab_size=400)


@pytest.fixture
def fake_corpus(monkeypatch, tmp_path):
    """A fresh artifacts folder and a small corpus in place of chapter 1's."""
    monkeypatch.setenv("LLM_COURSE_ARTIFACTS", str(tmp_path))
    splits = {"train": small_corpus(1, 120), "validation": small_corpus(2, 15)}
    monkeypatch.setattr(course, "corpus_texts", lambda split: iter(splits[split]))
    return splits


def test_special_tokens_have_the_ids_the_model_code_expects(small_tokenizer):
    assert SPECIAL_TOKENS == ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>"]
    ids = [small_tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
    assert ids == [EOT_ID, PAD_ID, USER_ID, ASSISTANT_ID] == [0, 1, 2, 3]


def test_default_vocabulary_size_is_4096():
    assert DEFAULT_VOCAB_SIZE == 4096


def test_every_byte_is_in_the_vocabulary(small_tokenizer):
    single_bytes = {token for token in token_bytes(small_tokenizer).values() if len(token) == 1}
    assert single_bytes == {bytes([b]) for b in range(256)}


@settings(max_examples=80, deadline=None)
@given(text=st.text(max_size=100))
def test_decode_inverts_encode(small_tokenizer, text):
    ids = small_tokenizer.encode(text, add_special_tokens=False).ids
    assert small_tokenizer.decode(ids, skip_special_tokens=False) == text


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=60))
def test_token_bytes_spell_the_utf8_of_the_text(small_tokenizer, text):
    table = token_bytes(small_tokenizer)
    ids = small_tokenizer.encode(text, add_special_tokens=False).ids
    assert b"".join(table[i] for i in ids) == text.encode("utf-8")


def test_special_tokens_in_text_become_single_ids(small_tokenizer):
    ids = small_tokenizer.encode("<|user|>hi<|assistant|>yo<|endoftext|>").ids
    assert [i for i in ids if i < len(SPECIAL_TOKENS)] == [USER_ID, ASSISTANT_ID, EOT_ID]


def test_vocabulary_smaller_than_bytes_plus_specials_is_rejected():
    with pytest.raises(ValueError, match="too small"):
        train_course_tokenizer(["some text"], vocab_size=256 + len(SPECIAL_TOKENS) - 1)


@pytest.mark.parametrize("texts", [[], [""]])
def test_training_on_no_text_is_an_error(texts):
    with pytest.raises(ValueError, match="got no text"):
        train_course_tokenizer(texts, vocab_size=300)


@pytest.mark.parametrize("bad_id", [4096, 10**6, -1])
def test_decode_ids_refuses_ids_outside_the_vocabulary(small_tokenizer, bad_id):
    assert small_tokenizer.decode([bad_id if bad_id >= 0 else 0]) in ("", "<|endoftext|>")
    with pytest.raises(ValueError, match="outside this tokenizer's vocabulary"):
        decode_ids(small_tokenizer, [5, bad_id])
    ids = small_tokenizer.encode("def f(x):", add_special_tokens=False).ids
    assert decode_ids(small_tokenizer, ids) == "def f(x):"


def test_loading_a_tokenizer_with_a_vocabulary_the_course_cannot_use_is_refused(
    small_tokenizer, tmp_path
):
    path = tmp_path / "tokenizer.json"
    path.write_text(small_tokenizer.to_str(), encoding="utf-8")
    size = small_tokenizer.get_vocab_size()
    assert load_tokenizer(path, vocab_size=size).get_vocab_size() == size
    with pytest.raises(ValueError, match=f"vocabulary of {size} tokens, expected 4096"):
        load_tokenizer(path, vocab_size=4096)
    state = json.loads(path.read_text(encoding="utf-8"))
    state["model"]["vocab"]["huge"] = 70_000  # an id beyond what the uint16 shards hold
    path.write_text(json.dumps(state), encoding="utf-8")
    with pytest.raises(ValueError, match="expected between 260 and 65536"):
        load_tokenizer(path)


def test_loading_a_missing_tokenizer_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ensure_tokenizer"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_ensure_tokenizer_reports_a_corrupt_file(fake_corpus):
    tokenizer_path().write_text('{"version": "1.0", "model": {', encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid tokenizer file"):
        ensure_tokenizer()


def test_ensure_tokenizer_trains_saves_and_then_reloads(fake_corpus):
    first = ensure_tokenizer()
    assert tokenizer_path().is_file()
    second = ensure_tokenizer()
    assert second.to_str() == first.to_str()
    assert second.token_to_id("<|endoftext|>") == EOT_ID


def test_token_shards_hold_each_document_followed_by_end_of_text(fake_corpus):
    tokenizer = ensure_tokenizer()
    for split, documents in fake_corpus.items():
        expected = [
            i
            for text in documents
            for i in [*tokenizer.encode(text, add_special_tokens=False).ids, EOT_ID]
        ]
        tokens = load_tokens(split)
        assert tokens.dtype == np.uint16
        assert tokens.tolist() == expected


def test_token_shards_are_read_only_memmaps(fake_corpus):
    tokens = load_tokens("train")
    assert isinstance(tokens, np.memmap) and not tokens.flags.writeable


def test_meta_json_records_counts_ids_and_the_tokenizer(fake_corpus):
    folder = ensure_token_shards()
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    assert meta["dtype"] == "uint16"
    assert meta["special_ids"] == dict(zip(SPECIAL_TOKENS, range(4), strict=True))
    assert meta["documents"] == {split: len(docs) for split, docs in fake_corpus.items()}
    assert meta["tokens"]["train"] == len(load_tokens("train"))
    assert meta["tokenizer_sha256"] == course.sha256_of(tokenizer_path())


def test_shards_are_rebuilt_when_the_tokenizer_changes(fake_corpus, monkeypatch):
    before = load_tokens("train").tolist()
    retrained = train_course_tokenizer(fake_corpus["train"], vocab_size=300)
    tokenizer_path().write_text(retrained.to_str(), encoding="utf-8")
    after = load_tokens("train").tolist()
    assert len(after) > len(before)  # a smaller vocabulary needs more tokens


def test_load_tokens_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="split must be one of"):
        load_tokens("test")


FORGED = ["<|user|>", "<|assistant|>", "<|endoftext|>", "<|pad|>", "a<|user|>b", "<|<|user|>|>"]


@settings(max_examples=60, deadline=None)
@given(pieces=st.lists(st.sampled_from(FORGED) | st.text(max_size=8), max_size=8))
def test_encode_text_never_produces_a_special_id_and_keeps_the_text(small_tokenizer, pieces):
    text = "".join(pieces)
    ids = course.encode_text(small_tokenizer, text)
    assert not [i for i in ids if i < len(SPECIAL_TOKENS)]
    assert small_tokenizer.decode(ids, skip_special_tokens=False) == text
    assert small_tokenizer.encode_special_tokens is False  # the switch is put back


def test_a_document_quoting_a_special_token_is_one_document_in_the_shards(small_tokenizer):
    documents = ['tokens = ["<|endoftext|>", "<|user|>"]', "second"]
    encoded = list(course.encode_documents(small_tokenizer, documents))
    assert [int((ids == EOT_ID).sum()) for ids in encoded] == [1, 1]
    assert [int(ids[-1]) for ids in encoded] == [EOT_ID, EOT_ID]
    assert not [i for ids in encoded for i in ids[:-1] if i < len(SPECIAL_TOKENS)]


def test_encode_text_refuses_what_is_not_text(small_tokenizer):
    with pytest.raises(TypeError, match="expects a str"):
        course.encode_text(small_tokenizer, b"bytes")


def test_a_lone_surrogate_is_named_not_a_library_type_error(small_tokenizer):
    with pytest.raises(ValueError, match="lone surrogate '\\\\ud800' at index 1"):
        course.encode_text(small_tokenizer, "a\ud800b")
