"""Memory and time of attention vs sequence length: the from-scratch path against PyTorch's
fused `scaled_dot_product_attention` (SDPA).

    python chapters/ch03_attention/benchmark_attention.py                 # default lengths
    python chapters/ch03_attention/benchmark_attention.py --lengths 512 1024 2048 4096

Prints a table. Memory is the peak of what torch allocated during one call, as the torch
profiler records it (CPU); time is the median of a few calls. On a shared machine the times
vary from run to run; the memory figures do not.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from chapters.ch03_attention.attention import naive_attention


@contextlib.contextmanager
def _native_output_silenced() -> Iterator[None]:
    """Send the C++ side's stdout/stderr to /dev/null (the profiler logs a line per start/stop)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in (*saved, devnull):
            os.close(descriptor)


def peak_memory_bytes(function: Callable[[], object]) -> int:
    """Peak bytes torch allocated on the CPU while `function()` ran (torch profiler)."""
    with (
        _native_output_silenced(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler,
    ):
        function()
    changes = []
    for event in profiler.events():
        if event.name == "[memory]":  # frees (and a few allocations) recorded on their own
            changes.append((event.time_range.start, event.cpu_memory_usage))
        elif event.self_cpu_memory_usage > 0:  # allocations made by an operator
            changes.append((event.time_range.start, event.self_cpu_memory_usage))
    running = peak = 0
    for _, change in sorted(changes):
        running += change
        peak = max(peak, running)
    return peak


def median_seconds(function: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of `repeats` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark(
    lengths: list[int],
    *,
    batch: int = 1,
    n_heads: int = 4,
    head_dim: int = 64,
    repeats: int = 3,
    seed: int = 0,
) -> list[dict]:
    """One row per (sequence length, path): peak memory in bytes and median time in seconds."""
    generator = torch.Generator().manual_seed(seed)
    paths = {
        "naive": lambda q, k, v: naive_attention(q, k, v, causal=True),
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    }
    rows = []
    with torch.no_grad():
        for length in lengths:
            q, k, v = (
                torch.randn(batch, n_heads, length, head_dim, generator=generator) for _ in range(3)
            )
            for name, path in paths.items():
                call = lambda path=path, q=q, k=k, v=v: path(q, k, v)  # noqa: E731
                rows.append(
                    {
                        "length": length,
                        "path": name,
                        "peak_bytes": peak_memory_bytes(call),
                        "seconds": median_seconds(call, repeats),
                        # the (B, nh, T, T) score matrix the naive path materialises
                        "score_matrix_bytes": batch * n_heads * length * length * 4,
                    }
                )
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'length':>7} {'path':>6} {'peak MB':>9} {'T x T scores MB':>16} {'ms':>9}")
    for row in rows:
        print(
            f"{row['length']:>7} {row['path']:>6} {row['peak_bytes'] / 1e6:>9.2f} "
            f"{row['score_matrix_bytes'] / 1e6:>16.2f} {row['seconds'] * 1e3:>9.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, causal")
    rows = benchmark(
        arguments.lengths,
        batch=arguments.batch,
        n_heads=arguments.heads,
        head_dim=arguments.head_dim,
        repeats=arguments.repeats,
    )
    print_table(rows)


if __name__ == "__main__":
    main()
