"""Chapter 9: preference pairs, the DPO loss, the reward model, PPO's pieces, bad input.

Everything runs on tiny random models and a character tokenizer: no artifacts needed."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from chapters.ch02_tokenizer.tokenizer import ASSISTANT_ID, EOT_ID, USER_ID
from chapters.ch04_blocks.model import LanguageModel, ModelConfig
from chapters.ch08_sft.sft import check_answer, collate, encode_example, generate_checkable_tasks
from chapters.ch09_alignment import alignment as al


class CharTokenizer:
    """Characters -> ids 4..35 (ids 0-3 are the special tokens), enough for tests."""

    vocab_size = 36

    def encode(self, text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        return SimpleNamespace(ids=[4 + ord(character) % 32 for character in text])

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(96 + (i - 4) % 32) for i in ids if i >= 4)


def tiny_model(seed: int = 0, vocab_size: int = 36) -> LanguageModel:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=vocab_size, context_length=64, d_model=16, n_layers=1, n_heads=2
    )
    return LanguageModel(config)


def tiny_pairs(count: int = 4) -> list[al.EncodedPair]:
    tokenizer = CharTokenizer()
    pairs = [
        al.PreferencePair(f"q{i}?", f" yes{i}", f" no, {i}", "train", "wrong") for i in range(count)
    ]
    return al.encode_pairs(pairs, tokenizer, 64)[0]


# ----- log-probabilities over response tokens ------------------------------------------------


def test_sequence_logprobs_equal_minus_cross_entropy_summed_over_response_tokens():
    model = tiny_model()
    batch = collate([pair.chosen for pair in tiny_pairs()])
    got = al.sequence_logprobs(model, batch.inputs, batch.labels)
    logits = model(batch.inputs)
    per_token = F.cross_entropy(
        logits.transpose(1, 2), batch.labels, ignore_index=-100, reduction="none"
    )
    assert torch.allclose(got, -per_token.sum(dim=1), atol=1e-5)


def test_sequence_logprobs_ignore_the_prompt_tokens():
    tokenizer, model = CharTokenizer(), tiny_model()
    short = collate([encode_example(tokenizer, "a?", " yes")])
    # Changing the prompt changes the context, so compare label masks instead: only the
    # response and the end token are scored.
    _, mask = al.token_logprobs(model, short.inputs, short.labels)
    assert int(mask.sum()) == len(" yes") + 1


# ----- the DPO loss --------------------------------------------------------------------------


def test_dpo_loss_is_ln2_when_policy_equals_reference():
    model = tiny_model()
    chosen, rejected = al.pair_logprobs(model, tiny_pairs())
    loss, metrics = al.dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta=0.3)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    assert metrics["rewards/margins"] == 0.0


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    generator = torch.Generator().manual_seed(1)
    chosen = torch.randn(8, generator=generator, requires_grad=True)
    rejected = torch.randn(8, generator=generator, requires_grad=True)
    reference = torch.randn(8, generator=generator)
    loss, _ = al.dpo_loss(chosen, rejected, reference, reference, beta=0.5)
    loss.backward()
    assert (chosen.grad < 0).all()  # descending the loss raises log p(chosen)
    assert (rejected.grad > 0).all()  # and lowers log p(rejected)


def test_dpo_step_on_a_tiny_model_raises_the_margin():
    policy, pairs = tiny_model(), tiny_pairs()
    reference = al.frozen_copy(policy)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    ref_c, ref_r = al.pair_logprobs(reference, pairs)
    before = al.dpo_loss(*al.pair_logprobs(policy, pairs), ref_c, ref_r, beta=0.1)[0]
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after, metrics = al.dpo_loss(*al.pair_logprobs(policy, pairs), ref_c, ref_r, beta=0.1)
    assert after.item() < before.item()
    assert metrics["rewards/margins"] > 0


def test_dpo_loss_matches_a_hand_computed_value_on_a_tiny_model():
    tokenizer, policy, reference = CharTokenizer(), tiny_model(0), tiny_model(1)
    chosen = encode_example(tokenizer, "q?", " ab")
    rejected = encode_example(tokenizer, "q?", " c")

    def by_hand(model, example):
        ids = torch.tensor([example.token_ids])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids)[0], dim=-1)
        return sum(
            log_probs[t - 1, example.token_ids[t]].item()
            for t in range(example.response_start, len(example.token_ids))
        )

    beta = 0.7
    z = beta * (
        (by_hand(policy, chosen) - by_hand(reference, chosen))
        - (by_hand(policy, rejected) - by_hand(reference, rejected))
    )
    expected = math.log(1 + math.exp(-z))
    pair = [al.EncodedPair(chosen, rejected)]
    with torch.no_grad():
        loss, _ = al.dpo_loss(
            *al.pair_logprobs(policy, pair), *al.pair_logprobs(reference, pair), beta
        )
    assert math.isclose(loss.item(), expected, rel_tol=1e-4)


def test_chosen_nll_is_the_mean_per_token_cross_entropy_of_the_chosen_answers():
    policy, pairs = tiny_model(2), tiny_pairs(3)
    batch = collate([pair.chosen for pair in pairs])
    with torch.no_grad():
        logits = policy(batch.inputs)  # (B, T, V)
        per_token = F.cross_entropy(
            logits.transpose(1, 2), batch.labels, ignore_index=-100, reduction="none"
        )  # (B, T)
        counts = (batch.labels != -100).sum(dim=1)
        expected = (per_token.sum(dim=1) / counts).mean()
        policy_chosen, _ = al.pair_logprobs(policy, pairs)
    assert torch.allclose(al.chosen_nll(policy_chosen, pairs), expected, rtol=1e-5)


def test_the_nll_term_keeps_the_chosen_answers_more_likely_than_dpo_alone():
    pairs = tiny_pairs()
    chosen_logps = {}
    for weight in (0.0, 1.0):
        policy = tiny_model(4)
        reference = al.frozen_copy(policy)
        config = al.DPOConfig(steps=20, batch_size=4, learning_rate=3e-3, nll_weight=weight)
        history = al.train_dpo(policy, reference, pairs, config, show_progress=False)
        assert "nll" in history[-1]
        with torch.no_grad():
            chosen_logps[weight] = al.pair_logprobs(policy, pairs)[0].mean().item()
    assert chosen_logps[1.0] > chosen_logps[0.0]


def test_label_smoothing_mixes_both_directions():
    z = torch.tensor([0.8, -0.3])
    zero = torch.zeros(2)
    loss, _ = al.dpo_loss(z, zero, zero, zero, beta=1.0, label_smoothing=0.2)
    expected = (-(0.8 * F.logsigmoid(z)) - 0.2 * F.logsigmoid(-z)).mean()
    assert torch.allclose(loss, expected)


def test_dpo_loss_rejects_a_non_positive_beta():
    zero = torch.zeros(2)
    with pytest.raises(ValueError, match="beta"):
        al.dpo_loss(zero, zero, zero, zero, beta=0.0)


# ----- bad input -----------------------------------------------------------------------------


def test_encode_pairs_counts_identical_and_empty_pairs_as_skips():
    pairs = [
        al.PreferencePair("p", " a", " a", "train", "wrong"),
        al.PreferencePair("p", "", " a", "train", "wrong"),
        al.PreferencePair("p", " a", "  ", "train", "wrong"),
        al.PreferencePair("p", " a", " b", "train", "wrong"),
    ]
    encoded, report = al.encode_pairs(pairs, CharTokenizer(), 64)
    assert (len(encoded), report.kept, report.identical, report.empty) == (1, 1, 1, 2)


def test_a_reference_with_another_vocabulary_is_a_clear_error():
    with pytest.raises(ValueError, match="vocabulary"):
        al.train_dpo(tiny_model(), tiny_model(vocab_size=40), tiny_pairs(), al.DPOConfig(steps=1))


def test_training_without_pairs_is_a_clear_error():
    with pytest.raises(ValueError, match="no preference pairs"):
        al.train_dpo(tiny_model(), tiny_model(), [], al.DPOConfig(steps=1))


def test_train_dpo_logs_the_trl_metrics():
    policy = tiny_model()
    history = al.train_dpo(
        policy,
        al.frozen_copy(policy),
        tiny_pairs(),
        al.DPOConfig(steps=2, batch_size=2, log_interval=1),
        show_progress=False,
    )
    keys = {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "loss"}
    assert len(history) == 2 and keys <= set(history[0])


# ----- preference data and the judge ---------------------------------------------------------


def test_constructed_negatives_are_all_wrong_by_the_checker():
    records = [r for r in generate_checkable_tasks(5, 0, seed=3) if r.split == "train"]
    rng = random.Random(0)
    for record in records:
        negatives = al.constructed_negatives(record, records, rng)
        assert negatives, record
        for _kind, response in negatives:
            assert not check_answer(record.task, response)


def test_judge_prefers_correct_over_wrong_and_short_over_rambling():
    task = {"family": "add_digits", "values": {"a": 2, "b": 3}}
    assert al.judge_prefers(task, " 5", " 6") == 1.0
    assert al.judge_prefers(task, " 6", " 7") == 0.5
    assert al.judge_score(task, " 6 and then some more words") == -0.5


def test_pairs_round_trip_through_jsonl(tmp_path):
    pairs = [al.PreferencePair("p", " a", " b", "heldout", "wrong", {"family": "x"})]
    assert al.load_pairs(al.save_pairs(pairs, tmp_path / "pairs.jsonl")) == pairs


def test_sampled_responses_end_at_the_first_end_token():
    model = tiny_model()
    samples = al.sample_responses(model, CharTokenizer(), "q?", 3, max_new_tokens=6)
    for sample in samples:
        assert sample.token_ids[0] == USER_ID
        assert EOT_ID not in sample.token_ids[sample.response_start : -1]


# ----- the reward model ----------------------------------------------------------------------


def test_bradley_terry_equals_binary_cross_entropy_on_the_reward_difference():
    generator = torch.Generator().manual_seed(2)
    chosen, rejected = torch.randn(10, generator=generator), torch.randn(10, generator=generator)
    expected = F.binary_cross_entropy_with_logits(chosen - rejected, torch.ones(10))
    assert torch.allclose(al.bradley_terry_loss(chosen, rejected), expected)


def test_reward_does_not_depend_on_padding():
    reward_model = al.RewardModel(tiny_model())
    torch.nn.init.normal_(reward_model.head.weight)
    pairs = tiny_pairs(3)
    alone = reward_model.score([pairs[0].chosen])
    padded = reward_model.score([pairs[0].chosen, pairs[2].rejected])  # longer second row
    assert torch.allclose(alone, padded[:1], atol=1e-5)


def test_reward_model_training_lowers_the_bradley_terry_loss():
    reward_model = al.RewardModel(tiny_model())
    losses = al.train_reward_model(
        reward_model, tiny_pairs(), steps=8, batch_size=4, learning_rate=1e-2, show_progress=False
    )
    assert losses[-1] < losses[0]


# ----- PPO with a group baseline -------------------------------------------------------------


def test_group_advantages_have_zero_mean_and_unit_std_per_group():
    rewards = torch.randn(5, 6, generator=torch.Generator().manual_seed(4))
    advantages = al.group_advantages(rewards)
    assert torch.allclose(advantages.mean(dim=1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(advantages.std(dim=1, unbiased=False), torch.ones(5), atol=1e-4)


def test_a_group_of_equal_rewards_has_zero_advantage():
    assert torch.equal(al.group_advantages(torch.full((1, 4), 0.7)), torch.zeros(1, 4))


def test_clipped_objective_on_hand_made_numbers():
    ratios = torch.tensor([[1.5, 0.5], [1.5, 0.5]])
    advantages = torch.tensor([2.0, -1.0])
    mask = torch.ones(2, 2, dtype=torch.bool)
    objective, clipped = al.clipped_objective(
        ratios.log(), torch.zeros(2, 2), advantages, mask, 0.2
    )
    # row 0 (A=2): min(3, 2.4)=2.4 and min(1, 1.6)=1.0 -> 1.7
    # row 1 (A=-1): min(-1.5, -1.2)=-1.5 and min(-0.5, -0.8)=-0.8 -> -1.15
    assert math.isclose(objective.item(), (1.7 - 1.15) / 2, rel_tol=1e-5)
    assert math.isclose(clipped.item(), 0.5)


def test_clipped_objective_ignores_masked_tokens():
    logps = torch.tensor([[0.1, 5.0]])
    mask = torch.tensor([[True, False]])
    objective, _ = al.clipped_objective(logps, torch.zeros(1, 2), torch.tensor([1.0]), mask)
    assert math.isclose(objective.item(), math.exp(0.1), rel_tol=1e-5)


def test_kl_estimate_matches_the_exact_kl_on_samples_from_the_policy():
    generator = torch.Generator().manual_seed(5)
    policy_logits, reference_logits = torch.randn(8, generator=generator), torch.randn(8)
    policy = torch.distributions.Categorical(logits=policy_logits)
    reference = torch.distributions.Categorical(logits=reference_logits)
    tokens = torch.multinomial(policy.probs, 200_000, replacement=True, generator=generator)
    estimate = al.kl_estimate(
        policy.log_prob(tokens)[None], reference.log_prob(tokens)[None], torch.ones(1, len(tokens))
    )
    exact = torch.distributions.kl_divergence(policy, reference)
    assert math.isclose(estimate.item(), exact.item(), rel_tol=0.03)


def test_kl_estimate_is_zero_when_policy_equals_reference():
    logps = torch.randn(3, 4)
    assert al.kl_estimate(logps, logps, torch.ones(3, 4)).item() == 0.0


def test_a_grpo_step_runs_and_reports_per_step_numbers():
    policy, tokenizer = tiny_model(), CharTokenizer()
    records = [r for r in generate_checkable_tasks(2, 0, seed=0) if r.split == "train"][:4]
    reward_model = al.RewardModel(tiny_model(2))
    torch.nn.init.normal_(reward_model.head.weight)
    history = al.train_grpo(
        policy,
        al.frozen_copy(policy),
        reward_model,
        tokenizer,
        records,
        al.GRPOConfig(steps=1, prompts_per_step=2, group_size=3, max_new_tokens=4),
        show_progress=False,
    )
    assert {"reward", "advantage_abs", "kl", "clipped", "sample_accuracy"} <= set(history[0])


def test_compare_to_sft_pairs_several_answers_per_prompt():
    records = [r for r in generate_checkable_tasks(1, 0, seed=4) if r.split == "train"][:2]
    right = [al.reference_answer(r.task) for r in records]
    # two answers per prompt: the aligned model is right once per prompt, SFT never
    answers = [right[0], " wrong", right[1], " wrong"]
    sft = [" wrong"] * 4
    result = al.compare_to_sft(answers, sft, records)
    assert (result["wins"], result["losses"], result["win_rate"]) == (2, 0, 0.75)
    assert result["accuracy"] == 0.5
    with pytest.raises(ValueError, match="same number of answers"):
        al.compare_to_sft(answers, sft[:3], records)


@pytest.mark.parametrize("weights", [(0.0, 0.0), (-1.0, 1.0), (1.0, -0.5)])
def test_a_dpo_config_with_nothing_to_train_is_refused(weights):
    dpo_weight, nll_weight = weights
    with pytest.raises(ValueError, match="dpo_weight and nll_weight"):
        al.DPOConfig(dpo_weight=dpo_weight, nll_weight=nll_weight)


class ExactCharTokenizer:
    """Characters <-> ids 4..131, reversible, so the judge can read decoded answers."""

    def encode(self, text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        return SimpleNamespace(ids=[4 + ord(character) for character in text])

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - 4) for i in ids if i >= 4)


def _answer(tokenizer, prompt: str, response: str, finished: bool = True):
    from chapters.ch08_sft.sft import EncodedExample

    prompt_ids = [USER_ID, *tokenizer.encode(prompt).ids, ASSISTANT_ID]
    response_ids = tokenizer.encode(response).ids + ([EOT_ID] if finished else [])
    return EncodedExample(prompt_ids + response_ids, len(prompt_ids))


def _sum_record(a: int, b: int):
    from chapters.ch08_sft.sft import SFTRecord

    task = {"family": "add_digits", "values": {"a": a, "b": b}}
    return SFTRecord(f"What is {a} + {b}?", f" {a + b}", "train", "add_digits", task)


def test_the_checker_reward_judges_each_answer_against_its_own_prompt():
    from chapters.ch09_alignment.rlhf_study import CheckerReward

    tokenizer = ExactCharTokenizer()
    records = [_sum_record(1, 2), _sum_record(4, 4)]
    reward = CheckerReward(tokenizer, records)
    answers = [
        _answer(tokenizer, "What is 1 + 2?", " 3"),
        _answer(tokenizer, "What is 4 + 4?", " 3"),  # right for the other prompt only
        _answer(tokenizer, "What is 4 + 4?", " 8"),
        _answer(tokenizer, "What is 4 + 4?", " 8", finished=False),
        _answer(tokenizer, "What is 1 + 2?", " 3 and some more words"),
    ]
    assert reward.score(answers).tolist() == [1.0, 0.0, 1.0, -0.5, -0.5]


def test_own_answer_pairs_put_every_right_sample_over_every_wrong_one(monkeypatch):
    from chapters.ch09_alignment import rlhf_study

    tokenizer = ExactCharTokenizer()
    record = _sum_record(2, 3)
    texts = [(" 5", True), (" 5", True), (" 6", True), (" 5", False), (" 7", True)]
    samples = [_answer(tokenizer, record.prompt, text, done) for text, done in texts]
    monkeypatch.setattr(al, "sample_responses", lambda *args, **kwargs: samples)
    pairs = rlhf_study.own_answer_pairs(None, tokenizer, [record])
    # the unfinished " 5" is wrong, but as text it equals the right answer: no pair from it
    assert sorted((p.chosen, p.rejected) for p in pairs) == [(" 5", " 6"), (" 5", " 7")]
    assert all(check_answer(record.task, p.chosen) for p in pairs)


# ----- RL with the checker -------------------------------------------------------------------


def test_sample_groups_of_one_prompt_are_sample_responses():
    model, tokenizer = tiny_model(), CharTokenizer()
    one = al.sample_responses(model, tokenizer, "q?", 4, 6, 1.0, torch.Generator().manual_seed(3))
    groups = al.sample_groups(model, tokenizer, ["q?"], 4, 6, 1.0, torch.Generator().manual_seed(3))
    assert [s.token_ids for s in one] == [s.token_ids for s in groups[0]]


def test_sample_groups_answer_each_prompt_in_order_whatever_its_length():
    model, tokenizer = tiny_model(), CharTokenizer()
    prompts = ["a?", "longer prompt?", "b?", "mid one?"]
    groups = al.sample_groups(model, tokenizer, prompts, 3, 5, 0.0)
    assert [len(group) for group in groups] == [3, 3, 3, 3]
    for prompt, group in zip(prompts, groups, strict=True):
        expected = [USER_ID, *tokenizer.encode(prompt).ids, ASSISTANT_ID]
        for sample in group:
            assert sample.token_ids[: sample.response_start] == expected
    # greedy answers do not depend on which other prompts share the call
    alone = al.sample_groups(model, tokenizer, ["longer prompt?"], 1, 5, 0.0)[0][0]
    assert alone.token_ids == groups[1][0].token_ids


def test_the_chapters_checker_reward_needs_a_right_answer_that_stopped():
    tokenizer = ExactCharTokenizer()
    records = [_sum_record(1, 2), _sum_record(4, 4)]
    groups = [
        [_answer(tokenizer, "What is 1 + 2?", " 3"), _answer(tokenizer, "What is 1 + 2?", " 8")],
        [_answer(tokenizer, "What is 4 + 4?", " 8"), _answer(tokenizer, "x", " 8", False)],
    ]
    assert al.checker_reward(tokenizer)(records, groups).tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_fresh_training_tasks_never_use_a_held_out_template_or_value():
    from chapters.ch08_sft.sft import TASK_FAMILIES, is_held_out

    rng = random.Random(0)
    tasks = [al.fresh_training_task(rng) for _ in range(300)]
    assert {task.source for task in tasks} == set(TASK_FAMILIES)
    for task in tasks:
        family = TASK_FAMILIES[task.source]
        assert not is_held_out(task.task["values"])
        assert family.held_out_template.format(**task.task["values"]) != task.prompt
        assert check_answer(task.task, task.response)
    only = {al.fresh_training_task(rng, ["add_digits"]).source for _ in range(20)}
    assert only == {"add_digits"}


def test_grpo_skips_and_counts_groups_whose_answers_all_score_the_same():
    policy, tokenizer = tiny_model(), CharTokenizer()
    before = [p.detach().clone() for p in policy.parameters()]
    constant = lambda records, groups: torch.ones(len(groups), len(groups[0]))  # noqa: E731
    history = al.train_grpo(
        policy,
        al.frozen_copy(policy),
        constant,
        tokenizer,
        lambda rng: _sum_record(rng.randrange(10), 1),
        al.GRPOConfig(steps=2, prompts_per_step=3, group_size=4, max_new_tokens=3, kl_coef=0.0),
        show_progress=False,
    )
    assert [row["skipped_groups"] for row in history] == [3, 3]
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def test_grpo_with_the_checker_moves_the_policy_when_a_group_disagrees():
    policy, tokenizer = tiny_model(), CharTokenizer()
    before = [p.detach().clone() for p in policy.parameters()]
    first = lambda records, groups: torch.tensor(  # noqa: E731
        [[1.0] + [0.0] * (len(g) - 1) for g in groups]
    )
    history = al.train_grpo(
        policy,
        al.frozen_copy(policy),
        first,
        tokenizer,
        lambda rng: _sum_record(rng.randrange(10), 1),
        al.GRPOConfig(steps=1, prompts_per_step=2, group_size=4, max_new_tokens=3, kl_coef=0.01),
        show_progress=False,
    )
    assert history[0]["skipped_groups"] == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def test_expert_iteration_fine_tunes_on_verified_answers_only(monkeypatch):
    from chapters.ch08_sft.sft import sft_training_config

    tokenizer = ExactCharTokenizer()
    record = _sum_record(2, 3)
    texts = [(" 5", True), (" 5", True), (" 6", True), (" 5", False)]
    samples = [_answer(tokenizer, record.prompt, text, done) for text, done in texts]
    monkeypatch.setattr(
        al, "sample_groups", lambda model, tok, prompts, *a, **k: [samples] * len(prompts)
    )
    seen = {}
    monkeypatch.setattr(
        al, "finetune", lambda model, examples, config, **kw: seen.setdefault("examples", examples)
    )
    _, counts = al.expert_iteration(
        tiny_model(vocab_size=140),
        tokenizer,
        lambda rng: record,
        3,
        4,
        sft_training_config(steps=1, warmup_steps=0),
    )
    assert counts == {"prompts": 3, "samples": 12, "kept": 1, "solved": 3}
    assert [e.token_ids for e in seen["examples"]] == [samples[0].token_ids]


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'{"prompt": "caf\xe9"}', "utf-8"),
        (b"[1, 2]", "not an object"),
        (b'{"prompt": "p", "chosen": 5, "rejected": "b", "split": "train", "kind": "k"}', "chosen"),
        (
            b'{"prompt": "p", "chosen": "a", "rejected": "b", "split": "train", "kind": "k", '
            b'"task": [1]}',
            "task must be an object",
        ),
        (
            b'{"prompt": "p", "chosen": "a", "rejected": "b", "split": "train", "kind": "k", '
            b'"extra": 1}',
            "unknown field",
        ),
        (
            b'{"prompt": "p", "chosen": "\\ud800", "rejected": "b", "split": "train", "kind": "k"}',
            "surrogate",
        ),
    ],
)
def test_a_malformed_pair_line_is_refused_with_its_number_and_why(tmp_path, line, reason):
    pairs = [al.PreferencePair("p", " a", " b", "train", "wrong")]
    path = al.save_pairs(pairs, tmp_path / "pairs.jsonl")
    path.write_bytes(path.read_bytes() + line + b"\n")
    with pytest.raises(ValueError, match="line 2") as error:
        al.load_pairs(path)
    assert reason in str(error.value).lower() or reason in str(error.value.__cause__).lower()
