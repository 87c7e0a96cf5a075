"""The course run at a size for one GPU: a larger base model trained with chapter 6's trainer,
bf16 autocast and torch.compile (chapter 6's AdamW; on CUDA torch picks its multi-tensor
kernel by itself).

    python supplementary/train_gpu.py --device cuda                 # the full run (one GPU)
    python supplementary/train_gpu.py --device cpu --tiny --synthetic-data   # smoke test, seconds

The full run trains a 8-layer, width-512, context-512 model (about 28M parameters with the
4096-token vocabulary) for 5,000 updates of 32 x 512 tokens (about 82M tokens) on chapter 2's
token shards; with the default embedded corpus that is many passes over the data, so point
chapter 1 at a larger source (chapters/corpus_sources.py) for a real run. The sizes are a
starting point for a 24 GB GPU; lower --batch-size if memory runs out. `--synthetic-data`
trains on random tokens: it checks that a machine runs the configuration (memory, speed,
compilation) before any data is prepared. Checkpoints go to artifacts/gpu_run/ and a run
can be resumed by running the same command again.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from chapters.ch04_blocks.model import LanguageModel, ModelConfig
from chapters.ch06_pretraining.trainer import (
    Trainer,
    TrainingConfig,
    hardware_peak_flops,
    random_window_batches,
    sequential_eval_batches,
    supports_bf16,
)
from chapters.course import artifacts_dir


def gpu_configs(tiny: bool = False) -> tuple[ModelConfig, TrainingConfig]:
    """The model and training configs of the GPU run; `tiny` shrinks both for a smoke test."""
    if tiny:
        model = ModelConfig(vocab_size=4096, context_length=32, d_model=32, n_layers=1, n_heads=2)
        training = TrainingConfig(
            steps=3, batch_size=2, context_length=32, warmup_steps=1, precision="bf16", eval_interval=0,
            eval_batches=1, log_interval=1,
        )  # fmt: skip
        return model, training
    model = ModelConfig(vocab_size=4096, context_length=512, d_model=512, n_layers=8, n_heads=8)
    training = TrainingConfig(
        steps=5000, batch_size=32, context_length=512, learning_rate=1e-3, min_lr=1e-4,
        warmup_steps=200, precision="bf16", compile=True, eval_interval=500, eval_batches=20,
        log_interval=50, checkpoint_interval=500,
    )  # fmt: skip
    return model, training


def check_device(name: str) -> torch.device:
    """The device named on the command line, with a clear error when it is not there."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {name}: torch sees no CUDA GPU on this machine (torch "
            f"{torch.__version__}). Install a CUDA build of torch, or use --device cpu."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SystemExit(f"--device {name}: MPS is not available here; use --device cpu.")
    return device


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, mps or cpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, 3 steps: smoke test")
    parser.add_argument("--synthetic-data", action="store_true", help="random tokens, no data prep")
    parser.add_argument("--batch-size", type=int, default=None, help="override the batch size")
    parser.add_argument("--steps", type=int, default=None, help="override the number of updates")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--output", default=None, help="checkpoint folder (default: artifacts)")
    args = parser.parse_args(argv)

    device = check_device(args.device)
    model_config, config = gpu_configs(args.tiny)
    overrides = {"batch_size": args.batch_size, "steps": args.steps}
    config = replace(config, **{key: value for key, value in overrides.items() if value})
    if args.no_compile or args.tiny:
        config = replace(config, compile=False)
    if config.precision == "bf16" and not supports_bf16(device):
        print(f"bf16 is not supported on {device}; training in fp32.")
        config = replace(config, precision="fp32")

    if args.synthetic_data:
        rng = np.random.default_rng(config.seed)
        train = rng.integers(0, model_config.vocab_size, 200_000, dtype=np.uint16)
        validation = rng.integers(0, model_config.vocab_size, 20_000, dtype=np.uint16)
    else:
        from chapters.ch02_tokenizer.tokenizer import ensure_token_shards, load_tokens

        ensure_token_shards()
        train, validation = load_tokens("train"), load_tokens("validation")

    # The smoke test writes nothing; the real run checkpoints into the artifacts folder.
    folder = None if args.tiny else (args.output or artifacts_dir("gpu_run", "full"))
    torch.manual_seed(config.seed)
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32  # what MFU is of
    trainer = Trainer(
        LanguageModel(model_config),
        config,
        random_window_batches(train, config.batch_size, config.context_length, config.seed),
        make_eval_batches=lambda: sequential_eval_batches(
            validation, config.batch_size, config.context_length, config.eval_batches
        ),
        checkpoint_dir=folder,
        device=device,
        peak_flops=hardware_peak_flops(device, dtype, seconds=0.5)[0],
        show_progress=not args.tiny,
    )
    if folder is not None and (Path(folder) / "latest.json").is_file():
        print(f"resuming from step {trainer.resume()}")
    history = trainer.fit()
    summary = {
        "device": str(device),
        "parameters": trainer.model.num_parameters(),
        "steps": len(history.step_losses),
        "last_loss": history.step_losses[-1] if history.step_losses else None,
        "precision": config.precision,
        "compile": config.compile,
    }
    print(summary)
    return summary


if __name__ == "__main__":
    main()
