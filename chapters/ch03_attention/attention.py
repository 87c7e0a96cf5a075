# Generated from chapters/ch03_attention/ch03_attention.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""Attention from scratch: masks, scaled dot-product attention, rotary position embeddings,
a key/value cache and the multi-head causal self-attention layer the course's model uses.

Read top to bottom: the small pieces first (masks, the attention formula, positions), then
the layer that puts them together.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(
    query_length: int, key_length: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean (query_length, key_length) mask, True where a query may attend to a key.

    When there are more keys than queries (the keys of earlier tokens sit in a cache), query i
    is the token at absolute position `key_length - query_length + i`, and it may see every key
    at that position or before.
    """
    key_length = query_length if key_length is None else key_length
    if key_length < query_length:
        raise ValueError(
            f"causal_mask got {query_length} queries but only {key_length} keys; every query "
            "must at least see its own key, so key_length must be >= query_length."
        )
    query_positions = torch.arange(query_length, device=device) + (key_length - query_length)
    key_positions = torch.arange(key_length, device=device)
    return key_positions[None, :] <= query_positions[:, None]  # (Tq, Tk)


def _as_4d_mask(
    attention_mask: torch.Tensor, batch: int, heads: int, queries: int, keys: int
) -> torch.Tensor:
    """Check a boolean attention mask and give it four dimensions (B or 1, heads or 1, Tq, Tk).

    A 2-D mask is (Tq, Tk) for every sequence; a 3-D mask is (B, Tq, Tk), one per sequence and
    shared by all heads; a 4-D mask must broadcast to (B, heads, Tq, Tk).
    """
    if attention_mask.dtype != torch.bool:
        raise TypeError(
            f"attention_mask must be a bool tensor (True = may attend), got {attention_mask.dtype}. "
            "Convert it with `mask.bool()` or build it with comparisons."
        )
    if attention_mask.dim() == 2:
        attention_mask = attention_mask[None, None]
    elif attention_mask.dim() == 3:
        attention_mask = attention_mask[:, None]
    target = (batch, heads, queries, keys)
    if attention_mask.dim() != 4 or any(
        size not in (1, wanted) for size, wanted in zip(attention_mask.shape, target, strict=True)
    ):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, which does not broadcast to "
            f"(batch, heads, queries, keys) = {target}. Use (Tq, Tk), (B, Tq, Tk) or (B, 1, Tq, Tk)."
        )
    return attention_mask


def packed_sequence_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal mask for several documents packed into one row: (B, T) ids -> (B, 1, T, T).

    True where query and key belong to the same document. Combined with causality inside the
    attention layer, a token sees only the earlier tokens of its own document.
    """
    if document_ids.dim() != 2:
        raise ValueError(
            f"document_ids must be (batch, time), got shape {tuple(document_ids.shape)}"
        )
    return (document_ids[:, :, None] == document_ids[:, None, :])[:, None]  # (B, 1, T, T)


def positions_within_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """Positions that restart at 0 at each new document of a packed row: (B, T) -> (B, T).

    Documents must be contiguous runs of the same id.
    """
    if document_ids.dim() != 2:
        raise ValueError(
            f"document_ids must be (batch, time), got shape {tuple(document_ids.shape)}"
        )
    batch, length = document_ids.shape
    index = torch.arange(length, device=document_ids.device).expand(batch, length)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    # the index where the current run began, carried forward along the row
    run_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - run_start


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Fail early, naming the shapes, instead of deep inside a matrix product."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "q, k and v must be 4-D (batch, heads, time, head_dim); got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"k {tuple(k.shape)} and v {tuple(v.shape)} must agree on batch, heads and time"
        )
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch, heads and head_dim"
        )


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = True,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax(q k^T / sqrt(head_dim)) over the allowed keys: (B, nh, Tq, hd) -> (B, nh, Tq, Tk).

    The softmax subtracts each row's maximum before exponentiating (same result, no overflow).
    A row with no allowed key gets all-zero weights, as PyTorch's fused attention does.
    """
    queries, keys = q.size(-2), k.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk)
    allowed = None
    if causal:
        allowed = causal_mask(queries, keys, device=q.device)
    if attention_mask is not None:
        mask = _as_4d_mask(attention_mask, q.size(0), q.size(1), queries, keys)
        allowed = mask if allowed is None else allowed & mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    exponentials = torch.exp(scores - row_max)  # masked entries: exp(-inf) = 0
    totals = exponentials.sum(dim=-1, keepdim=True)
    return exponentials / totals.clamp_min(torch.finfo(totals.dtype).tiny)


def naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    attention_mask: torch.Tensor | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention written out: (B, nh, Tq, hd) -> (B, nh, Tq, hd).

    k and v may be longer than q (cached keys); with `causal`, query i sits at absolute
    position Tk - Tq + i. `attention_mask` is bool, True = may attend, shaped (Tq, Tk),
    (B, Tq, Tk) or broadcastable to (B, nh, Tq, Tk); it is combined with causality.
    `dropout` drops attention weights (pass 0.0 at evaluation time).
    """
    _check_qkv(q, k, v)
    weights = attention_weights(q, k, causal=causal, attention_mask=attention_mask)
    if dropout > 0.0:
        weights = F.dropout(weights, p=dropout)
    return weights @ v  # (B, nh, Tq, Tk) @ (B, nh, Tk, hd) -> (B, nh, Tq, hd)


class LearnedPositionalEmbedding(nn.Module):
    """Absolute positions as in GPT-2: one trained vector per position, added to the tokens.

    Kept for comparison with RoPE: it cannot represent positions beyond `max_positions`.
    """

    def __init__(self, max_positions: int, d_model: int):
        super().__init__()
        self.max_positions = max_positions
        self.embedding = nn.Embedding(max_positions, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Integer positions (T,) or (B, T) -> vectors (T, d_model) or (B, T, d_model)."""
        if positions.numel() and (positions.min() < 0 or positions.max() >= self.max_positions):
            raise ValueError(
                f"positions run from {int(positions.min())} to {int(positions.max())}, but this "
                f"embedding only has positions 0 .. {self.max_positions - 1}"
            )
        return self.embedding(positions)


def rotary_frequencies(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """The head_dim/2 rotation speeds of RoPE, theta^(-2i/head_dim) for i = 0 .. head_dim/2 - 1.

    Pair 0 turns by one radian per position; later pairs turn ever more slowly.
    """
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(
            f"RoPE rotates pairs of features, so head_dim must be even; got {head_dim}"
        )
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    return theta**-exponents  # (head_dim / 2,)


def _check_rotary_inputs(x: torch.Tensor, positions: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"apply_rotary expects x as (batch, heads, time, head_dim), got {tuple(x.shape)}"
        )
    if positions.is_floating_point() or positions.is_complex():
        raise TypeError(f"positions must be an integer tensor, got {positions.dtype}")
    batch, _, length, _ = x.shape
    if positions.shape not in ((length,), (batch, length)):
        raise ValueError(
            f"positions has shape {tuple(positions.shape)}; for x of shape {tuple(x.shape)} it "
            f"must be ({length},) or ({batch}, {length})"
        )


def apply_rotary_reference(
    x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0
) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021, RoFormer) of queries or keys, written out.

    Uses the INTERLEAVED-PAIR form of the paper: features (x0, x1), (x2, x3), ... are pairs,
    and pair i of the token at position p is rotated by the angle p * theta^(-2i/head_dim).
    (Hugging Face's Llama code pairs feature i with i + head_dim/2 instead; converting
    weights between the two means permuting the rows of q_proj and k_proj.)

    x: (B, n_heads, T, head_dim); positions: integer (T,) shared by the batch or (B, T).
    Computed in float32 and returned in x's dtype. Rotations keep norms, and the dot product
    of a rotated query and key depends only on their relative position. `apply_rotary` below
    computes the same rotation faster; this version states it.
    """
    _check_rotary_inputs(x, positions)
    head_dim = x.size(-1)
    frequencies = rotary_frequencies(head_dim, theta).to(x.device)
    angles = positions.to(torch.float32)[..., None] * frequencies  # (T, hd/2) or (B, T, hd/2)
    if positions.dim() == 2:
        angles = angles[:, None]  # (B, 1, T, hd/2): the same for every head
    cos, sin = angles.cos(), angles.sin()
    pairs = x.float().reshape(*x.shape[:-1], head_dim // 2, 2)  # (B, nh, T, hd/2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)  # (B, nh, T, hd)


_ROTARY_TABLES: dict[tuple[int, float, torch.device], torch.Tensor] = {}


def rotary_table(
    head_dim: int, length: int, theta: float = 10000.0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The rotations e^(i p theta_i) of positions p = 0 .. length-1: complex64 (length, hd/2).

    Computed once per (head_dim, theta, device) and kept: a longer request recomputes it at the
    next power of two, so generation one token at a time does not rebuild it at every step.
    """
    device = torch.device(device)
    key = (head_dim, float(theta), device)
    table = _ROTARY_TABLES.get(key)
    if table is None or table.size(0) < length:
        size = 1 << max(length - 1, 1).bit_length()  # the next power of two >= length
        angles = torch.arange(size, dtype=torch.float32)[:, None] * rotary_frequencies(
            head_dim, theta
        )
        table = torch.polar(torch.ones_like(angles), angles).to(device)  # cos + i sin
        if not torch.compiler.is_compiling():  # a compiled graph must not change globals
            _ROTARY_TABLES[key] = table
    return table[:length]


def apply_rotary(
    x: torch.Tensor,
    positions: torch.Tensor,
    theta: float = 10000.0,
    *,
    positions_end: int | None = None,
) -> torch.Tensor:
    """`apply_rotary_reference` computed as one complex multiplication with a cached table.

    x: (B, n_heads, T, head_dim); positions: integer (T,) or (B, T). `positions_end`, when the
    caller knows it, is a bound (exclusive) on the positions; without it the largest position
    is read back from the tensor, which on a GPU waits for the device.
    """
    _check_rotary_inputs(x, positions)
    if x.device.type == "mps":  # complex numbers are not fully supported there
        return apply_rotary_reference(x, positions, theta)
    head_dim = x.size(-1)
    end = int(positions.max()) + 1 if positions_end is None else positions_end
    turns = rotary_table(head_dim, end, theta, x.device)[positions]  # (T or B,T, hd/2)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (head_dim // 2, 2)))
    if pairs.transpose(1, 2).is_contiguous():
        # heads split from a (B, T, C) tensor, as in the attention layer: multiply in that
        # memory order (the same numbers, written in one sweep) and view the product back
        rotated = (pairs.transpose(1, 2) * turns.unsqueeze(-2)).transpose(1, 2)
    else:
        if positions.dim() == 2:
            turns = turns[:, None]  # (B, 1, T, hd/2): the same for every head
        rotated = pairs * turns
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)  # (B, nh, T, hd)


class KVCache:
    """The keys and values one attention layer has seen so far, for generation.

    One cache per layer (a model keeps a list of them). `append` adds the new tokens' keys and
    values and returns everything cached, so attention over the whole prefix costs one new
    query per step instead of recomputing all earlier keys and values.
    """

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None  # (B, nh, T_cached, hd)
        self.values: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """How many positions are cached."""
        return 0 if self.keys is None else self.keys.size(2)

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (B, nh, T_new, hd) keys and values; return all cached (B, nh, T_cached, hd)."""
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            if keys.shape[:2] != self.keys.shape[:2] or keys.shape[3] != self.keys.shape[3]:
                raise ValueError(
                    f"new keys {tuple(keys.shape)} do not match the cached {tuple(self.keys.shape)} "
                    "in batch, heads or head_dim; use a fresh KVCache for a new batch"
                )
            self.keys = torch.cat((self.keys, keys), dim=2)
            self.values = torch.cat((self.values, values), dim=2)
        return self.keys, self.values

    def reset(self) -> None:
        """Forget everything (start a new sequence)."""
        self.keys = self.values = None


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with rotary positions, as in Llama-style models.

    Projections have no biases. `use_sdpa=True` calls PyTorch's fused
    `scaled_dot_product_attention` (FlashAttention or memory-efficient kernels where the
    hardware has them); `use_sdpa=False` runs `naive_attention` above. Both compute the same
    function.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        rope_theta: float = 10000.0,
        dropout: float = 0.0,
        use_sdpa: bool = True,
    ):
        super().__init__()
        if n_heads <= 0 or d_model % n_heads != 0:
            raise ValueError(
                f"d_model={d_model} must be divisible by n_heads={n_heads}: each head gets "
                "d_model / n_heads features. Choose sizes such as d_model=256, n_heads=8."
            )
        if (d_model // n_heads) % 2:
            raise ValueError(
                f"head_dim = d_model / n_heads = {d_model // n_heads} must be even for RoPE "
                f"(d_model={d_model}, n_heads={n_heads})"
            )
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.rope_theta = rope_theta
        self.dropout = dropout
        self.use_sdpa = use_sdpa
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        # (B, T, C) -> (B, T, nh, hd) -> (B, nh, T, hd)
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)

    def _queries_keys_values(
        self, x: torch.Tensor, positions: torch.Tensor | None, kv_cache: KVCache | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or x.size(-1) != self.d_model:
            raise ValueError(
                f"expected x of shape (batch, time, {self.d_model}), got {tuple(x.shape)}"
            )
        past = 0 if kv_cache is None else kv_cache.length
        end = None  # unknown for positions the caller passes in
        if positions is None:
            end = past + x.size(1)
            positions = torch.arange(past, end, device=x.device)
        q = apply_rotary(
            self._split_heads(self.q_proj(x)), positions, self.rope_theta, positions_end=end
        )
        k = apply_rotary(
            self._split_heads(self.k_proj(x)), positions, self.rope_theta, positions_end=end
        )
        v = self._split_heads(self.v_proj(x))
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)  # (B, nh, past + T, hd)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C).

        positions: integer (T,) or (B, T); default arange(T) after the cached positions.
        attention_mask: bool, True = may attend, (T, Tk), (B, T, Tk) or (B, 1, T, Tk) where Tk
        counts cached keys too; it is combined with causality (e.g. `packed_sequence_mask`).
        kv_cache: a KVCache for this layer; the new keys and values are appended to it.
        """
        q, k, v = self._queries_keys_values(x, positions, kv_cache)  # checks x's shape
        batch, length, _ = x.shape
        dropout = self.dropout if self.training else 0.0
        if not self.use_sdpa:
            y = naive_attention(
                q, k, v, causal=True, attention_mask=attention_mask, dropout=dropout
            )
        elif attention_mask is None and k.size(2) == length:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        elif attention_mask is None and length == 1:
            # one new token (generation with a cache) may see every cached key: no mask at all
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            # is_causal=True would align the triangle to the top-left, wrong with a cache:
            # pass the bottom-right-aligned causal mask explicitly, combined with the caller's.
            allowed = causal_mask(length, k.size(2), device=x.device)[None, None]
            if attention_mask is not None:
                allowed = allowed & _as_4d_mask(
                    attention_mask, batch, self.n_heads, length, k.size(2)
                )
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(batch, length, -1)  # merge heads: nh * hd
        return self.out_proj(y)

    @torch.no_grad()
    def attention_weights(
        self, x: torch.Tensor, *, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The causal attention weights of every head, (B, T, C) -> (B, nh, T, T), for plots."""
        q, k, _ = self._queries_keys_values(x, positions, None)
        return attention_weights(q, k, causal=True)
