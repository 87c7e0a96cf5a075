"""The published CPU reference point: nanoGPT's "I only have a macbook" run, with our trainer.

    LLM_COURSE_DATA_DIRS=/path/to/shared/data python chapters/ch06_pretraining/benchmark_shakespeare.py

The recipe (nanoGPT README, config/train_shakespeare_char.py with the macbook overrides):
character-level TinyShakespeare (1,115,394 characters, the first 90% for training), 4 layers,
4 heads, width 128, context 64, batch 12, 2000 iterations, no dropout; it reports a
validation loss of about 1.88 after about 3 minutes. This script trains the course's model
(RMSNorm, rotary positions, SwiGLU, tied embeddings) with the course's Trainer on the same
data and the same number of tokens, and prints tokens/s, wall time and the final validation
loss (a full sequential pass over the validation 10%). Goal: at or below 1.80.

On a machine shared with other jobs, set OMP_NUM_THREADS=1: two threads per process on an
oversubscribed CPU spend most of their time waiting for each other.
"""

import argparse
import time

import numpy as np
import torch

from chapters.ch04_blocks.model import LanguageModel, ModelConfig, count_parameters
from chapters.ch06_pretraining.trainer import (
    Trainer,
    TrainingConfig,
    evaluate,
    random_window_batches,
    sequential_eval_batches,
)
from chapters.corpus_sources import tinyshakespeare_path

REFERENCE_LOSS = 1.88  # nanoGPT's reported validation loss for this budget
GOAL_LOSS = 1.80


def character_tokens() -> tuple[np.ndarray, np.ndarray, int]:
    text = tinyshakespeare_path().read_text(encoding="utf-8")
    alphabet = sorted(set(text))
    index = {character: i for i, character in enumerate(alphabet)}
    ids = np.array([index[c] for c in text], dtype=np.uint16)
    split = int(0.9 * len(ids))
    return ids[:split], ids[split:], len(alphabet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    arguments = parser.parse_args()

    train, validation, vocab_size = character_tokens()
    model_config = ModelConfig(
        vocab_size=vocab_size, context_length=64, d_model=128, n_layers=4, n_heads=4
    )
    config = TrainingConfig(
        steps=arguments.steps,
        batch_size=12,
        context_length=64,
        learning_rate=arguments.learning_rate,
        min_lr=arguments.learning_rate / 10,
        warmup_steps=100,
        beta2=0.99,  # as nanoGPT's shakespeare_char config: few tokens per step
        weight_decay=0.1,
        eval_interval=0,
        log_interval=100,
    )
    torch.manual_seed(0)
    model = LanguageModel(model_config)
    print(
        f"{len(train):,} training characters, vocabulary {vocab_size}, "
        f"{count_parameters(model_config):,} parameters, {config.steps} steps of "
        f"{config.tokens_per_step} tokens"
    )
    trainer = Trainer(model, config, random_window_batches(train, 12, 64, seed=0), device="cpu")
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    history = trainer.fit()
    wall, cpu = time.perf_counter() - started_wall, time.process_time() - started_cpu
    val_loss = evaluate(trainer.model, sequential_eval_batches(validation, 12, 64))
    tokens = config.steps * config.tokens_per_step
    print(f"tokens/s: {tokens / wall:,.0f} (wall {wall:.0f} s, CPU time {cpu:.0f} s)")
    print(f"final train loss: {np.mean(history.step_losses[-50:]):.3f}")
    print(
        f"final validation loss: {val_loss:.3f}  (nanoGPT reference {REFERENCE_LOSS}, "
        f"goal {GOAL_LOSS}: {'met' if val_loss <= GOAL_LOSS else 'not met'})"
    )


if __name__ == "__main__":
    main()
