# Generated from supplementary/making_it_fast.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""Making it fast: time the course's training step under different precisions, compilers,
optimizer implementations and attention kernels, and report tokens/s and MFU.

    StepSetup(precision, compile, fused_adamw, sdpa_backend)
    time_training_step(model_config, setup, ...) -> dict   # tokens/s, MFU, ms/step, loss
    available_sdpa_backends(device) -> list[str]
    fused_adamw_supported(device) -> bool

The data is random token ids: speed does not depend on what the tokens say.
"""

import contextlib
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from chapters.ch04_blocks.model import LanguageModel, ModelConfig, flops_per_token
from chapters.ch06_pretraining.trainer import autocast_context, hardware_peak_flops, supports_bf16

SDPA_BACKENDS = {
    "math": SDPBackend.MATH,  # the formula in plain tensor ops, like chapter 3's naive version
    "flash": SDPBackend.FLASH_ATTENTION,  # tiled, never materialises the (T, T) matrix
    "efficient": SDPBackend.EFFICIENT_ATTENTION,  # memory-efficient kernel (CUDA)
}


@dataclass(frozen=True)
class StepSetup:
    """One way of running the same training step."""

    precision: str = "fp32"  # "fp32" or "bf16" (autocast: matmuls in bf16, weights stay fp32)
    compile: bool = False  # torch.compile the model
    fused_adamw: bool = False  # one fused kernel for the whole AdamW update
    sdpa_backend: str = "default"  # "default" (PyTorch picks) or a key of SDPA_BACKENDS

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}.")
        if self.sdpa_backend != "default" and self.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(
                f"sdpa_backend must be 'default' or one of {sorted(SDPA_BACKENDS)}, "
                f"got {self.sdpa_backend!r}."
            )

    def label(self) -> str:
        parts = [self.precision]
        if self.compile:
            parts.append("compiled")
        if self.fused_adamw:
            parts.append("fused AdamW")
        if self.sdpa_backend != "default":
            parts.append(f"SDPA {self.sdpa_backend}")
        return " + ".join(parts)


def fused_adamw_supported(device: torch.device | str) -> bool:
    """Whether this torch build has a fused AdamW kernel for `device` (tried on a tiny tensor)."""
    parameter = torch.nn.Parameter(torch.zeros(2, device=device))
    parameter.grad = torch.ones_like(parameter)
    try:
        torch.optim.AdamW([parameter], lr=1e-3, fused=True).step()
    except (RuntimeError, ValueError):
        return False
    return True


def available_sdpa_backends(device: torch.device | str) -> list[str]:
    """The SDPA backends that run a small causal attention on `device`."""
    q = torch.randn(1, 2, 16, 8, device=device)
    available = []
    for name, backend in SDPA_BACKENDS.items():
        try:
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, q, q, is_causal=True)
        except RuntimeError:
            continue
        available.append(name)
    return available


def time_training_step(
    model_config: ModelConfig,
    setup: StepSetup,
    *,
    batch_size: int = 8,
    steps: int = 5,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    peak_flops: float | None = None,
    seed: int = 0,
) -> dict:
    """Run `warmup` + `steps` full training steps (forward, backward, AdamW) and time the last
    `steps`. Returns the setup, tokens/s, ms/step, the last loss and, given the device's
    `peak_flops`, the model FLOPs utilisation (MFU, Chowdhery et al. 2022, PaLM appendix B):
    the FLOPs the model needs per second divided by what the hardware could do."""
    device = torch.device(device)
    if setup.fused_adamw and not fused_adamw_supported(device):
        raise ValueError(f"this torch build has no fused AdamW for {device.type}.")
    if setup.precision == "bf16" and not supports_bf16(device):
        raise ValueError(f"bf16 autocast is not supported on {device}.")
    torch.manual_seed(seed)
    model = LanguageModel(model_config).to(device).train()
    forward = torch.compile(model) if setup.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=setup.fused_adamw or None)
    generator = torch.Generator().manual_seed(seed)
    T = model_config.context_length
    kernel = (
        sdpa_kernel(SDPA_BACKENDS[setup.sdpa_backend])
        if setup.sdpa_backend != "default"
        else contextlib.nullcontext()
    )

    def one_step() -> float:
        ids = torch.randint(0, model_config.vocab_size, (batch_size, T + 1), generator=generator)
        ids = ids.to(device)
        with autocast_context(device, setup.precision):
            logits = forward(ids[:, :-1])  # (B, T, vocab)
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()  # .item() waits for the device, so the clock sees finished work

    with kernel:
        for _ in range(warmup):  # compilation, allocator and kernel selection happen here
            one_step()
        started = time.perf_counter()
        for _ in range(steps):
            loss = one_step()
        seconds = (time.perf_counter() - started) / steps
    tokens_per_second = batch_size * T / seconds
    result = {
        **asdict(setup),
        "label": setup.label(),
        "tokens_per_s": tokens_per_second,
        "ms_per_step": 1000 * seconds,
        "loss": loss,
    }
    if peak_flops:
        result["mfu"] = tokens_per_second * flops_per_token(model_config, T) / peak_flops
    return result


def peak_flops_for(device: torch.device | str, precision: str, seconds: float = 0.5) -> float:
    """The peak MFU divides by, in the dtype that `precision` computes in: a known GPU's
    datasheet figure, otherwise the measured large-matmul peak (chapter 6's
    `hardware_peak_flops`)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return hardware_peak_flops(device, dtype, seconds=seconds)[0]
