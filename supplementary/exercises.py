"""Checks for the exercises of the supplementary notebooks (hand-written, not exported).

Each check raises NotRightYet with a message a student can act on, lets NotImplementedError
from a stub pass through (check_exercise reports it as "not solved yet"), and returns None
when the answer is right. Only `chapters.*` is imported here, so that a notebook can load this
file from its own folder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from chapters.ch04_blocks.model import ModelConfig, flops_per_token
from chapters.course import NotRightYet


def check_interleaved_order(interleaved_order: Callable[[int], torch.Tensor]) -> None:
    """hf_export: the inverse of the even-then-odd order (half-split features -> interleaved)."""
    for head_dim in (2, 8, 16, 64):
        forward = torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))
        answer = interleaved_order(head_dim)
        if not isinstance(answer, torch.Tensor) or answer.shape != (head_dim,):
            raise NotRightYet(
                f"for head_dim={head_dim} return a tensor of {head_dim} indices, got "
                f"{answer!r:.60}."
            )
        if torch.equal(answer, forward) and head_dim > 4:
            raise NotRightYet(
                "that is the forward order (even features first) again; you need its inverse: "
                "the order that puts feature 2i back from position i."
            )
        x = torch.randn(3, head_dim)
        if not torch.equal(x[:, forward][:, answer.long()], x):
            raise NotRightYet(
                f"for head_dim={head_dim}, reordering half-split features with your order does "
                "not give the interleaved features back. Hint: torch.argsort of the forward order."
            )


def check_lora_parameter_count(lora_parameter_count: Callable[[ModelConfig, int], int]) -> None:
    """lora: trainable parameters of rank-r adapters on all seven projections of every block."""
    for config, rank in (
        (ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4), 4),
        (ModelConfig(), 8),
        (ModelConfig(d_model=96, n_layers=3, n_heads=3, d_ff=200), 1),
    ):
        d, d_ff = config.d_model, config.d_ff
        attention = 4 * rank * (d + d)
        mlp = 2 * rank * (d + d_ff) + rank * (d_ff + d)
        expected = config.n_layers * (attention + mlp)
        answer = lora_parameter_count(config, rank)
        if answer == config.n_layers * attention:
            raise NotRightYet("you counted the attention adapters only; add w1, w3 and w2.")
        if answer == config.n_layers * (4 * d * d + 3 * d * d_ff):
            raise NotRightYet(
                "that is the number of weights in the projections themselves; an adapter on an "
                "(out, in) matrix has A (rank, in) and B (out, rank)."
            )
        if answer != expected:
            raise NotRightYet(
                f"for d_model={d}, d_ff={d_ff}, n_layers={config.n_layers}, rank={rank} the count "
                f"is {expected:,}, you returned {answer!r}. Each adapter has rank * (in + out)."
            )


def check_model_flops_utilisation(
    model_flops_utilisation: Callable[[float, ModelConfig, int, float], float],
) -> None:
    """making_it_fast: MFU = tokens/s * training FLOPs per token / peak FLOP/s."""
    config = ModelConfig()
    for tokens_per_second, length, peak in ((1000.0, 128, 1e11), (5e4, 64, 3e13)):
        expected = tokens_per_second * flops_per_token(config, length) / peak
        answer = float(model_flops_utilisation(tokens_per_second, config, length, peak))
        if abs(answer - expected / 3) < 1e-9 * max(1.0, expected):
            raise NotRightYet(
                "that counts the forward pass only; training also runs the backward pass, which "
                "costs about twice the forward: use chapter 4's flops_per_token."
            )
        if abs(answer - 100 * expected) < 1e-6 * max(1.0, expected):
            raise NotRightYet("return a fraction between 0 and 1, not a percentage.")
        if abs(answer - expected) > 1e-9 * max(1.0, expected):
            raise NotRightYet(
                f"for {tokens_per_second:g} tokens/s at sequence length {length} and a peak of "
                f"{peak:g} FLOP/s the MFU is {expected:.4g}, you returned {answer:.4g}."
            )
