"""Making it fast: every setup times the same training step, bad setups are refused clearly,
and the one-GPU course run script passes its tiny smoke test on the CPU."""

from __future__ import annotations

import math

import pytest
import torch

from chapters.ch04_blocks.model import ModelConfig
from supplementary.fast import (
    StepSetup,
    available_sdpa_backends,
    fused_adamw_supported,
    time_training_step,
)
from supplementary.train_gpu import gpu_configs, main

TINY = ModelConfig(vocab_size=128, context_length=16, d_model=32, n_layers=1, n_heads=2)


def test_fp32_and_bf16_steps_reach_the_same_loss() -> None:
    fp32 = time_training_step(TINY, StepSetup(), batch_size=2, steps=1, warmup=1)
    bf16 = time_training_step(TINY, StepSetup(precision="bf16"), batch_size=2, steps=1, warmup=1)
    assert math.isfinite(fp32["loss"]) and abs(fp32["loss"] - bf16["loss"]) < 0.05


def test_math_sdpa_backend_gives_the_default_step_loss() -> None:
    default = time_training_step(TINY, StepSetup(), batch_size=2, steps=1, warmup=1)
    math_kernel = time_training_step(
        TINY, StepSetup(sdpa_backend="math"), batch_size=2, steps=1, warmup=1
    )
    assert abs(default["loss"] - math_kernel["loss"]) < 1e-4


def test_result_reports_tokens_per_second_and_mfu() -> None:
    result = time_training_step(TINY, StepSetup(), batch_size=2, steps=1, warmup=0, peak_flops=1e9)
    assert result["tokens_per_s"] > 0 and result["mfu"] > 0
    assert result["label"] == "fp32"


def test_math_backend_is_always_available() -> None:
    assert "math" in available_sdpa_backends("cpu")


def test_fused_adamw_probe_agrees_with_torch() -> None:
    parameter = torch.nn.Parameter(torch.zeros(2))
    parameter.grad = torch.ones(2)
    try:
        torch.optim.AdamW([parameter], fused=True).step()
        expected = True
    except (RuntimeError, ValueError):
        expected = False
    assert fused_adamw_supported("cpu") == expected


@pytest.mark.parametrize(
    "overrides, message",
    [({"precision": "fp16"}, "precision"), ({"sdpa_backend": "cudnn-magic"}, "sdpa_backend")],
)
def test_a_bad_setup_is_refused_naming_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StepSetup(**overrides)


def test_gpu_config_is_the_larger_bf16_compiled_run() -> None:
    model, training = gpu_configs()
    assert (model.d_model, model.n_layers, model.context_length) == (512, 8, 512)
    assert (training.precision, training.compile, training.context_length) == ("bf16", True, 512)


def test_gpu_script_smoke_test_runs_on_cpu(tmp_path) -> None:
    summary = main(
        ["--device", "cpu", "--tiny", "--synthetic-data", "--output", str(tmp_path / "run")]
    )
    assert summary["steps"] == 3 and math.isfinite(summary["last_loss"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_script_without_a_gpu_says_so() -> None:
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        main(["--device", "cuda", "--tiny", "--synthetic-data"])
