"""Fixtures shared by several chapters' tests."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from chapters.ch02_tokenizer.tokenizer import SPECIAL_TOKENS


@pytest.fixture(scope="session")
def chat_tokenizer() -> Tokenizer:
    """A small byte-level BPE with chapter 2's special tokens at ids 0-3, trained in a blink on
    chapter 8's checkable tasks: a stand-in for the course tokenizer in fast tests."""
    from chapters.ch08_sft import sft

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = [r.prompt + " " + r.response for r in sft.generate_checkable_tasks(20, 2)]
    tokenizer.train_from_iterator(text * 3, trainer)
    return tokenizer
