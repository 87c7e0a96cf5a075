"""Chapter 1 exercises: the reference solutions pass, the stubs and typical mistakes do not."""

import math

import numpy as np
import pytest

from chapters.ch01_data import exercises
from chapters.ch01_data.data_pipeline import (
    QualityThresholds,
    estimate_jaccard,
    jaccard,
    minhash_signature,
    random_set_pair,
)
from chapters.course import NotRightYet


def stub(*args, **kwargs):
    raise NotImplementedError


# Exercise 1 -----------------------------------------------------------------------------


def bands_for_threshold(threshold: float, num_perm: int) -> tuple[int, int]:
    pairs = [
        (bands, rows)
        for bands in range(1, num_perm + 1)
        for rows in range(1, num_perm // bands + 1)
        if bands * rows >= num_perm / 2
    ]
    return min(pairs, key=lambda pair: abs((1 / pair[0]) ** (1 / pair[1]) - threshold))


def bands_and_rows_swapped(threshold: float, num_perm: int) -> tuple[int, int]:
    bands, rows = bands_for_threshold(threshold, num_perm)
    return rows, bands


def too_many_values(threshold: float, num_perm: int) -> tuple[int, int]:
    return num_perm, 2


def test_bands_reference_passes():
    exercises.check_bands_for_threshold(bands_for_threshold)


@pytest.mark.parametrize("wrong", [bands_and_rows_swapped, too_many_values])
def test_bands_wrong_answers_fail(wrong):
    with pytest.raises(NotRightYet):
        exercises.check_bands_for_threshold(wrong)


def test_bands_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_bands_for_threshold(stub)


# Exercise 2 -----------------------------------------------------------------------------


def is_mostly_comments(text: str, limits: QualityThresholds) -> bool:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if not lines:
        return False
    return sum(line.startswith("#") for line in lines) > 0.8 * len(lines)


def counts_blank_lines(text: str, limits: QualityThresholds) -> bool:
    lines = text.split("\n")
    return sum(line.strip().startswith("#") for line in lines) > 0.8 * len(lines)


def no_strip(text: str, limits: QualityThresholds) -> bool:
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return False
    return sum(line.startswith("#") for line in lines) > 0.8 * len(lines)


def test_comments_reference_passes():
    exercises.check_mostly_comments(is_mostly_comments)


@pytest.mark.parametrize("wrong", [counts_blank_lines, no_strip])
def test_comments_wrong_answers_fail(wrong):
    with pytest.raises(NotRightYet):
        exercises.check_mostly_comments(wrong)


def test_comments_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_mostly_comments(stub)


# Exercise 3 -----------------------------------------------------------------------------


def minhash_rms_error(similarity: float, num_perm: int, trials: int = 100, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    squared = []
    for trial in range(trials):
        first, second = random_set_pair(200, similarity, rng)
        estimate = estimate_jaccard(
            minhash_signature(first, num_perm, seed=trial),
            minhash_signature(second, num_perm, seed=trial),
        )
        squared.append((estimate - jaccard(first, second)) ** 2)
    return math.sqrt(sum(squared) / trials)


def mean_signed_error(similarity: float, num_perm: int, trials: int = 100, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    errors = []
    for trial in range(trials):
        first, second = random_set_pair(200, similarity, rng)
        estimate = estimate_jaccard(
            minhash_signature(first, num_perm, seed=trial),
            minhash_signature(second, num_perm, seed=trial),
        )
        errors.append(estimate - jaccard(first, second))
    return abs(sum(errors) / trials)


def test_error_reference_passes():
    exercises.check_minhash_rms_error(minhash_rms_error)


def test_error_wrong_answer_fails():
    with pytest.raises(NotRightYet):
        exercises.check_minhash_rms_error(mean_signed_error)


def test_error_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_minhash_rms_error(stub)
