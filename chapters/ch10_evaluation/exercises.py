"""Checks for chapter 10's exercises. Each `check_...` raises NotRightYet with a hint when
the answer is wrong, lets NotImplementedError through for a stub, and returns None when
the exercise is solved."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from chapters.ch10_evaluation.evaluation import EvaluationError, MultipleChoiceItem, choose
from chapters.course import NotRightYet

SUM_CONTEXT = re.compile(r"^(\d+) \+ (\d+) =$")


def check_sum_items(sum_items: Callable[[int, int], list]) -> None:
    """Exercise 1: well-formed "a + b =" items with the right answer, not always in one slot."""
    items = sum_items(40, 0)
    if not isinstance(items, list) or len(items) != 40:
        raise NotRightYet("sum_items(40) should return a list of 40 items")
    positions = set()
    for item in items:
        # judged by its fields, not its class: the notebook defines its own MultipleChoiceItem
        if not all(hasattr(item, name) for name in MultipleChoiceItem.__dataclass_fields__):
            raise NotRightYet(
                "each item should be a MultipleChoiceItem (id, task, context, choices, answer), "
                f"got {type(item).__name__}"
            )
        try:
            item.validate()
        except EvaluationError as error:
            raise NotRightYet(f"an item is malformed: {error}") from error
        match = SUM_CONTEXT.match(item.context)
        if match is None:
            raise NotRightYet(f"context should look like '3 + 4 =', got {item.context!r}")
        a, b = map(int, match.groups())
        if not (0 <= a <= 49 and 0 <= b <= 49):
            raise NotRightYet(f"a and b should be between 0 and 49, got {a} and {b}")
        if len(item.choices) != 4 or not all(re.fullmatch(r" \d+", c) for c in item.choices):
            raise NotRightYet(f"four choices like ' 7' are needed, got {item.choices!r}")
        if item.choices[item.answer] != f" {a + b}":
            raise NotRightYet(
                f"for {item.context!r} the answer index points at {item.choices[item.answer]!r}, "
                f"not ' {a + b}'"
            )
        positions.add(item.answer)
    if len(positions) < 3:
        raise NotRightYet(
            "the right answer sits in the same one or two positions every time; shuffle the "
            "choices, or a model that always picks that slot looks clever"
        )
    if len({item.id for item in items}) != len(items):
        raise NotRightYet("item ids must be unique")


def check_pick(pick: Callable[[list, list, bool], int]) -> None:
    """Exercise 2: raw and per-byte normalised choice agree with the module's `choose`."""
    # A long fitting choice loses on raw log-likelihood but wins per byte.
    loglikelihoods, choices = [-12.0, -4.0, -9.0], ["return self._value\n", "x\n", "pass\n"]
    if pick(loglikelihoods, choices, False) != 1:
        raise NotRightYet("without normalisation, pick the highest summed log-likelihood")
    if pick(loglikelihoods, choices, True) != 0:
        raise NotRightYet(
            "normalised: divide each log-likelihood by the number of UTF-8 bytes of its choice "
            "(len(choice.encode('utf-8'))), then take the highest"
        )
    # Multi-byte characters: bytes, not characters, are the unit.
    loglikelihoods, choices = [-6.0, -5.0], ["ééé\n", "abcd\n"]
    lengths = [len(c.encode("utf-8")) for c in choices]
    if pick(loglikelihoods, choices, True) != choose(loglikelihoods, lengths, True):
        raise NotRightYet("count UTF-8 bytes (len(choice.encode('utf-8'))), not characters")
    rng = np.random.default_rng(0)
    for _ in range(50):
        choices = ["a" * int(n) for n in rng.integers(1, 30, size=4)]
        loglikelihoods = list(-rng.uniform(1, 40, size=4))
        lengths = [len(c.encode("utf-8")) for c in choices]
        for normalised in (False, True):
            if pick(loglikelihoods, choices, normalised) != choose(
                loglikelihoods, lengths, normalised
            ):
                raise NotRightYet(f"wrong choice for {loglikelihoods} with normalised={normalised}")


def check_items_needed(items_needed: Callable[[float, float], int]) -> None:
    """Exercise 3: the normal-approximation sample size for a 95% half-width."""
    # ceil(1.96^2 p (1 - p) / half_width^2), worked out once by hand
    cases = {(0.5, 0.05): 385, (0.3, 0.02): 2017, (0.9, 0.03): 385, (0.25, 0.1): 73}
    for (accuracy, half_width), expected in cases.items():
        got = items_needed(accuracy, half_width)
        if not isinstance(got, (int, np.integer)):
            raise NotRightYet(f"return a whole number of items, got {got!r}")
        if abs(int(got) - expected) > 1:
            raise NotRightYet(
                f"items_needed({accuracy}, {half_width}) = {got}, expected about {expected}: "
                "solve 1.96 * sqrt(p (1 - p) / n) <= half_width for n and round up"
            )
