"""Checks for chapter 6's exercises. Each check raises NotRightYet with a hint when an answer
is wrong; a stub's NotImplementedError passes through (check_exercise reports it)."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from chapters.course import NotRightYet

# ---- 1. label smoothing -------------------------------------------------------------------


def check_label_smoothing(loss_fn: Callable[..., torch.Tensor]) -> None:
    """loss_fn(logits (N, V), labels (N,), smoothing, ignore_index=-100) must match
    F.cross_entropy(..., label_smoothing=smoothing) on random inputs."""
    generator = torch.Generator().manual_seed(6)
    for smoothing in (0.0, 0.1, 0.3):
        logits = torch.randn(40, 17, generator=generator) * 4
        labels = torch.randint(0, 17, (40,), generator=generator)
        labels[::7] = -100
        expected = F.cross_entropy(logits, labels, ignore_index=-100, label_smoothing=smoothing)
        got = loss_fn(logits, labels, smoothing)
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            raise NotRightYet("Return the mean loss as a one-element tensor.")
        if not torch.allclose(got.float(), expected, atol=1e-5):
            raise NotRightYet(
                f"With smoothing={smoothing} the loss is {float(got):.5f}, expected "
                f"{float(expected):.5f}. The target is (1 - s) on the true token plus s / V on "
                "every token (the true one included); positions labelled -100 are skipped."
            )


# ---- 2. the largest stable learning rate --------------------------------------------------

STABILITY_STEPS = 40


@functools.lru_cache(maxsize=32)
def stability_run(learning_rate: float) -> tuple[float, ...]:
    """Per-step training losses of a small model trained for 40 steps at `learning_rate`
    (no warm-up, no clipping, so that too large a rate shows). Cached: each rate runs once."""
    from chapters.ch02_tokenizer.tokenizer import load_tokens
    from chapters.ch04_blocks.model import LanguageModel, ModelConfig
    from chapters.ch06_pretraining.trainer import Trainer, TrainingConfig, random_window_batches

    tokens = np.asarray(load_tokens("train")[:200_000])
    config = TrainingConfig(
        steps=STABILITY_STEPS,
        batch_size=8,
        context_length=32,
        learning_rate=learning_rate,
        min_lr=learning_rate,
        warmup_steps=0,
        grad_clip=0.0,
        eval_interval=0,
        log_interval=STABILITY_STEPS,
        spike_factor=3.0,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs faster on one thread
    torch.manual_seed(0)
    model = LanguageModel(
        ModelConfig(vocab_size=4096, context_length=32, d_model=32, n_layers=1, n_heads=2)
    )
    trainer = Trainer(
        model,
        config,
        random_window_batches(tokens, 8, 32, seed=0),
        device="cpu",
        show_progress=False,
    )
    try:
        history = trainer.fit()
    finally:
        torch.set_num_threads(threads)
    losses = list(history.step_losses)
    if history.diverged:
        losses.append(float("nan"))  # the step that diverged
    return tuple(losses)


LR_CANDIDATES = (1e-2, 1e-1, 1.0, 10.0)


def check_largest_stable_lr(
    is_stable: Callable[[Sequence[float]], bool],
    largest_stable_lr: Callable[[Sequence[float]], float | None],
) -> None:
    """is_stable(losses) -> bool; largest_stable_lr(candidates) -> the largest stable rate."""
    cases = {  # name: (losses, stable?)
        "a run that improves": ([5.0] * 5 + [4.0] * (STABILITY_STEPS - 5), True),
        "a run that got worse": ([5.0] * 5 + [6.0] * (STABILITY_STEPS - 5), False),
        "a run with a NaN": ([5.0] * 10 + [float("nan")] + [4.0] * (STABILITY_STEPS - 11), False),
        "a run stopped early": ([5.0, 4.0, 3.0], False),
    }
    for name, (losses, stable) in cases.items():
        if bool(is_stable(losses)) != stable:
            raise NotRightYet(
                f"is_stable is wrong for {name}. Stable means: all {STABILITY_STEPS} steps ran, "
                "every loss is finite, and the mean of the last 5 is below the first loss."
            )
    # is_stable is right by now: the answer must be stable and every larger candidate not
    got = largest_stable_lr(LR_CANDIDATES)
    larger = [lr for lr in LR_CANDIDATES if got is None or lr > got]
    if (got is not None and (got not in LR_CANDIDATES or not is_stable(stability_run(got)))) or any(
        is_stable(stability_run(lr)) for lr in larger
    ):
        raise NotRightYet(
            f"largest_stable_lr{LR_CANDIDATES} returned {got}, which is not the largest stable "
            "rate. Run stability_run(lr) for each candidate and keep the largest stable one."
        )


# ---- 3. predicting a 2x larger model's loss ------------------------------------------------


def check_predicted_loss(predict_loss: Callable, fit) -> None:
    """predict_loss(fit, budget_index, params) -> the loss that budget's fitted parabola gives
    for a model of `params` parameters (trained with the same compute)."""
    # on the student's fit: the parabola at a budget's optimum gives that budget's optimal loss
    for index in range(len(fit.budgets)):
        got = float(predict_loss(fit, index, fit.optimal_params[index]))
        if not math.isclose(got, fit.optimal_losses[index], rel_tol=1e-6, abs_tol=1e-9):
            raise NotRightYet(
                f"At budget {index}'s optimum N = {fit.optimal_params[index]:,.0f} you predict "
                f"{got:.4f}, but the fit's optimal loss there is {fit.optimal_losses[index]:.4f}. "
                "The parabola's variable is log10(N), and fit.parabolas[i] holds (a, b, c) of "
                "a x^2 + b x + c."
            )
    # on parabolas in vertex form a (x - x0)^2 + L0, whose values are known in closed form
    vertices = [(0.5 + i, 6.0 + i, 3.0 - 0.1 * i) for i in range(len(fit.budgets))]
    synthetic = dataclasses.replace(
        fit,
        parabolas=[[a, -2 * a * x0, a * x0**2 + low] for a, x0, low in vertices],
        optimal_params=[10**x0 for _, x0, _ in vertices],
        optimal_losses=[low for _, _, low in vertices],
    )
    for index, (a, x0, low) in enumerate(vertices):
        for factor in (0.5, 2.0, 10.0):
            expected = low + a * math.log10(factor) ** 2
            got = float(predict_loss(synthetic, index, 10**x0 * factor))
            if not math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9):
                raise NotRightYet(
                    f"For the parabola {a:g} (x - {x0:g})^2 + {low:g} in x = log10(N) and "
                    f"N = {10**x0 * factor:,.0f} you predict {got:.4f}, not {expected:.4f}."
                )
