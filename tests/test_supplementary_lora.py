"""LoRA from scratch: adapters start as the base model, merged equals unmerged, only the
adapters train, and the merged plain model computes what the adapted one does."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from chapters.ch04_blocks.model import LanguageModel, ModelConfig
from supplementary.lora import (
    DEFAULT_TARGETS,
    LoRALinear,
    add_lora,
    lora_layers,
    merge_lora,
    merged_model,
    trainable_parameters,
    training_memory_bytes,
    unmerge_lora,
)


def small_model(seed: int = 0, **overrides) -> LanguageModel:
    torch.manual_seed(seed)
    values = dict(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4)
    values.update(overrides)
    return LanguageModel(ModelConfig(**values)).eval()


def trained_adapters(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every B non-zero values, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.copy_(0.1 * torch.randn(layer.lora_B.shape, generator=generator))
    return model


def token_ids(seed: int) -> torch.Tensor:
    return torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(seed))


def test_zero_initialised_b_gives_the_base_model_outputs() -> None:
    base = small_model(1)
    adapted = add_lora(copy.deepcopy(base), rank=4, alpha=8)
    ids = token_ids(2)
    assert torch.equal(adapted(ids), base(ids))


def test_lora_layer_equals_the_dense_formula() -> None:
    base = torch.nn.Linear(24, 40, bias=True)
    layer = trained_adapters(LoRALinear(copy.deepcopy(base), rank=3, alpha=6), seed=3)
    x = torch.randn(5, 24)
    weight = base.weight + (6 / 3) * layer.lora_B @ layer.lora_A
    torch.testing.assert_close(layer(x), F.linear(x, weight, base.bias))


def test_merged_forward_equals_unmerged_forward() -> None:
    model = trained_adapters(add_lora(small_model(4), rank=4, alpha=16), seed=5)
    ids = token_ids(6)
    unmerged = model(ids)
    merge_lora(model)
    assert all(layer.merged for layer in lora_layers(model))
    torch.testing.assert_close(model(ids), unmerged, atol=1e-5, rtol=1e-5)


def test_unmerge_restores_the_base_weights() -> None:
    base = small_model(7)
    model = trained_adapters(add_lora(copy.deepcopy(base), rank=2), seed=8)
    unmerge_lora(merge_lora(model))
    restored = model.blocks[1].ffn.w2.base.weight
    torch.testing.assert_close(restored, base.blocks[1].ffn.w2.weight, atol=1e-6, rtol=0)


def test_only_adapter_parameters_require_grad() -> None:
    model = add_lora(small_model(9), rank=4)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A" in name or ".lora_B" in name for name in trainable)
    assert len(trainable) == 2 * len(DEFAULT_TARGETS) * 2  # A and B, 7 projections, 2 blocks


def test_backward_gives_gradients_to_adapters_only() -> None:
    model = trained_adapters(add_lora(small_model(10), rank=4), seed=11)
    ids = token_ids(12)
    model(ids).logsumexp(-1).mean().backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == parameter.requires_grad, name


def test_trainable_parameter_count_matches_the_formula() -> None:
    config = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4)
    model = add_lora(LanguageModel(config), rank=4)
    d, d_ff, rank = config.d_model, config.d_ff, 4
    per_block = 4 * rank * (d + d) + 2 * rank * (d + d_ff) + rank * (d_ff + d)
    assert trainable_parameters(model) == config.n_layers * per_block


def test_training_memory_counts_gradients_and_adam_state_for_trainable_only() -> None:
    full = small_model(13)
    adapted = add_lora(copy.deepcopy(full), rank=2)
    full_memory, lora_memory = training_memory_bytes(full), training_memory_bytes(adapted)
    assert full_memory["total"] == 4 * full_memory["weights"]
    assert lora_memory["gradients"] == 4 * trainable_parameters(adapted)
    assert lora_memory["total"] < full_memory["total"] / 2


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_merged_model_is_a_plain_model_with_the_same_outputs(tie: bool) -> None:
    model = trained_adapters(add_lora(small_model(14, tie_embeddings=tie), rank=4), seed=15)
    plain = merged_model(model)
    assert type(plain) is LanguageModel and not lora_layers(plain)
    ids = token_ids(16)
    torch.testing.assert_close(plain(ids), model(ids), atol=1e-5, rtol=1e-5)


def test_merged_model_of_an_already_merged_model_adds_the_update_once() -> None:
    model = trained_adapters(add_lora(small_model(17), rank=4), seed=18)
    ids = token_ids(19)
    expected = model(ids)
    plain = merged_model(merge_lora(model))
    torch.testing.assert_close(plain(ids), expected, atol=1e-5, rtol=1e-5)


def test_adapters_on_attention_only_leave_the_mlp_alone() -> None:
    model = add_lora(small_model(20), rank=2, targets=("q_proj", "v_proj"))
    assert isinstance(model.blocks[0].attention.q_proj, LoRALinear)
    assert not isinstance(model.blocks[0].attention.k_proj, LoRALinear)
    assert not isinstance(model.blocks[0].ffn.w1, LoRALinear)


def test_adding_lora_twice_is_refused() -> None:
    model = add_lora(small_model(21), rank=2)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model, rank=2)


def test_targets_that_match_nothing_are_refused() -> None:
    with pytest.raises(ValueError, match="no nn.Linear named"):
        add_lora(small_model(22), rank=2, targets=("query",))


@pytest.mark.parametrize("rank", [0, -1, 2.5, 33])
def test_a_bad_rank_is_refused(rank) -> None:
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(torch.nn.Linear(32, 48), rank=rank)


def test_a_short_training_run_learns_with_adapters_only() -> None:
    base = small_model(23)
    model = add_lora(copy.deepcopy(base), rank=4, alpha=16)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = token_ids(24)
    losses = []
    model.train()
    for _ in range(20):
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.25  # a frozen random model: slow, but it learns
    for name, parameter in base.named_parameters():
        if name.endswith(tuple(f"{target}.weight" for target in DEFAULT_TARGETS)):
            frozen = model.get_parameter(name.removesuffix("weight") + "base.weight")
            assert torch.equal(frozen, parameter), name
        else:
            assert torch.equal(model.get_parameter(name), parameter), name
