"""Chapter 2 exercises: the reference solutions pass; stubs and typical mistakes do not."""

from __future__ import annotations

import pytest

import chapters.ch02_tokenizer.tokenizer as course
from chapters.ch02_tokenizer import exercises
from chapters.ch02_tokenizer.bpe import best_pair, merge
from chapters.course import NotRightYet


def stub(*args):
    raise NotImplementedError


@pytest.fixture
def small_course_tokenizer(monkeypatch):
    tokenizer = course.train_course_tokenizer(
        ["def f(x):\n    return x + 1\n", "The quick brown fox jumps over the lazy dog."] * 50,
        vocab_size=300,
    )
    monkeypatch.setattr(course, "ensure_tokenizer", lambda: tokenizer)
    return tokenizer


def test_merge_pair_reference_passes():
    exercises.check_merge_pair(merge)


def test_merge_pair_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_merge_pair(stub)


def test_merge_pair_that_overlaps_is_wrong():
    def overlapping(ids, pair, new_id):  # merges [7, 7, 7] into [new, new]
        out = []
        for index, value in enumerate(ids):
            if index + 1 < len(ids) and (value, ids[index + 1]) == pair:
                out.append(new_id)
            elif not (index > 0 and (ids[index - 1], value) == pair):
                out.append(value)
        return out

    with pytest.raises(NotRightYet):
        exercises.check_merge_pair(overlapping)


def test_choose_pair_reference_passes():
    exercises.check_choose_pair(best_pair)


def test_choose_pair_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_choose_pair(stub)


def test_choose_pair_comparing_ids_instead_of_bytes_is_wrong():
    with pytest.raises(NotRightYet):
        exercises.check_choose_pair(lambda counts, vocab: max(counts, key=lambda p: (counts[p], p)))


def add_special_token_reference(tokenizer, token):
    tokenizer.special_tokens[token] = tokenizer.vocab_size
    return tokenizer.special_tokens[token]


def test_add_special_token_reference_passes():
    exercises.check_add_special_token(add_special_token_reference)


def test_add_special_token_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_add_special_token(stub)


def test_add_special_token_reusing_an_existing_id_is_wrong():
    def reuse_last_byte(tokenizer, token):
        tokenizer.special_tokens[token] = 255
        return 255

    with pytest.raises(NotRightYet):
        exercises.check_add_special_token(reuse_last_byte)


def compression_ratio_reference(tokenizer, texts):
    total_bytes = sum(len(text.encode("utf-8")) for text in texts)
    return total_bytes / sum(
        len(tokenizer.encode(text, add_special_tokens=False).ids) for text in texts
    )


def test_compression_ratio_reference_passes(small_course_tokenizer):
    exercises.check_compression_ratio(compression_ratio_reference)


def test_compression_ratio_stub_is_not_solved(small_course_tokenizer):
    with pytest.raises(NotImplementedError):
        exercises.check_compression_ratio(stub)


def test_compression_ratio_counting_characters_is_wrong(small_course_tokenizer):
    def characters_per_token(tokenizer, texts):
        return sum(map(len, texts)) / sum(len(tokenizer.encode(t).ids) for t in texts)

    with pytest.raises(NotRightYet):
        exercises.check_compression_ratio(characters_per_token)
