"""Chapter 3 exercises, both ways: the reference solutions pass every check; a stub and a
typical wrong answer fail it (NotImplementedError or NotRightYet)."""

from __future__ import annotations

import pytest
import torch

from chapters.ch03_attention import exercises
from chapters.ch03_attention.attention import naive_attention, rotary_frequencies
from chapters.course import NotRightYet, check_exercise

# --- reference solutions (the same as in ch03_attention_solutions.ipynb) -------------------


def grouped_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    n_heads, n_kv_heads = q.size(1), k.size(1)
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
    group = n_heads // n_kv_heads
    return naive_attention(q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1))


def sliding_window_mask(length: int, window: int) -> torch.Tensor:
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    query_positions = torch.arange(length)[:, None]
    key_positions = torch.arange(length)[None, :]
    return (key_positions <= query_positions) & (query_positions - key_positions < window)


def rope_relative_scores(head_dim: int, max_distance: int, theta: float = 10000.0) -> torch.Tensor:
    distances = torch.arange(max_distance + 1, dtype=torch.float32)
    return 2 * torch.cos(distances[:, None] * rotary_frequencies(head_dim, theta)).sum(-1)


def _stub(*arguments: object) -> torch.Tensor:
    raise NotImplementedError


# --- exercise 1 ----------------------------------------------------------------------------


def test_reference_grouped_query_attention_passes() -> None:
    exercises.check_grouped_query_attention(grouped_query_attention)


def test_grouped_query_attention_stub_is_not_solved() -> None:
    with pytest.raises(NotImplementedError):
        exercises.check_grouped_query_attention(_stub)
    assert check_exercise("stub", lambda: exercises.check_grouped_query_attention(_stub)) is False


def test_grouped_query_attention_with_tiled_heads_is_wrong_and_says_why() -> None:
    def tiled(q, k, v):
        group = q.size(1) // k.size(1)
        return naive_attention(q, k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1))

    with pytest.raises(NotRightYet, match="repeat_interleave"):
        exercises.check_grouped_query_attention(tiled)


def test_grouped_query_attention_that_is_not_causal_is_wrong() -> None:
    def not_causal(q, k, v):
        group = q.size(1) // k.size(1)
        return naive_attention(
            q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), causal=False
        )

    with pytest.raises(NotRightYet):
        exercises.check_grouped_query_attention(not_causal)


def test_grouped_query_attention_without_the_size_check_is_wrong() -> None:
    def unchecked(q, k, v):
        group = -(-q.size(1) // k.size(1))  # rounds up, so 6 heads over 4 "work"
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        return naive_attention(q, k[:, : q.size(1)], v[:, : q.size(1)])

    with pytest.raises(NotRightYet, match="ValueError"):
        exercises.check_grouped_query_attention(unchecked)


# --- exercise 2 ----------------------------------------------------------------------------


def test_reference_sliding_window_mask_passes() -> None:
    exercises.check_sliding_window_mask(sliding_window_mask)


def test_sliding_window_mask_stub_is_not_solved() -> None:
    with pytest.raises(NotImplementedError):
        exercises.check_sliding_window_mask(_stub)


def test_sliding_window_mask_off_by_one_is_wrong() -> None:
    def one_too_wide(length, window):
        i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
        return (j <= i) & (i - j <= window)

    with pytest.raises(NotRightYet, match="window"):
        exercises.check_sliding_window_mask(one_too_wide)


def test_sliding_window_mask_that_sees_the_future_is_wrong() -> None:
    def not_causal(length, window):
        i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
        return (i - j).abs() < window

    with pytest.raises(NotRightYet, match="future"):
        exercises.check_sliding_window_mask(not_causal)


# --- exercise 3 ----------------------------------------------------------------------------


def test_reference_rope_relative_scores_passes() -> None:
    exercises.check_rope_relative_scores(rope_relative_scores)


def test_rope_relative_scores_stub_is_not_solved() -> None:
    with pytest.raises(NotImplementedError):
        exercises.check_rope_relative_scores(_stub)


def test_rope_relative_scores_without_the_factor_two_is_wrong_and_says_why() -> None:
    def half(head_dim, max_distance, theta=10000.0):
        return rope_relative_scores(head_dim, max_distance, theta) / 2

    with pytest.raises(NotRightYet, match="2 cos"):
        exercises.check_rope_relative_scores(half)


def test_rope_relative_scores_ignoring_theta_is_wrong() -> None:
    def default_theta(head_dim, max_distance, theta=10000.0):
        return rope_relative_scores(head_dim, max_distance)

    with pytest.raises(NotRightYet, match="theta"):
        exercises.check_rope_relative_scores(default_theta)
