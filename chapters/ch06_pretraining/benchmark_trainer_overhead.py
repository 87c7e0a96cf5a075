"""How much does the trainer's instrumentation cost? Tokens/s of `Trainer` against a bare loop.

    python chapters/ch06_pretraining/benchmark_trainer_overhead.py [--steps 40] [--rounds 3]

Both train the course's default model on the same batches. The bare loop is forward, mean
cross-entropy, backward, plain AdamW step: no clipping, schedule, logging, divergence checks or
progress bar. Rounds alternate between the two so that a machine shared with other work slows
both alike; the best round of each is compared. The goal: overhead under 5%.

On a machine shared with other jobs, set OMP_NUM_THREADS=1: two threads per process on an
oversubscribed CPU spend most of their time waiting for each other.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from chapters.ch02_tokenizer.tokenizer import load_tokens
from chapters.ch04_blocks.model import LanguageModel
from chapters.ch06_pretraining.trainer import (
    Trainer,
    default_model_config,
    default_training_config,
    random_window_batches,
)


def bare_loop(steps: int, get_batch, learning_rate: float) -> float:
    torch.manual_seed(0)
    model = LanguageModel(default_model_config())
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    inputs, labels = get_batch(0, 0)  # warm-up step, not timed
    F.cross_entropy(model(inputs).flatten(0, 1), labels.flatten()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tokens, started = 0, time.perf_counter()
    for step in range(1, steps + 1):
        inputs, labels = get_batch(step, 0)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), labels.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += inputs.numel()
    return tokens / (time.perf_counter() - started)


def course_trainer(steps: int, get_batch) -> float:
    torch.manual_seed(0)
    config = default_training_config()
    trainer = Trainer(
        LanguageModel(default_model_config()),
        config,
        get_batch,
        device="cpu",
        show_progress=True,  # the bar is part of the instrumentation being measured
    )
    trainer.fit(until_step=1)  # warm-up step, not timed
    started = time.perf_counter()
    trainer.fit(until_step=steps + 1)
    return steps * config.tokens_per_step / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    config = default_training_config()
    get_batch = random_window_batches(
        load_tokens("train"), config.batch_size, config.context_length, config.seed
    )
    bare, ours = [], []
    for round_index in range(arguments.rounds):
        bare.append(bare_loop(arguments.steps, get_batch, config.learning_rate))
        ours.append(course_trainer(arguments.steps, get_batch))
        print(f"round {round_index + 1}: bare {bare[-1]:,.0f} tokens/s, trainer {ours[-1]:,.0f}")
    overhead = 1 - max(ours) / max(bare)
    print(f"bare loop: {max(bare):,.0f} tokens/s (best of {arguments.rounds})")
    print(f"trainer:   {max(ours):,.0f} tokens/s (best of {arguments.rounds})")
    print(f"instrumentation overhead: {overhead:.1%} (goal: under 5%)")


if __name__ == "__main__":
    main()
