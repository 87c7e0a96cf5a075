"""Chapter 4: norms, feed-forward, block and model against their references."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from chapters.ch04_blocks.model import (
    Block,
    LanguageModel,
    ModelConfig,
    RMSNorm,
    SwiGLU,
    count_parameters,
    default_d_ff,
    flops_per_token,
    norm_factory,
    rms_norm,
    rms_norm_reference,
)

TINY = ModelConfig(vocab_size=64, context_length=24, d_model=32, n_layers=2, n_heads=4)


def fresh_seed() -> int:
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def test_rms_norm_reference_matches_torch_functional_rms_norm():
    generator = torch.Generator().manual_seed(fresh_seed())
    x = torch.randn(4, 7, 40, generator=generator) * 3
    weight = torch.rand(40, generator=generator) + 0.5
    expected = F.rms_norm(x, (40,), weight, eps=1e-6)
    torch.testing.assert_close(rms_norm_reference(x, weight, 1e-6), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_torch_rmsnorm(dtype):
    generator = torch.Generator().manual_seed(fresh_seed())
    dim, eps = 48, 1e-6
    ours, reference = RMSNorm(dim, eps=eps), nn.RMSNorm(dim, eps=eps)
    gain = torch.rand(dim, generator=generator) + 0.5
    with torch.no_grad():
        ours.weight.copy_(gain)
        reference.weight.copy_(gain)
    x = torch.randn(3, 11, dim, generator=generator) * 4
    expected = reference.float()(x.float())
    got = ours.to(dtype)(x.to(dtype)).float()
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_backward_matches_torch_autograd(dtype):
    """The hand-written backward against autograd through torch.nn.functional.rms_norm."""
    generator = torch.Generator().manual_seed(fresh_seed())
    dim = int(torch.randint(2, 64, (1,), generator=generator))
    x = (torch.randn(4, 9, dim, generator=generator) * 3).to(dtype).requires_grad_()
    gain = (torch.rand(dim, generator=generator) + 0.5).requires_grad_()
    upstream = torch.randn(4, 9, dim, generator=generator).to(dtype)
    ours = rms_norm(x, gain, 1e-6)
    grads = torch.autograd.grad((ours.float() * upstream.float()).sum(), (x, gain))
    x_ref = x.detach().float().requires_grad_()
    gain_ref = gain.detach().clone().requires_grad_()
    expected = F.rms_norm(x_ref, (dim,), gain_ref, 1e-6)
    grads_ref = torch.autograd.grad((expected * upstream.float()).sum(), (x_ref, gain_ref))
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    assert ours.dtype == rms_norm_reference(x, gain, 1e-6).dtype
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got.float(), want, atol=tolerance, rtol=tolerance)


def test_rmsnorm_backward_passes_gradcheck():
    generator = torch.Generator().manual_seed(fresh_seed())
    x = torch.randn(2, 3, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    gain = (torch.rand(6, dtype=torch.float64, generator=generator) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(rms_norm, (x, gain, 1e-5))


def test_rmsnorm_eps_is_used():
    x = torch.zeros(2, 8)
    x[0, 0] = 1e-3
    small, large = RMSNorm(8, eps=1e-12)(x), RMSNorm(8, eps=1.0)(x)
    torch.testing.assert_close(large, nn.RMSNorm(8, eps=1.0)(x))
    assert not torch.allclose(small, large)


def test_swiglu_matches_direct_formula():
    generator = torch.Generator().manual_seed(fresh_seed())
    ffn = SwiGLU(d_model=20, d_ff=52)
    x = torch.randn(2, 7, 20, generator=generator)
    w1, w2, w3 = ffn.w1.weight, ffn.w2.weight, ffn.w3.weight
    gate = x @ w1.T
    direct = (gate * torch.sigmoid(gate) * (x @ w3.T)) @ w2.T
    torch.testing.assert_close(ffn(x), direct)


def test_swiglu_gate_backward_passes_gradcheck_and_matches_autograd():
    from chapters.ch04_blocks.model import _SwiGLUGateFunction

    generator = torch.Generator().manual_seed(fresh_seed())
    gate = torch.randn(2, 3, 10, dtype=torch.float64, generator=generator, requires_grad=True)
    value = torch.randn(2, 3, 10, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(_SwiGLUGateFunction.apply, (gate, value))
    ffn = SwiGLU(d_model=20, d_ff=52)
    x = torch.randn(2, 7, 20, generator=generator, requires_grad=True)
    upstream = torch.randn(2, 7, 20, generator=generator)
    ours = torch.autograd.grad((ffn(x) * upstream).sum(), (x, *ffn.parameters()))
    direct = ffn.w2(F.silu(ffn.w1(x)) * ffn.w3(x))
    reference = torch.autograd.grad((direct * upstream).sum(), (x, *ffn.parameters()))
    for got, want in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, want)


def test_swiglu_has_no_biases_and_w2_projects_back_to_d_model():
    ffn = SwiGLU(d_model=16, d_ff=40)
    assert all(layer.bias is None for layer in (ffn.w1, ffn.w2, ffn.w3))
    assert tuple(ffn.w2.weight.shape) == (16, 40)


@pytest.mark.parametrize(("d_model", "expected"), [(64, 192), (128, 352), (256, 704), (768, 2048)])
def test_default_d_ff_is_8_thirds_rounded_up_to_64(d_model, expected):
    assert default_d_ff(d_model) == expected
    assert ModelConfig(d_model=d_model, n_heads=4).d_ff == expected


def test_config_rejects_d_model_not_divisible_by_heads_naming_sizes():
    with pytest.raises(ValueError, match=r"d_model=100.*n_heads=3"):
        ModelConfig(d_model=100, n_heads=3)


@pytest.mark.parametrize(
    "bad",
    [
        dict(vocab_size=0),
        dict(n_layers=-1),
        dict(norm="batchnorm"),
        dict(d_ff=0),
        dict(dropout=1.0),
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="ModelConfig"):
        ModelConfig(**bad)


def test_config_round_trips_through_dict():
    config = ModelConfig(d_model=64, n_heads=2, norm="layernorm", tie_embeddings=False)
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({**TINY.to_dict(), "n_experts": 8})


def test_block_is_pre_ln_residual():
    torch.manual_seed(fresh_seed())
    block = Block(TINY, norm_factory(TINY))
    x = torch.randn(2, 9, TINY.d_model)
    after_attention = x + block.attention(block.attn_norm(x))
    expected = after_attention + block.ffn(block.ffn_norm(after_attention))
    torch.testing.assert_close(block(x), expected)


def test_model_output_shape_and_dtype():
    model = LanguageModel(TINY)
    logits = model(torch.randint(0, TINY.vocab_size, (3, 10)))
    assert logits.shape == (3, 10, TINY.vocab_size) and logits.dtype == torch.float32


def test_head_is_tied_to_embedding_by_default_and_untied_on_request():
    tied, untied = (
        LanguageModel(TINY),
        LanguageModel(dataclasses.replace(TINY, tie_embeddings=False)),
    )
    assert tied.lm_head.weight is tied.token_embedding.weight
    assert untied.lm_head.weight is not untied.token_embedding.weight


def test_initialisation_follows_gpt2():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=512, d_model=128, n_layers=8, n_heads=4)
    model = LanguageModel(config)
    assert abs(model.token_embedding.weight.std().item() - 0.02) < 1e-3
    assert abs(model.blocks[0].attention.q_proj.weight.std().item() - 0.02) < 1e-3
    scaled = 0.02 / (2 * config.n_layers) ** 0.5
    assert abs(model.blocks[3].attention.out_proj.weight.std().item() - scaled) < 5e-4
    assert abs(model.blocks[3].ffn.w2.weight.std().item() - scaled) < 5e-4


def test_make_norm_overrides_every_norm():
    model = LanguageModel(TINY, make_norm=lambda dim: nn.Identity())
    assert not any(isinstance(module, (RMSNorm, nn.LayerNorm)) for module in model.modules())
    assert model(torch.randint(0, TINY.vocab_size, (1, 5))).shape == (1, 5, TINY.vocab_size)


def test_layernorm_config_builds_layernorms():
    model = LanguageModel(dataclasses.replace(TINY, norm="layernorm"))
    assert isinstance(model.final_norm, nn.LayerNorm)
    assert isinstance(model.blocks[0].attn_norm, nn.LayerNorm)


def test_changing_a_future_token_never_changes_earlier_logits():
    torch.manual_seed(fresh_seed())
    model = LanguageModel(TINY).eval()
    tokens = torch.randint(0, TINY.vocab_size, (2, TINY.context_length))
    for position in (1, 7, TINY.context_length - 1):
        changed = tokens.clone()
        changed[:, position] = (changed[:, position] + 1) % TINY.vocab_size
        with torch.no_grad():
            before, after = model(tokens), model(changed)
        torch.testing.assert_close(before[:, :position], after[:, :position])
        assert not torch.allclose(before[:, position], after[:, position])


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        dataclasses.replace(TINY, tie_embeddings=False),
        dataclasses.replace(TINY, norm="layernorm"),
        ModelConfig(vocab_size=300, d_model=96, n_layers=3, n_heads=3, d_ff=200),
    ],
)
def test_parameter_count_formula_matches_the_model(config):
    model = LanguageModel(config)
    assert count_parameters(config) == sum(p.numel() for p in model.parameters())
    assert count_parameters(config) == model.num_parameters()
    assert count_parameters(config, include_embeddings=False) == model.num_parameters(
        include_embeddings=False
    )


def test_flops_per_token_is_6n_plus_attention_term():
    config = ModelConfig()
    blocks = config.n_layers * (4 * config.d_model**2 + 3 * config.d_model * config.d_ff)
    norms = (2 * config.n_layers + 1) * config.d_model
    head = config.vocab_size * config.d_model
    attention = 6 * config.n_layers * config.context_length * config.d_model
    assert flops_per_token(config) == 6 * (blocks + norms + head) + attention
    assert flops_per_token(config, sequence_length=64) < flops_per_token(config)


def test_overfits_one_small_batch_to_near_zero_loss():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=32, context_length=16, d_model=32, n_layers=2, n_heads=2)
    model = LanguageModel(config)
    batch = torch.randint(0, config.vocab_size, (4, 17))
    inputs, labels = batch[:, :-1], batch[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(40):
        loss = F.cross_entropy(model(inputs).flatten(0, 1), labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_too_long_input_names_the_context_length():
    model = LanguageModel(TINY)
    with pytest.raises(
        ValueError, match=rf"{TINY.context_length + 1}.*context_length={TINY.context_length}"
    ):
        model(torch.zeros(1, TINY.context_length + 1, dtype=torch.long))


@pytest.mark.parametrize("bad_id", [-1, TINY.vocab_size, TINY.vocab_size + 100])
def test_token_id_outside_vocabulary_names_the_vocabulary(bad_id):
    model = LanguageModel(TINY)
    with pytest.raises(ValueError, match=rf"token id {bad_id} .*\[0, {TINY.vocab_size}\)"):
        model(torch.tensor([[1, bad_id, 2]]))


def test_float_token_ids_are_a_type_error():
    with pytest.raises(TypeError, match="integers"):
        LanguageModel(TINY)(torch.zeros(1, 4))


@pytest.mark.parametrize("shape", [(4,), (1, 2, 3)])
def test_token_ids_of_wrong_rank_are_rejected(shape):
    with pytest.raises(ValueError, match="shape \\(batch, time\\)"):
        LanguageModel(TINY)(torch.zeros(shape, dtype=torch.long))


def test_int32_token_ids_are_accepted():
    model = LanguageModel(TINY).eval()
    tokens = torch.randint(0, TINY.vocab_size, (1, 6))
    torch.testing.assert_close(model(tokens.int()), model(tokens))


def test_packed_documents_with_mask_and_positions_match_separate_runs():
    from chapters.ch03_attention.attention import packed_sequence_mask, positions_within_documents

    torch.manual_seed(fresh_seed())
    model = LanguageModel(TINY).eval()
    first = torch.randint(0, TINY.vocab_size, (1, 9))
    second = torch.randint(0, TINY.vocab_size, (1, 7))
    packed = torch.cat([first, second], dim=1)  # (1, 16)
    document_ids = torch.tensor([[0] * 9 + [1] * 7])
    with torch.no_grad():
        together = model(
            packed,
            positions=positions_within_documents(document_ids),
            attention_mask=packed_sequence_mask(document_ids),
        )
        separate = torch.cat([model(first), model(second)], dim=1)
    torch.testing.assert_close(together, separate, atol=1e-5, rtol=1e-5)
