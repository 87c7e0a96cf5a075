"""Time one training step of every strategy on 2 processes, and print per-rank memory.

    python chapters/ch07_distributed/benchmark_strategies.py [--d-model 128 --steps 6]

Every run goes through the same launcher with one thread per process: the baseline is one
process (DDP with a world size of 1), the strategies are two processes on two cores. So data
parallelism can beat the baseline here (twice the cores), while tensor parallelism pays an
all-reduce per sub-layer; the memory column shows what each rank holds. On a machine with
2 GPUs the same command compares them on NCCL. The figures are printed, never asserted: they
depend on the machine and on its load.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from chapters.ch07_distributed.distributed import (
    CHAPTER_FOLDER,
    RunConfig,
    launch_with_torchrun,
)

STRATEGIES = ("ddp", "fsdp", "tp", "pp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--global-batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    arguments = parser.parse_args()
    run = RunConfig(
        d_model=arguments.d_model,
        n_layers=arguments.n_layers,
        context_length=arguments.context_length,
        global_batch_size=arguments.global_batch_size,
        steps=arguments.steps,
    )
    print(
        f"model d_model={run.d_model}, {run.n_layers} blocks; batch {run.global_batch_size} x "
        f"{run.context_length}; {run.steps} steps"
    )
    print(f"{'strategy':>8} {'ms/step':>8} {'launch s':>9} {'rank-0 KiB':>11} {'final loss':>10}")
    arguments_for_script = []
    for name, value in asdict(run).items():
        arguments_for_script += [f"--{name.replace('_', '-')}", str(value)]
    # the baseline runs under the same launcher: one process, one thread, the same script
    runs = [("single", "ddp", 1)] + [(strategy, strategy, 2) for strategy in STRATEGIES]
    with tempfile.TemporaryDirectory() as folder:
        for label, strategy, nproc in runs:
            result_file = Path(folder) / f"{label}.json"
            started = time.perf_counter()
            launch_with_torchrun(
                CHAPTER_FOLDER / "train_parallel.py",
                "--strategy",
                strategy,
                "--result",
                str(result_file),
                *arguments_for_script,
                nproc=nproc,
            )
            launch_seconds = time.perf_counter() - started
            result = json.loads(result_file.read_text())
            print(
                f"{label:>8} {result['seconds_per_step'] * 1000:8.1f} {launch_seconds:9.1f} "
                f"{result['memory'][0]['total'] / 1024:11.0f} {result['losses'][-1]:10.4f}"
            )


if __name__ == "__main__":
    main()
