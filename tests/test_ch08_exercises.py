"""Chapter 8's exercise checks, both ways: the reference solutions pass, stubs and typical
wrong answers fail with NotImplementedError or NotRightYet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chapters.ch06_pretraining.trainer import evaluate, sequential_eval_batches
from chapters.ch08_sft import exercises, sft
from chapters.course import NotRightYet

# ----- exercise 1: a new task family -------------------------------------------------------


def upper_word_family(leak: bool = False) -> sft.TaskFamily:
    def sample(rng, held_out):
        while True:
            values = {"word": rng.choice(sft.WORDS)}
            if leak or sft.is_held_out(values) == held_out:
                return values

    return sft.TaskFamily(
        "upper_word",
        ("Write {word} in capital letters.", "Upper-case {word}.", "Shout {word}."),
        sample,
        lambda values: values["word"].upper(),
        lambda values, response: response.strip() == values["word"].upper(),
    )


def test_task_family_reference_passes():
    exercises.check_task_family(upper_word_family())


def test_task_family_stub_is_not_solved():
    def stub():
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        exercises.check_task_family(stub())


def test_task_family_with_held_out_values_seen_in_training_fails():
    with pytest.raises(NotRightYet, match="held-out values"):
        exercises.check_task_family(upper_word_family(leak=True))


def test_task_family_whose_verifier_accepts_anything_fails():
    family = upper_word_family()
    lenient = sft.TaskFamily(
        family.name, family.templates, family.sample, family.answer, lambda v, r: True
    )
    with pytest.raises(NotRightYet, match="wrong answer"):
        exercises.check_task_family(lenient)


def test_task_family_reusing_a_chapter_name_fails():
    family = upper_word_family()
    renamed = sft.TaskFamily(
        "first_item", family.templates, family.sample, family.answer, family.verify
    )
    with pytest.raises(NotRightYet, match="already"):
        exercises.check_task_family(renamed)


# ----- exercise 2: forgetting ----------------------------------------------------------------


def reference_validation_loss(
    model, tokens, context_length=128, batch_size=8, max_batches=4
) -> float:
    return evaluate(model, sequential_eval_batches(tokens, batch_size, context_length, max_batches))


def test_validation_loss_reference_passes():
    exercises.check_pretraining_validation_loss(reference_validation_loss)


def test_validation_loss_stub_is_not_solved():
    def stub(model, tokens, context_length=128, batch_size=8, max_batches=4):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        exercises.check_pretraining_validation_loss(stub)


def test_validation_loss_without_the_shift_fails():
    def unshifted(model, tokens, context_length=128, batch_size=8, max_batches=4):
        flat = torch.from_numpy(
            np.asarray(tokens[: batch_size * context_length * max_batches], dtype=np.int64)
        )
        windows = flat.view(-1, context_length)
        logits = model(windows)
        return F.cross_entropy(logits.flatten(0, 1), windows.flatten()).item()

    with pytest.raises(NotRightYet):
        exercises.check_pretraining_validation_loss(unshifted)


# ----- exercise 3: LoRA ----------------------------------------------------------------------


class ReferenceLoRA(torch.nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = alpha / rank
        self.down = torch.nn.Parameter(torch.randn(rank, base.in_features) * 0.01)
        self.up = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.down.T) @ self.up.T


def test_lora_reference_passes():
    exercises.check_lora_linear(ReferenceLoRA)


def test_lora_stub_is_not_solved():
    class Stub(torch.nn.Module):
        def __init__(self, base, rank, alpha):
            super().__init__()
            raise NotImplementedError

    with pytest.raises(NotImplementedError):
        exercises.check_lora_linear(Stub)


def test_lora_with_random_up_projection_fails():
    class RandomStart(ReferenceLoRA):
        def __init__(self, base, rank, alpha):
            super().__init__(base, rank, alpha)
            self.up.data.normal_()

    with pytest.raises(NotRightYet, match="initialization"):
        exercises.check_lora_linear(RandomStart)


def test_lora_that_leaves_the_base_trainable_fails():
    class Unfrozen(ReferenceLoRA):
        def __init__(self, base, rank, alpha):
            super().__init__(base, rank, alpha)
            base.weight.requires_grad_(True)

    with pytest.raises(NotRightYet, match="freeze"):
        exercises.check_lora_linear(Unfrozen)


def test_lora_without_the_scale_fails():
    class Unscaled(ReferenceLoRA):
        def forward(self, x):
            return self.base(x) + (x @ self.down.T) @ self.up.T

    with pytest.raises(NotRightYet, match="alpha"):
        exercises.check_lora_linear(Unscaled)
