"""Where chapter 10's evaluation time goes: each stage of the suite on one checkpoint, with
wall-clock and process CPU seconds (on a shared machine the wall time is inflated; the CPU
time is the better guide to the uncontended cost).

    python chapters/ch10_evaluation/benchmark_evaluation.py            # the base model
    python chapters/ch10_evaluation/benchmark_evaluation.py --threads 2

The chapter's notebook runs every stage once per checkpoint, plus the contamination scan
once, so its cost is about (sum of the per-model stages) x (number of checkpoints) + the scan.

Measured (Nov 2026, 2 CPU cores shared with seven other heavy jobs, --threads 1, a base
model of the chapter 6 shape), wall / CPU seconds:
    build 120 multiple-choice items              0.8 /  0.2
    held-out NLL, 40k tokens                    10.8 /  2.8
    score 120 items x 4 choices                  6.0 /  1.5
    56 tasks: greedy + 5 samples                24.9 /  6.9
    20 code bodies, 48 tokens each               6.8 /  1.9
    contamination scan of the training split     2.4 /  0.7
About 13 CPU seconds per checkpoint: four checkpoints fit well inside the 3-minute budget.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch


def timed(label: str, work: Callable[[], object]) -> object:
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    print(
        f"{label:<42} {time.perf_counter() - wall:7.1f} s wall {time.process_time() - cpu:7.1f} s CPU"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)

    from chapters.ch01_data.data_pipeline import iter_split
    from chapters.ch02_tokenizer.tokenizer import ensure_tokenizer
    from chapters.ch06_pretraining.trainer import ensure_base_model
    from chapters.ch08_sft.sft import generate_checkable_tasks
    from chapters.ch10_evaluation.evaluation import (
        code_prompts,
        contamination,
        docstring_items,
        evaluate_checkable_tasks,
        held_out_score,
        next_line_items,
        score_multiple_choice,
        syntax_validity,
    )

    tokenizer, model = ensure_tokenizer(), ensure_base_model()
    documents = list(iter_split("validation"))
    items = timed(
        "build 120 multiple-choice items",
        lambda: next_line_items(documents, 60) + docstring_items(documents, 60),
    )
    timed("held-out NLL, 40k tokens", lambda: held_out_score(model, tokenizer, documents))
    timed("score 120 items x 4 choices", lambda: score_multiple_choice(model, tokenizer, items))
    tasks = [r for r in generate_checkable_tasks() if r.split == "heldout"][:56]
    timed(
        f"{len(tasks)} tasks: greedy + 5 samples",
        lambda: evaluate_checkable_tasks(model, tokenizer, tasks),
    )
    prompts = code_prompts(documents, 20)
    timed("20 code bodies, 48 tokens each", lambda: syntax_validity(model, tokenizer, prompts))
    texts = {item.id: item.context + item.choices[item.answer] for item in items}
    timed(
        "contamination scan of the training split",
        lambda: contamination(texts, iter_split("train")),
    )


if __name__ == "__main__":
    main()
