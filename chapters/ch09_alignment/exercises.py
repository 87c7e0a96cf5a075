"""Checks for chapter 9's exercises. Each check raises NotRightYet with a hint when the answer
is wrong; a stub raises NotImplementedError, which `check_exercise` reports as "not solved"."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from chapters.ch08_sft.sft import SFTRecord, check_answer, encode_example
from chapters.ch09_alignment.alignment import (
    EncodedPair,
    RewardModel,
    dpo_loss,
    pair_logprobs,
    reference_answer,
)
from chapters.course import NotRightYet


def _log_ratios(seed: int, count: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randn(count, generator=generator) * 3
    rejected = torch.randn(count, generator=generator) * 3 - 1
    return chosen, rejected


def check_beta_sweep(beta_sweep: Callable) -> None:
    """Exercise 1: the DPO loss and the reward accuracy of fixed log-ratios, for each beta."""
    for seed in (0, 1):
        chosen, rejected = _log_ratios(seed)
        betas = [0.01, 0.1, 0.5, 2.0]
        rows = beta_sweep(betas, chosen, rejected)
        if not isinstance(rows, list) or len(rows) != len(betas):
            raise NotRightYet(f"return a list with one (loss, margin) per beta ({len(betas)})")
        for beta, row in zip(betas, rows, strict=True):
            zeros = torch.zeros_like(chosen)
            loss, metrics = dpo_loss(chosen, rejected, zeros, zeros, beta)
            got_loss, got_margin = (float(value) for value in row)
            if not math.isclose(got_loss, loss.item(), rel_tol=1e-4, abs_tol=1e-6):
                raise NotRightYet(
                    f"at beta={beta} the loss should be {loss.item():.4f}, got {got_loss:.4f}: "
                    "the implicit reward is beta times the log-ratio"
                )
            if not math.isclose(got_margin, metrics["rewards/margins"], rel_tol=1e-4, abs_tol=1e-6):
                raise NotRightYet(
                    f"at beta={beta} the mean reward margin should be "
                    f"{metrics['rewards/margins']:.4f}, got {got_margin:.4f}"
                )


def check_ipo_loss(ipo_loss: Callable) -> None:
    """Exercise 2: the IPO loss (Azar et al. 2023): (h - 1 / (2 beta))^2 averaged, with
    h = (log pi/pi_ref of chosen) - (log pi/pi_ref of rejected)."""
    generator = torch.Generator().manual_seed(3)
    pc, pr, rc, rr = (torch.randn(16, generator=generator) for _ in range(4))
    for beta in (0.1, 0.5):
        h = (pc - rc) - (pr - rr)
        expected = ((h - 1 / (2 * beta)) ** 2).mean()
        got = ipo_loss(pc, pr, rc, rr, beta)
        if not isinstance(got, torch.Tensor) or got.dim() != 0:
            raise NotRightYet("return the loss as a scalar tensor (the mean over pairs)")
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-6):
            raise NotRightYet(
                f"at beta={beta} expected {expected.item():.4f}, got {got.item():.4f}: IPO "
                "regresses the log-ratio margin h onto 1 / (2 beta) with a squared error"
            )
    target = torch.tensor([1 / (2 * 0.25)])
    zero = torch.zeros(1)
    if ipo_loss(target, zero, zero, zero, 0.25).abs().item() > 1e-6:
        raise NotRightYet("the loss must be 0 when the margin equals 1 / (2 beta)")


def check_overrated_response(
    find_overrated_response: Callable,
    reward_model: RewardModel,
    tokenizer,
    records: Sequence[SFTRecord],
) -> None:
    """Exercise 3: a wrong answer the reward model scores above the correct one."""
    result = find_overrated_response(reward_model, tokenizer, records)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise NotRightYet("return a tuple (record, response)")
    record, response = result
    if record not in records:
        raise NotRightYet("the record must be one of the records you were given")
    if not isinstance(response, str) or not response.strip():
        raise NotRightYet("the response must be a non-empty string")
    if check_answer(record.task, response):
        raise NotRightYet(
            f"{response!r} is a correct answer to {record.prompt!r}: reward hacking means a "
            "high reward for a WRONG answer"
        )
    context = reward_model.config.context_length
    examples = [
        encode_example(tokenizer, record.prompt, reference_answer(record.task), context),
        encode_example(tokenizer, record.prompt, response, context),
    ]
    with torch.no_grad():
        correct, hacked = reward_model.score(examples).tolist()
    if hacked <= correct:
        raise NotRightYet(
            f"the reward model gives {response!r} {hacked:.3f}, not more than the correct answer "
            f"({correct:.3f}): search more candidates (other words, repeats, brackets)"
        )


def check_chosen_logprob_change(
    chosen_logprob_change: Callable,
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    pairs: Sequence[EncodedPair],
) -> None:
    """Exercise 4: the mean over pairs of log pi(chosen) - log pi_ref(chosen), summed over
    each chosen response's tokens."""
    with torch.no_grad():
        policy_chosen, _ = pair_logprobs(policy, pairs)
        reference_chosen, _ = pair_logprobs(reference, pairs)
    expected = (policy_chosen - reference_chosen).mean().item()
    got = float(chosen_logprob_change(policy, reference, pairs))
    if math.isclose(got, -expected, rel_tol=1e-3, abs_tol=1e-4) and abs(expected) > 1e-4:
        raise NotRightYet("the sign is flipped: policy minus reference, so a fall is negative")
    if not math.isclose(got, expected, rel_tol=1e-3, abs_tol=1e-4):
        raise NotRightYet(
            f"expected {expected:.4f}, got {got:.4f}: score only the chosen responses "
            "(pair_logprobs gives summed response log-probs) and average over pairs"
        )
