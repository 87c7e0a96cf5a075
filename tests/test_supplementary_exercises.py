"""Supplementary exercise checks: the reference solutions pass; stubs and wrong answers fail."""

from __future__ import annotations

import pytest
import torch

from chapters.ch04_blocks.model import ModelConfig, flops_per_token
from chapters.course import NotRightYet
from supplementary import exercises


def stub(*args):
    raise NotImplementedError


def even_then_odd(head_dim: int) -> torch.Tensor:
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def lora_count(config: ModelConfig, rank: int) -> int:
    d, d_ff = config.d_model, config.d_ff
    return config.n_layers * (4 * rank * 2 * d + 2 * rank * (d + d_ff) + rank * (d_ff + d))


def mfu(tokens_per_second, config, sequence_length, peak_flops) -> float:
    return tokens_per_second * flops_per_token(config, sequence_length) / peak_flops


def test_inverse_order_reference_passes() -> None:
    exercises.check_interleaved_order(lambda d: torch.argsort(even_then_odd(d)))


def test_inverse_order_stub_is_not_solved() -> None:
    with pytest.raises(NotImplementedError):
        exercises.check_interleaved_order(stub)


def test_inverse_order_forward_order_is_wrong() -> None:
    with pytest.raises(NotRightYet, match="forward order"):
        exercises.check_interleaved_order(even_then_odd)


def test_lora_count_reference_passes() -> None:
    exercises.check_lora_parameter_count(lora_count)


def test_lora_count_stub_is_not_solved() -> None:
    with pytest.raises(NotImplementedError):
        exercises.check_lora_parameter_count(stub)


def test_lora_count_attention_only_is_wrong() -> None:
    def attention_only(config, rank):
        return config.n_layers * 4 * rank * 2 * config.d_model

    with pytest.raises(NotRightYet, match="attention adapters only"):
        exercises.check_lora_parameter_count(attention_only)


def test_mfu_reference_passes() -> None:
    exercises.check_model_flops_utilisation(mfu)


def test_mfu_stub_is_not_solved() -> None:
    with pytest.raises(NotImplementedError):
        exercises.check_model_flops_utilisation(stub)


def test_mfu_forward_only_is_wrong() -> None:
    def forward_only(tokens_per_second, config, sequence_length, peak_flops):
        return mfu(tokens_per_second, config, sequence_length, peak_flops) / 3

    with pytest.raises(NotRightYet, match="forward pass only"):
        exercises.check_model_flops_utilisation(forward_only)
