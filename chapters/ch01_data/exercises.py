"""Checks for chapter 1's exercises. Each check raises NotRightYet with a hint, or returns."""

from __future__ import annotations

import math
from collections.abc import Callable

from chapters.ch01_data.data_pipeline import QualityThresholds, candidate_probability
from chapters.course import NotRightYet


def check_bands_for_threshold(bands_for_threshold: Callable[[float, int], tuple[int, int]]) -> None:
    """Exercise 1: (bands, rows) whose approximate threshold (1/b)^(1/r) is nearest the target."""
    for threshold, num_perm in [(0.8, 128), (0.5, 64), (0.7, 128), (0.9, 256)]:
        answer = bands_for_threshold(threshold, num_perm)
        if not (isinstance(answer, tuple) and len(answer) == 2):
            raise NotRightYet(f"return a tuple (bands, rows); got {answer!r}")
        bands, rows = answer
        if not (isinstance(bands, int) and isinstance(rows, int) and bands >= 1 and rows >= 1):
            raise NotRightYet(f"bands and rows must be positive integers; got {answer!r}")
        if bands * rows > num_perm:
            raise NotRightYet(
                f"for num_perm={num_perm} you chose {bands} x {rows} = {bands * rows} "
                "values: bands x rows cannot exceed num_perm"
            )
        if bands * rows < num_perm / 2:
            raise NotRightYet(
                f"for num_perm={num_perm} you use only {bands * rows} values; use at least half"
            )
        approximate = (1 / bands) ** (1 / rows)
        best = min(
            abs((1 / b) ** (1 / r) - threshold)
            for b in range(1, num_perm + 1)
            for r in range(1, num_perm // b + 1)
            if b * r >= num_perm / 2
        )
        if abs(approximate - threshold) > best + 0.02:
            raise NotRightYet(
                f"for threshold {threshold} and num_perm {num_perm}, {bands} bands x {rows} rows "
                f"put the S-curve at (1/b)^(1/r) = {approximate:.3f}; a pair exists within "
                f"{best:.3f} of the target (did you swap bands and rows?)"
            )
        if candidate_probability(threshold, bands, rows) < 0.3:
            raise NotRightYet(f"{bands} x {rows} rarely proposes pairs at J = {threshold}")


def check_mostly_comments(is_mostly_comments: Callable[[str, QualityThresholds], bool]) -> None:
    """Exercise 2: remove documents whose non-blank lines are more than 80% comments."""
    limits = QualityThresholds()
    license_only = "# Copyright 2024 Someone\n# Licensed under the MIT license.\n" * 10 + "x = 1\n"
    commented_out = "\n".join(f"# old_value_{i} = compute({i})" for i in range(9)) + "\nvalue = 0\n"
    normal_code = (
        "# Helpers for averages.\n\n"
        "def mean(values):\n"
        "    # An empty list has no mean.\n"
        "    if not values:\n"
        "        raise ValueError('empty')\n"
        "    return sum(values) / len(values)\n"
    )
    prose = "Assertions are a convenient way to insert debugging checks.\n" * 5
    indented = "\n".join(f"    # step {i}" for i in range(9)) + "\n    run()\n"
    spaced = "# one\n\n# two\n\n# three\n\n# four\n\n# five\nx = 1\n"
    cases = [
        (license_only, True, "a license header with one line of code"),
        (
            spaced,
            True,
            "five comments and one line of code, with blank lines between (skip blanks)",
        ),
        (commented_out, True, "nine commented-out lines and one line of code"),
        (indented, True, "indented comments (strip the line before looking for '#')"),
        (normal_code, False, "ordinary code with a few comments"),
        (prose, False, "documentation prose without any '#'"),
        ("", False, "an empty document (no non-blank lines: keep it, other filters decide)"),
        ("\n\n  \n", False, "a document of blank lines"),
    ]
    for text, should_remove, description in cases:
        verdict = is_mostly_comments(text, limits)
        if verdict is not should_remove:
            action = "remove" if should_remove else "keep"
            raise NotRightYet(f"it should {action} {description}, but returned {verdict!r}")
    exactly_eighty = "\n".join(["# c"] * 8 + ["x = 1", "y = 2"])
    if is_mostly_comments(exactly_eighty, limits):
        raise NotRightYet("exactly 80% comment lines is not *more* than 80%: keep that document")


def check_minhash_rms_error(minhash_rms_error: Callable[..., float]) -> None:
    """Exercise 3: the RMS error of MinHash falls like 1/sqrt(num_perm)."""
    similarity = 0.5
    errors = {}
    for num_perm in (16, 64, 256):
        value = minhash_rms_error(similarity, num_perm, trials=60, seed=0)
        if not isinstance(value, float | int) or not math.isfinite(value) or value < 0:
            raise NotRightYet(f"return a non-negative float; got {value!r} for num_perm={num_perm}")
        expected = math.sqrt(similarity * (1 - similarity) / num_perm)
        if not 0.6 * expected <= value <= 1.5 * expected:
            raise NotRightYet(
                f"for num_perm={num_perm} you report an RMS error of {value:.4f}, but theory says "
                f"about {expected:.4f}. Is it the root of the *mean squared* error against the "
                "exact Jaccard, with a fresh MinHash seed per trial?"
            )
        errors[num_perm] = value
    if not errors[16] > errors[64] > errors[256]:
        raise NotRightYet(f"the error should shrink as num_perm grows; got {errors}")
