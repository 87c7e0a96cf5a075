"""Chapter 8 with a real (tiny) chapter 4 model: padding and packing leave the logits of real
tokens unchanged, and fine-tuning through chapter 6's trainer uses response tokens only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from chapters.ch04_blocks.model import LanguageModel, ModelConfig
from chapters.ch06_pretraining.trainer import Trainer
from chapters.ch08_sft import sft


@pytest.fixture(scope="module")
def tokenizer(chat_tokenizer: Tokenizer) -> Tokenizer:
    return chat_tokenizer


@pytest.fixture(scope="module")
def examples(tokenizer) -> list[sft.EncodedExample]:
    records = sft.generate_checkable_tasks(6, 0, seed=4)
    return [sft.encode_example(tokenizer, r.prompt, r.response, 65) for r in records]


def tiny_model(seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=400, context_length=64, d_model=32, n_layers=2, n_heads=2)
    return LanguageModel(config).eval()


def test_padding_leaves_real_token_logits_unchanged(examples):
    model = tiny_model()
    batch = sft.collate(examples[:6])
    with torch.no_grad():
        padded = model(batch.inputs, attention_mask=batch.attention_mask)
        for row, example in enumerate(examples[:6]):
            alone = model(torch.tensor([example.token_ids[:-1]]))[0]
            assert torch.allclose(padded[row, : len(alone)], alone, atol=1e-5)


def test_packed_rows_give_each_example_its_own_logits(examples):
    model = tiny_model(1)
    packed = sft.pack(examples, context_length=64)
    with torch.no_grad():
        logits = model(
            packed.inputs, positions=packed.positions, attention_mask=packed.attention_mask
        )
    compared = 0
    for row in range(packed.inputs.shape[0]):
        tokens, start = packed.inputs[row].tolist(), 0
        for example in examples:
            n = len(example.token_ids) - 1
            if tokens[start : start + n] == example.token_ids[:-1]:
                alone = model(torch.tensor([example.token_ids[:-1]]))[0].detach()
                assert torch.allclose(logits[row, start : start + n], alone, atol=1e-5)
                start += n
                compared += 1
    assert compared == len(examples)


def test_packing_without_the_mask_would_change_the_logits(examples):
    model = tiny_model(1)
    packed = sft.pack(examples, context_length=64)
    with torch.no_grad():
        right = model(
            packed.inputs, positions=packed.positions, attention_mask=packed.attention_mask
        )
        wrong = model(packed.inputs)
    assert not torch.allclose(right, wrong, atol=1e-3)


def test_wrapper_rebuilds_the_packing_mask_from_token_ids(examples):
    model = tiny_model(2)
    packed = sft.pack(examples, context_length=64)
    with torch.no_grad():
        expected = model(
            packed.inputs, positions=packed.positions, attention_mask=packed.attention_mask
        )
        got = sft.PackedSequenceModel(model)(packed.inputs)
    real = packed.labels != sft.IGNORE_INDEX
    assert torch.allclose(got[real], expected[real], atol=1e-5)


def test_trainer_loss_equals_mean_cross_entropy_over_response_tokens(examples):
    model = tiny_model(3).train()
    config = sft.sft_training_config(steps=1, batch_size=8, context_length=64, warmup_steps=1)
    get_batch = sft.sft_batch_source(examples, 8)
    trainer = Trainer(model, config, get_batch, device="cpu", show_progress=False)
    loss = trainer.accumulate_gradients(0)
    inputs, labels = get_batch(0, 0)
    with torch.no_grad():
        logits = model(inputs)
    keep = labels != sft.IGNORE_INDEX
    reference = F.cross_entropy(logits[keep], labels[keep])
    assert loss == pytest.approx(float(reference), abs=1e-5)


def test_prompt_tokens_get_no_gradient_through_their_labels(examples):
    model = tiny_model(4)
    batch = sft.collate(examples[:4])
    logits = model(batch.inputs).detach().requires_grad_(True)
    F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=-100).backward()
    per_position = logits.grad.abs().sum(-1)  # (B, T)
    assert (per_position[batch.labels == sft.IGNORE_INDEX] == 0).all()
    assert (per_position[batch.labels != sft.IGNORE_INDEX] > 0).all()


def test_finetune_lowers_the_response_loss(examples):
    model = tiny_model(5)
    before = sft.mean_response_loss(model, examples)
    config = sft.sft_training_config(steps=30, batch_size=8, context_length=64, learning_rate=3e-3)
    history = sft.finetune(model, examples, config, packing=True, show_progress=False)
    assert len(history.step_losses) == 30
    assert sft.mean_response_loss(model, examples) < before - 0.5
