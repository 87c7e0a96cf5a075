"""Chapter 9's exercise checks, both ways: the reference solutions pass, stubs and typical
wrong answers fail with NotImplementedError or NotRightYet."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from chapters.ch04_blocks.model import LanguageModel, ModelConfig
from chapters.ch08_sft.sft import check_answer, encode_example, generate_checkable_tasks
from chapters.ch09_alignment import alignment as al
from chapters.ch09_alignment import exercises
from chapters.course import NotRightYet


class CharTokenizer:
    """Characters -> ids 4..35 (ids 0-3 are the special tokens), enough for tests."""

    def encode(self, text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        return SimpleNamespace(ids=[4 + ord(character) % 32 for character in text])


def tiny_model(seed: int) -> LanguageModel:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=36, context_length=64, d_model=16, n_layers=1, n_heads=2)
    return LanguageModel(config)


def stub(*args):
    raise NotImplementedError


# ----- exercise 1: beta sweep ----------------------------------------------------------------


def beta_sweep(betas, chosen, rejected):
    zeros = torch.zeros_like(chosen)
    rows = []
    for beta in betas:
        loss, metrics = al.dpo_loss(chosen, rejected, zeros, zeros, beta)
        rows.append((loss.item(), metrics["rewards/margins"]))
    return rows


def test_beta_sweep_reference_passes():
    exercises.check_beta_sweep(beta_sweep)


def test_beta_sweep_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_beta_sweep(stub)


def test_beta_sweep_that_forgets_beta_is_wrong():
    def forgets_beta(betas, chosen, rejected):
        return beta_sweep([1.0] * len(betas), chosen, rejected)

    with pytest.raises(NotRightYet):
        exercises.check_beta_sweep(forgets_beta)


# ----- exercise 2: IPO -----------------------------------------------------------------------


def ipo_loss(pc, pr, rc, rr, beta):
    return (((pc - rc) - (pr - rr) - 1 / (2 * beta)) ** 2).mean()


def test_ipo_reference_passes():
    exercises.check_ipo_loss(ipo_loss)


def test_ipo_stub_is_not_solved():
    with pytest.raises(NotImplementedError):
        exercises.check_ipo_loss(stub)


def test_ipo_with_the_target_beta_instead_of_one_over_two_beta_is_wrong():
    def wrong(pc, pr, rc, rr, beta):
        return (((pc - rc) - (pr - rr) - beta) ** 2).mean()

    with pytest.raises(NotRightYet):
        exercises.check_ipo_loss(wrong)


# ----- exercise 3: reward hacking ------------------------------------------------------------


@pytest.fixture(scope="module")
def setting():
    reward_model = al.RewardModel(tiny_model(3))
    torch.nn.init.normal_(reward_model.head.weight)
    records = [r for r in generate_checkable_tasks(3, 0, seed=1) if r.split == "train"]
    return reward_model, CharTokenizer(), records


def find_overrated_response(reward_model, tokenizer, records):
    context = reward_model.config.context_length
    for record in records:
        answer = al.reference_answer(record.task)
        candidates = [other.response for other in records] + [answer + answer, answer + "x"]
        wrong = [c for c in candidates if c.strip() and not check_answer(record.task, c)]
        examples = [encode_example(tokenizer, record.prompt, t, context) for t in [answer, *wrong]]
        with torch.no_grad():
            rewards = reward_model.score(examples)
        best = int(rewards[1:].argmax())
        if rewards[1 + best] > rewards[0]:
            return record, wrong[best]
    raise AssertionError("the test's random reward model should over-rate something")


def test_reward_hacking_reference_passes(setting):
    exercises.check_overrated_response(find_overrated_response, *setting)


def test_reward_hacking_stub_is_not_solved(setting):
    with pytest.raises(NotImplementedError):
        exercises.check_overrated_response(stub, *setting)


def test_reward_hacking_with_a_correct_answer_is_wrong(setting):
    def correct_answer(reward_model, tokenizer, records):
        return records[0], records[0].response

    with pytest.raises(NotRightYet, match="correct answer"):
        exercises.check_overrated_response(correct_answer, *setting)


# ----- exercise 4: where the probability goes ------------------------------------------------


@pytest.fixture(scope="module")
def two_models_and_pairs():
    records = [r for r in generate_checkable_tasks(2, 0, seed=2) if r.split == "train"]
    pairs = [
        al.PreferencePair(r.prompt, r.response, r.response + r.response, "train", "rambling")
        for r in records
    ]
    encoded, _ = al.encode_pairs(pairs, CharTokenizer(), 64)
    return tiny_model(5), tiny_model(6), encoded


def chosen_logprob_change(policy, reference, pairs):
    with torch.no_grad():
        policy_chosen, _ = al.pair_logprobs(policy, pairs)
        reference_chosen, _ = al.pair_logprobs(reference, pairs)
    return (policy_chosen - reference_chosen).mean().item()


def test_chosen_logprob_change_reference_passes(two_models_and_pairs):
    exercises.check_chosen_logprob_change(chosen_logprob_change, *two_models_and_pairs)


def test_chosen_logprob_change_stub_is_not_solved(two_models_and_pairs):
    with pytest.raises(NotImplementedError):
        exercises.check_chosen_logprob_change(stub, *two_models_and_pairs)


def test_chosen_logprob_change_with_the_sign_flipped_is_wrong(two_models_and_pairs):
    def flipped(policy, reference, pairs):
        return -chosen_logprob_change(policy, reference, pairs)

    with pytest.raises(NotRightYet, match="sign"):
        exercises.check_chosen_logprob_change(flipped, *two_models_and_pairs)


def test_chosen_logprob_change_of_the_rejected_answers_is_wrong(two_models_and_pairs):
    def rejected_instead(policy, reference, pairs):
        with torch.no_grad():
            _, policy_rejected = al.pair_logprobs(policy, pairs)
            _, reference_rejected = al.pair_logprobs(reference, pairs)
        return (policy_rejected - reference_rejected).mean().item()

    with pytest.raises(NotRightYet):
        exercises.check_chosen_logprob_change(rejected_instead, *two_models_and_pairs)
