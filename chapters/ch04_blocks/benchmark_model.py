"""Throughput of the course model on this machine: the baseline later chapters must beat.

    python chapters/ch04_blocks/benchmark_model.py              # both sizes, eager and compiled
    python chapters/ch04_blocks/benchmark_model.py --no-compile --steps 3   # a quick look
    python chapters/ch04_blocks/benchmark_model.py --threads 2

Measures, for a model of about 1M and one of about 10M parameters:
- training tokens per second: forward + backward + AdamW step on random token batches, with
  and without `torch.compile` (the first compiled step, which compiles, is timed on its own);
- generation tokens per second with and without the KV cache, and the speed-up.

Prints one table. Wall time and process CPU time are both reported: on a shared machine the
wall time is inflated by other processes, while the CPU time is closer to what the work costs.
The GFLOP/s column is tokens/s times `flops_per_token` from the model module.

Measured when the chapter was written (torch 2.13 CPU, one thread, on a 2-core machine shared
with other jobs, so by CPU time; `--steps 3`):
    ~1M  (0.95M params, context 64, batch 16):  9.8k tokens per CPU-second eager, 11.4k compiled
    ~10M (12.2M params, context 256, batch 8):  1.3k tokens per CPU-second eager, 1.37k compiled
    torch.compile: 1.06x-1.16x faster per step, 12-20 s (up to 200 s on a busy machine) to compile
    KV cache: 2.0x for 56 new tokens (~1M), 3.7x for 200 new tokens (~10M)
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chapters.ch04_blocks.model import (
    LanguageModel,
    ModelConfig,
    count_parameters,
    flops_per_token,
    generate,
)


@dataclass
class Size:
    name: str
    config: ModelConfig
    batch_size: int


SIZES = [
    Size("~1M", ModelConfig(context_length=64, d_model=128, n_layers=2, n_heads=4), batch_size=16),
    Size("~10M", ModelConfig(context_length=256, d_model=384, n_layers=6, n_heads=6), batch_size=8),
]


def _timed(function) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call of `function`."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def training_throughput(size: Size, steps: int, compile_model: bool) -> dict:
    """Tokens/s of full training steps (forward, backward, AdamW) on random batches."""
    torch.manual_seed(0)
    config = size.config
    model = LanguageModel(config)
    step_model = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(0, config.vocab_size, (size.batch_size, config.context_length + 1))
    inputs, labels = batch[:, :-1], batch[:, 1:]

    def step() -> None:
        logits = step_model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    first_wall, _ = _timed(step)  # compiles when compile_model; warms caches otherwise
    step()
    timings = [_timed(step) for _ in range(steps)]
    wall = statistics.median(t[0] for t in timings)
    cpu = statistics.median(t[1] for t in timings)
    tokens = size.batch_size * config.context_length
    return {
        "first_step_s": first_wall,
        "tokens_per_s": tokens / wall,
        "tokens_per_cpu_s": tokens / cpu if cpu > 0 else float("nan"),
        "flops_per_s": tokens / wall * flops_per_token(config),
    }


def generation_throughput(size: Size, new_tokens: int) -> dict:
    """Generated tokens/s from an 8-token prompt, with and without the KV cache."""
    torch.manual_seed(0)
    config = size.config
    model = LanguageModel(config).eval()
    prompt = torch.randint(0, config.vocab_size, (1, 8))
    new_tokens = min(new_tokens, config.context_length - 8)  # stay inside the window
    generate(model, prompt, 4, temperature=0.0)  # warm-up
    result = {}
    for use_cache in (True, False):
        wall, cpu = _timed(
            lambda use_cache=use_cache: generate(
                model, prompt, new_tokens, temperature=0.0, use_kv_cache=use_cache
            )
        )
        result[use_cache] = (new_tokens / wall, new_tokens / cpu if cpu > 0 else float("nan"))
    return {"new_tokens": new_tokens, "cached": result[True], "uncached": result[False]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per setting")
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens to generate")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    rows = []
    for size in SIZES:
        parameters = count_parameters(size.config)
        settings = [False] if arguments.no_compile else [False, True]
        for compiled in settings:
            print(f"training {size.name} ({'compiled' if compiled else 'eager'}) ...", flush=True)
            rows.append(
                (size, parameters, compiled, training_throughput(size, arguments.steps, compiled))
            )
    print("\nTraining step (forward + backward + AdamW), median of", arguments.steps, "steps")
    header = (
        f"{'model':6s} {'params':>10s} {'context':>7s} {'batch':>5s} {'mode':9s} "
        f"{'tokens/s':>9s} {'tok/CPU-s':>9s} {'GFLOP/s':>8s} {'first step':>10s}"
    )
    print(header)
    print("-" * len(header))
    for size, parameters, compiled, result in rows:
        print(
            f"{size.name:6s} {parameters:>10,} {size.config.context_length:>7d} "
            f"{size.batch_size:>5d} {'compiled' if compiled else 'eager':9s} "
            f"{result['tokens_per_s']:>9,.0f} {result['tokens_per_cpu_s']:>9,.0f} "
            f"{result['flops_per_s'] / 1e9:>8.2f} {result['first_step_s']:>9.1f}s"
        )
    if not arguments.no_compile:
        for size in SIZES:
            eager, compiled = (r for s, _, _, r in rows if s is size)
            print(
                f"torch.compile speed-up at {size.name}: "
                f"{compiled['tokens_per_s'] / eager['tokens_per_s']:.2f}x by wall time, "
                f"{compiled['tokens_per_cpu_s'] / eager['tokens_per_cpu_s']:.2f}x by CPU time "
                f"(first compiled step {compiled['first_step_s']:.1f} s)"
            )

    print("\nGeneration from an 8-token prompt, greedy, batch 1")
    header = (
        f"{'model':6s} {'new tokens':>10s} {'cached tok/s':>12s} {'uncached tok/s':>14s} "
        f"{'speed-up':>8s} {'by CPU time':>11s}"
    )
    print(header)
    print("-" * len(header))
    for size in SIZES:
        result = generation_throughput(size, arguments.new_tokens)
        (cached, cached_cpu), (uncached, uncached_cpu) = result["cached"], result["uncached"]
        print(
            f"{size.name:6s} {result['new_tokens']:>10d} {cached:>12,.1f} {uncached:>14,.1f} "
            f"{cached / uncached:>7.1f}x {cached_cpu / uncached_cpu:>10.1f}x"
        )


if __name__ == "__main__":
    main()
