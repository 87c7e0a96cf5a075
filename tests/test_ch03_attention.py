"""Chapter 3: the from-scratch attention against PyTorch's fused attention, RoPE's
properties, causality, the KV cache, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from chapters.ch03_attention.attention import (
    CausalSelfAttention,
    KVCache,
    LearnedPositionalEmbedding,
    apply_rotary,
    apply_rotary_reference,
    attention_weights,
    causal_mask,
    naive_attention,
    packed_sequence_mask,
    positions_within_documents,
    rotary_frequencies,
    rotary_table,
)

TOLERANCE = 1e-5


def _random(*shape: int) -> torch.Tensor:
    # drawn from the global generator, seeded per test by the autouse fixture below
    return torch.randn(*shape)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


def _layer_pair(d_model: int = 48, n_heads: int = 4, theta: float = 10000.0):
    fused = CausalSelfAttention(d_model, n_heads, rope_theta=theta, use_sdpa=True)
    scratch = CausalSelfAttention(d_model, n_heads, rope_theta=theta, use_sdpa=False)
    scratch.load_state_dict(fused.state_dict())
    return fused.eval(), scratch.eval()


# --- naive_attention vs torch's scaled_dot_product_attention ------------------------------


@pytest.mark.parametrize("queries, keys", [(1, 1), (5, 5), (3, 8), (1, 6)])
def test_causal_mask_matches_torch_tril_aligned_to_the_last_key(queries: int, keys: int) -> None:
    # query i sits at position keys - queries + i: it sees that key and every earlier one
    expected = torch.ones(queries, keys, dtype=torch.bool).tril(diagonal=keys - queries)
    assert torch.equal(causal_mask(queries, keys), expected)
    assert torch.equal(causal_mask(keys), torch.ones(keys, keys, dtype=torch.bool).tril())


def test_naive_attention_matches_sdpa_causal() -> None:
    q, k, v = (_random(3, 4, 17, 16) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(naive_attention(q, k, v), expected, atol=TOLERANCE, rtol=0)


def test_naive_attention_matches_sdpa_without_mask() -> None:
    q, k, v = (_random(2, 3, 9, 8) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(
        naive_attention(q, k, v, causal=False), expected, atol=TOLERANCE, rtol=0
    )


def test_naive_attention_matches_sdpa_with_bool_mask() -> None:
    q, k, v = (_random(2, 3, 11, 8) for _ in range(3))
    mask = torch.rand(2, 1, 11, 11) > 0.4
    mask |= torch.eye(11, dtype=torch.bool)  # every query keeps at least one key
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask & causal_mask(11))
    actual = naive_attention(q, k, v, attention_mask=mask)
    torch.testing.assert_close(actual, expected, atol=TOLERANCE, rtol=0)


def test_naive_attention_with_longer_keys_aligns_queries_to_the_end() -> None:
    q = _random(1, 2, 3, 8)
    k, v = _random(1, 2, 7, 8), _random(1, 2, 7, 8)
    allowed = torch.ones(7, 7, dtype=torch.bool).tril()[4:]  # queries are positions 4, 5, 6
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(naive_attention(q, k, v), expected, atol=TOLERANCE, rtol=0)


def test_fully_masked_row_gives_zeros_like_sdpa() -> None:
    q, k, v = (_random(1, 1, 4, 8) for _ in range(3))
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[2] = False
    actual = naive_attention(q, k, v, causal=False, attention_mask=mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual, expected, atol=TOLERANCE, rtol=0)


def test_attention_weights_are_stable_for_huge_scores() -> None:
    q = _random(1, 1, 5, 8) * 1e4
    k = _random(1, 1, 5, 8) * 1e4
    weights = attention_weights(q, k)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 1, 5))


def test_naive_attention_gradients_match_sdpa() -> None:
    inputs = [_random(2, 2, 6, 8).requires_grad_() for _ in range(3)]
    naive_attention(*inputs).pow(2).sum().backward()
    ours = [tensor.grad.clone() for tensor in inputs]
    for tensor in inputs:
        tensor.grad = None
    F.scaled_dot_product_attention(*inputs, is_causal=True).pow(2).sum().backward()
    for mine, theirs in zip(ours, (tensor.grad for tensor in inputs), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)


# --- RoPE --------------------------------------------------------------------------------


def test_rope_preserves_norms() -> None:
    x = _random(2, 3, 20, 32) * 5
    rotated = apply_rotary(x, torch.randint(0, 5000, (20,)))
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-4, rtol=1e-5)


def test_rope_score_depends_only_on_relative_position() -> None:
    q, k = _random(1, 1, 1, 64), _random(1, 1, 1, 64)
    scores = []
    for shift in (0, 17, 1000):
        rotated_q = apply_rotary(q, torch.tensor([shift + 9]))
        rotated_k = apply_rotary(k, torch.tensor([shift + 2]))
        scores.append((rotated_q * rotated_k).sum().item())
    assert scores[1] == pytest.approx(scores[0], abs=1e-3)
    assert scores[2] == pytest.approx(scores[0], abs=1e-3)


def test_rope_at_position_zero_is_identity() -> None:
    x = _random(2, 2, 1, 16)
    torch.testing.assert_close(apply_rotary(x, torch.tensor([0])), x)


def test_rope_rotates_interleaved_pairs_like_the_formula() -> None:
    # hand-worked: pair i of position p turns by p * theta^(-2i/d)
    x = _random(1, 1, 1, 8)
    position, theta = 3, 100.0
    expected = x.clone()
    for i in range(4):
        angle = torch.tensor(position * theta ** (-2 * i / 8))
        a, b = x[..., 2 * i], x[..., 2 * i + 1]
        expected[..., 2 * i] = a * angle.cos() - b * angle.sin()
        expected[..., 2 * i + 1] = a * angle.sin() + b * angle.cos()
    torch.testing.assert_close(apply_rotary(x, torch.tensor([position]), theta), expected)


def test_rope_matches_complex_multiplication() -> None:
    # An independent reference: pairs as complex numbers times e^(i p theta_i).
    x = _random(2, 3, 7, 16)
    positions = torch.arange(7) * 5
    angles = positions[:, None].double() * rotary_frequencies(16).double()
    as_complex = torch.view_as_complex(x.double().reshape(2, 3, 7, 8, 2).contiguous())
    expected = torch.view_as_real(as_complex * torch.polar(torch.ones_like(angles), angles))
    torch.testing.assert_close(
        apply_rotary(x, positions), expected.flatten(-2).float(), atol=1e-4, rtol=1e-4
    )


def test_rope_accepts_per_sequence_positions() -> None:
    x = _random(2, 3, 5, 8)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    both = apply_rotary(x, positions)
    torch.testing.assert_close(both[1:], apply_rotary(x[1:], positions[1]))


def test_rotary_frequencies_follow_theta_power_law() -> None:
    frequencies = rotary_frequencies(8, theta=10000.0)
    expected = torch.tensor([1.0, 10000.0**-0.25, 10000.0**-0.5, 10000.0**-0.75])
    torch.testing.assert_close(frequencies, expected)


# --- the layer: SDPA path vs from-scratch path -----------------------------------------------


def test_layer_sdpa_matches_scratch_path_with_rope() -> None:
    fused, scratch = _layer_pair()
    x = _random(3, 13, 48)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), scratch(x), atol=TOLERANCE, rtol=0)


def test_layer_sdpa_matches_scratch_path_with_packed_mask() -> None:
    fused, scratch = _layer_pair()
    x = _random(2, 12, 48)
    document_ids = torch.tensor([[0] * 5 + [1] * 7, [0] * 3 + [1] * 3 + [2] * 6])
    mask = packed_sequence_mask(document_ids)
    positions = positions_within_documents(document_ids)
    with torch.no_grad():
        expected = scratch(x, attention_mask=mask, positions=positions)
        actual = fused(x, attention_mask=mask, positions=positions)
    torch.testing.assert_close(actual, expected, atol=TOLERANCE, rtol=0)


def test_layer_sdpa_matches_scratch_path_with_cache() -> None:
    fused, scratch = _layer_pair()
    x = _random(2, 9, 48)
    outputs = {}
    with torch.no_grad():
        for name, layer in (("fused", fused), ("scratch", scratch)):
            cache = KVCache()
            first = layer(x[:, :4], kv_cache=cache)
            second = layer(x[:, 4:7], kv_cache=cache)  # several new tokens after a prefix
            third = layer(x[:, 7:8], kv_cache=cache)
            fourth = layer(x[:, 8:], kv_cache=cache)
            outputs[name] = torch.cat((first, second, third, fourth), dim=1)
    torch.testing.assert_close(outputs["fused"], outputs["scratch"], atol=TOLERANCE, rtol=0)


def test_layer_with_cache_matches_full_sequence() -> None:
    fused, _ = _layer_pair()
    x = _random(2, 9, 48)
    with torch.no_grad():
        full = fused(x)
        cache = KVCache()
        pieces = [fused(x[:, :5], kv_cache=cache)]
        pieces += [fused(x[:, t : t + 1], kv_cache=cache) for t in range(5, 9)]
    assert cache.length == 9
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=TOLERANCE, rtol=0)


def test_layer_matches_manual_multi_head_computation() -> None:
    fused, _ = _layer_pair(d_model=32, n_heads=4)
    x = _random(2, 6, 32)
    positions = torch.arange(6)

    def heads(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view(2, 6, 4, 8).transpose(1, 2)

    q = apply_rotary(heads(x @ fused.q_proj.weight.T), positions)
    k = apply_rotary(heads(x @ fused.k_proj.weight.T), positions)
    v = heads(x @ fused.v_proj.weight.T)
    merged = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    expected = merged.reshape(2, 6, 32) @ fused.out_proj.weight.T
    with torch.no_grad():
        torch.testing.assert_close(fused(x), expected, atol=TOLERANCE, rtol=0)


def test_packed_document_matches_document_alone() -> None:
    fused, _ = _layer_pair()
    x = _random(1, 10, 48)
    document_ids = torch.tensor([[0] * 4 + [1] * 6])
    with torch.no_grad():
        packed = fused(
            x,
            attention_mask=packed_sequence_mask(document_ids),
            positions=positions_within_documents(document_ids),
        )
        alone = fused(x[:, 4:])
    torch.testing.assert_close(packed[:, 4:], alone, atol=TOLERANCE, rtol=0)


def test_positions_within_documents_restart_at_each_document() -> None:
    document_ids = torch.tensor([[3, 3, 3, 5, 5, 9], [1, 1, 1, 1, 1, 1]])
    expected = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert torch.equal(positions_within_documents(document_ids), expected)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_changing_a_future_token_never_changes_earlier_outputs(use_sdpa: bool) -> None:
    layer = CausalSelfAttention(32, 4, use_sdpa=use_sdpa).eval()
    x = _random(2, 10, 32)
    changed = x.clone()
    changed[:, 6] += _random(2, 32)
    with torch.no_grad():
        before, after = layer(x), layer(changed)
    assert torch.equal(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6:], after[:, 6:])


def test_layer_projections_have_no_bias_and_expected_shapes() -> None:
    layer = CausalSelfAttention(64, 8)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        projection = getattr(layer, name)
        assert isinstance(projection, torch.nn.Linear) and projection.bias is None
        assert projection.weight.shape == (64, 64)


def test_dropout_is_off_in_eval_mode() -> None:
    layer = CausalSelfAttention(32, 4, dropout=0.5).eval()
    x = _random(1, 8, 32)
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x))


def test_dropout_is_active_in_training_mode() -> None:
    # the counterpart of the test above: without it, a layer that ignored `dropout` would pass
    layer = CausalSelfAttention(32, 4, dropout=0.5).train()
    x = _random(1, 8, 32)
    with torch.no_grad():
        assert not torch.equal(layer(x), layer(x))


def test_kv_cache_counts_positions_and_concatenates() -> None:
    cache = KVCache()
    assert cache.length == 0
    keys, values = _random(1, 2, 3, 4), _random(1, 2, 3, 4)
    cache.append(keys, values)
    all_keys, all_values = cache.append(keys[:, :, :1], values[:, :, :1])
    assert cache.length == 4
    assert torch.equal(all_keys[:, :, :3], keys) and torch.equal(
        all_values[:, :, 3], values[:, :, 0]
    )
    cache.reset()
    assert cache.length == 0


def test_learned_positional_embedding_shapes() -> None:
    embedding = LearnedPositionalEmbedding(16, 8)
    assert embedding(torch.arange(5)).shape == (5, 8)
    assert embedding(torch.arange(10).view(2, 5)).shape == (2, 5, 8)


# --- bad input ---------------------------------------------------------------------------


def test_d_model_not_divisible_by_heads_names_both_sizes() -> None:
    with pytest.raises(ValueError, match=r"d_model=100.*n_heads=3"):
        CausalSelfAttention(100, 3)


def test_odd_head_dim_is_rejected_for_rope() -> None:
    with pytest.raises(ValueError, match="even"):
        CausalSelfAttention(12, 4)


def test_wrong_model_width_is_a_clear_error() -> None:
    layer = CausalSelfAttention(32, 4)
    with pytest.raises(ValueError, match=r"\(batch, time, 32\)"):
        layer(_random(2, 5, 16))


def test_positions_of_wrong_length_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="positions has shape"):
        apply_rotary(_random(1, 2, 5, 8), torch.arange(4))


def test_float_positions_are_rejected() -> None:
    with pytest.raises(TypeError, match="integer"):
        apply_rotary(_random(1, 2, 5, 8), torch.arange(5.0))


def test_mask_with_wrong_shape_is_a_clear_error() -> None:
    q = _random(2, 2, 4, 8)
    with pytest.raises(ValueError, match="does not broadcast"):
        naive_attention(q, q, q, attention_mask=torch.ones(3, 3, dtype=torch.bool))


def test_non_bool_mask_is_rejected() -> None:
    q = _random(1, 1, 4, 8)
    with pytest.raises(TypeError, match="bool"):
        naive_attention(q, q, q, attention_mask=torch.ones(4, 4))


def test_mismatched_qkv_shapes_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="head_dim"):
        naive_attention(_random(1, 2, 4, 8), _random(1, 2, 4, 6), _random(1, 2, 4, 6))


def test_learned_positions_beyond_the_table_name_the_limit() -> None:
    with pytest.raises(ValueError, match=r"0 \.\. 7"):
        LearnedPositionalEmbedding(8, 4)(torch.arange(9))


def test_kv_cache_rejects_a_different_batch() -> None:
    cache = KVCache()
    cache.append(_random(2, 2, 3, 4), _random(2, 2, 3, 4))
    with pytest.raises(ValueError, match="fresh KVCache"):
        cache.append(_random(1, 2, 1, 4), _random(1, 2, 1, 4))


# --- many random shapes (hypothesis) ---------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 4),
    queries=st.integers(1, 12),
    cached=st.integers(0, 6),
    half_head_dim=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_naive_attention_matches_sdpa_on_random_shapes(
    batch: int, heads: int, queries: int, cached: int, half_head_dim: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    keys = queries + cached
    head_dim = 2 * half_head_dim
    q = torch.randn(batch, heads, queries, head_dim, generator=generator)
    k = torch.randn(batch, heads, keys, head_dim, generator=generator)
    v = torch.randn(batch, heads, keys, head_dim, generator=generator)
    positions = torch.arange(cached, keys)
    q = apply_rotary(q, positions)
    k = apply_rotary(k, torch.arange(keys))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(queries, keys))
    torch.testing.assert_close(naive_attention(q, k, v), expected, atol=TOLERANCE, rtol=0)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 40),
    half_dim=st.integers(1, 16),
    theta=st.sampled_from([100.0, 10000.0, 500000.0]),
    per_sequence=st.booleans(),
)
def test_complex_rotary_matches_the_written_out_rotation(
    batch: int, length: int, half_dim: int, theta: float, per_sequence: bool
) -> None:
    head_dim = 2 * half_dim
    x = torch.randn(batch, 2, length, head_dim, requires_grad=True)
    shape = (batch, length) if per_sequence else (length,)
    positions = torch.randint(0, 3000, shape)
    fast, reference = apply_rotary(x, positions, theta), apply_rotary_reference(x, positions, theta)
    torch.testing.assert_close(fast, reference, atol=2e-4, rtol=1e-4)
    weights = torch.randn_like(fast)
    (grad_fast,) = torch.autograd.grad((fast * weights).sum(), x)
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), x)
    torch.testing.assert_close(grad_fast, grad_reference, atol=2e-4, rtol=1e-4)


def test_complex_rotary_keeps_bfloat16_and_the_given_bound() -> None:
    x = torch.randn(2, 3, 7, 8).bfloat16()
    positions = torch.arange(5, 12)
    rotated = apply_rotary(x, positions, positions_end=12)
    assert rotated.dtype == torch.bfloat16
    torch.testing.assert_close(rotated, apply_rotary_reference(x, positions))


def test_rotary_table_is_computed_once_and_grows_when_needed() -> None:
    first = rotary_table(12, 20)
    assert first.shape == (20, 6) and first.dtype == torch.complex64
    assert rotary_table(12, 10).data_ptr() == first.data_ptr()  # the same cached storage
    longer = rotary_table(12, 100)
    assert longer.shape == (100, 6)
    torch.testing.assert_close(longer[:20], first)
    angles = torch.arange(100.0)[:, None] * rotary_frequencies(12)
    torch.testing.assert_close(longer, torch.polar(torch.ones_like(angles), angles))
