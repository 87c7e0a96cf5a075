"""Chapter 5: the from-scratch norms against torch, the leakage detector both ways, Post-LN."""

import pytest
import torch
import torch.nn as nn

from chapters.ch04_blocks.model import ModelConfig
from chapters.ch05_normalization.normalization import (
    NORM_KINDS,
    BatchNorm,
    LayerNorm,
    PostNormBlock,
    RMSNorm,
    RunConfig,
    build_model,
    evaluate_loss,
    gradient_norms_per_layer,
    make_norm,
    measure_leakage,
    sample_batch,
    train_and_evaluate,
)

TINY = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4)


def random_activations(seed: int, shape=(4, 9, 12)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator) * 2.5 + 0.7


def to_torch_layout(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)  # (B, T, C) <-> (B, C, T)


def test_batchnorm_training_outputs_match_torch_batchnorm1d():
    ours, theirs = BatchNorm(12), nn.BatchNorm1d(12)
    for step in range(4):
        x = random_activations(step)
        torch.testing.assert_close(ours(x), to_torch_layout(theirs(to_torch_layout(x))))


def test_batchnorm_running_statistics_match_torch_batchnorm1d():
    ours, theirs = BatchNorm(12, momentum=0.2), nn.BatchNorm1d(12, momentum=0.2)
    for step in range(4):
        x = random_activations(10 + step)
        ours(x), theirs(to_torch_layout(x))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 4


def test_batchnorm_eval_mode_matches_torch_and_uses_running_statistics():
    ours, theirs = BatchNorm(12), nn.BatchNorm1d(12)
    for step in range(3):
        x = random_activations(20 + step)
        ours(x), theirs(to_torch_layout(x))
    ours.eval(), theirs.eval()
    x = random_activations(30)
    torch.testing.assert_close(ours(x), to_torch_layout(theirs(to_torch_layout(x))))
    before = ours.running_mean.clone()
    ours(random_activations(31))
    torch.testing.assert_close(ours.running_mean, before)  # eval mode does not update


def test_batchnorm_gradients_match_torch():
    ours, theirs = BatchNorm(12), nn.BatchNorm1d(12)
    x = random_activations(40).requires_grad_(True)
    x_theirs = x.detach().clone().requires_grad_(True)
    upstream = random_activations(41)
    ours(x).backward(upstream)
    to_torch_layout(theirs(to_torch_layout(x_theirs))).backward(upstream)
    torch.testing.assert_close(x.grad, x_theirs.grad)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)


def test_batchnorm_refuses_a_single_value_per_feature_in_training_mode():
    with pytest.raises(ValueError, match="more than one value"):
        BatchNorm(12).train()(torch.randn(1, 1, 12))


def test_layernorm_matches_torch_layernorm_with_trained_parameters():
    ours, theirs = LayerNorm(12), nn.LayerNorm(12)
    with torch.no_grad():
        for layer in (ours, theirs):
            layer.weight.copy_(torch.linspace(0.5, 2.0, 12))
            layer.bias.copy_(torch.linspace(-1.0, 1.0, 12))
    x = random_activations(50)
    torch.testing.assert_close(ours(x), theirs(x))


def test_rmsnorm_matches_torch_rmsnorm():
    ours, theirs = RMSNorm(12, eps=1e-6), nn.RMSNorm(12, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.linspace(0.5, 2.0, 12))
        theirs.weight.copy_(ours.weight)
    x = random_activations(60)
    torch.testing.assert_close(ours(x), theirs(x))


def test_make_norm_rejects_an_unknown_kind_with_the_choices():
    with pytest.raises(ValueError, match="layernorm"):
        make_norm("groupnorm")


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm", "none"])
def test_leakage_detector_finds_none_in_per_token_norms(kind):
    layer = make_norm(kind)(12).train()
    assert not measure_leakage(layer, random_activations(70)).leaks()


def test_leakage_detector_finds_batchnorm_leaking_from_the_future_and_across_the_batch():
    leakage = measure_leakage(BatchNorm(12).train(), random_activations(71))
    assert leakage.leaks()
    assert leakage.from_future > 1e-3 and leakage.across_batch > 1e-3


def test_leakage_detector_catches_a_deliberately_acausal_function():
    def looks_ahead(x: torch.Tensor) -> torch.Tensor:
        return x + x.flip(1)  # position t sees position T - 1 - t

    leakage = measure_leakage(looks_ahead, random_activations(72))
    assert leakage.from_future > 0.1 and leakage.across_batch == 0.0


def test_leakage_detector_restores_batchnorm_running_statistics():
    layer = BatchNorm(12).train()
    measure_leakage(layer, random_activations(73))
    assert int(layer.num_batches_tracked) == 0
    torch.testing.assert_close(layer.running_mean, torch.zeros(12))


def test_batchnorm_model_leaks_on_token_ids_and_layernorm_model_does_not():
    token_ids = torch.randint(
        0, TINY.vocab_size, (4, 12), generator=torch.Generator().manual_seed(1)
    )
    batchnorm = build_model(TINY, "batchnorm").train()
    layernorm = build_model(TINY, "layernorm").train()
    assert measure_leakage(batchnorm, token_ids, vocab_size=TINY.vocab_size).leaks()
    assert not measure_leakage(layernorm, token_ids, vocab_size=TINY.vocab_size).leaks()


def test_batchnorm_model_in_eval_mode_does_not_leak():
    token_ids = torch.randint(
        0, TINY.vocab_size, (4, 12), generator=torch.Generator().manual_seed(2)
    )
    model = build_model(TINY, "batchnorm").eval()
    assert not measure_leakage(model, token_ids, vocab_size=TINY.vocab_size).leaks()


def test_measure_leakage_rejects_a_batch_of_one():
    with pytest.raises(ValueError, match="B >= 2"):
        measure_leakage(LayerNorm(12), torch.randn(1, 8, 12))


@pytest.mark.parametrize("kind", NORM_KINDS)
def test_build_model_puts_the_chosen_norm_everywhere(kind):
    expected = {
        "layernorm": LayerNorm,
        "rmsnorm": RMSNorm,
        "batchnorm": BatchNorm,
        "none": nn.Identity,
    }[kind]
    model = build_model(TINY, kind)
    norms = [module for block in model.blocks for module in (block.attn_norm, block.ffn_norm)]
    assert all(type(norm) is expected for norm in [*norms, model.final_norm])


def test_post_norm_model_keeps_weights_and_output_shape():
    pre = build_model(TINY, "layernorm", seed=3)
    post = build_model(TINY, "layernorm", post_norm=True, seed=3)
    assert all(isinstance(block, PostNormBlock) for block in post.blocks)
    assert isinstance(post.final_norm, nn.Identity)
    for name, tensor in post.state_dict().items():
        torch.testing.assert_close(tensor, pre.state_dict()[name])
    token_ids = torch.randint(0, TINY.vocab_size, (2, 10))
    assert post(token_ids).shape == (2, 10, TINY.vocab_size)


def test_post_norm_block_output_is_normalised_per_token():
    block = build_model(TINY, "layernorm", post_norm=True).blocks[0]
    x = torch.randn(2, 10, TINY.d_model) * 5 + 3
    out = block(x, positions=torch.arange(10))
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 10), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(2, 10), atol=1e-3, rtol=0)


def test_post_norm_block_computes_norm_after_the_residual_add():
    block = build_model(TINY, "layernorm", post_norm=True).blocks[0]
    x = torch.randn(2, 10, TINY.d_model)
    positions = torch.arange(10)
    h = block.attn_norm(x + block.attention(x, positions=positions))
    expected = block.ffn_norm(h + block.ffn(h))
    torch.testing.assert_close(block(x, positions=positions), expected)


def test_post_norm_model_is_still_causal():
    token_ids = torch.randint(
        0, TINY.vocab_size, (3, 12), generator=torch.Generator().manual_seed(4)
    )
    model = build_model(TINY, "layernorm", post_norm=True)
    assert not measure_leakage(model, token_ids, vocab_size=TINY.vocab_size).leaks()


def test_gradient_norms_per_layer_has_one_positive_norm_per_block():
    model = build_model(TINY, "layernorm")
    inputs, labels = sample_batch(
        torch.arange(200).numpy() % TINY.vocab_size, 2, 8, torch.Generator().manual_seed(0)
    )
    norms = gradient_norms_per_layer(model, inputs, labels)
    assert len(norms) == TINY.n_layers and all(norm > 0 for norm in norms)
    assert all(parameter.grad is None for parameter in model.parameters())


def test_sample_batch_labels_are_inputs_shifted_by_one():
    tokens = (torch.arange(500) % 64).numpy().astype("uint16")
    inputs, labels = sample_batch(tokens, 3, 10, torch.Generator().manual_seed(0))
    assert inputs.shape == labels.shape == (3, 10)
    torch.testing.assert_close(inputs[:, 1:], labels[:, :-1])


def test_training_runner_lowers_the_validation_loss_on_a_learnable_stream():
    tokens = (torch.arange(4000) % 16).numpy().astype("uint16")  # a repeating pattern
    config = RunConfig(
        steps=30, batch_size=4, context_length=16, learning_rate=1e-2, eval_every=10, eval_batches=2
    )
    result = train_and_evaluate(
        "test", build_model(TINY, "rmsnorm"), tokens, tokens, config, progress=False
    )
    assert result.eval_steps == [0, 10, 20, 30]
    assert result.final_val_loss < result.val_losses[0] - 1.0
    assert result.tokens_per_second > 0


def test_evaluate_loss_with_batch_statistics_leaves_running_statistics_untouched():
    model = build_model(TINY, "batchnorm")
    batches = [
        sample_batch((torch.arange(300) % 64).numpy(), 4, 8, torch.Generator().manual_seed(0))
    ]
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    evaluate_loss(model, batches, batch_statistics=True)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name])
