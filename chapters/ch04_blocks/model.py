# Generated from chapters/ch04_blocks/ch04_blocks.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""The decoder-only language model of the course: norms, feed-forward, block, model, generation.

Read top to bottom: the small building blocks (RMSNorm, SwiGLU), the Pre-LN block that joins
them with chapter 3's attention, the model, its parameter and FLOP counts, generation with a
KV cache, and finally saving and loading (safetensors). Later chapters import from here:

    from chapters.ch04_blocks.model import LanguageModel, ModelConfig, generate
"""

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from chapters.ch03_attention.attention import CausalSelfAttention, KVCache
from chapters.course import atomic_write

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
LEGACY_WEIGHTS_NAME = "model.pt"  # a plain state_dict; read only with weights_only=True
NORMS = ("rmsnorm", "layernorm")


def default_d_ff(d_model: int, multiple_of: int = 32) -> int:
    """The SwiGLU hidden size: 8/3 * d_model, rounded up to a multiple of `multiple_of`.

    SwiGLU has three weight matrices instead of two; 8/3 * d (instead of the classic 4 * d)
    keeps its parameter count equal to a GELU feed-forward of width 4 * d (Shazeer 2020,
    "GLU Variants Improve Transformer"). Rounding up to a multiple of 32 keeps matrix shapes
    friendly to hardware, as LLaMA does with 256 at its widths (Touvron et al. 2023); at width
    128 a multiple of 64 would turn 341 into 384 and add 12.5% to the feed-forward.
    """
    exact = -(-8 * d_model // 3)  # ceil(8 d / 3) in integers, no float rounding surprises
    return -(-exact // multiple_of) * multiple_of


@dataclass
class ModelConfig:
    """Every size of the model. `d_ff=None` means `default_d_ff(d_model)`, resolved on creation."""

    vocab_size: int = 4096
    context_length: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None
    norm: str = "rmsnorm"  # "rmsnorm" | "layernorm"
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}.")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: every head "
                f"gets d_model / n_heads dimensions. Choose n_heads among the divisors of "
                f"{self.d_model}, or change d_model."
            )
        if (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError(
                f"the head size d_model / n_heads = {self.d_model // self.n_heads} is odd, but "
                "rotary embeddings rotate pairs of dimensions. Choose sizes with an even head size."
            )
        if self.d_ff is None:
            self.d_ff = default_d_ff(self.d_model)
        if isinstance(self.d_ff, bool) or not isinstance(self.d_ff, int) or self.d_ff <= 0:
            raise ValueError(
                f"ModelConfig.d_ff must be a positive integer or None, got {self.d_ff!r}."
            )
        if self.norm not in NORMS:
            raise ValueError(f"ModelConfig.norm must be one of {NORMS}, got {self.norm!r}.")
        if not self.norm_eps > 0:
            raise ValueError(f"ModelConfig.norm_eps must be > 0, got {self.norm_eps!r}.")
        if not self.rope_theta > 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}.")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        """A JSON-ready dict (d_ff resolved), as written to config.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """The inverse of `to_dict`; unknown keys are an error rather than silently dropped."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown ModelConfig field(s) {unknown}; the known fields are {sorted(known)}."
            )
        return cls(**values)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm written out, in float32 (or float64); autograd differentiates it operation by operation."""
    x_float = x.to(torch.promote_types(x.dtype, torch.float32))  # float32 at least
    inverse_rms = torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (x_float * inverse_rms).type_as(x) * weight


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm with the closed-form backward of chapter 4's notebook; saves only x_hat and r."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x_float = x.to(torch.promote_types(x.dtype, torch.float32))  # float32 at least
        inverse_rms = torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + eps)  # r
        normalised = x_float * inverse_rms  # x_hat, float32
        ctx.save_for_backward(normalised, inverse_rms, weight)
        ctx.input_dtype = x.dtype
        return normalised.to(x.dtype) * weight

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        normalised, inverse_rms, weight = ctx.saved_tensors
        grad = grad_output.to(normalised.dtype)
        gain = weight.to(normalised.dtype)
        grad_x_hat = grad * normalised  # g * x_hat: both gradients start from it
        grad_weight = None
        if ctx.needs_input_grad[1]:
            used = grad_x_hat
            if ctx.input_dtype != normalised.dtype:
                # the forward multiplied w by x_hat rounded to x's dtype: differentiate that product
                used = grad * normalised.to(ctx.input_dtype).to(normalised.dtype)
            grad_weight = used.flatten(0, -2).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            # mean(h * x_hat) with h = g * w is (g * x_hat) . w / d: a matrix-vector product
            mean_h_x = (grad_x_hat @ gain).unsqueeze(-1) / normalised.size(-1)
            h = grad * gain
            # r (h - x_hat mean(h x_hat)), computed in place in h: no further full-size tensors
            grad_x = h.addcmul_(normalised, mean_h_x, value=-1).mul_(inverse_rms)
            grad_x = grad_x.to(ctx.input_dtype)
        return grad_x, grad_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension, with a hand-written backward."""
    return _RMSNormFunction.apply(x, weight, eps)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * weight.

    Unlike LayerNorm it neither subtracts the mean nor adds a bias: one statistic, one
    learned scale per channel. Computed in float32 so that half-precision inputs keep their
    small values from underflowing in x^2. `rms_norm_reference` is the forward written out.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)  # the forward above, with its own backward


def norm_factory(config: ModelConfig) -> Callable[[int], nn.Module]:
    """The `make_norm(dim)` that `config.norm` names: RMSNorm, or LayerNorm with a bias."""
    if config.norm == "rmsnorm":
        return lambda dim: RMSNorm(dim, eps=config.norm_eps)
    return lambda dim: nn.LayerNorm(dim, eps=config.norm_eps)


class _SwiGLUGateFunction(torch.autograd.Function):
    """silu(gate) * value with a hand-written backward that saves only its two inputs.

    Autograd would keep silu(gate) as well, a third tensor of the feed-forward's full width;
    the backward recomputes it instead, which is cheaper than storing and reading it back.
    """

    @staticmethod
    def forward(ctx, gate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, value)
        return _times(F.silu(gate), value)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        gate, value = ctx.saved_tensors
        grad_gate = grad_value = None
        if ctx.needs_input_grad[0]:
            # d silu(a) / da = sigmoid(a) (1 + a (1 - sigmoid(a))), applied by one torch kernel
            grad_gate = torch.ops.aten.silu_backward(grad_output * value, gate)
        if ctx.needs_input_grad[1]:
            grad_value = _times(F.silu(gate), grad_output)
        return grad_gate, grad_value


def _times(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """fresh * other, written into `fresh` (a temporary nobody else holds) when the result fits."""
    if fresh.shape == other.shape and fresh.dtype == other.dtype:
        return fresh.mul_(other)
    return fresh * other


class SwiGLU(nn.Module):
    """Gated feed-forward (Shazeer 2020): w2( silu(w1 x) * (w3 x) ), no biases.

    w1 and w3 map d_model -> d_ff (the gate and the value), w2 maps back to d_model and is the
    block's output projection into the residual stream. The gate's product has its own
    backward (`_SwiGLUGateFunction`); the three projections stay ordinary `nn.Linear` modules.
    """

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w3 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, d_model) -> (B, T, d_ff) -> (B, T, d_model)
        return self.w2(_SwiGLUGateFunction.apply(self.w1(x), self.w3(x)))


class Block(nn.Module):
    """One Pre-LN transformer block: x + attention(norm(x)), then x + ffn(norm(x)).

    Normalising the input of each sub-layer, not its output (Xiong et al. 2020, "On Layer
    Normalization in the Transformer Architecture"), leaves the residual stream an untouched
    sum, so gradients reach early layers directly and training is stable without warm-up tricks.
    """

    def __init__(self, config: ModelConfig, make_norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.attn_norm = make_norm(config.d_model)
        self.attention = CausalSelfAttention(
            config.d_model, config.n_heads, rope_theta=config.rope_theta, dropout=config.dropout
        )
        self.ffn_norm = make_norm(config.d_model)
        self.ffn = SwiGLU(config.d_model, config.d_ff)
        self.residual_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        # x: (B, T, d_model) in and out; each sub-layer adds its contribution to the stream.
        attended = self.attention(
            self.attn_norm(x), positions=positions, attention_mask=attention_mask, kv_cache=kv_cache
        )
        x = x + self.residual_dropout(attended)
        x = x + self.residual_dropout(self.ffn(self.ffn_norm(x)))
        return x


class LanguageModel(nn.Module):
    """Decoder-only transformer: token embedding -> n_layers Blocks -> final norm -> LM head.

    There is no position embedding table: positions enter through the rotary embeddings inside
    attention (chapter 3). `make_norm(dim)` builds every norm in the model and overrides
    `config.norm` (chapter 5 swaps norms this way). `forward` returns float32 logits.

    Initialisation (GPT-2, Radford et al. 2019, section 2.3; as in nanoGPT): every Linear and
    the embedding ~ Normal(0, 0.02); the two projections that write into the residual stream
    (attention.out_proj, ffn.w2) ~ Normal(0, 0.02 / sqrt(2 * n_layers)), so that the sum of
    2 * n_layers residual contributions keeps roughly the scale of one; norms start at 1.
    """

    def __init__(
        self, config: ModelConfig, make_norm: Callable[[int], nn.Module] | None = None
    ) -> None:
        super().__init__()
        self.config = config
        make_norm = make_norm if make_norm is not None else norm_factory(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, make_norm) for _ in range(config.n_layers))
        self.final_norm = make_norm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # One matrix reads tokens in and scores them out (Press & Wolf 2017).
            self.lm_head.weight = self.token_embedding.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The GPT-2 initialisation described in the class docstring."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for block in self.blocks:
            nn.init.normal_(block.attention.out_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.ffn.w2.weight, mean=0.0, std=residual_std)

    def forward(
        self,
        token_ids: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_caches: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size), float32, for token ids (B, T).

        With `kv_caches` (one per block, see `new_kv_caches`) the ids are the tokens that follow
        the ones already cached, and positions continue from the cache length.
        """
        token_ids = self._check_inputs(token_ids, kv_caches)
        # positions=None lets each attention layer count on from its cache, knowing the range
        x = self.embedding_dropout(self.token_embedding(token_ids))  # (B, T, d_model)
        for index, block in enumerate(self.blocks):
            cache = kv_caches[index] if kv_caches is not None else None
            x = block(x, positions=positions, attention_mask=attention_mask, kv_cache=cache)
        x = self.final_norm(x)
        return self.lm_head(x).float()  # (B, T, d_model) -> (B, T, vocab_size)

    def new_kv_caches(self) -> list[KVCache]:
        """Empty key/value caches, one per block, for incremental decoding."""
        return [KVCache() for _ in self.blocks]

    def _check_inputs(
        self, token_ids: torch.Tensor, kv_caches: list[KVCache] | None
    ) -> torch.Tensor:
        # Fail here, naming the sizes, rather than with an index error deep inside torch.
        if not isinstance(token_ids, torch.Tensor):
            raise TypeError(
                f"token_ids must be a torch.Tensor of shape (batch, time), got {type(token_ids).__name__}."
            )
        if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
            raise TypeError(
                f"token_ids must hold integers (torch.long), got dtype {token_ids.dtype}. "
                "Token ids index the embedding table; convert with token_ids.long()."
            )
        if token_ids.dim() != 2:
            hint = (
                " Add a batch dimension with token_ids.unsqueeze(0)."
                if token_ids.dim() == 1
                else ""
            )
            raise ValueError(
                f"token_ids must have shape (batch, time), got shape {tuple(token_ids.shape)}.{hint}"
            )
        B, T = token_ids.shape
        if B == 0 or T == 0:
            raise ValueError(f"token_ids is empty (shape {tuple(token_ids.shape)}).")
        cached = 0
        if kv_caches is not None:
            if len(kv_caches) != len(self.blocks):
                raise ValueError(
                    f"kv_caches has {len(kv_caches)} entries but the model has "
                    f"{len(self.blocks)} blocks; create them with model.new_kv_caches()."
                )
            cached = kv_caches[0].length
        limit = self.config.context_length
        if cached + T > limit:
            already = f" ({cached} cached + {T} new)" if cached else ""
            raise ValueError(
                f"sequence length {cached + T}{already} exceeds the model's context_length="
                f"{limit}. Crop the input to its last {limit} tokens "
                f"(token_ids[:, -{limit}:]), or build the model with a larger context_length."
            )
        if torch.compiler.is_compiling() or (self.training and token_ids.device.type != "cpu"):
            # Reading min/max back as Python numbers would split a compiled graph in two, and
            # on a GPU it waits for the device at every training step; there the check is
            # skipped (on the CPU it costs microseconds; evaluation and generation keep it).
            return token_ids.long()
        low, high = int(token_ids.min()), int(token_ids.max())
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size}). "
                "Was the text encoded with a different tokenizer than the one this model uses?"
            )
        return token_ids.long()

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Trainable parameters, a tied matrix counted once.

        include_embeddings=False leaves out the token embedding table (a lookup, no matmul),
        as Kaplan et al. 2020 do; an untied LM head is a real matmul and stays counted.
        """
        total = sum(parameter.numel() for parameter in self.parameters())  # shared counted once
        if not include_embeddings:
            total -= self.token_embedding.weight.numel()
        return total

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write `model.safetensors` and `config.json` into `folder`, each atomically."""
        return save_pretrained(self, folder)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, map_location: str | torch.device = "cpu"
    ) -> "LanguageModel":
        """A model rebuilt from a folder written by `save_pretrained`, in eval mode."""
        return load_pretrained(folder, map_location=map_location, model_class=cls)


def count_parameters(config: ModelConfig, include_embeddings: bool = True) -> int:
    """Closed-form parameter count of `LanguageModel(config)` with its default norms.

    Per block: attention 4 d^2 (q, k, v, out; no biases), SwiGLU 3 d d_ff, two norms.
    Plus the embedding V d, the final norm, and the LM head V d unless it is tied.
    """
    d, vocab = config.d_model, config.vocab_size
    norm = d if config.norm == "rmsnorm" else 2 * d  # LayerNorm has a weight and a bias
    per_block = 4 * d * d + 3 * d * config.d_ff + 2 * norm
    total = vocab * d + config.n_layers * per_block + norm
    if not config.tie_embeddings:
        total += vocab * d
    if not include_embeddings:
        total -= vocab * d
    return total


def flops_per_token(config: ModelConfig, sequence_length: int | None = None) -> float:
    """Training FLOPs per token (forward + backward) at `sequence_length` (default: context).

    Kaplan et al. 2020 ("Scaling Laws for Neural Language Models", Table 1 and section 2.1):
    a forward pass costs 2 N + 2 n_layers n_ctx d_model per token, where N are the parameters
    that take part in a matrix multiply (2 FLOPs per weight: one multiply, one add) and the
    second term is attention's QK^T and weights @ V against on average n_ctx / 2 earlier
    positions. Backward costs twice the forward, so training is 6 N + 6 n_layers n_ctx d_model.
    The Chinchilla paper (Hoffmann et al. 2022, Appendix F) counts the same two products in
    more detail but over all n_ctx positions, without the causal halving, so its attention
    term is twice this one.
    Here N includes the LM head (V d, tied or not: it is a matmul even when shared), which
    Kaplan drop as small; for small models with a 4096-token vocabulary it is not small.
    """
    n_ctx = config.context_length if sequence_length is None else sequence_length
    matmul_parameters = count_parameters(config, include_embeddings=False)
    if config.tie_embeddings:
        matmul_parameters += config.vocab_size * config.d_model  # the shared head still multiplies
    attention = 2 * config.n_layers * n_ctx * config.d_model
    return 3.0 * (2 * matmul_parameters + attention)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of `logits` (B, vocab) -> (B,).

    temperature 0 is greedy (argmax). Otherwise the logits are divided by the temperature,
    cut to the `top_k` most likely tokens and/or to the smallest set whose probability reaches
    `top_p` (nucleus sampling, Holtzman et al. 2020), and sampled.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, vocab), got {tuple(logits.shape)}.")
    if not 0 <= temperature < math.inf:  # also refuses NaN, for which every comparison fails
        raise ValueError(f"temperature must be a number >= 0 (0 means greedy), got {temperature}.")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}.")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the more likely ones before it already reach top_p; this always
        # keeps the most likely token.
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = before >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    if generator is not None and generator.device != probs.device:
        # A CPU generator cannot drive sampling on another device: sample where it lives.
        return (
            torch.multinomial(probs.to(generator.device), 1, generator=generator)
            .squeeze(-1)
            .to(probs.device)
        )
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: LanguageModel,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_kv_cache: bool = True,
    stop_token_id: int | None = None,
) -> torch.Tensor:
    """Extend `prompt_ids` (B, T0) by up to `max_new_tokens` sampled tokens -> (B, T0 + new).

    Without the cache, every step runs the model on the last `context_length` tokens. With the
    cache, the prompt is processed once and every later step feeds only the newest token; when
    the cache is full it is rebuilt from the last `context_length` tokens (a sliding recompute),
    which is exactly what the uncached path computes, so both give the same tokens. Rows that
    emit `stop_token_id` are padded with it afterwards; generation ends when every row has
    stopped. The model is put in eval mode for the call and restored afterwards.
    """
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2:
        shape = (
            tuple(prompt_ids.shape)
            if isinstance(prompt_ids, torch.Tensor)
            else type(prompt_ids).__name__
        )
        raise ValueError(
            f"prompt_ids must be a tensor of shape (batch, time), got {shape}; "
            "for one prompt use prompt_ids.unsqueeze(0)."
        )
    if (
        not isinstance(max_new_tokens, int)
        or isinstance(max_new_tokens, bool)
        or max_new_tokens < 0
    ):
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}.")
    if prompt_ids.is_floating_point() or prompt_ids.is_complex() or prompt_ids.dtype == torch.bool:
        raise TypeError(
            f"prompt_ids must hold integer token ids, got dtype {prompt_ids.dtype}; a float id "
            "would be truncated to another token. Encode the prompt with the tokenizer."
        )
    context = model.config.context_length
    device = next(model.parameters()).device
    tokens = prompt_ids.to(device).long()
    finished = torch.zeros(tokens.size(0), dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()
    try:
        caches = None
        for _ in range(max_new_tokens):
            if not use_kv_cache:
                logits = model(tokens[:, -context:])
            elif caches is None or caches[0].length >= context:
                caches = model.new_kv_caches()  # (re)fill: the prompt, or the slid window
                logits = model(tokens[:, -context:], kv_caches=caches)
            else:
                logits = model(tokens[:, -1:], kv_caches=caches)
            next_ids = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
            if stop_token_id is not None:
                next_ids = torch.where(finished, torch.full_like(next_ids, stop_token_id), next_ids)
                finished |= next_ids == stop_token_id
            tokens = torch.cat([tokens, next_ids[:, None]], dim=1)  # (B, T) -> (B, T + 1)
            if stop_token_id is not None and bool(finished.all()):
                break
    finally:
        model.train(was_training)
    return tokens


def save_pretrained(model: LanguageModel, folder: str | Path) -> Path:
    """Write `model.safetensors` (tied weights once) and `config.json` into `folder`.

    safetensors stores raw tensors and a JSON header, nothing executable, so loading a file
    cannot run code (unlike pickle-based .pt files). Each file is written to a temporary name
    and renamed into place, so a crash never leaves a half-written checkpoint.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in model.state_dict().items()
        if not (model.config.tie_embeddings and name == "lm_head.weight")
    }
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{WEIGHTS_NAME}.", suffix=".tmp")
    os.close(handle)
    # the config travels inside the weights file too: the two files are renamed one after the
    # other, and loading checks that they are a pair
    metadata = {
        "format": "pt",
        "written_by": "ch04_blocks",
        "config": json.dumps(model.config.to_dict()),
    }
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, folder / WEIGHTS_NAME)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    with atomic_write(folder / CONFIG_NAME) as file:
        json.dump(model.config.to_dict(), file, indent=2)
    return folder


def _read_config(folder: Path) -> ModelConfig:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: a checkpoint folder needs {CONFIG_NAME} next to the weights. "
            "Was it written with save_pretrained?"
        )
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not valid JSON text ({error}); the file is corrupt. Save the model "
            "again with save_pretrained."
        ) from error
    if not isinstance(values, dict):
        raise ValueError(f"{path} should hold a JSON object of ModelConfig fields.")
    try:
        return ModelConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} does not describe a valid model: {error}") from error


def _config_in_weights(folder: Path) -> dict | None:
    """The config that save_pretrained stored inside the weights file (None for older files)."""
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        return None
    with safe_open(path, framework="pt") as file:
        saved = (file.metadata() or {}).get("config")
    return json.loads(saved) if saved else None


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_NAME
    if path.is_file():
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"{path} could not be read as safetensors ({error}); the file is corrupt or truncated."
            ) from error
    legacy = folder / LEGACY_WEIGHTS_NAME
    if legacy.is_file():
        # weights_only=True: unpickle tensors and plain containers only, never arbitrary code.
        try:
            return torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{legacy} could not be read as a state_dict ({error}).") from error
    raise FileNotFoundError(
        f"no weights in {folder}: expected {WEIGHTS_NAME} (or {LEGACY_WEIGHTS_NAME}). "
        "Was the folder written with save_pretrained?"
    )


def load_pretrained(
    folder: str | Path,
    map_location: str | torch.device = "cpu",
    model_class: type[LanguageModel] = LanguageModel,
) -> LanguageModel:
    """Rebuild the model saved in `folder`; checks that config and weights agree. Eval mode."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"checkpoint folder {folder} does not exist; save one with model.save_pretrained(folder)."
        )
    config = _read_config(folder)
    tensors = _read_weights(folder)
    saved_config = _config_in_weights(folder)
    if saved_config is not None and saved_config != config.to_dict():
        differ = sorted(k for k in saved_config if saved_config[k] != config.to_dict().get(k))
        raise ValueError(
            f"the weights in {folder} and its {CONFIG_NAME} do not match: {differ} differ from "
            "the config saved with the weights. The two files come from different saves, or "
            "config.json was edited; save the model again with save_pretrained."
        )
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{folder}: weight {name} has dtype {tensor.dtype}, not a float.")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"{folder}: weight {name} holds NaN or infinite values; the model diverged or "
                "the file is damaged. Retrain it or load an earlier checkpoint."
            )
    model = model_class(config)
    expected = model.state_dict()
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
        tensors.pop("lm_head.weight", None)  # an older file may carry the shared copy as well
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = [
        f"{name}: file {tuple(tensors[name].shape)} vs config {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(tensors))
        if tensors[name].shape != expected[name].shape
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"the weights in {folder} do not match its {CONFIG_NAME}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong_shape[:5]}. "
            "The two files probably come from different models."
        )
    model.load_state_dict(tensors, strict=False)  # the tied head follows the embedding
    return model.to(map_location).eval()
