"""Chapter 2: the from-scratch byte-level BPE family (bpe.py)."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as LibraryTokenizer
from tokenizers import decoders, models, pre_tokenizers

from chapters.ch02_tokenizer.bpe import (
    GPT2_SPLIT_PATTERN,
    BPETokenizer,
    NaiveBPETokenizer,
    Tokenizer,
    best_pair,
    merge,
)
from chapters.ch02_tokenizer.tokenizer import SPECIAL_TOKENS, byte_to_unicode

TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog. def add(a, b):\n    return a + b\n"
    "Los niños comen pan 🍞 y beben café ☕. <|endoftext|>El zorro marrón salta.\n"
) * 20


@pytest.fixture(scope="module")
def trained() -> BPETokenizer:
    tokenizer = BPETokenizer()
    tokenizer.train(TRAINING_TEXT, vocab_size=400, special_tokens=SPECIAL_TOKENS)
    return tokenizer


def test_textbook_example_learns_the_hand_worked_merges():
    tokenizer = NaiveBPETokenizer()
    tokenizer.train("aaabdaaabac", vocab_size=260)
    learned = [(tokenizer.vocab[a], tokenizer.vocab[b]) for a, b in tokenizer.merges]
    assert learned == [(b"a", b"a"), (b"aa", b"a"), (b"aaa", b"b"), (b"d", b"aaab")]


def test_merge_replaces_overlapping_pairs_left_to_right():
    assert merge([5, 5, 5, 6], (5, 5), 256) == [256, 5, 6]
    assert merge([5, 5, 5, 5], (5, 5), 256) == [256, 256]


def test_best_pair_breaks_ties_by_bytes_not_ids():
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"za", 257: b"ab"}
    assert best_pair({(256, 97): 3, (257, 97): 3}, vocab) == (256, 97)
    assert best_pair({(97, 97): 2, (97, 257): 2}, vocab) == (97, 257)  # b"ab" > b"a"


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from("ab c\n.é'"), max_size=120),
    extra_merges=st.integers(0, 40),
)
def test_naive_and_efficient_trainers_learn_the_same_merges(text, extra_merges):
    naive, fast = NaiveBPETokenizer(), BPETokenizer()
    naive.train(text, vocab_size=256 + extra_merges)
    fast.train(text, vocab_size=256 + extra_merges)
    assert fast.merges == naive.merges


def test_naive_and_efficient_trainers_agree_on_real_text_with_specials():
    naive, fast = NaiveBPETokenizer(), BPETokenizer()
    naive.train(TRAINING_TEXT, vocab_size=330, special_tokens=SPECIAL_TOKENS)
    fast.train(TRAINING_TEXT, vocab_size=330, special_tokens=SPECIAL_TOKENS)
    assert fast.merges == naive.merges and fast.special_tokens == naive.special_tokens


def test_special_tokens_are_never_merged_across(trained):
    assert not any(b"endoftext" in token for token in trained.vocab.values())


@pytest.mark.parametrize(
    "text",
    [
        "plain ASCII text, with punctuation!",
        "Unicode: naïve café, Ελληνικά, 東京, עברית",
        "emoji 🤖👍🏽🇫🇷 and a zero-width joiner 👩‍💻",
        "",
        "   leading and trailing spaces\n\n\t  ",
        "<|user|>hi<|assistant|>hello<|endoftext|><|pad|><|pad|>",
        "<|endoftext|",  # a special token cut short is ordinary text
    ],
)
def test_decode_inverts_encode(trained, text):
    assert trained.decode(trained.encode(text)) == text


def test_special_tokens_encode_to_their_single_id(trained):
    ids = trained.encode("a<|endoftext|>b")
    assert ids.count(trained.special_token_id("<|endoftext|>")) == 1
    assert trained.special_token_id("<|endoftext|>") not in trained.encode_ordinary(
        "a<|endoftext|>b"
    )


def test_overlapping_special_tokens_prefer_the_longest():
    tokenizer = BPETokenizer()
    specials = ["<|endoftext|>", "<|endoftext|><|endoftext|>"]
    tokenizer.train("some text " * 10, vocab_size=270, special_tokens=specials)
    double, single = tokenizer.special_tokens[specials[1]], tokenizer.special_tokens[specials[0]]
    text = "x<|endoftext|><|endoftext|>y<|endoftext|>"
    ids = tokenizer.encode(text)
    assert ids.count(double) == 1 and ids.count(single) == 1
    assert tokenizer.decode(ids) == text


def test_decode_replaces_invalid_utf8_with_the_replacement_character(trained):
    robot = trained.encode("🤖")
    assert trained.decode(robot[:1]) == "\ufffd"
    assert trained.decode([0xFF]) == "\ufffd"


@settings(max_examples=80, deadline=None)
@given(text=st.text(st.characters(exclude_categories=("Cs", "Co", "Cn")), max_size=80))
def test_pre_tokenization_matches_the_library_gpt2_pattern(text):
    library = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    decoder = decoders.ByteLevel()
    theirs = [decoder.decode([piece]) for piece, _ in library.pre_tokenize_str(text)]
    assert __import__("re").findall(GPT2_SPLIT_PATTERN, text) == theirs


def _as_library_tokenizer(tokenizer: Tokenizer) -> LibraryTokenizer:
    to_char = byte_to_unicode()
    as_text = {i: "".join(to_char[b] for b in token) for i, token in tokenizer.vocab.items()}
    model = models.BPE(
        vocab={text: i for i, text in as_text.items()},
        merges=[(as_text[a], as_text[b]) for a, b in tokenizer.merges],
    )
    library = LibraryTokenizer(model)
    library.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return library


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("The quick fox dog éñ☕🍞 .,\n(a+b)"), max_size=200))
def test_encoder_matches_the_library_bpe_model_given_the_same_merges(trained, text):
    library = _as_library_tokenizer(trained)
    assert trained.encode_ordinary(text) == library.encode(text).ids


def test_encode_iterable_matches_encode_on_a_file_larger_than_the_read_buffer(trained, tmp_path):
    rng = random.Random(0)
    words = ["the", " fox", "  ", "\n", "café", "🍞", "<|endoftext|>", "<|pad|>", "ab", "'s", "12"]
    text = "".join(rng.choice(words) for _ in range(20_000))
    path = tmp_path / "large.txt"
    path.write_text(text, encoding="utf-8")
    read_buffer = 1000  # characters per read, far smaller than the file
    assert len(text) > 10 * read_buffer
    with open(path, encoding="utf-8") as file:
        streamed = list(trained.encode_iterable(iter(lambda: file.read(read_buffer), "")))
    assert streamed == trained.encode(text)


@settings(max_examples=60, deadline=None)
@given(
    text=st.lists(
        st.sampled_from([*"ab é🍞\n'", "<|endoftext|>", "<|", "<|pad|>"]), max_size=40
    ).map("".join),
    cuts=st.lists(st.integers(0, 200), max_size=6),
)
def test_encode_iterable_does_not_depend_on_where_the_text_is_cut(trained, text, cuts):
    cuts = sorted(cut for cut in cuts if cut <= len(text))
    chunks = [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert list(trained.encode_iterable(chunks)) == trained.encode(text)


def test_save_and_load_round_trip(trained, tmp_path):
    trained.save(tmp_path / "bpe.json")
    loaded = BPETokenizer.load(tmp_path / "bpe.json")
    assert loaded.merges == trained.merges
    assert loaded.vocab == trained.vocab
    assert loaded.special_tokens == trained.special_tokens
    assert loaded.encode(TRAINING_TEXT) == trained.encode(TRAINING_TEXT)


@pytest.mark.parametrize("special_id", [104, 256, "duplicate"])
def test_loading_a_special_id_that_collides_with_a_byte_or_a_merge_is_refused(
    trained, tmp_path, special_id
):
    trained.save(tmp_path / "bpe.json")
    state = json.loads((tmp_path / "bpe.json").read_text())
    if special_id == "duplicate":
        first, second, *_ = state["special_tokens"]
        state["special_tokens"][second] = state["special_tokens"][first]
    else:  # 104 is the byte "h": <|endoftext|> would then encode as h
        state["special_tokens"]["<|endoftext|>"] = special_id
    (tmp_path / "bpe.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="must be distinct and >="):
        BPETokenizer.load(tmp_path / "bpe.json")


def test_vocabulary_smaller_than_bytes_plus_specials_is_rejected():
    with pytest.raises(ValueError, match="too small"):
        BPETokenizer().train(
            "text", vocab_size=256 + len(SPECIAL_TOKENS) - 1, special_tokens=SPECIAL_TOKENS
        )


def test_unknown_special_token_is_a_clear_error(trained):
    with pytest.raises(KeyError, match="not a special token"):
        trained.special_token_id("<|tool|>")


def test_decoding_an_unknown_id_is_a_clear_error(trained):
    with pytest.raises(ValueError, match="not in this tokenizer"):
        trained.decode([trained.vocab_size])


def test_loading_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No tokenizer file"):
        BPETokenizer.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"format": "something else"}),
        json.dumps({"format": "course-byte-bpe", "version": 1}),
    ],
)
def test_loading_a_corrupt_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bpe.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid tokenizer file"):
        BPETokenizer.load(path)
