"""RMSNorm vs LayerNorm: forward + backward time over several activation sizes.

    python chapters/ch05_normalization/benchmark_norms.py [--device cpu] [--repeats 30]

Prints a table of median milliseconds for our from-scratch layers and for PyTorch's, and the
share of LayerNorm's time that RMSNorm needs. Zhang & Sennrich (2019) report 7%-64% shorter
running time for whole models; this script times the norm layers alone, so expect a
different number. Timings vary between machines and runs: nothing here is asserted.
"""

import argparse
import time

import torch
import torch.nn as nn

from chapters.ch05_normalization.normalization import LayerNorm, RMSNorm, time_forward_backward
from chapters.course import pick_device

SHAPES = [(8, 128, 256), (8, 512, 768), (4, 1024, 1024), (2, 1024, 4096)]  # (B, T, C)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: fastest)")
    parser.add_argument("--repeats", type=int, default=30)
    arguments = parser.parse_args()
    device = torch.device(arguments.device) if arguments.device else pick_device()
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{'shape (B, T, C)':>18s} {'LN ours':>9s} {'RMS ours':>9s} {'ratio':>6s} "
        f"{'nn.LN':>9s} {'nn.RMS':>9s} {'ratio':>6s}   (ms, forward + backward)"
    )
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    for shape in SHAPES:
        dim = shape[-1]
        x = torch.randn(*shape, device=device)
        seconds = [
            time_forward_backward(layer.to(device), x, arguments.repeats)
            for layer in (
                LayerNorm(dim),
                RMSNorm(dim),
                nn.LayerNorm(dim),
                nn.RMSNorm(dim, eps=1e-5),
            )
        ]
        ours_ln, ours_rms, torch_ln, torch_rms = (1e3 * value for value in seconds)
        print(
            f"{str(shape):>18s} {ours_ln:9.2f} {ours_rms:9.2f} {ours_rms / ours_ln:6.0%} "
            f"{torch_ln:9.2f} {torch_rms:9.2f} {torch_rms / torch_ln:6.0%}"
        )
    print(
        f"took {time.perf_counter() - started_wall:.1f} s wall, "
        f"{time.process_time() - started_cpu:.1f} s CPU"
    )


if __name__ == "__main__":
    main()
