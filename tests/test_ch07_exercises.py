"""Chapter 7 exercise checks: the reference solutions pass, stubs and typical mistakes do not."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

from chapters.ch07_distributed import exercises
from chapters.ch07_distributed.distributed import language_model_loss
from chapters.course import NotRightYet

# --- reference answers (as in ch07_distributed_solutions.ipynb): instructor-only, this file
# is left out of the student build -------------------------------------------------------


def reference_accumulate_and_step(model, optimizer, micro_batches) -> None:
    optimizer.zero_grad(set_to_none=True)
    for index, (inputs, labels) in enumerate(micro_batches):
        is_last = index == len(micro_batches) - 1
        with contextlib.nullcontext() if is_last else model.no_sync():
            loss = language_model_loss(model(inputs), labels) / len(micro_batches)
            loss.backward()
    optimizer.step()


def reference_largest_model_zero3(n_gpus: int, gpu_bytes: float, activation_bytes: float) -> float:
    return (gpu_bytes - activation_bytes) * n_gpus / 16


class CheckpointedBlock(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        return torch.utils.checkpoint.checkpoint(self.block, *args, use_reentrant=False, **kwargs)


def reference_apply_checkpointing(model: nn.Module) -> nn.Module:
    for index, block in enumerate(model.blocks):
        model.blocks[index] = CheckpointedBlock(block)
    return model


def reference_microbatches_needed(n_stages: int, max_bubble: float) -> int:
    # (p - 1) / (m + p - 1) <= f  <=>  m >= (p - 1) (1 - f) / f
    return max(1, math.ceil((n_stages - 1) * (1 - max_bubble) / max_bubble - 1e-9))


def stub(*args, **kwargs):
    raise NotImplementedError


def test_gradient_accumulation_reference_passes():
    exercises.check_gradient_accumulation(reference_accumulate_and_step)


def test_gradient_accumulation_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_gradient_accumulation(stub)


def test_gradient_accumulation_without_no_sync_is_wrong():
    def all_reduce_every_time(model, optimizer, micro_batches):
        optimizer.zero_grad()
        for inputs, labels in micro_batches:
            (language_model_loss(model(inputs), labels) / len(micro_batches)).backward()
        optimizer.step()

    with pytest.raises(NotRightYet, match="no_sync"):
        exercises.check_gradient_accumulation(all_reduce_every_time)


def test_gradient_accumulation_without_loss_scaling_is_wrong():
    def unscaled(model, optimizer, micro_batches):
        optimizer.zero_grad()
        for index, (inputs, labels) in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with contextlib.nullcontext() if last else model.no_sync():
                language_model_loss(model(inputs), labels).backward()
        optimizer.step()

    with pytest.raises(NotRightYet, match="divide"):
        exercises.check_gradient_accumulation(unscaled)


def test_largest_model_reference_passes():
    exercises.check_largest_model_zero3(reference_largest_model_zero3)


def test_largest_model_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_largest_model_zero3(stub)


def test_largest_model_without_sharding_is_wrong():
    with pytest.raises(NotRightYet):
        exercises.check_largest_model_zero3(
            lambda n_gpus, gpu, activations: (gpu - activations) / 16
        )


def test_largest_model_ignoring_activations_is_wrong():
    with pytest.raises(NotRightYet, match="too many"):
        exercises.check_largest_model_zero3(lambda n_gpus, gpu, activations: gpu * n_gpus / 16)


def test_activation_checkpointing_reference_passes():
    exercises.check_activation_checkpointing(reference_apply_checkpointing)


def test_activation_checkpointing_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_activation_checkpointing(stub)


def test_activation_checkpointing_unchanged_model_is_wrong():
    with pytest.raises(NotRightYet, match="still saves"):
        exercises.check_activation_checkpointing(lambda model: model)


def test_microbatches_reference_passes():
    exercises.check_microbatches_for_bubble(reference_microbatches_needed)


def test_microbatches_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_microbatches_for_bubble(stub)


def test_microbatches_off_by_one_is_wrong():
    def too_many(n_stages, max_bubble):
        return reference_microbatches_needed(n_stages, max_bubble) + 1

    with pytest.raises(NotRightYet, match="smallest"):
        exercises.check_microbatches_for_bubble(too_many)
