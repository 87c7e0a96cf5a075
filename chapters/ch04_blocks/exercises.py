"""Checks for the exercises of chapter 4 (hand-written, not exported from the notebook).

Each check raises NotRightYet with a message a student can act on, lets NotImplementedError
from a stub pass through (check_exercise reports it as "not solved yet"), and returns None
when the answer is right.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from chapters.ch04_blocks.model import LanguageModel, ModelConfig, default_d_ff
from chapters.course import NotRightYet


def _parameter_count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def check_gelu_feed_forward(feed_forward_class: Callable[[int, int], nn.Module]) -> None:
    """Exercise 1a: down(gelu(up(x))) with bias-free `up` and `down`."""
    generator = torch.Generator().manual_seed(4)
    d_model, d_ff = 24, 80
    module = feed_forward_class(d_model, d_ff)
    for name in ("up", "down"):
        if not isinstance(getattr(module, name, None), nn.Linear):
            raise NotRightYet(f"the module needs an nn.Linear attribute called `{name}`.")
    if module.up.bias is not None or module.down.bias is not None:
        raise NotRightYet("`up` and `down` should have no bias: pass bias=False to nn.Linear.")
    if tuple(module.up.weight.shape) != (d_ff, d_model) or tuple(module.down.weight.shape) != (
        d_model,
        d_ff,
    ):
        raise NotRightYet(
            f"`up` should map d_model={d_model} -> d_ff={d_ff} and `down` back; got weight "
            f"shapes {tuple(module.up.weight.shape)} and {tuple(module.down.weight.shape)}."
        )
    if _parameter_count(module) != 2 * d_model * d_ff:
        raise NotRightYet(
            f"expected exactly 2 * d_model * d_ff = {2 * d_model * d_ff} parameters, found "
            f"{_parameter_count(module)}. Are there extra layers?"
        )
    x = torch.randn(3, 5, d_model, generator=generator)
    with torch.no_grad():
        expected = F.gelu(x @ module.up.weight.T) @ module.down.weight.T
        got = module(x)
    if got.shape != expected.shape:
        raise NotRightYet(f"output shape {tuple(got.shape)}, expected {tuple(expected.shape)}.")
    if not torch.allclose(got, expected, atol=1e-5):
        tanh = F.gelu(x @ module.up.weight.T, approximate="tanh") @ module.down.weight.T
        if torch.allclose(got, tanh, atol=1e-5):
            raise NotRightYet("that is the tanh approximation of GELU; use the exact F.gelu(x).")
        raise NotRightYet("the output is not down(gelu(up(x))). Check the order of the layers.")


def check_gelu_width(width_function: Callable[[int], int]) -> None:
    """Exercise 1b: the GELU width with the parameter count of the default SwiGLU."""
    for d_model in (64, 128, 192, 512):
        swiglu = 3 * d_model * default_d_ff(d_model)  # w1, w3 and w2, no biases
        width = width_function(d_model)
        if not isinstance(width, int):
            raise NotRightYet(f"return an int (a layer width), got {type(width).__name__}.")
        if 2 * d_model * width != swiglu:
            raise NotRightYet(
                f"at d_model={d_model}, SwiGLU has {swiglu:,} parameters but a GELU network of "
                f"width {width} has 2 * {d_model} * {width} = {2 * d_model * width:,}. "
                "SwiGLU has three d_model x d_ff matrices, the GELU network two."
            )


def check_untie_head(untie: Callable[[LanguageModel], LanguageModel]) -> None:
    """Exercise 2: an untied copy of a tied model with identical outputs."""
    config = ModelConfig(vocab_size=97, context_length=16, d_model=32, n_layers=2, n_heads=2)
    torch.manual_seed(7)
    tied = LanguageModel(config).eval()
    embedding_before = tied.token_embedding.weight.detach().clone()
    untied = untie(tied)
    # judge what the model does, not its class: the main notebook defines its own LanguageModel
    if not isinstance(untied, nn.Module) or not all(
        hasattr(untied, name) for name in ("config", "lm_head", "token_embedding", "num_parameters")
    ):
        raise NotRightYet(f"return a language model like the one you got, not {untied!r:.60}.")
    if untied is tied:
        raise NotRightYet("return a new model; leave the original one as it was.")
    if untied.config.tie_embeddings:
        raise NotRightYet("the new model's config should say tie_embeddings=False.")
    if untied.lm_head.weight is untied.token_embedding.weight or (
        untied.lm_head.weight.data_ptr() == untied.token_embedding.weight.data_ptr()
    ):
        raise NotRightYet(
            "the head still shares its tensor with the embedding: copy it (.clone())."
        )
    if untied.lm_head.weight.data_ptr() == tied.token_embedding.weight.data_ptr():
        raise NotRightYet("the new head shares memory with the old model's embedding: clone it.")
    extra = untied.num_parameters() - tied.num_parameters()
    if extra != config.vocab_size * config.d_model:
        raise NotRightYet(
            f"untying should add vocab_size * d_model = {config.vocab_size * config.d_model} "
            f"parameters, but the new model has {extra} more."
        )
    token_ids = torch.randint(0, config.vocab_size, (2, 10))
    untied.eval()
    with torch.no_grad():
        if not torch.allclose(tied(token_ids), untied(token_ids), atol=1e-5):
            raise NotRightYet(
                "the untied model gives different logits: copy every weight from the old model "
                "(load_state_dict) and start the head as a copy of the embedding."
            )
    if (
        not torch.equal(tied.token_embedding.weight, embedding_before)
        or not tied.config.tie_embeddings
    ):
        raise NotRightYet("the original model was changed; work on a new model instead.")


# Rows of known probabilities, so that the tokens to keep follow from the rule by hand. The
# second row is the first shifted by +5 (the same softmax), the third a permutation of it.
_MIN_P_PROBABILITIES = (0.4, 0.2, 0.15, 0.1, 0.08, 0.05, 0.02)
_MIN_P_KEPT = {0.0: 7, 0.1: 6, 0.3: 3, 0.6: 1, 1.0: 1}  # min_p -> tokens with p >= min_p * 0.4


def check_min_p_filter(min_p_filter: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """Exercise 3: keep tokens with probability >= min_p * the largest probability."""
    log_probs = torch.tensor(_MIN_P_PROBABILITIES).log()
    order = torch.tensor([3, 0, 6, 2, 5, 1, 4])
    logits = torch.stack([log_probs, log_probs + 5.0, log_probs[order]])
    for min_p, count in _MIN_P_KEPT.items():
        got = min_p_filter(logits.clone(), min_p)
        if not isinstance(got, torch.Tensor) or got.shape != logits.shape:
            raise NotRightYet("return a tensor with the same shape as the logits.")
        kept = ~torch.isinf(got)
        should = [count, count, count]
        if kept.sum(-1).tolist() != should or not torch.equal(kept[2], kept[0][order]):
            raise NotRightYet(
                f"for probabilities {list(_MIN_P_PROBABILITIES)} and min_p={min_p} you keep "
                f"{kept.sum(-1).tolist()} tokens per row, the rule keeps {should}. Compare "
                "probabilities (softmax), not logits, with min_p times each row's maximum."
            )
        if not torch.allclose(got[kept], logits[kept]):
            raise NotRightYet("the tokens you keep should keep their original logits.")
    # properties on fresh random logits: the top token stays, a larger min_p keeps fewer tokens
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(6, 50, generator=generator) * 3
    previous = torch.ones_like(logits, dtype=torch.bool)
    for min_p in (0.0, 0.05, 0.3, 1.0):
        kept = ~torch.isinf(min_p_filter(logits.clone(), min_p))
        if not kept.gather(-1, logits.argmax(-1, keepdim=True)).all():
            raise NotRightYet(f"with min_p={min_p} the most likely token was removed.")
        if (kept & ~previous).any():
            raise NotRightYet(
                "a larger min_p should never keep a token that a smaller one removed."
            )
        previous = kept
