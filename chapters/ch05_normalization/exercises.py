"""Checks for the chapter 5 exercises (hand-written; see AUTHORING.md, "Exercises").

Each check takes the student's function, compares it with torch or with the properties the
answer must have on fresh random inputs, and raises NotRightYet with a message a student can
act on. No check holds a reference answer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from chapters.ch05_normalization.normalization import measure_leakage
from chapters.course import NotRightYet


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> bool:
    return actual.shape == expected.shape and torch.allclose(actual, expected, atol=atol)


# ---------------------------------------------------------------------------------------
# Exercise 1: GroupNorm
# ---------------------------------------------------------------------------------------


def check_group_norm(group_norm: Callable[[torch.Tensor, int, float], torch.Tensor]) -> None:
    """`group_norm(x, num_groups, eps)` on (B, T, C) must match torch's GroupNorm per token."""
    generator = torch.Generator().manual_seed(5)
    for num_groups in (1, 4, 16):
        x = torch.randn(3, 7, 16, generator=generator) * 2 + 0.5  # (B, T, C)
        actual = group_norm(x, num_groups, 1e-5)
        if not isinstance(actual, torch.Tensor) or actual.shape != x.shape:
            raise NotRightYet(
                f"group_norm must return a tensor of the input's shape {tuple(x.shape)}."
            )
        # torch's GroupNorm wants (N, C): every token is one "sample".
        expected = F.group_norm(x.reshape(-1, 16), num_groups, eps=1e-5).reshape(x.shape)
        if not _close(actual, expected):
            hint = (
                " With num_groups=1 it should equal LayerNorm without weight and bias."
                if num_groups == 1
                else " Split the C features of each token into num_groups groups of C/num_groups"
                " consecutive features and normalise each group with its own mean and (biased)"
                " variance."
            )
            raise NotRightYet(f"wrong output for num_groups={num_groups}.{hint}")
    tokens = torch.randn(4, 10, 16, generator=generator)
    if measure_leakage(lambda inputs: group_norm(inputs, 4, 1e-5), tokens).leaks():
        raise NotRightYet("outputs depend on other tokens: use only each token's own features.")


# ---------------------------------------------------------------------------------------
# Exercise 2: BatchNorm statistics that ignore padding
# ---------------------------------------------------------------------------------------


def _standardised(values: torch.Tensor, against: torch.Tensor, atol: float = 1e-4) -> bool:
    """Whether each feature (column) of `values` is `against` standardised: a positive multiple
    of it plus a constant (correlation 1) with mean 0 and biased standard deviation 1."""
    centred, reference = values - values.mean(0), against - against.mean(0)
    correlation = (centred * reference).sum(0) / (centred.norm(dim=0) * reference.norm(dim=0))
    return bool(
        torch.allclose(values.mean(0), torch.zeros(values.shape[1]), atol=atol)
        and torch.allclose(values.std(0, unbiased=False), torch.ones(values.shape[1]), atol=atol)
        and torch.allclose(correlation, torch.ones(values.shape[1]), atol=atol)
    )


def check_masked_batch_norm(
    masked_batch_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
) -> None:
    """Statistics from the real (mask True) positions only; padding must not change them."""
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(3, 12, 8, generator=generator) + 1.0  # (B, T, C)
    lengths = torch.tensor([12, 7, 4])
    mask = torch.arange(12)[None, :] < lengths[:, None]  # (B, T), True for real tokens
    x = x.masked_fill(~mask[..., None], 0.0)  # pads are zero vectors
    actual = masked_batch_norm(x, mask, 1e-5)
    if not isinstance(actual, torch.Tensor) or actual.shape != x.shape:
        raise NotRightYet(f"return a tensor of the input's shape {tuple(x.shape)}.")
    # judged by what the output must be: the real tokens, per feature, standardised
    if not _standardised(actual[mask], x[mask]):
        if _standardised(actual.reshape(-1, 8), x.reshape(-1, 8)):
            raise NotRightYet(
                "the pad positions still count in your mean and variance; "
                "compute them over x[mask] only."
            )
        raise NotRightYet(
            "the real tokens' outputs are wrong: per feature, subtract the mean "
            "and divide by sqrt(biased variance + eps) of the real tokens."
        )
    longer = torch.cat([x, torch.zeros(3, 20, 8)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(3, 20, dtype=torch.bool)], dim=1)
    if not _close(masked_batch_norm(longer, longer_mask, 1e-5)[:, :12][mask], actual[mask], 1e-4):
        raise NotRightYet("adding more padding changed the real tokens' outputs.")


# ---------------------------------------------------------------------------------------
# Exercise 3: BatchNorm leakage against batch size
# ---------------------------------------------------------------------------------------


def check_batchnorm_leakage_by_batch_size(batchnorm_leakage: Callable[[int], float]) -> None:
    """`batchnorm_leakage(batch_size)`: the from-future leakage of a training-mode BatchNorm."""
    sizes = (2, 8, 32)
    values = [batchnorm_leakage(size) for size in sizes]
    if not all(isinstance(value, float) for value in values):
        raise NotRightYet("return a Python float (e.g. the `from_future` field of a Leakage).")
    if min(values) <= 1e-6:
        raise NotRightYet("you measured no leakage at all: is the BatchNorm in training mode?")
    if not values[0] > values[1] > values[2]:
        raise NotRightYet(f"leakage should shrink as the batch grows, got {values} for {sizes}.")
    if values[0] / values[2] < 4:
        raise NotRightYet(
            f"with 16x more tokens per batch the leakage should drop by far more "
            f"than {values[0] / values[2]:.1f}x; use inputs of shape (batch, 32, 64)."
        )


# ---------------------------------------------------------------------------------------
# Exercise 4: the norm after the residual
# ---------------------------------------------------------------------------------------


class _ResidualStack(nn.Module):
    def __init__(self, residual: Callable, depth: int, dim: int) -> None:
        super().__init__()
        self.sublayers = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            for _ in range(depth)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for sublayer, norm in zip(self.sublayers, self.norms, strict=True):
            x = self.residual(x, sublayer, norm)
        return x


def _first_and_last_gradient(residual: Callable, seed: int = 0) -> tuple[float, float]:
    """Gradient norms of the first and last sub-layer's output weights in a 12-layer stack."""
    torch.manual_seed(seed)
    stack = _ResidualStack(residual, depth=12, dim=32)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 32, generator=generator)
    readout = torch.randn(32, 10, generator=generator)  # a fixed classifier on top
    labels = torch.randint(0, 10, (64,), generator=generator)
    features = F.layer_norm(stack(x), (32,))  # the final norm, as in a Pre-LN model
    F.cross_entropy(features @ readout, labels).backward()
    first = stack.sublayers[0][2].weight.grad.norm().item()
    last = stack.sublayers[-1][2].weight.grad.norm().item()
    return first, last


def check_post_norm_residual(post_norm_residual: Callable) -> None:
    """`post_norm_residual(x, sublayer, norm)` must compute norm(x + sublayer(x))."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(5, 16, generator=generator)
    sublayer, norm = nn.Linear(16, 16), nn.LayerNorm(16)
    actual = post_norm_residual(x, sublayer, norm)
    if not isinstance(actual, torch.Tensor) or actual.shape != x.shape:
        raise NotRightYet(f"return a tensor of the input's shape {tuple(x.shape)}.")
    if _close(actual, x + sublayer(norm(x))):
        raise NotRightYet(
            "that is the Pre-LN residual x + sublayer(norm(x)); normalise AFTER the add."
        )
    if not _close(actual, norm(x + sublayer(x))):
        raise NotRightYet("the output should be norm(x + sublayer(x)).")
    first, last = _first_and_last_gradient(post_norm_residual)
    pre_first, pre_last = _first_and_last_gradient(lambda x, f, n: x + f(n(x)))
    if not last / first > pre_last / pre_first:
        raise NotRightYet(
            "in a deep Post-LN stack the last layer's gradient should grow "
            "relative to the first layer's, more than in Pre-LN."
        )


def post_norm_gradient_ratios(post_norm_residual: Callable) -> dict[str, float]:
    """last-layer / first-layer gradient norm of a 12-layer residual MLP stack, Pre vs Post."""
    first, last = _first_and_last_gradient(post_norm_residual)
    pre_first, pre_last = _first_and_last_gradient(lambda x, f, n: x + f(n(x)))
    return {"Pre-LN": pre_last / pre_first, "Post-LN": last / first}
