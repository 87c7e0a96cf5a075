"""Cost of one update of each alignment method on the course's model size (random weights,
synthetic prompts: no artifacts needed). Prints wall and CPU seconds per update.

    python chapters/ch09_alignment/benchmark_alignment.py [--repeats 5]

A DPO update scores 2 x batch sequences under the policy (with gradient) and the reference;
a GRPO update samples prompts x group answers token by token, scores them with the reward
model, the policy and the reference, then takes `ppo_epochs` gradient steps.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from chapters.ch04_blocks.model import LanguageModel
from chapters.ch06_pretraining.trainer import default_model_config
from chapters.ch08_sft.sft import SFTRecord
from chapters.ch09_alignment import alignment as al


class DigitTokenizer:
    """Characters -> ids 4..99: enough to drive sampling without chapter 2's tokenizer."""

    def encode(self, text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        return SimpleNamespace(ids=[4 + ord(character) % 96 for character in text])

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(32 + (i - 4) % 96) for i in ids if i >= 4)


def timed(function, repeats: int) -> tuple[float, float]:
    function()  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = DigitTokenizer()
    policy = LanguageModel(default_model_config())
    reference = al.frozen_copy(policy)
    reward_model = al.RewardModel(LanguageModel(default_model_config()))
    pairs = [
        al.PreferencePair(
            f"What is {i} + {i}?", f" {2 * i}", f" {2 * i + 1} and more", "train", "x"
        )
        for i in range(64)
    ]
    encoded, _ = al.encode_pairs(pairs, tokenizer, 128)
    dpo = al.DPOConfig(steps=1, batch_size=al.CHAPTER_DPO.batch_size, log_interval=1)
    grpo_settings = al.CHAPTER_GRPO
    records = [
        SFTRecord(
            f"What is {i} + {i}?",
            f" {2 * i}",
            "train",
            "add_digits",
            {"family": "add_digits", "values": {"a": i % 10, "b": i % 10}},
        )
        for i in range(16)
    ]
    grpo = al.GRPOConfig(
        steps=1,
        prompts_per_step=grpo_settings.prompts_per_step,
        group_size=grpo_settings.group_size,
        ppo_epochs=grpo_settings.ppo_epochs,
        max_new_tokens=grpo_settings.max_new_tokens,
    )
    rows = {
        "DPO update": timed(
            lambda: al.train_dpo(policy, reference, encoded, dpo, show_progress=False),
            arguments.repeats,
        ),
        "GRPO update": timed(
            lambda: al.train_grpo(
                policy, reference, reward_model, tokenizer, records, grpo, show_progress=False
            ),
            arguments.repeats,
        ),
    }
    print(
        f"torch threads: {torch.get_num_threads()}; model: {policy.num_parameters():,} parameters"
    )
    print(f"{'':12} {'wall s/update':>14} {'CPU s/update':>13}")
    for name, (wall, cpu) in rows.items():
        print(f"{name:12} {wall:>14.3f} {cpu:>13.3f}")


if __name__ == "__main__":
    main()
