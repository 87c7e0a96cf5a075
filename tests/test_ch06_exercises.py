"""Chapter 6 exercises: the reference solutions pass, stubs and typical mistakes do not."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chapters.ch06_pretraining import exercises
from chapters.ch06_pretraining.scaling import IsoFLOPFit
from chapters.course import NotRightYet


def smoothed_cross_entropy(logits, labels, smoothing, ignore_index=-100):
    keep = labels != ignore_index
    log_probs = torch.log_softmax(logits.float(), dim=-1)[keep]
    nll = -log_probs.gather(-1, labels[keep].unsqueeze(-1)).squeeze(-1)
    uniform = -log_probs.mean(dim=-1)
    return ((1 - smoothing) * nll + smoothing * uniform).mean()


def test_label_smoothing_reference_passes():
    exercises.check_label_smoothing(smoothed_cross_entropy)


def test_label_smoothing_without_smoothing_fails():
    def plain(logits, labels, smoothing, ignore_index=-100):
        return F.cross_entropy(logits, labels, ignore_index=ignore_index)

    with pytest.raises(NotRightYet):
        exercises.check_label_smoothing(plain)


def test_label_smoothing_stub_is_not_implemented():
    def stub(logits, labels, smoothing, ignore_index=-100):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        exercises.check_label_smoothing(stub)


def is_stable(losses):
    return (
        len(losses) == exercises.STABILITY_STEPS
        and all(math.isfinite(x) for x in losses)
        and float(np.mean(losses[-5:])) < losses[0]
    )


def largest_stable_lr(candidates):
    stable = [lr for lr in candidates if is_stable(exercises.stability_run(lr))]
    return max(stable) if stable else None


def test_largest_stable_lr_reference_passes():
    exercises.check_largest_stable_lr(is_stable, largest_stable_lr)


def test_stability_that_ignores_nan_fails():
    def finite_blind(losses):
        return len(losses) == exercises.STABILITY_STEPS and losses[-1] <= losses[0]

    with pytest.raises(NotRightYet):
        exercises.check_largest_stable_lr(finite_blind, largest_stable_lr)


def test_stability_that_ignores_an_early_stop_fails():
    def length_blind(losses):
        return all(math.isfinite(x) for x in losses) and np.mean(losses[-5:]) < losses[0]

    with pytest.raises(NotRightYet):
        exercises.check_largest_stable_lr(length_blind, largest_stable_lr)


def test_largest_stable_lr_that_returns_the_largest_candidate_fails():
    with pytest.raises(NotRightYet):
        exercises.check_largest_stable_lr(is_stable, lambda candidates: max(candidates))


def synthetic_fit() -> IsoFLOPFit:
    parabolas = [[0.5, -3.9, 9.6], [0.4, -3.3, 8.6]]
    vertices = [-b / (2 * a) for a, b, _ in parabolas]  # log10 of each budget's optimal N
    return IsoFLOPFit(
        budgets=[1e10, 3e10],
        optimal_params=[10**x for x in vertices],
        optimal_tokens=[2e5, 3.5e5],
        optimal_losses=[float(np.polyval(p, x)) for p, x in zip(parabolas, vertices, strict=True)],
        parabolas=parabolas,
        params_exponent=0.5,
        params_coefficient=0.08,
        tokens_exponent=0.5,
    )


def predict_loss(fit, budget_index, params):
    return float(np.polyval(fit.parabolas[budget_index], math.log10(params)))


def test_predicted_loss_reference_passes():
    exercises.check_predicted_loss(predict_loss, synthetic_fit())


def test_predicted_loss_with_natural_log_fails():
    def natural_log(fit, budget_index, params):
        return float(np.polyval(fit.parabolas[budget_index], math.log(params)))

    with pytest.raises(NotRightYet):
        exercises.check_predicted_loss(natural_log, synthetic_fit())
