"""Checks for the chapter 7 exercises. Each raises NotRightYet with a hint when an answer is wrong.

The checks run in the notebook's own process: the data-parallel one builds a one-process gloo
group (no launcher needed) and counts the gradient all-reduces DDP performs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from chapters.ch07_distributed.distributed import (
    ParallelLayout,
    RunConfig,
    batch_source,
    build_model,
    language_model_loss,
    load_training_tokens,
    model_state_bytes,
    pipeline_bubble_fraction,
)
from chapters.course import NotRightYet

TINY = RunConfig(
    d_model=32, n_layers=2, n_heads=2, vocab_size=256, context_length=16, global_batch_size=8
)


@contextlib.contextmanager
def single_process_group():
    """A process group of one rank, made without torchrun (a HashStore needs no port)."""
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def _micro_batches(n_micro: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple]:
    inputs, labels = batch_source(load_training_tokens(TINY), TINY)(0, 0)  # (B, T) each
    size = TINY.global_batch_size // n_micro
    micro = [(inputs[i : i + size], labels[i : i + size]) for i in range(0, len(inputs), size)]
    return micro, (inputs, labels)


# ---------------------------------------------------------------------------------------
# Exercise 1: gradient accumulation with no_sync
# ---------------------------------------------------------------------------------------


def check_gradient_accumulation(accumulate_and_step: Callable) -> None:
    """`accumulate_and_step(ddp_model, optimizer, micro_batches)` must take one optimizer step
    equal to a full-batch step, while all-reducing gradients only once."""
    n_micro = 4
    micro, (inputs, labels) = _micro_batches(n_micro)
    reference = build_model(TINY)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    language_model_loss(reference(inputs), labels).backward()
    optimizer.step()

    with single_process_group():
        model = DistributedDataParallel(build_model(TINY))
        calls = []

        def counting_hook(state, bucket):
            calls.append(bucket.index())
            future = torch.futures.Future()
            future.set_result(bucket.buffer())  # one rank: the average is the gradient itself
            return future

        model.register_comm_hook(None, counting_hook)
        # how many buckets one ordinary backward communicates (then forget its gradients)
        language_model_loss(model(inputs), labels).backward()
        model.zero_grad(set_to_none=True)
        buckets_per_backward = len(calls)
        calls.clear()
        student_optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        accumulate_and_step(model, student_optimizer, micro)

    if len(calls) == 0:
        raise NotRightYet(
            "No gradient was all-reduced at all: the last micro-batch's backward "
            "must run outside no_sync() so that DDP synchronises once."
        )
    if len(calls) > buckets_per_backward:
        raise NotRightYet(
            f"DDP all-reduced gradients {len(calls) // buckets_per_backward} times for "
            f"{n_micro} micro-batches. Run the backward of every micro-batch but the last "
            "inside `with model.no_sync():` so that only the last one communicates."
        )
    for (name, expected), actual in zip(
        reference.named_parameters(), model.module.parameters(), strict=True
    ):
        if not torch.allclose(expected, actual, atol=1e-5, rtol=1e-4):
            raise NotRightYet(
                f"After your step, {name} differs from one step on the whole batch. Did you "
                f"divide each micro-batch loss by the number of micro-batches ({n_micro}) and "
                "call optimizer.step() (and zero_grad) exactly once?"
            )


# ---------------------------------------------------------------------------------------
# Exercise 2: the largest model that fits with ZeRO-3
# ---------------------------------------------------------------------------------------


def check_largest_model_zero3(largest_model: Callable[[int, float, float], float]) -> None:
    """`largest_model(n_gpus, gpu_bytes, activation_bytes)` -> parameters that just fit."""
    cases = [(8, 80e9, 0.0), (64, 40e9, 0.0), (8, 80e9, 20e9), (1, 24e9, 4e9)]
    for n_gpus, gpu_bytes, activations in cases:
        answer = largest_model(n_gpus, gpu_bytes, activations)
        if not isinstance(answer, int | float) or not math.isfinite(answer) or answer <= 0:
            raise NotRightYet(f"Return a positive number of parameters, not {answer!r}.")
        layout = ParallelLayout(data_parallel=n_gpus, zero_stage=3)
        used = model_state_bytes(answer, layout)["total"] + activations
        if used > gpu_bytes * 1.001:
            raise NotRightYet(
                f"With {n_gpus} GPUs of {gpu_bytes / 1e9:.0f} GB, {answer / 1e9:.2f}B parameters "
                f"need {used / 1e9:.1f} GB per GPU: too many. ZeRO-3 splits all 16 bytes per "
                "parameter over the GPUs, and the activations stay on every GPU."
            )
        more = model_state_bytes(answer * 1.02, layout)["total"] + activations
        if more <= gpu_bytes:
            raise NotRightYet(
                f"With {n_gpus} GPUs of {gpu_bytes / 1e9:.0f} GB, {answer / 1e9:.2f}B parameters "
                "leave room for more: a 2% larger model still fits. Solve "
                "16 * params / n_gpus + activations = gpu_bytes for params."
            )


# ---------------------------------------------------------------------------------------
# Exercise 3: activation checkpointing
# ---------------------------------------------------------------------------------------


def saved_activation_bytes(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass during one forward (parameters excluded)."""
    parameter_pointers = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if tensor.data_ptr() not in parameter_pointers:
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = language_model_loss(model(inputs), labels)
    loss.backward()
    return total


def check_activation_checkpointing(apply_checkpointing: Callable[[nn.Module], nn.Module]) -> None:
    """`apply_checkpointing(model)` wraps every block so that it recomputes its activations."""
    config = RunConfig(
        d_model=64, n_layers=4, n_heads=4, vocab_size=64, context_length=64, global_batch_size=4
    )
    inputs, labels = batch_source(load_training_tokens(config), config)(0, 0)
    plain = build_model(config)
    plain_bytes = saved_activation_bytes(plain, inputs, labels)
    checkpointed = apply_checkpointing(build_model(config))
    if not isinstance(checkpointed, nn.Module):
        raise NotRightYet("Return the model (with its blocks wrapped), not None.")
    checkpointed_bytes = saved_activation_bytes(checkpointed, inputs, labels)
    plain_gradients = [p.grad for p in plain.parameters()]
    for index, parameter in enumerate(checkpointed.parameters()):
        if parameter.grad is None:
            raise NotRightYet(
                "Some parameters got no gradient: the blocks must still take part "
                "in autograd (no torch.no_grad() around them)."
            )
        if not torch.allclose(parameter.grad, plain_gradients[index], atol=1e-5, rtol=1e-4):
            raise NotRightYet(
                "The gradients changed: checkpointing must recompute the same "
                "forward pass, not a different one."
            )
    if checkpointed_bytes > 0.6 * plain_bytes:
        raise NotRightYet(
            f"The checkpointed model still saves {checkpointed_bytes / 1024:.0f} KiB for the "
            f"backward pass, {checkpointed_bytes / plain_bytes:.0%} of the "
            f"{plain_bytes / 1024:.0f} KiB without checkpointing. Wrap each block's forward in "
            "torch.utils.checkpoint.checkpoint(..., use_reentrant=False)."
        )


# ---------------------------------------------------------------------------------------
# Exercise 4: how many micro-batches hide the pipeline bubble
# ---------------------------------------------------------------------------------------


def check_microbatches_for_bubble(microbatches_needed: Callable[[int, float], int]) -> None:
    """`microbatches_needed(n_stages, max_bubble)` -> the fewest micro-batches with a small bubble."""
    for n_stages, max_bubble in [(2, 0.1), (4, 0.1), (8, 0.05), (16, 0.2), (1, 0.1)]:
        answer = microbatches_needed(n_stages, max_bubble)
        if not isinstance(answer, int) or answer < 1:
            raise NotRightYet(
                f"Return a whole number of micro-batches (at least 1), not {answer!r}."
            )
        if pipeline_bubble_fraction(n_stages, answer) > max_bubble:
            raise NotRightYet(
                f"With {n_stages} stages and {answer} micro-batches the bubble is "
                f"{pipeline_bubble_fraction(n_stages, answer):.1%}, above {max_bubble:.0%}."
            )
        if answer > 1 and pipeline_bubble_fraction(n_stages, answer - 1) <= max_bubble:
            raise NotRightYet(
                f"{answer - 1} micro-batches already keep the bubble of {n_stages} "
                f"stages under {max_bubble:.0%}: find the smallest number."
            )
