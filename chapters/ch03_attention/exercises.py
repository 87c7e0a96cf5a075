"""Checks for the chapter 3 exercises. Each check calls the student's function on fresh random
inputs, compares with an independent reference, and raises NotRightYet with a hint when the
answer is wrong (a stub's NotImplementedError passes through, reported as "not solved yet")."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from chapters.course import NotRightYet


def _expect_tensor(result: object, shape: tuple[int, ...], what: str) -> torch.Tensor:
    if not isinstance(result, torch.Tensor):
        raise NotRightYet(f"{what} should return a torch.Tensor, got {type(result).__name__}")
    if tuple(result.shape) != shape:
        raise NotRightYet(f"{what} returned shape {tuple(result.shape)}, expected {shape}")
    return result


def check_grouped_query_attention(grouped_query_attention: Callable) -> None:
    """Exercise 1: causal attention where groups of query heads share key/value heads."""
    generator = torch.Generator()
    generator.seed()  # fresh inputs on every run, without touching the global generator
    for n_heads, n_kv_heads in [(6, 2), (4, 1), (4, 4)]:
        q = torch.randn(2, n_heads, 7, 8, generator=generator)
        k = torch.randn(2, n_kv_heads, 7, 8, generator=generator)
        v = torch.randn(2, n_kv_heads, 7, 8, generator=generator)
        result = _expect_tensor(
            grouped_query_attention(q, k, v), (2, n_heads, 7, 8), "grouped_query_attention"
        )
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        if not torch.allclose(result, expected, atol=1e-5):
            hint = ""
            if n_kv_heads not in (1, n_heads):
                repeats = (1, n_heads // n_kv_heads, 1, 1)
                tiled = F.scaled_dot_product_attention(
                    q, k.repeat(repeats), v.repeat(repeats), is_causal=True
                )
                if torch.allclose(result, tiled, atol=1e-5):
                    hint = (
                        " It looks like query head h used key/value head h % n_kv_heads; "
                        "consecutive query heads should share one: h // (n_heads // n_kv_heads) "
                        "(torch.repeat_interleave, not .repeat)."
                    )
            raise NotRightYet(
                f"with {n_heads} query heads and {n_kv_heads} key/value heads the output differs "
                f"from PyTorch's grouped-query attention.{hint} Is it causal?"
            )
    q = torch.randn(1, 6, 3, 8, generator=generator)
    kv = torch.randn(1, 4, 3, 8, generator=generator)
    try:
        grouped_query_attention(q, kv, kv)
    except ValueError:
        return
    except NotImplementedError:
        raise
    except Exception as error:
        raise NotRightYet(
            f"6 query heads with 4 key/value heads should raise a ValueError, not "
            f"{type(error).__name__}: {error}"
        ) from error
    raise NotRightYet("6 query heads with 4 key/value heads should raise a ValueError")


def check_sliding_window_mask(sliding_window_mask: Callable) -> None:
    """Exercise 2: causal attention limited to the `window` most recent tokens."""
    for length, window in [(6, 3), (5, 1), (4, 10), (9, 4)]:
        result = _expect_tensor(
            sliding_window_mask(length, window), (length, length), "sliding_window_mask"
        )
        if result.dtype != torch.bool:
            raise NotRightYet(f"the mask should be a bool tensor, got {result.dtype}")
        for i in range(length):
            for j in range(length):
                allowed = j <= i and i - j < window
                if bool(result[i, j]) != allowed:
                    where = "a future key" if j > i else f"a key {i - j} tokens back"
                    raise NotRightYet(
                        f"length={length}, window={window}: query {i} vs key {j} ({where}) "
                        f"should be {allowed}, got {bool(result[i, j])}. A window of {window} "
                        f"covers the token itself and the {window - 1} before it."
                    )
    try:
        sliding_window_mask(4, 0)
    except ValueError:
        return
    except NotImplementedError:
        raise
    except Exception as error:
        raise NotRightYet(
            f"window=0 should raise a ValueError, not {type(error).__name__}"
        ) from error
    raise NotRightYet("window=0 should raise a ValueError: every token must see at least itself")


# The score at a few distances, computed once by rotating an all-ones query and key with the
# chapter's apply_rotary (head_dim, max_distance, theta) -> {distance: score}.
_ROPE_SCORES = {
    (16, 50, 10000.0): {
        0: 16.0,
        1: 14.9703,
        2: 12.7366,
        3: 11.0862,
        7: 11.7844,
        25: 9.6145,
        50: 8.2147,
    },
    (64, 300, 100.0): {
        0: 64.0,
        1: 60.1878,
        2: 50.7653,
        3: 40.3761,
        7: 29.6632,
        150: -11.8177,
        300: -1.0763,
    },
    (8, 20, 1e6): {0: 8.0, 1: 7.0796, 2: 5.1637, 3: 4.011, 7: 7.459, 10: 4.2226, 20: 6.4289},
}


def check_rope_relative_scores(rope_relative_scores: Callable) -> None:
    """Exercise 3: the all-ones query/key score as a function of distance, in closed form."""
    for (head_dim, max_distance, theta), scores in _ROPE_SCORES.items():
        result = _expect_tensor(
            rope_relative_scores(head_dim, max_distance, theta),
            (max_distance + 1,),
            "rope_relative_scores",
        )
        got = {distance: float(result[distance]) for distance in scores}
        if any(abs(got[d] - score) > 2e-3 * max(1.0, abs(score)) for d, score in scores.items()):
            hint = ""
            if abs(got[0] - head_dim / 2) < 1e-3:
                hint = " Each pair contributes 2 cos(...), so distance 0 should give head_dim."
            raise NotRightYet(
                f"head_dim={head_dim}, theta={theta}: expected {scores} at those distances, "
                f"got { ({d: round(v, 4) for d, v in got.items()}) }.{hint}"
            )
