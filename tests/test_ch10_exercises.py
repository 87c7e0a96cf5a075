"""Chapter 10's exercise checks, both ways: the reference passes, a stub and a wrong answer
fail with the messages a student sees."""

from __future__ import annotations

import math
import random

import pytest

from chapters.ch10_evaluation import exercises
from chapters.ch10_evaluation.evaluation import MultipleChoiceItem
from chapters.course import NotRightYet


def reference_sum_items(n_items: int, seed: int = 0) -> list[MultipleChoiceItem]:
    rng = random.Random(seed)
    items = []
    for index in range(n_items):
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        wrong = rng.sample([v for v in range(0, 99) if v != a + b], 3)
        choices = [f" {v}" for v in [a + b, *wrong]]
        rng.shuffle(choices)
        items.append(
            MultipleChoiceItem(
                f"sum-{index}", "sum", f"{a} + {b} =", choices, choices.index(f" {a + b}")
            )
        )
    return items


def always_first_sum_items(n_items: int, seed: int = 0) -> list[MultipleChoiceItem]:
    return [
        MultipleChoiceItem(
            f"sum-{i}", "sum", f"{i} + 1 =", [f" {i + 1}", " 100", " 101", " 102"], 0
        )
        for i in range(n_items)
    ]


def off_by_one_sum_items(n_items: int, seed: int = 0) -> list[MultipleChoiceItem]:
    items = reference_sum_items(n_items, seed)
    for item in items:
        item.answer = (item.answer + 1) % 4
    return items


def reference_pick(loglikelihoods, choices, normalised):
    scores = [
        ll / len(c.encode("utf-8")) if normalised else ll
        for ll, c in zip(loglikelihoods, choices, strict=True)
    ]
    return max(range(len(scores)), key=scores.__getitem__)


def per_character_pick(loglikelihoods, choices, normalised):
    scores = [
        ll / len(c) if normalised else ll for ll, c in zip(loglikelihoods, choices, strict=True)
    ]
    return max(range(len(scores)), key=scores.__getitem__)


def never_normalised_pick(loglikelihoods, choices, normalised):
    return max(range(len(loglikelihoods)), key=loglikelihoods.__getitem__)


def reference_items_needed(accuracy, half_width):
    return math.ceil(1.96**2 * accuracy * (1 - accuracy) / half_width**2)


def square_root_forgotten(accuracy, half_width):
    return math.ceil(1.96 * math.sqrt(accuracy * (1 - accuracy)) / half_width)


def stub(*args):
    raise NotImplementedError


def test_reference_sum_items_pass():
    exercises.check_sum_items(reference_sum_items)


def test_sum_items_with_the_answer_always_first_fail():
    with pytest.raises(NotRightYet, match="same one or two positions"):
        exercises.check_sum_items(always_first_sum_items)


def test_sum_items_pointing_at_a_wrong_choice_fail():
    with pytest.raises(NotRightYet, match="answer index points at"):
        exercises.check_sum_items(off_by_one_sum_items)


def test_reference_pick_passes():
    exercises.check_pick(reference_pick)


def test_pick_that_never_normalises_fails():
    with pytest.raises(NotRightYet, match="normalised"):
        exercises.check_pick(never_normalised_pick)


def test_pick_that_counts_characters_fails():
    with pytest.raises(NotRightYet, match="UTF-8 bytes"):
        exercises.check_pick(per_character_pick)


def test_reference_items_needed_passes():
    exercises.check_items_needed(reference_items_needed)


def test_items_needed_without_the_square_fails():
    with pytest.raises(NotRightYet, match="round up"):
        exercises.check_items_needed(square_root_forgotten)


@pytest.mark.parametrize(
    "check", [exercises.check_sum_items, exercises.check_pick, exercises.check_items_needed]
)
def test_stubs_are_reported_as_not_implemented(check):
    with pytest.raises(NotImplementedError):
        check(stub)
