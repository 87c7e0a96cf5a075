"""The Hugging Face export: transformers' LlamaForCausalLM computes the course model's function,
and the test notices when the RoPE permutation or any single weight mapping is wrong."""

from __future__ import annotations

import json
import os

import pytest
import torch

# transformers is pinned in requirements.txt: a missing install must fail, not skip.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers.models.llama.modeling_llama import (  # noqa: E402
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

import supplementary.hf_export as hf_export  # noqa: E402
from chapters.ch02_tokenizer.tokenizer import train_course_tokenizer  # noqa: E402
from chapters.ch03_attention.attention import apply_rotary  # noqa: E402
from chapters.ch04_blocks.model import LanguageModel, ModelConfig, generate  # noqa: E402
from chapters.ch06_pretraining.trainer import save_model_with_history  # noqa: E402
from chapters.course import OUTPUT_MARKER  # noqa: E402
from supplementary.hf_export import (  # noqa: E402
    UnsupportedForExport,
    export_to_hf,
    half_split_order,
    half_split_to_interleaved,
    interleaved_to_half_split,
    load_exported,
    load_hf_model,
    load_hf_tokenizer,
    max_logit_difference,
)

VOCAB = 320
TEXTS = [
    "Once upon a time there was a little fox who liked to read books.",
    "The quick brown fox jumps over the lazy dog, again and again.",
    "<|user|> What is two plus two?<|assistant|> Four.<|endoftext|>",
] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return train_course_tokenizer(TEXTS, vocab_size=VOCAB)


def noisy_model(seed: int, **overrides) -> LanguageModel:
    """A small random model whose norms are not all ones (so swapped norms would show)."""
    torch.manual_seed(seed)
    values = dict(vocab_size=VOCAB, context_length=48, d_model=48, n_layers=2, n_heads=4, d_ff=96)
    values.update(overrides)
    model = LanguageModel(ModelConfig(**values)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def random_ids(seed: int, batch: int = 2, length: int = 48) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_half_split_order_puts_even_features_first() -> None:
    assert half_split_order(8).tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


def test_half_split_permutation_round_trips() -> None:
    weight = torch.randn(4 * 6, 10)
    there = interleaved_to_half_split(weight, n_heads=4)
    assert not torch.equal(there, weight)
    assert torch.equal(half_split_to_interleaved(there, n_heads=4), weight)


def test_permuted_course_rope_equals_transformers_rope() -> None:
    head_dim, theta, length = 16, 500.0, 11
    config = hf_export.llama_config(
        ModelConfig(vocab_size=VOCAB, d_model=4 * head_dim, n_heads=4, rope_theta=theta)
    )
    from transformers import LlamaConfig

    rotary = LlamaRotaryEmbedding(LlamaConfig(**config))
    x = torch.randn(2, 4, length, head_dim)
    positions = torch.arange(length)
    cos, sin = rotary(x, positions[None])
    order = half_split_order(head_dim)
    theirs, _ = apply_rotary_pos_emb(x[..., order], x[..., order], cos, sin)
    ours = apply_rotary(x, positions, theta)[..., order]
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_transformers_logits_match_the_course_model(tmp_path, tokenizer, tie: bool) -> None:
    model = noisy_model(1, tie_embeddings=tie, rope_theta=777.0, norm_eps=1e-6)
    hf_model = load_hf_model(export_to_hf(model, tokenizer, tmp_path / "export"))
    assert max_logit_difference(model, hf_model, random_ids(2)) < 1e-4


def test_random_config_round_trips_through_transformers(tmp_path, tokenizer) -> None:
    generator = torch.Generator().manual_seed(3)
    n_heads = int(torch.randint(1, 4, (1,), generator=generator)) * 2
    head_dim = int(torch.randint(2, 9, (1,), generator=generator)) * 2
    model = noisy_model(
        4,
        d_model=n_heads * head_dim,
        n_heads=n_heads,
        n_layers=int(torch.randint(1, 4, (1,), generator=generator)),
        d_ff=int(torch.randint(8, 80, (1,), generator=generator)),
        rope_theta=float(torch.randint(100, 20000, (1,), generator=generator)),
        tie_embeddings=bool(torch.randint(0, 2, (1,), generator=generator)),
    )
    hf_model = load_hf_model(export_to_hf(model, tokenizer, tmp_path / "export"))
    assert max_logit_difference(model, hf_model, random_ids(5)) < 1e-4


def test_export_without_rope_permutation_gives_different_logits(tmp_path, tokenizer) -> None:
    model = noisy_model(6)
    folder = export_to_hf(model, tokenizer, tmp_path / "export", permute_rope=False)
    assert max_logit_difference(model, load_hf_model(folder), random_ids(7)) > 1e-2


@pytest.mark.parametrize(
    "first, second",
    [
        ("blocks.{i}.ffn.w1.weight", "blocks.{i}.ffn.w3.weight"),
        ("blocks.{i}.attn_norm.weight", "blocks.{i}.ffn_norm.weight"),
        ("blocks.{i}.attention.q_proj.weight", "blocks.{i}.attention.k_proj.weight"),
        ("blocks.{i}.attention.v_proj.weight", "blocks.{i}.attention.out_proj.weight"),
    ],
    ids=["gate-up", "norms", "q-k", "v-o"],
)
def test_a_swapped_weight_mapping_gives_different_logits(
    tmp_path, tokenizer, monkeypatch, first: str, second: str
) -> None:
    swapped = dict(hf_export.LLAMA_NAMES)
    swapped[first], swapped[second] = swapped[second], swapped[first]
    monkeypatch.setattr(hf_export, "LLAMA_NAMES", swapped)
    model = noisy_model(8)
    hf_model = load_hf_model(export_to_hf(model, tokenizer, tmp_path / "export"))
    assert max_logit_difference(model, hf_model, random_ids(9)) > 1e-3


def test_greedy_generation_gives_the_same_tokens(tmp_path, tokenizer) -> None:
    model = noisy_model(10)
    hf_model = load_hf_model(export_to_hf(model, tokenizer, tmp_path / "export"))
    prompt = torch.tensor([tokenizer.encode("Once upon a time").ids])
    ours = generate(model, prompt, max_new_tokens=25, temperature=0.0, stop_token_id=0)
    with torch.no_grad():
        theirs = hf_model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=25, do_sample=False
        )
    assert torch.equal(ours, theirs)


def test_config_carries_the_settings_that_change_the_function(tmp_path, tokenizer) -> None:
    from transformers import AutoConfig

    model = noisy_model(11, rope_theta=1234.0, norm_eps=1e-6, tie_embeddings=False)
    config = AutoConfig.from_pretrained(
        export_to_hf(model, tokenizer, tmp_path / "export"), local_files_only=True
    )
    rope_theta = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope_theta.get("rope_theta", getattr(config, "rope_theta", None))
    assert (config.model_type, config.rms_norm_eps, rope_theta) == ("llama", 1e-6, 1234.0)
    assert (config.intermediate_size, config.tie_word_embeddings) == (96, False)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 4, 12)


def test_transformers_tokenizer_encodes_like_the_course_tokenizer(tmp_path, tokenizer) -> None:
    hf_tokenizer = load_hf_tokenizer(export_to_hf(noisy_model(12), tokenizer, tmp_path / "x"))
    text = "<|user|> The fox?  \n<|assistant|> Reads books.<|endoftext|>"
    ids = hf_tokenizer(text)["input_ids"]
    assert ids == tokenizer.encode(text).ids
    assert hf_tokenizer.decode(ids) == text
    assert (hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id) == (0, 1)


def test_load_exported_restores_the_course_model_exactly(tmp_path, tokenizer) -> None:
    model = noisy_model(13, tie_embeddings=False)
    back = load_exported(export_to_hf(model, tokenizer, tmp_path / "export"))
    ids = random_ids(14)
    assert torch.equal(back(ids), model(ids))


def test_layernorm_model_is_refused_naming_the_option(tmp_path, tokenizer) -> None:
    with pytest.raises(UnsupportedForExport, match="norm='layernorm'"):
        export_to_hf(noisy_model(15, norm="layernorm"), tokenizer, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_custom_norm_module_is_refused_naming_the_module(tmp_path, tokenizer) -> None:
    model = LanguageModel(
        ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=1, n_heads=2),
        make_norm=lambda dim: torch.nn.LayerNorm(dim, bias=False),
    )
    with pytest.raises(UnsupportedForExport, match="blocks.0.attn_norm"):
        export_to_hf(model, tokenizer, tmp_path / "export")


def test_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path, tokenizer) -> None:
    model = noisy_model(16, vocab_size=VOCAB - 10)
    with pytest.raises(ValueError, match="tokenizer has 320 tokens"):
        export_to_hf(model, tokenizer, tmp_path / "export")


def test_a_folder_that_is_not_an_export_is_never_replaced(tmp_path, tokenizer) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_to_hf(noisy_model(17), tokenizer, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_a_saved_model_folder_is_not_mistaken_for_an_export(tmp_path, tokenizer) -> None:
    model = noisy_model(20)
    folder = save_model_with_history(model, tmp_path / "base")  # has a config.json too
    (folder / "training_history.json").write_text("{}")
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="supplementary.hf_export did not write"):
        export_to_hf(model, tokenizer, folder)
    assert (folder / "notes.txt").read_text() == "precious"
    assert (folder / "training_history.json").read_text() == "{}"


def test_an_export_made_before_folders_carried_a_marker_is_replaced(
    tmp_path, tokenizer, monkeypatch
) -> None:
    monkeypatch.setenv("LLM_COURSE_ARTIFACTS", str(tmp_path))
    folder = export_to_hf(noisy_model(21), tokenizer, tmp_path / "hf_export" / "base")
    (folder / OUTPUT_MARKER).unlink()
    before = (folder / "model.safetensors").read_bytes()
    export_to_hf(noisy_model(22), tokenizer, folder)
    assert (folder / "model.safetensors").read_bytes() != before


def test_a_failed_export_keeps_the_previous_export(tmp_path, tokenizer, monkeypatch) -> None:
    folder = export_to_hf(noisy_model(18), tokenizer, tmp_path / "export")
    before = (folder / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf_export, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        export_to_hf(noisy_model(19), tokenizer, folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]
