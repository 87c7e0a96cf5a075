"""Chapter 4 exercise checks: the reference solutions pass; stubs and wrong answers fail."""

import dataclasses
import runpy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from chapters.ch04_blocks import exercises
from chapters.ch04_blocks.model import LanguageModel, default_d_ff
from chapters.course import NotRightYet


class GELUFeedForward(nn.Module):
    def __init__(self, d_model, d_ff, approximate="none"):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)
        self.approximate = approximate

    def forward(self, x):
        return self.down(F.gelu(self.up(x), approximate=self.approximate))


class StubFeedForward(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        raise NotImplementedError


def untie_head(model):
    untied = LanguageModel(dataclasses.replace(model.config, tie_embeddings=False))
    untied.load_state_dict(model.state_dict())
    return untied


def untie_by_flag_only(model):
    model.config = dataclasses.replace(model.config, tie_embeddings=False)
    return model


def min_p_filter(logits, min_p):
    probs = logits.softmax(-1)
    return logits.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, float("-inf"))


def min_p_on_logits(logits, min_p):  # a typical mistake: thresholds logits, not probabilities
    return logits.masked_fill(logits < min_p * logits.max(-1, keepdim=True).values, float("-inf"))


def stub(*args, **kwargs):
    raise NotImplementedError


def test_gelu_reference_passes():
    exercises.check_gelu_feed_forward(GELUFeedForward)


def test_gelu_stub_is_not_implemented():
    with pytest.raises(NotImplementedError):
        exercises.check_gelu_feed_forward(StubFeedForward)


def test_gelu_tanh_approximation_is_not_right():
    with pytest.raises(NotRightYet, match="tanh"):
        exercises.check_gelu_feed_forward(lambda d, f: GELUFeedForward(d, f, approximate="tanh"))


def test_matching_width_reference_passes():
    exercises.check_gelu_width(lambda d_model: 3 * default_d_ff(d_model) // 2)


def test_matching_width_stub_and_4d_guess_fail():
    with pytest.raises(NotImplementedError):
        exercises.check_gelu_width(stub)
    with pytest.raises(NotRightYet):
        exercises.check_gelu_width(lambda d_model: 4 * d_model)


def test_untie_reference_passes():
    exercises.check_untie_head(untie_head)


def test_untie_stub_and_flag_only_fail():
    with pytest.raises(NotImplementedError):
        exercises.check_untie_head(stub)
    with pytest.raises(NotRightYet):
        exercises.check_untie_head(untie_by_flag_only)


def test_min_p_reference_passes():
    exercises.check_min_p_filter(min_p_filter)


def test_min_p_stub_and_logit_threshold_fail():
    with pytest.raises(NotImplementedError):
        exercises.check_min_p_filter(stub)
    with pytest.raises(NotRightYet):
        exercises.check_min_p_filter(min_p_on_logits)


def test_min_p_check_rejects_a_filter_that_changes_kept_logits():
    with pytest.raises(NotRightYet):
        exercises.check_min_p_filter(lambda logits, p: min_p_filter(logits, p) * 2)


def test_sanity_reference_min_p_keeps_top_token():
    logits = torch.randn(4, 10)
    kept = ~torch.isinf(min_p_filter(logits, 1.0))
    assert kept.gather(1, logits.argmax(-1, keepdim=True)).all()


def test_untie_accepts_a_model_class_defined_in_the_notebook():
    # the main notebook runs the exported cells, so its LanguageModel is another class object
    from chapters.ch04_blocks import model as module

    notebook = runpy.run_path(module.__file__)

    def untie_with_notebook_class(model):
        config = dataclasses.replace(model.config, tie_embeddings=False)
        untied = notebook["LanguageModel"](config)
        untied.load_state_dict(model.state_dict())
        return untied

    exercises.check_untie_head(untie_with_notebook_class)
