"""Checks for chapter 8's exercises. Each check raises NotRightYet with a hint when the answer
is wrong; a stub raises NotImplementedError, which `check_exercise` reports as "not solved"."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from chapters.ch06_pretraining.trainer import evaluate, sequential_eval_batches
from chapters.ch08_sft import sft
from chapters.course import NotRightYet


def check_task_family(family: sft.TaskFamily) -> None:
    """Exercise 1: a new checkable task family."""
    # judged by what it has, not by its class: the notebook defines its own TaskFamily
    fields = ("name", "templates", "sample", "answer", "verify")
    if missing := [name for name in fields if not hasattr(family, name)]:
        raise NotRightYet(
            f"return a TaskFamily (name, templates, sample, answer, verify); "
            f"a {type(family).__name__} has no {', '.join(missing)}"
        )
    if family.name in sft.TASK_FAMILIES:
        raise NotRightYet(f"{family.name!r} is already a family of the chapter: pick a new name")
    if len(family.templates) < 3:
        raise NotRightYet(
            "give at least three templates: two or more to train on and one held out (the last)"
        )
    values_by_split: dict[bool, list[str]] = {False: [], True: []}
    for held_out in (False, True):
        rng = random.Random(0)
        for _ in range(200):
            values = family.sample(rng, held_out)
            if not isinstance(values, dict):
                raise NotRightYet("sample(rng, held_out) must return a dict of template values")
            for template in family.templates:
                try:
                    template.format(**values)
                except (KeyError, IndexError) as error:
                    raise NotRightYet(
                        f"template {template!r} needs {error}, which sample() does not provide"
                    ) from error
            answer = family.answer(values)
            if not isinstance(answer, str) or not answer.strip():
                raise NotRightYet(f"answer({values}) must be a non-empty string, got {answer!r}")
            if not family.verify(values, answer):
                raise NotRightYet(
                    f"verify() rejects the family's own answer {answer!r} for {values}"
                )
            if family.verify(values, answer + " extra"):
                raise NotRightYet(f"verify() accepts a wrong answer ({answer + ' extra'!r})")
            values_by_split[held_out].append(repr(sorted(values.items())))
    overlap = set(values_by_split[False]) & set(values_by_split[True])
    if overlap:
        raise NotRightYet(
            f"held-out values also appear in training ({sorted(overlap)[0]}): sample() must draw "
            "held-out values from a pool that training never sees"
        )


def _tiny_language_model(seed: int, vocab: int = 50) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(vocab, 16), nn.Tanh(), nn.Linear(16, vocab))


def check_pretraining_validation_loss(pretraining_validation_loss) -> None:
    """Exercise 2: the loss on the pre-training validation tokens, to measure forgetting."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, size=5000).astype(np.uint16)
    for seed, context_length, batch_size, max_batches in ((0, 16, 4, 3), (1, 32, 2, 5)):
        model = _tiny_language_model(seed)
        expected = evaluate(
            model, sequential_eval_batches(tokens, batch_size, context_length, max_batches)
        )
        got = pretraining_validation_loss(
            model,
            tokens,
            context_length=context_length,
            batch_size=batch_size,
            max_batches=max_batches,
        )
        if not isinstance(got, float):
            raise NotRightYet(
                f"return a Python float (use .item() or float()), got {type(got).__name__}"
            )
        if abs(got - expected) > 1e-4:
            raise NotRightYet(
                f"got {got:.4f}, expected {expected:.4f} (context {context_length}, batch "
                f"{batch_size}, {max_batches} batches). Take non-overlapping windows from the "
                "start, predict token t+1 from tokens up to t, and average over every predicted token."
            )


def check_lora_linear(lora_linear_class) -> None:
    """Exercise 3: a LoRA adapter around a frozen nn.Linear."""
    torch.manual_seed(0)
    base = nn.Linear(12, 8, bias=False)
    original = base.weight.detach().clone()
    layer = lora_linear_class(base, rank=2, alpha=4.0)
    x = torch.randn(3, 5, 12)
    if not torch.allclose(layer(x), base(x), atol=1e-6):
        raise NotRightYet(
            "at initialization the adapter must change nothing: start B (the up-projection) at zero"
        )
    trainable = [p for p in layer.parameters() if p.requires_grad]
    if base.weight.requires_grad:
        raise NotRightYet("freeze the base weight (requires_grad_(False)): only A and B train")
    if sum(p.numel() for p in trainable) != 2 * (12 + 8):
        raise NotRightYet(
            f"a rank-2 adapter on a 12 -> 8 layer has 2 * (12 + 8) = 40 trainable numbers, "
            f"found {sum(p.numel() for p in trainable)}"
        )
    shapes = sorted(tuple(p.shape) for p in trainable)
    if shapes != [(2, 12), (8, 2)]:
        raise NotRightYet(
            f"expected A of shape (rank, in) = (2, 12) and B of (out, rank) = (8, 2), got {shapes}"
        )
    with torch.no_grad():
        for p in trainable:
            p.normal_()
    down = next(p for p in trainable if tuple(p.shape) == (2, 12))
    up = next(p for p in trainable if tuple(p.shape) == (8, 2))
    expected = x @ original.T + (4.0 / 2) * (x @ down.T @ up.T)
    if not torch.allclose(layer(x), expected, atol=1e-4):
        raise NotRightYet("the output must be base(x) + (alpha / rank) * x A^T B^T")
    layer(x).sum().backward()
    if base.weight.grad is not None:
        raise NotRightYet("the base weight received a gradient: it must stay frozen")
