"""The course's training step against a GPT-2-style model of the same shape, from one run.

    python chapters/ch06_pretraining/benchmark_step.py                  # 1 and 2 threads
    python chapters/ch06_pretraining/benchmark_step.py --threads 1 --steps 20 --rounds 2
    python chapters/ch06_pretraining/benchmark_step.py --compile        # both also compiled

Both models are built from the course's own code and share the attention layer of chapter 3
(separate q, k, v and output projections, PyTorch's fused attention kernel):
- the course's `LanguageModel` (chapter 4): RMSNorm, SwiGLU feed-forward, rotary positions;
- a GPT-2-style model (Radford et al. 2019, as nanoGPT writes it with bias=False): chapter 4's
  model with `norm="layernorm"` (PyTorch's LayerNorm), chapter 3's `LearnedPositionalEmbedding`
  added to the tokens instead of rotary positions, and a GELU feed-forward of width 4 d.
Shape: 4 layers, width 128, 4 heads, context 64, batch 12, vocabulary 65 (TinyShakespeare's
characters). SwiGLU's three matrices of width 352 have 3% more weights than GELU's two of
width 512, so the course model does slightly more arithmetic per token.

The step is a bare loop: forward, cross-entropy, backward, the course's gradient clipping and
its AdamW (`build_optimizer`, fused where supported). Rounds alternate between the models so
that a machine shared with other work slows both alike; the best round of each is compared.
Then a per-operator table (`torch.profiler`) of the course model's step shows where the time
goes. Timings vary between machines and runs: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from chapters.ch03_attention.attention import (
    CausalSelfAttention,
    KVCache,
    LearnedPositionalEmbedding,
)
from chapters.ch04_blocks.model import LanguageModel, ModelConfig
from chapters.ch06_pretraining.trainer import (
    TrainingConfig,
    build_optimizer,
    clip_by_global_norm,
)

SHAPE = dict(vocab_size=65, context_length=64, d_model=128, n_layers=4, n_heads=4)
BATCH = 12


class AttentionWithoutRotary(CausalSelfAttention):
    """Chapter 3's attention without RoPE: GPT-2 adds its positions to the input instead."""

    def _queries_keys_values(
        self, x: torch.Tensor, positions: torch.Tensor | None, kv_cache: KVCache | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = (self._split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)
        return q, k, v


class GELUFeedForward(nn.Module):
    """GPT-2's feed-forward: d -> 4d, GELU, 4d -> d."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, 4 * d_model, bias=False)
        self.w2 = nn.Linear(4 * d_model, d_model, bias=False)  # named w2 for the residual init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x)))


class GPT2StyleModel(LanguageModel):
    """Chapter 4's model with LayerNorm, learned positions and GELU feed-forwards."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)  # config.norm = "layernorm" builds PyTorch's LayerNorm
        for block in self.blocks:
            block.attention = AttentionWithoutRotary(config.d_model, config.n_heads)
            block.ffn = GELUFeedForward(config.d_model)
        self.positions = LearnedPositionalEmbedding(config.context_length, config.d_model)
        self.reset_parameters()

    def forward(self, token_ids: torch.Tensor, **_: object) -> torch.Tensor:
        token_ids = self._check_inputs(token_ids, None)
        x = self.token_embedding(token_ids) + self.positions(
            torch.arange(token_ids.size(1), device=token_ids.device)
        )
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.final_norm(x)).float()


def build(kind: str) -> LanguageModel:
    torch.manual_seed(0)
    if kind == "course":
        return LanguageModel(ModelConfig(**SHAPE))
    return GPT2StyleModel(ModelConfig(**SHAPE, norm="layernorm"))


def make_step(model: nn.Module, forward=None):
    """One bare training step (forward, loss, backward, clip, AdamW) on a fixed random batch."""
    forward = model if forward is None else forward
    optimizer = build_optimizer(model, TrainingConfig(learning_rate=1e-3, min_lr=1e-4))
    generator = torch.Generator().manual_seed(0)
    size = (BATCH, SHAPE["context_length"])
    inputs = torch.randint(0, SHAPE["vocab_size"], size, generator=generator)
    labels = torch.randint(0, SHAPE["vocab_size"], size, generator=generator)
    parameters = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        logits = forward(inputs)
        F.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()
        clip_by_global_norm(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def tokens_per_second(step, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH * SHAPE["context_length"] / (time.perf_counter() - started)


def compare(threads: int, steps: int, rounds: int, with_compile: bool) -> dict[str, float]:
    """Best tokens/s of each model over `rounds` interleaved rounds; with `with_compile`, each
    model also compiled with `torch.compile` (its first, compiling step timed and printed)."""
    torch.set_num_threads(threads)
    kinds = ["gpt2-style", "course"]
    steps_of = {kind: make_step(build(kind)) for kind in kinds}
    if with_compile:
        for kind in kinds:
            model = build(kind)
            compiled = make_step(model, torch.compile(model))
            started = time.perf_counter()
            compiled()  # compiles: the cost a short run pays once
            print(f"  {kind}, torch.compile: first step {time.perf_counter() - started:.1f} s")
            steps_of[f"{kind}, compiled"] = compiled
    for step in steps_of.values():
        for _ in range(3):  # warm-up: allocator, optimizer state, kernels chosen
            step()
    best = dict.fromkeys(steps_of, 0.0)
    for _ in range(rounds):
        for kind, step in steps_of.items():
            best[kind] = max(best[kind], tokens_per_second(step, steps))
    return best


def profile_course_step(steps: int = 10, rows: int = 12) -> None:
    torch.set_num_threads(1)
    step = make_step(build("course"))
    for _ in range(3):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
    print(f"\nWhere the course model's step spends its time (1 thread, {steps} steps):")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--no-profile", action="store_true")
    arguments = parser.parse_args()
    for kind in ("gpt2-style", "course"):
        model = build(kind)
        total = model.num_parameters()
        print(
            f"{kind:>10}: {total:,} parameters, {total - model.token_embedding.weight.numel():,} "
            "outside the embedding"
        )
    print(f"torch {torch.__version__}; batch {BATCH} x context {SHAPE['context_length']}")
    print("| threads | GPT-2-style tokens/s | course tokens/s | course / GPT-2-style |")
    print("|---|---|---|---|")
    for threads in arguments.threads:
        best = compare(threads, arguments.steps, arguments.rounds, arguments.compile)
        for suffix in ("", ", compiled") if arguments.compile else ("",):
            gpt2, course = best[f"gpt2-style{suffix}"], best[f"course{suffix}"]
            label = f"{threads}{' (both compiled)' if suffix else ''}"
            print(f"| {label} | {gpt2:,.0f} | {course:,.0f} | {course / gpt2:.2f} |")
    if not arguments.no_profile:
        profile_course_step()


if __name__ == "__main__":
    main()
