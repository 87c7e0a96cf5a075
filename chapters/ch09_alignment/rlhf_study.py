"""Why RLHF does not beat the SFT model within chapter 9's budget: a study (about 15 minutes
on 2 CPU cores). It uses the chapter's artifacts (built on first use) and prints:

0. GRPO against the checker on 8 fixed prompts of one family: the policy learns them, and
   what that does to the other prompts of the family (does it learn the skill, or the answers?);
1. two reward models: the chapter's (REWARD_MODEL_STEPS on the chapter's pairs) and a longer
   one that also learns from the SFT model's own answers (a correct sample chosen over a
   wrong sample to the same prompt): held-out pairwise accuracy, and best-of-8 on training
   and held-out prompts against the average sample;
2. GRPO with a larger budget than the chapter's, against the longer reward model and against
   the checker itself (the judge's score as the reward: the best reward there could be);
3. each policy's sampled win rate against the SFT model, as the chapter measures it, on the
   held-out prompts and on training prompts.

    python chapters/ch09_alignment/rlhf_study.py [--reward-steps 1500] [--grpo-steps 150]

What it showed on this machine class is in the course README; the chapter's prose draws on it.
"""

from __future__ import annotations

import argparse
import time

import torch

from chapters.ch02_tokenizer.tokenizer import ensure_tokenizer
from chapters.ch08_sft.sft import (
    EncodedExample,
    SFTRecord,
    chat_prompt_ids,
    check_answer,
    ensure_sft_model,
)
from chapters.ch09_alignment import alignment as al
from chapters.course import seed_everything


def own_answer_pairs(
    model, tokenizer, records: list[SFTRecord], samples: int = 8, seed: int = 11
) -> list[al.PreferencePair]:
    """Pairs from the model's own answers: every distinct correct, finished sample is chosen
    over every distinct wrong (or unfinished) one to the same prompt; an unfinished sample
    whose text is a right answer makes no pair (as text, it equals the chosen one)."""
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for record in records:
        answers = al.sample_responses(model, tokenizer, record.prompt, samples, 10, 1.0, generator)
        texts = {(al.response_text(tokenizer, a), al.is_terminated(a)) for a in answers}
        right = sorted(t for t, done in texts if done and check_answer(record.task, t))
        wrong = sorted(t for t, _ in texts if t.strip() and t not in right)
        pairs += [
            al.PreferencePair(record.prompt, c, r, "train", "own", record.task)
            for c in right
            for r in wrong
        ]
    return pairs


class CheckerReward:
    """The judge as a reward model: `score` finds each sample's task by its prompt tokens."""

    def __init__(self, tokenizer, records: list[SFTRecord]) -> None:
        self.tokenizer = tokenizer
        self.tasks = {tuple(chat_prompt_ids(tokenizer, r.prompt)): r.task for r in records}

    def score(self, samples: list[EncodedExample]) -> torch.Tensor:
        rewards = []
        for sample in samples:
            task = self.tasks[tuple(sample.token_ids[: sample.response_start])]
            text = al.response_text(self.tokenizer, sample)
            finished = al.is_terminated(sample)  # cut off by max_new_tokens: malformed
            rewards.append(al.judge_score(task, text) if finished else -0.5)
        return torch.tensor(rewards)


def reward_model_report(name, reward_model, sft, tokenizer, heldout_pairs, prompt_sets) -> None:
    accuracy = al.pairwise_accuracy(reward_model, heldout_pairs)
    ranks = [
        f"{split} {best:.1%} vs {average:.1%}"
        for split, records in prompt_sets.items()
        for average, best in [al.best_of_n_accuracy(reward_model, sft, tokenizer, records)]
    ]
    print(
        f"{name}: held-out pairwise {accuracy:.1%}; best-of-8 vs average sample: {', '.join(ranks)}"
    )


def memorisation_check(
    sft, tokenizer, train_records: list[SFTRecord], family: str = "first_item", steps: int = 30
) -> None:
    """Part 0: GRPO on 8 fixed prompts; sampled accuracy on them and on 40 others of the family."""
    same_family = [r for r in train_records if r.source == family]
    learned, others = same_family[:8], same_family[8:48]
    config = al.GRPOConfig(steps, prompts_per_step=8, group_size=8, learning_rate=1e-4)
    policy = ensure_sft_model()
    reward = CheckerReward(tokenizer, learned)
    al.train_grpo(policy, al.frozen_copy(sft), reward, tokenizer, learned, config)

    def accuracy(model, records):
        answers = al.sampled_answers(model, tokenizer, records)
        tasks = [r.task for r in records for _ in range(len(answers) // len(records))]
        return sum(map(check_answer, tasks, answers)) / len(answers)

    print(
        f"GRPO with the checker on 8 {family} prompts, {steps} steps: accuracy on them "
        f"{accuracy(sft, learned):.1%} -> {accuracy(policy, learned):.1%}; on 40 other "
        f"{family} prompts {accuracy(sft, others):.1%} -> {accuracy(policy, others):.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reward-steps", type=int, default=1500)
    parser.add_argument("--grpo-steps", type=int, default=150)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--kl-coef", type=float, default=0.02)
    arguments = parser.parse_args()
    seed_everything(0)
    tokenizer, sft = ensure_tokenizer(), ensure_sft_model()
    context = sft.config.context_length
    train_records, heldout = al.preference_records("train"), al.preference_records("heldout")
    memorisation_check(sft, tokenizer, train_records)
    pairs = al.load_pairs(al.ensure_preference_pairs())
    train_pairs, _ = al.encode_pairs([p for p in pairs if p.split == "train"], tokenizer, context)
    heldout_pairs, _ = al.encode_pairs(
        [p for p in pairs if p.split == "heldout"], tokenizer, context
    )
    own, _ = al.encode_pairs(own_answer_pairs(sft, tokenizer, train_records), tokenizer, context)
    print(f"{len(train_pairs)} chapter pairs, {len(own)} pairs from the SFT model's own answers")
    prompt_sets = {"train": al.preference_records("train", 10), "held-out": heldout[::2]}

    chapter_rm = al.RewardModel(ensure_sft_model())
    al.train_reward_model(chapter_rm, train_pairs, steps=al.REWARD_MODEL_STEPS, show_progress=False)
    reward_model_report(
        "chapter's reward model", chapter_rm, sft, tokenizer, heldout_pairs, prompt_sets
    )
    longer_rm = al.RewardModel(ensure_sft_model())
    start = time.perf_counter()
    al.train_reward_model(longer_rm, train_pairs + own, steps=arguments.reward_steps)
    seconds = time.perf_counter() - start
    reward_model_report(
        f"longer reward model ({arguments.reward_steps} steps, own answers too, {seconds:.0f} s)",
        longer_rm,
        sft,
        tokenizer,
        heldout_pairs,
        prompt_sets,
    )

    config = al.GRPOConfig(
        steps=arguments.grpo_steps,
        prompts_per_step=arguments.prompts_per_step,
        group_size=8,
        learning_rate=arguments.learning_rate,
        kl_coef=arguments.kl_coef,
        max_new_tokens=10,
    )
    train_sample = al.preference_records("train", 20)
    baselines = {
        "held-out": al.sampled_answers(sft, tokenizer, heldout),
        "train": al.sampled_answers(sft, tokenizer, train_sample),
    }
    rewards = {
        "longer reward model": longer_rm,
        "checker as reward": CheckerReward(tokenizer, train_records),
    }
    print(f"GRPO: {config}")
    for name, reward in rewards.items():
        policy = ensure_sft_model()
        start = time.perf_counter()
        al.train_grpo(policy, al.frozen_copy(sft), reward, tokenizer, train_records, config)
        seconds = time.perf_counter() - start
        held = al.compare_to_sft(
            al.sampled_answers(policy, tokenizer, heldout), baselines["held-out"], heldout
        )
        train = al.compare_to_sft(
            al.sampled_answers(policy, tokenizer, train_sample), baselines["train"], train_sample
        )
        print(
            f"GRPO against the {name} ({seconds:.0f} s): sampled win vs SFT held-out "
            f"{held['win_rate']:.1%} (won {held['wins']}, lost {held['losses']}), training prompts "
            f"{train['win_rate']:.1%} (won {train['wins']}, lost {train['losses']})"
        )


if __name__ == "__main__":
    main()
