# Generated from chapters/ch05_normalization/ch05_normalization.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""Normalisation layers from scratch and the experiments that compare them.

BatchNorm, LayerNorm and RMSNorm written out in plain tensor operations; a leakage detector
that asks whether an earlier position's output depends on later tokens or on other sequences
in the batch; the Post-LN block; and a small, fixed-budget training runner that trains the
chapter 4 model with each norm swapped in.
"""

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from chapters.ch04_blocks.model import Block, LanguageModel, ModelConfig


class BatchNorm(nn.Module):
    """Batch normalisation (Ioffe & Szegedy, 2015) for (B, T, C) activations.

    Each feature is normalised with the mean and variance taken over the batch AND the time
    axis, the same statistics as `torch.nn.BatchNorm1d` on a (B, C, T) tensor. In training
    mode the batch statistics are used and running averages are updated; in eval mode the
    running averages are used instead.
    """

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.dim, self.eps, self.momentum = dim, eps, momentum
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"BatchNorm({self.dim}) got features of size {x.shape[-1]}; "
                "pass activations shaped (..., dim)."
            )
        if self.training:
            every_axis_but_features = tuple(range(x.dim() - 1))  # (B, T) for (B, T, C)
            count = x.numel() // self.dim
            if count < 2:
                raise ValueError(
                    "BatchNorm in training mode needs more than one value per "
                    "feature (batch size x length >= 2); use eval mode."
                )
            mean = x.mean(dim=every_axis_but_features)  # (C,)
            var = x.var(dim=every_axis_but_features, unbiased=False)  # (C,)
            with torch.no_grad():
                # The running variance is the unbiased estimate, as in torch.
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * count / (count - 1), self.momentum)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class LayerNorm(nn.Module):
    """Layer normalisation (Ba et al., 2016): each token normalised over its own features."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)  # (B, T, 1): one mean per token
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang & Sennrich, 2019): LayerNorm without the mean.

    Only rescales each token by the root mean square of its features; no centring, no bias.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_square = x.pow(2).mean(dim=-1, keepdim=True)  # (B, T, 1)
        return x * torch.rsqrt(mean_square + self.eps) * self.weight


NORM_KINDS = ("layernorm", "rmsnorm", "batchnorm", "none")


def make_norm(kind: str, eps: float = 1e-5) -> Callable[[int], nn.Module]:
    """A factory `dim -> norm layer` for one of NORM_KINDS ("none" gives nn.Identity).

    The chapter 4 model calls it for every norm it builds, which is how one argument swaps
    the normalisation of the whole model.
    """
    builders: dict[str, Callable[[int], nn.Module]] = {
        "layernorm": lambda dim: LayerNorm(dim, eps),
        "rmsnorm": lambda dim: RMSNorm(dim, eps),
        "batchnorm": lambda dim: BatchNorm(dim, eps),
        "none": lambda dim: nn.Identity(),
    }
    if kind not in builders:
        raise ValueError(f"unknown norm {kind!r}; choose one of {NORM_KINDS}")
    return builders[kind]


@dataclass(frozen=True)
class Leakage:
    """How much sequence 0's outputs moved when inputs they must not depend on changed.

    Both numbers are the largest change relative to the largest output (0.0 = untouched).
    `from_future`: change the tokens after `position` in sequence 0, look at positions up to
    `position`. `across_batch`: change every other sequence, look at all of sequence 0.
    """

    from_future: float
    across_batch: float

    def leaks(self, tolerance: float = 1e-5) -> bool:
        """True when either kind of leakage is above `tolerance` (float noise is ~1e-7)."""
        return self.from_future > tolerance or self.across_batch > tolerance


def _perturbed(
    inputs: torch.Tensor, where: torch.Tensor, vocab_size: int | None, generator: torch.Generator
) -> torch.Tensor:
    """A copy of `inputs` with every entry selected by `where` (B, T) replaced."""
    changed = inputs.clone()
    if inputs.is_floating_point():
        noise = torch.randn(inputs.shape, generator=generator, dtype=inputs.dtype)
        changed[where] += 1.0 + noise[where]  # a shift, so no entry can stay the same
    else:
        vocab_size = vocab_size or int(inputs.max()) + 1
        if vocab_size < 2:
            raise ValueError("token inputs need vocab_size >= 2 to be changed")
        offsets = torch.randint(1, vocab_size, inputs.shape, generator=generator)
        changed[where] = (inputs[where] + offsets[where]) % vocab_size  # always a new token
    return changed


@torch.no_grad()
def measure_leakage(
    function: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    *,
    position: int | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
) -> Leakage:
    """Does `function` let information flow backwards in time or across the batch?

    `inputs` are (B, T, C) activations or (B, T) token ids, with B >= 2 and T >= 2;
    `function` maps them to (B, T, ...) outputs (a norm layer, a block, a whole model).
    `position` (default: the middle) splits sequence 0 into a past that is watched and a
    future that is changed. A causal model must give Leakage(0.0, 0.0). If `function` is an
    nn.Module its state (e.g. BatchNorm's running statistics) is restored afterwards.
    """
    if inputs.dim() < 2 or inputs.shape[0] < 2 or inputs.shape[1] < 2:
        raise ValueError(
            f"inputs must be (B, T, ...) with B >= 2 and T >= 2, got {tuple(inputs.shape)}"
        )
    batch, length = inputs.shape[:2]
    position = length // 2 if position is None else position
    if not 0 <= position < length - 1:
        raise ValueError(f"position must leave a future to change: 0 <= position < {length - 1}")
    saved = copy.deepcopy(function.state_dict()) if isinstance(function, nn.Module) else None
    generator = torch.Generator().manual_seed(seed)
    try:
        reference = function(inputs)
        scale = reference.abs().max().clamp_min(1e-12)

        future = torch.zeros(batch, length, dtype=torch.bool)
        future[0, position + 1 :] = True
        after = function(_perturbed(inputs, future, vocab_size, generator))
        from_future = (after[0, : position + 1] - reference[0, : position + 1]).abs().max()

        others = torch.zeros(batch, length, dtype=torch.bool)
        others[1:] = True
        after = function(_perturbed(inputs, others, vocab_size, generator))
        across_batch = (after[0] - reference[0]).abs().max()
    finally:
        if saved is not None:
            function.load_state_dict(saved)
    return Leakage(float(from_future / scale), float(across_batch / scale))


def build_model(
    config: ModelConfig, norm: str = "rmsnorm", *, post_norm: bool = False, seed: int = 0
) -> LanguageModel:
    """The chapter 4 model with every norm of kind `norm` (see NORM_KINDS), seeded."""
    torch.manual_seed(seed)  # same initial weights for every variant with the same shapes
    model = LanguageModel(config, make_norm=make_norm(norm, config.norm_eps))
    return to_post_norm(model) if post_norm else model


@torch.no_grad()
def xavier_initialise(model: LanguageModel) -> LanguageModel:
    """Re-initialise in place the way the original Transformer did, the setting that Xiong et
    al. (2020) analyse: Xavier-normal weights in every linear layer, embeddings N(0, 1/d_model).
    """
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight is not model.token_embedding.weight:
            nn.init.xavier_normal_(module.weight)  # the tied output head keeps the embedding's
    nn.init.normal_(model.token_embedding.weight, std=model.config.d_model**-0.5)
    return model


def course_tokens(split: str) -> np.ndarray:
    """Token ids of "train" or "validation" for the training comparison."""
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    from chapters.ch02_tokenizer.tokenizer import load_tokens

    return load_tokens(split)


def sample_batch(
    tokens: np.ndarray, batch_size: int, context_length: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of a token stream: inputs (B, T) and next-token labels (B, T)."""
    if len(tokens) <= context_length + 1:
        raise ValueError(
            f"a stream of {len(tokens)} tokens is too short for windows of {context_length + 1}"
        )
    starts = torch.randint(0, len(tokens) - context_length - 1, (batch_size,), generator=generator)
    windows = np.stack([tokens[start : start + context_length + 1] for start in starts.tolist()])
    windows = torch.from_numpy(windows.astype(np.int64))  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    batch_statistics: bool = False,
) -> float:
    """Mean next-token cross-entropy over `batches`.

    Normally in eval mode (BatchNorm uses its running statistics, as at inference time);
    `batch_statistics=True` evaluates in training mode instead, with BatchNorm's running
    statistics restored afterwards, to measure the train/inference mismatch.
    """
    was_training = model.training
    saved = copy.deepcopy(model.state_dict()) if batch_statistics else None
    model.train(batch_statistics)
    losses = []
    for inputs, labels in batches:
        logits = model(inputs)  # (B, T, V)
        losses.append(F.cross_entropy(logits.flatten(0, 1), labels.flatten()).item())
    if saved is not None:
        model.load_state_dict(saved)
    model.train(was_training)
    return float(np.mean(losses))


@dataclass
class RunConfig:
    """One fixed training budget, shared by every variant in a comparison."""

    steps: int = 300
    batch_size: int = 16
    context_length: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 0  # linear warm-up from 0, then a constant learning rate
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    eval_every: int = 50
    eval_batches: int = 4
    seed: int = 0  # the seed of the data order and of the validation batches


@dataclass
class RunResult:
    """What one training run measured."""

    name: str
    eval_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)
    tokens_per_second: float = float("nan")

    @property
    def final_val_loss(self) -> float:
        return self.val_losses[-1] if self.val_losses else float("nan")


def validation_batches(
    tokens: np.ndarray, config: RunConfig
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same validation windows for every run with this config."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    return [
        sample_batch(tokens, config.batch_size, config.context_length, generator)
        for _ in range(config.eval_batches)
    ]


def train_and_evaluate(
    name: str,
    model: nn.Module,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    config: RunConfig,
    *,
    progress: bool = True,
) -> RunResult:
    """Train `model` with AdamW for `config.steps` steps; record validation loss and speed.

    Every run with the same config sees the same batches in the same order, so the model
    (here: its norm) is the only difference. A run whose loss stops being finite ends early
    and reports NaN as its final validation loss.
    """
    from tqdm.auto import tqdm

    data_generator = torch.Generator().manual_seed(config.seed)
    val_batches = validation_batches(val_tokens, config)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        betas=(0.9, 0.95),
        weight_decay=config.weight_decay,
    )
    result = RunResult(name)
    result.eval_steps.append(0)
    result.val_losses.append(evaluate_loss(model, val_batches))
    train_seconds = 0.0
    model.train()
    for step in tqdm(range(1, config.steps + 1), desc=name, disable=not progress, leave=False):
        warmup = min(1.0, step / config.warmup_steps) if config.warmup_steps else 1.0
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * warmup
        inputs, labels = sample_batch(
            train_tokens, config.batch_size, config.context_length, data_generator
        )
        started = time.perf_counter()
        logits = model(inputs)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        train_seconds += time.perf_counter() - started
        result.train_losses.append(loss.item())
        if not math.isfinite(result.train_losses[-1]):
            result.eval_steps.append(step)
            result.val_losses.append(float("nan"))
            break
        if step % config.eval_every == 0 or step == config.steps:
            result.eval_steps.append(step)
            result.val_losses.append(evaluate_loss(model, val_batches))
    steps_done = len(result.train_losses)
    result.tokens_per_second = (
        steps_done * config.batch_size * config.context_length / train_seconds
    )
    return result


class PostNormBlock(Block):
    """The original Transformer's Post-LN block (Vaswani et al., 2017): norm AFTER the add.

    Same parameters as the chapter 4 Pre-LN block, wired differently:
    `x = norm(x + attention(x))`, then `x = norm(x + ffn(x))`. Every residual path now passes
    through a norm, which is what makes its gradients depend on depth (Xiong et al., 2020).
    """

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_cache=None,
    ) -> torch.Tensor:
        # x: (B, T, d_model) in and out; the stream itself is normalised after each add.
        attended = self.attention(
            x, positions=positions, attention_mask=attention_mask, kv_cache=kv_cache
        )
        x = self.attn_norm(x + self.residual_dropout(attended))
        return self.ffn_norm(x + self.residual_dropout(self.ffn(x)))


def to_post_norm(model: LanguageModel) -> LanguageModel:
    """Rewire a chapter 4 model, in place, into Post-LN (same weights, norms after the adds).

    The last block already ends in a norm, so the final norm before the output head becomes
    an identity, as in the original Post-LN Transformer.
    """
    for block in model.blocks:
        # Same submodules and weights, only the forward changes, so swapping the class of
        # each existing block is enough (and keeps the initialisation identical to Pre-LN).
        block.__class__ = PostNormBlock
    model.final_norm = nn.Identity()
    return model


def gradient_norms_per_layer(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
) -> list[float]:
    """The L2 norm of the loss gradient of each block's parameters, first block first.

    One forward and backward pass on (inputs, labels); the model's existing gradients are
    discarded. Expects the chapter 4 layout, where `model.blocks` lists the blocks.
    """
    model.zero_grad(set_to_none=True)
    logits = model(inputs)  # (B, T, V)
    F.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()
    norms = []
    for block in model.blocks:
        squares = [p.grad.pow(2).sum() for p in block.parameters() if p.grad is not None]
        norms.append(float(torch.stack(squares).sum().sqrt()))
    model.zero_grad(set_to_none=True)
    return norms


def time_forward_backward(
    layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int = 20
) -> float:
    """Median seconds of one forward plus backward pass of `layer` on `x` (after warm-up)."""
    x = x.detach().requires_grad_(True)
    upstream = torch.randn_like(x)
    timings = []
    for repeat in range(repeats + 3):
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        layer(x).backward(upstream)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        if repeat >= 3:  # the first calls pay for allocation and kernel selection
            timings.append(time.perf_counter() - started)
        x.grad = None
    return float(np.median(timings))
