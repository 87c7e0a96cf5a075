"""Chapter 4: sampling rules and the KV cache."""

import pytest
import torch

from chapters.ch04_blocks.model import LanguageModel, ModelConfig, generate, sample_next_token

SMALL = ModelConfig(vocab_size=50, context_length=16, d_model=32, n_layers=2, n_heads=2)


@pytest.fixture
def model() -> LanguageModel:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
    return LanguageModel(SMALL).eval()


def test_incremental_logits_with_kv_cache_match_full_forward(model):
    tokens = torch.randint(0, SMALL.vocab_size, (3, SMALL.context_length))
    with torch.no_grad():
        full = model(tokens)
        caches = model.new_kv_caches()
        parts = [model(tokens[:, :5], kv_caches=caches)]
        parts += [model(tokens[:, t : t + 1], kv_caches=caches) for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "settings",
    [dict(temperature=0.0), dict(temperature=1.0), dict(top_k=5), dict(temperature=0.7, top_p=0.8)],
)
def test_generation_with_kv_cache_equals_generation_without(model, settings):
    prompt = torch.randint(0, SMALL.vocab_size, (2, 4))
    # 4 + 30 tokens overflow the context of 16: this also covers the sliding recompute.
    with_cache = generate(model, prompt, 30, generator=torch.Generator().manual_seed(5), **settings)
    without = generate(
        model,
        prompt,
        30,
        generator=torch.Generator().manual_seed(5),
        use_kv_cache=False,
        **settings,
    )
    assert with_cache.shape == (2, 34)
    assert torch.equal(with_cache, without)


def test_generate_keeps_the_prompt_and_restores_training_mode(model):
    model.train()
    prompt = torch.randint(0, SMALL.vocab_size, (1, 6))
    out = generate(model, prompt, 5, temperature=0.0)
    assert torch.equal(out[:, :6], prompt) and model.training


def test_greedy_generation_picks_the_argmax(model):
    prompt = torch.randint(0, SMALL.vocab_size, (2, 3))
    out = generate(model, prompt, 1, temperature=0.0)
    with torch.no_grad():
        expected = model(prompt)[:, -1].argmax(-1)
    assert torch.equal(out[:, -1], expected)


def test_stop_token_ends_generation_and_pads_finished_rows(model):
    prompt = torch.randint(0, SMALL.vocab_size, (1, 3))
    with torch.no_grad():
        first = model(prompt)[:, -1].argmax(-1).item()
    out = generate(model, prompt, 10, temperature=0.0, stop_token_id=first)
    assert out.shape == (1, 4) and out[0, -1].item() == first


def test_temperature_zero_is_argmax():
    logits = torch.randn(5, 30)
    assert torch.equal(sample_next_token(logits, temperature=0.0), logits.argmax(-1))


def test_top_k_samples_only_the_k_most_likely():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 40, generator=generator).expand(3000, -1)
    draws = sample_next_token(logits, 1.0, top_k=4, generator=generator)
    allowed = set(torch.topk(logits[0], 4).indices.tolist())
    assert set(draws.tolist()) == allowed


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.1, 0.06, 0.04])
    logits = probs.log()[None].expand(3000, -1)
    draws = sample_next_token(logits, 1.0, top_p=0.75, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 1}  # 0.5 < 0.75 <= 0.5 + 0.3


def test_top_p_always_keeps_the_most_likely_token():
    logits = torch.tensor([[10.0, 0.0, 0.0]]).expand(200, -1)
    draws = sample_next_token(logits, 1.0, top_p=0.01, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0}


def test_sampling_matches_softmax_frequencies():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    draws = sample_next_token(
        logits.expand(20000, -1), temperature=2.0, generator=torch.Generator().manual_seed(0)
    )
    frequencies = torch.bincount(draws, minlength=3).float() / draws.numel()
    torch.testing.assert_close(frequencies, (logits[0] / 2.0).softmax(-1), atol=0.015, rtol=0)


@pytest.mark.parametrize(
    "bad", [dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)]
)
def test_bad_sampling_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        sample_next_token(torch.randn(1, 5), **{"temperature": 1.0, **bad})


def test_generate_rejects_a_prompt_without_batch_dimension(model):
    with pytest.raises(ValueError, match="unsqueeze"):
        generate(model, torch.tensor([1, 2, 3]), 2)


@pytest.mark.parametrize(
    "bad",
    [dict(temperature=float("nan")), dict(temperature=float("inf")), dict(top_k=2.5)],
)
def test_non_numbers_and_fractional_top_k_are_rejected_in_words(bad):
    with pytest.raises(ValueError, match="temperature must be|top_k must be"):
        sample_next_token(torch.randn(1, 5), **{"temperature": 1.0, **bad})


def test_generate_rejects_a_fractional_number_of_new_tokens(model):
    with pytest.raises(ValueError, match="max_new_tokens must be an integer"):
        generate(model, torch.tensor([[1, 2, 3]]), 2.5)


def test_generate_rejects_float_prompt_ids_instead_of_truncating_them(model):
    with pytest.raises(TypeError, match="integer token ids"):
        generate(model, torch.tensor([[1.7, 2.2]]), 2)
