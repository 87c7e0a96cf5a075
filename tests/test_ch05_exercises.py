"""Chapter 5 exercises: each check accepts the reference solution and rejects the stub and a
typical wrong answer."""

import pytest
import torch
import torch.nn as nn

from chapters.ch05_normalization import exercises
from chapters.ch05_normalization.normalization import BatchNorm, LayerNorm, measure_leakage
from chapters.course import NotRightYet


def stub(*args, **kwargs):
    raise NotImplementedError


# Reference solutions (the same as in ch05_normalization_solutions.ipynb).


def group_norm(x: torch.Tensor, num_groups: int, eps: float = 1e-5) -> torch.Tensor:
    grouped = x.reshape(*x.shape[:-1], num_groups, x.shape[-1] // num_groups)
    mean = grouped.mean(dim=-1, keepdim=True)
    var = grouped.var(dim=-1, keepdim=True, unbiased=False)
    return ((grouped - mean) * torch.rsqrt(var + eps)).reshape(x.shape)


def masked_batch_norm(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    real = x[mask]
    return (x - real.mean(0)) * torch.rsqrt(real.var(0, unbiased=False) + eps)


def batchnorm_leakage(batch_size: int) -> float:
    activations = torch.randn(batch_size, 32, 64, generator=torch.Generator().manual_seed(0))
    return measure_leakage(BatchNorm(64).train(), activations).from_future


def post_norm_residual(x, sublayer, norm):
    return norm(x + sublayer(x))


# GroupNorm


def test_group_norm_reference_passes():
    exercises.check_group_norm(group_norm)


def test_group_norm_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_group_norm(stub)


def test_group_norm_that_is_layernorm_for_every_group_count_is_rejected():
    def layernorm_always(x, num_groups, eps=1e-5):
        return LayerNorm(x.shape[-1], eps)(x).detach()

    with pytest.raises(NotRightYet, match="num_groups=4"):
        exercises.check_group_norm(layernorm_always)


def test_group_norm_over_the_batch_is_rejected():
    def over_the_batch(x, num_groups, eps=1e-5):
        flat = x.reshape(-1, x.shape[-1])
        return ((x - flat.mean(0)) * torch.rsqrt(flat.var(0, unbiased=False) + eps)).detach()

    with pytest.raises(NotRightYet):
        exercises.check_group_norm(over_the_batch)


# Masked BatchNorm


def test_masked_batch_norm_reference_passes():
    exercises.check_masked_batch_norm(masked_batch_norm)


def test_masked_batch_norm_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_masked_batch_norm(stub)


def test_batch_norm_that_counts_the_padding_is_rejected():
    def counts_padding(x, mask, eps=1e-5):
        return BatchNorm(x.shape[-1], eps).train()(x).detach()

    with pytest.raises(NotRightYet, match="pad positions"):
        exercises.check_masked_batch_norm(counts_padding)


# Leakage against batch size


def test_batchnorm_leakage_reference_passes():
    exercises.check_batchnorm_leakage_by_batch_size(batchnorm_leakage)


def test_batchnorm_leakage_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_batchnorm_leakage_by_batch_size(stub)


def test_batchnorm_leakage_measured_in_eval_mode_is_rejected():
    def eval_mode(batch_size):
        activations = torch.randn(batch_size, 32, 64)
        return measure_leakage(BatchNorm(64).eval(), activations).from_future

    with pytest.raises(NotRightYet, match="training mode"):
        exercises.check_batchnorm_leakage_by_batch_size(eval_mode)


def test_batchnorm_leakage_that_does_not_shrink_is_rejected():
    with pytest.raises(NotRightYet, match="shrink"):
        exercises.check_batchnorm_leakage_by_batch_size(lambda batch_size: 0.05)


# Post-LN residual


def test_post_norm_residual_reference_passes():
    exercises.check_post_norm_residual(post_norm_residual)


def test_post_norm_residual_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_post_norm_residual(stub)


def test_pre_norm_residual_is_rejected_as_pre_ln():
    with pytest.raises(NotRightYet, match="Pre-LN"):
        exercises.check_post_norm_residual(lambda x, sublayer, norm: x + sublayer(norm(x)))


def test_residual_without_norm_is_rejected():
    with pytest.raises(NotRightYet):
        exercises.check_post_norm_residual(lambda x, sublayer, norm: x + sublayer(x))


def test_post_norm_gradient_ratio_exceeds_pre_norm_ratio():
    ratios = exercises.post_norm_gradient_ratios(post_norm_residual)
    assert ratios["Post-LN"] > ratios["Pre-LN"]


def test_post_norm_stack_uses_the_given_norms():
    calls = []

    def counting(x, sublayer, norm):
        calls.append(isinstance(norm, nn.LayerNorm))
        return norm(x + sublayer(x))

    exercises.post_norm_gradient_ratios(counting)
    assert calls and all(calls)
