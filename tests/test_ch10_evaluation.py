"""Chapter 10: the evaluation suite's scoring, estimators, contamination check and errors."""

from __future__ import annotations

import json
import math
import random
from itertools import combinations
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chapters.ch01_data.data_pipeline import CleanDocument
from chapters.ch04_blocks.model import LanguageModel, ModelConfig
from chapters.ch10_evaluation.evaluation import (
    CHECKPOINTS,
    EvaluationError,
    HeldOutScore,
    MultipleChoiceItem,
    Report,
    available_checkpoints,
    bits_per_byte,
    bootstrap_interval,
    check_tokenizer_matches,
    choose,
    contaminated_items,
    contamination,
    continuation_logprobs,
    document_nll,
    encode_pair,
    function_body,
    holm_bonferroni,
    is_valid_python,
    load_checkpoint_folder,
    load_checkpoints,
    load_items,
    mark_significance,
    move_trailing_whitespace,
    next_line_items,
    paired_difference,
    paired_rows,
    pass_at_k,
    save_items,
    score_multiple_choice,
    syntax_validity,
    task_choice_items,
    total_score,
    write_report,
)


class TableModel(torch.nn.Module):
    """A "model" whose logits at each position are a hand-set row chosen by the current
    token: logits[b, t] = table[token_ids[b, t]] (a bigram model with known numbers)."""

    def __init__(self, table: torch.Tensor, context_length: int = 16) -> None:
        super().__init__()
        self.table = table
        self.config = SimpleNamespace(context_length=context_length, vocab_size=table.shape[0])

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.table[token_ids]


def test_continuation_score_is_the_sum_of_hand_computed_log_probabilities():
    torch.manual_seed(0)
    table = torch.randn(6, 6)
    log_probs = F.log_softmax(table, dim=-1)  # log p(next | current), the library's softmax
    model = TableModel(table)
    context, continuations = [0, 3, 2], [[4], [1, 5, 2], [5, 5]]
    scores = continuation_logprobs(model, context, continuations)
    for continuation, score in zip(continuations, scores, strict=True):
        previous = [context[-1], *continuation[:-1]]
        expected = sum(float(log_probs[p, n]) for p, n in zip(previous, continuation, strict=True))
        assert math.isclose(score, expected, rel_tol=1e-5)


def test_context_is_cut_from_the_left_when_it_does_not_fit_the_window():
    table = torch.randn(5, 5)
    model = TableModel(table, context_length=4)
    long_context = [1, 2, 3, 4, 0, 1, 2, 3, 4, 0]
    # A bigram model only looks at the previous token, so cutting the context changes nothing.
    assert continuation_logprobs(model, long_context, [[3, 1]]) == pytest.approx(
        continuation_logprobs(model, long_context[-2:], [[3, 1]])
    )


class FakeTokenizer:
    """One id per character (ids 1 to 5 for "abcde"), enough to drive the scorer."""

    def encode(self, text, add_special_tokens=False):
        return SimpleNamespace(ids=["abcde".index(character) + 1 for character in text])


def test_multiple_choice_picks_the_choice_the_hand_set_logits_favour():
    table = torch.full((6, 6), -5.0)
    table[1, 2] = 5.0  # after "a" the model strongly expects "b"
    table[2, 3] = 5.0  # after "b", "c"
    model = TableModel(table)
    items = [MultipleChoiceItem("q", "t", "a", ["c", "bc", "e"], answer=1)]
    row = score_multiple_choice(model, FakeTokenizer(), items)[0]
    log_probs = F.log_softmax(table, dim=-1)
    expected_bc = float(log_probs[1, 2] + log_probs[2, 3])  # "b" after "a", then "c" after "b"
    assert row["loglikelihoods"][1] == pytest.approx(expected_bc, rel=1e-5)
    assert row["correct_raw"] and row["correct_norm"]  # "bc" wins either way


def test_length_normalisation_can_reverse_the_raw_choice():
    loglikelihoods, byte_lengths = [-10.0, -3.0], [20, 2]
    assert choose(loglikelihoods, byte_lengths, normalised=False) == 1
    assert choose(loglikelihoods, byte_lengths, normalised=True) == 0


@pytest.mark.parametrize("n", [1, 5, 10, 20])
def test_pass_at_k_matches_the_exact_combinatorial_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1.0 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_equals_the_average_over_every_subset_of_k_samples():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 9)
        samples = [rng.random() < 0.4 for _ in range(n)]
        k = rng.randint(1, n)
        subsets = list(combinations(samples, k))
        assert pass_at_k(n, sum(samples), k) == pytest.approx(
            sum(any(s) for s in subsets) / len(subsets)
        )


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(EvaluationError, match="n=3, c=4"):
        pass_at_k(3, 4, 1)


def test_bits_per_byte_of_one_bit_per_byte_is_one():
    assert bits_per_byte(1000 * math.log(2), 1000) == pytest.approx(1.0)
    assert bits_per_byte(8 * math.log(2) * 10, 10) == pytest.approx(8.0)


def test_bits_per_byte_is_log2_perplexity_over_bytes_per_token():
    score = HeldOutScore(nll=1234.5, tokens=400, bytes=1500)
    assert score.bits_per_byte == pytest.approx(math.log2(score.perplexity) / (1500 / 400))


def test_bits_per_byte_needs_bytes():
    with pytest.raises(EvaluationError, match="total_bytes"):
        bits_per_byte(1.0, 0)


def test_document_nll_equals_torch_cross_entropy_over_the_whole_document():
    torch.manual_seed(0)
    model = LanguageModel(
        ModelConfig(vocab_size=50, context_length=8, d_model=16, n_layers=1, n_heads=2)
    )
    model.eval()
    ids = torch.randint(0, 50, (21,)).tolist()
    expected = 0.0
    for start in range(0, 20, 8):  # windows of 8 predictions overlapping by one token
        window = torch.tensor(ids[start : start + 9])
        with torch.no_grad():
            logits = model(window[None, :-1])[0]
        expected += float(F.cross_entropy(logits, window[1:], reduction="sum"))
    assert document_nll(model, ids) == pytest.approx(expected, rel=1e-5)


TRAINING = [
    CleanDocument(
        "stdlib:a.py",
        "import os\n\ndef walk(top):\n    for root, dirs, files in os.walk(top):\n        yield root\n",
    ),
    CleanDocument("stdlib:b.py", "class Thing:\n    pass\n"),
]


def test_contamination_finds_a_planted_item_and_only_it():
    planted = "the quick brown fox jumps over the lazy dog near the river bank today"
    items = {
        "planted": planted,
        "clean": "completely different words that never appear in any file here",
    }
    training = [*TRAINING, CleanDocument("stdlib:c.py", f"# {planted.upper()}\nx = 1\n")]
    overlap = contamination(items, training, n=8)
    assert overlap["planted"] == 1.0
    assert overlap["clean"] == 0.0
    assert contaminated_items(overlap) == ["planted"]


def test_contamination_counts_a_partial_overlap_as_a_fraction():
    item = "one two three four five six seven eight nine ten"  # three 8-grams
    training = [CleanDocument("t", "one two three four five six seven eight")]
    assert contamination({"i": item}, training, n=8)["i"] == pytest.approx(1 / 3)


def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    small = rng.random(50) < 0.6
    large = rng.random(2000) < 0.6
    mean, low, high = bootstrap_interval(small)
    assert low <= mean <= high
    _, big_low, big_high = bootstrap_interval(large)
    assert big_high - big_low < high - low


def test_paired_difference_flags_a_clear_difference_and_not_identical_models():
    rng = np.random.default_rng(2)
    a = (rng.random(300) < 0.8).astype(float)
    b = (rng.random(300) < 0.3).astype(float)
    clear, same = paired_difference(a, b), paired_difference(a, a)
    assert clear.significant and clear.p_value < 0.001
    assert not same.significant and same.p_value == 1.0


def test_items_round_trip_through_jsonl(tmp_path):
    documents = [
        CleanDocument(
            f"stdlib:m{i}.py", "\n".join(f"value_{i}_{j} = compute({j}, {i})" for j in range(30))
        )
        for i in range(5)
    ]
    items = next_line_items(documents, n_items=10)
    assert len(items) == 10
    assert load_items(save_items(items, tmp_path / "items.jsonl")) == items


def write_lines(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


GOOD = {"id": "good-1", "task": "t", "context": "x =", "choices": [" 1", " 2"], "answer": 0}


def test_malformed_json_line_names_the_file_and_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, '{"id": "broken", '])
    with pytest.raises(EvaluationError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_items(path)


def test_item_missing_a_field_is_named(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [{k: v for k, v in GOOD.items() if k != "choices"}])
    with pytest.raises(EvaluationError, match=r"item 'good-1' is missing choices"):
        load_items(path)


def test_answer_index_out_of_range_names_the_item(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, {**GOOD, "id": "q7", "answer": 2}])
    with pytest.raises(EvaluationError, match=r"line 2: item 'q7': answer index 2 is out of range"):
        load_items(path)


def test_duplicate_item_ids_are_rejected(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, GOOD])
    with pytest.raises(EvaluationError, match="appears twice"):
        load_items(path)


class VocabTokenizer:
    def __init__(self, size):
        self.size = size

    def get_vocab_size(self):
        return self.size


def test_checkpoint_with_a_different_tokenizer_names_its_config(tmp_path):
    model = LanguageModel(
        ModelConfig(vocab_size=64, context_length=8, d_model=16, n_layers=1, n_heads=2)
    )
    model.save_pretrained(tmp_path / "other")
    with pytest.raises(EvaluationError, match=r"other/config\.json.*64 ids.*100"):
        load_checkpoint_folder(tmp_path / "other", VocabTokenizer(100))


def test_checkpoint_with_its_own_different_tokenizer_file_is_named(tmp_path):
    model = LanguageModel(
        ModelConfig(vocab_size=64, context_length=8, d_model=16, n_layers=1, n_heads=2)
    )
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "tokenizer.json").write_text('{"a": 1}')
    (tmp_path / "suite_tokenizer.json").write_text('{"b": 2}')
    with pytest.raises(EvaluationError, match=r"ckpt/tokenizer\.json differs"):
        load_checkpoint_folder(
            tmp_path / "ckpt", VocabTokenizer(64), tmp_path / "suite_tokenizer.json"
        )


def test_matching_vocabulary_passes_the_tokenizer_check():
    model = SimpleNamespace(config=SimpleNamespace(vocab_size=64))
    check_tokenizer_matches(model, VocabTokenizer(64), "here")


def test_a_checkpoint_whose_chapter_is_missing_is_listed_not_raised():
    ghost = {"ghost": "chapters.ch99_nothing.nothing:ensure_ghost_model"}
    present, missing = available_checkpoints({"base": CHECKPOINTS["base"]} | ghost)
    assert [c.name for c in present] == ["base"]
    assert [(c.name, reason) for c, reason in missing] == [
        ("ghost", "chapters.ch99_nothing.nothing does not exist yet")
    ]


def test_a_checkpoint_whose_loader_fails_is_listed_with_the_reason(monkeypatch):
    import chapters.ch10_evaluation.evaluation as evaluation

    def ensure_broken_model():
        raise RuntimeError("half-written chapter")

    monkeypatch.setattr(evaluation, "ensure_broken_model", ensure_broken_model, raising=False)
    broken = {"broken": "chapters.ch10_evaluation.evaluation:ensure_broken_model"}
    models, missing = load_checkpoints(VocabTokenizer(64), broken)
    assert models == {}
    assert "half-written chapter" in missing[0][1]


def test_loading_a_checkpoint_with_another_vocabulary_is_an_error_naming_it(monkeypatch):
    import chapters.ch10_evaluation.evaluation as evaluation

    def ensure_small_model():
        return LanguageModel(
            ModelConfig(vocab_size=64, context_length=8, d_model=16, n_layers=1, n_heads=2)
        )

    monkeypatch.setattr(evaluation, "ensure_small_model", ensure_small_model, raising=False)
    small = {"small": "chapters.ch10_evaluation.evaluation:ensure_small_model"}
    with pytest.raises(EvaluationError, match="checkpoint 'small'.*64 ids.*100"):
        load_checkpoints(VocabTokenizer(100), small)


def test_syntax_check_accepts_python_and_rejects_broken_code():
    assert is_valid_python("def f(x):\n    return x + 1\n")
    assert not is_valid_python("def f(x):\n    return (x + \n")


def test_function_body_stops_at_the_first_unindented_line_and_drops_a_cut_line():
    generated = "    x = 1\n    return x\n\ndef other():\n    pass\n    y = (1 +"
    assert function_body(generated) == "    x = 1\n    return x\n"
    assert function_body("    return (1 +") == ""  # no complete line


def test_report_is_written_with_table_and_figures(tmp_path):
    results = {"base": {"task": [1.0, 0.0, 1.0, 1.0]}, "sft": {"task": [1.0, 1.0, 1.0, 1.0]}}
    held_out = {"base": HeldOutScore(100.0, 50, 200), "sft": HeldOutScore(120.0, 50, 200)}
    path = write_report(Report(held_out, results, ("task", "base"), notes=["a note"]), tmp_path)
    text = path.read_text()
    assert "| task | base | 4 | 0.750 |" in text
    assert "PRIMARY task: base - sft = -0.250" in text
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["notes"] == ["a note"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_holm_bonferroni_matches_the_hand_worked_example():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06
    # (never below the adjusted value before it); results come back in the input order.
    assert holm_bonferroni([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_bonferroni_caps_at_one_and_keeps_a_single_p_value():
    assert holm_bonferroni([0.5, 0.6, 0.01]) == pytest.approx([1.0, 1.0, 0.03])
    assert holm_bonferroni([0.2]) == [0.2]


def test_holm_rejects_no_less_than_bonferroni_and_no_more_than_uncorrected():
    rng = np.random.default_rng(3)
    p = rng.random(12) ** 3
    adjusted = np.array(holm_bonferroni(list(p)))
    assert np.all(adjusted >= p - 1e-12)
    assert np.all(adjusted <= np.minimum(1.0, p * len(p)) + 1e-12)


class MergingTokenizer:
    """Greedy longest match over a tiny vocabulary in which newline + four spaces is one
    token, as chapter 2's BPE merges them."""

    vocab = ["\n    ", "\n", " ", "a", "b", "c", "d", "e", "=", "1"]

    def encode(self, text, add_special_tokens=False):
        ids = []
        while text:
            token = max((t for t in self.vocab if text.startswith(t)), key=len)
            ids.append(self.vocab.index(token))
            text = text[len(token) :]
        return SimpleNamespace(ids=ids)


def test_trailing_whitespace_moves_from_the_context_into_the_continuation():
    assert move_trailing_whitespace("def f():\n", "    x") == ("def f():", "\n    x")
    assert move_trailing_whitespace("a =", " 1") == ("a =", " 1")


def test_encode_pair_tokenizes_the_boundary_as_running_text():
    tokenizer = MergingTokenizer()
    context_ids, continuation_ids = encode_pair(tokenizer, "a\n", "    b")
    assert context_ids == tokenizer.encode("a").ids
    assert continuation_ids == tokenizer.encode("\n    b").ids == [0, 4]  # "\n    " merged
    assert context_ids + continuation_ids == tokenizer.encode("a\n    b").ids


class CharTokenizer:
    """One id per printable character (after the four special ids), with decode."""

    def encode(self, text, add_special_tokens=False):
        return SimpleNamespace(ids=[4 + ord(c) - 32 if c != "\n" else 4 + 95 for c in text])

    def decode(self, ids, skip_special_tokens=True):
        return "".join("\n" if i == 99 else chr(i - 4 + 32) for i in ids if i >= 4)


def test_syntax_validity_cuts_the_prompt_before_its_newline_and_needs_a_new_line(monkeypatch):
    import chapters.ch04_blocks.model as model_module

    tokenizer, seen = CharTokenizer(), []

    def fake_generate(model, ids, max_new_tokens, **kwargs):
        seen.append(ids[0].tolist())
        return torch.cat([ids, torch.tensor([tokenizer.encode(generated).ids])], dim=1)

    monkeypatch.setattr(model_module, "generate", fake_generate)
    prompt = 'def f(x):\n    """Add one."""\n'
    generated = "\n    return x + 1\n"
    assert syntax_validity(None, tokenizer, [prompt]) == [True]
    assert tokenizer.decode(seen[0]) == prompt.rstrip()  # the model writes the newline itself
    generated = " more docstring\n    return x\n"  # continues the last line: no new line
    assert syntax_validity(None, tokenizer, [prompt]) == [False]


def test_chat_responses_in_batches_agree_with_chapter_8s_greedy_response():
    from chapters.ch08_sft.sft import greedy_response
    from chapters.ch10_evaluation.evaluation import chat_responses

    torch.manual_seed(0)
    model = LanguageModel(
        ModelConfig(vocab_size=100, context_length=48, d_model=32, n_layers=1, n_heads=2)
    ).eval()
    prompts = ["abc", "xyz", "hello there", "12345678901", "q"]  # two pairs share a length
    batched = chat_responses(model, CharTokenizer(), prompts, max_new_tokens=8)
    for prompt, answers in zip(prompts, batched, strict=True):
        assert answers == [greedy_response(model, CharTokenizer(), prompt, max_new_tokens=8)]


def test_task_choice_items_pit_the_right_answer_against_answers_the_checker_rejects():
    from chapters.ch08_sft.sft import check_answer, generate_checkable_tasks

    records = [r for r in generate_checkable_tasks(per_family_heldout=10) if r.split == "heldout"]
    items = task_choice_items(records)
    assert len(items) >= 0.9 * len(records)
    by_prompt = {r.prompt: r for r in records}
    for item in items:
        record = by_prompt[item.context]
        assert item.chat
        verdicts = [check_answer(record.task, c) for c in item.choices]
        assert verdicts == [i == item.answer for i in range(4)]
    assert len({item.answer for item in items}) == 4  # the right answer is not always first


def test_a_chat_item_is_scored_in_the_chat_template_built_from_ids(chat_tokenizer):
    from chapters.ch02_tokenizer.tokenizer import ASSISTANT_ID, EOT_ID, USER_ID
    from chapters.ch10_evaluation.evaluation import MultipleChoiceItem, encode_choice

    item = MultipleChoiceItem("t", "task choice", "Say <|user|> a.", [" a", " b"], 0, chat=True)
    context, choice = encode_choice(chat_tokenizer, item, " a<|endoftext|>")
    assert context[0] == USER_ID and context[-1] == ASSISTANT_ID
    assert [i for i in context + choice if i < 4] == [USER_ID, ASSISTANT_ID, EOT_ID]
    assert choice[-1] == EOT_ID  # the answer, then the end: stopping is scored too


def test_paired_rows_give_each_model_minus_the_baseline_per_metric():
    results = {
        "base": {"m": [0.0, 0.0, 1.0, 0.0]},
        "sft": {"m": [1.0, 0.0, 1.0, 0.0]},
        "dpo": {"m": [1.0, 1.0, 1.0, 0.0]},
    }
    rows = paired_rows(results, baseline="sft")
    assert [(r["metric"], r["model"], r["baseline"]) for r in rows] == [
        ("m", "base", "sft"),
        ("m", "dpo", "sft"),
    ]
    assert [r["diff"] for r in rows] == pytest.approx([-0.25, 0.25])
    assert all(r["low"] <= r["diff"] <= r["high"] for r in rows)


def test_weighted_bootstrap_mean_of_document_bits_per_byte_is_the_total_bits_per_byte():
    scores = [HeldOutScore(100.0, 40, 150), HeldOutScore(30.0, 10, 20), HeldOutScore(7.0, 5, 9)]
    mean, _, _ = bootstrap_interval(
        [s.bits_per_byte for s in scores], weights=[s.bytes for s in scores]
    )
    assert mean == pytest.approx(total_score(scores).bits_per_byte)
    assert mean != pytest.approx(np.mean([s.bits_per_byte for s in scores]))


def test_mark_significance_tests_the_primary_alone_and_holm_adjusts_the_rest():
    rows = [
        {"metric": "a", "model": "base", "p_value": 0.04},
        {"metric": "b", "model": "base", "p_value": 0.02},
        {"metric": "c", "model": "base", "p_value": 0.03},
    ]
    mark_significance(rows, primary=("a", "base"))
    assert [r["p_holm"] for r in rows] == pytest.approx([0.04, 0.04, 0.04])
    assert [r["primary"] for r in rows] == [True, False, False]
    assert all(r["significant"] for r in rows)
    with pytest.raises(EvaluationError, match="primary"):
        mark_significance(rows, primary=("z", "base"))


def test_report_json_has_paired_rows_against_sft_for_every_model(tmp_path):
    results = {
        "base": {"task": [0.0, 1.0, 0.0, 0.0]},
        "sft": {"task": [1.0, 1.0, 1.0, 0.0]},
        "dpo": {"task": [1.0, 1.0, 0.0, 0.0]},
    }
    held_out = {name: HeldOutScore(100.0, 50, 200) for name in results}
    documents = {name: [HeldOutScore(50.0, 25, 100)] * 2 for name in results}
    report = Report(held_out, results, ("task", "base"), documents)
    write_report(report, tmp_path)
    paired = json.loads((tmp_path / "results.json").read_text())["paired"]
    assert {(r["metric"], r["model"]) for r in paired} == {
        (metric, model) for metric in ("task", "bits per byte") for model in ("base", "dpo")
    }
    assert all({"metric", "model", "baseline", "diff", "low", "high"} <= set(r) for r in paired)
    assert all(r["baseline"] == "sft" for r in paired)


def _tiny_model(vocab_size: int = 60, context_length: int = 16) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=vocab_size, context_length=context_length, d_model=32, n_layers=2, n_heads=2
    )
    return LanguageModel(config).eval()


def test_batched_pair_loglikelihoods_equal_each_pair_scored_alone():
    from chapters.ch10_evaluation.evaluation import pair_loglikelihoods

    model, rng = _tiny_model(), random.Random(0)
    pairs = [  # contexts up to longer than the window, so some are cut from the left
        (
            [rng.randrange(60) for _ in range(rng.randint(1, 24))],
            [rng.randrange(60) for _ in range(rng.randint(1, 6))],
        )
        for _ in range(40)
    ]
    batched = pair_loglikelihoods(model, pairs, batch_size=16)
    for (context, continuation), score in zip(pairs, batched, strict=True):
        ids = torch.tensor([*context, *continuation][-17:])  # no padding: one row alone
        with torch.no_grad():
            log_probs = model(ids[None, :-1])[0].log_softmax(dim=-1)
        span = len(continuation)
        alone = log_probs[-span:].gather(1, ids[-span:, None]).sum()
        assert abs(score - float(alone)) <= 1e-4


def test_held_out_scores_in_batches_equal_one_window_at_a_time():
    from chapters.ch10_evaluation.evaluation import held_out_scores

    model, rng = _tiny_model(vocab_size=100), random.Random(1)
    texts = [
        "".join(rng.choice("abcdef gh\n") for _ in range(rng.randint(3, 60))) for _ in range(9)
    ]
    documents = [CleanDocument(f"doc{i}", text) for i, text in enumerate(texts)]
    batched = held_out_scores(model, CharTokenizer(), documents, 10**6, batch_size=8)
    alone = held_out_scores(model, CharTokenizer(), documents, 10**6, batch_size=1)
    assert [(s.tokens, s.bytes) for s in batched] == [(s.tokens, s.bytes) for s in alone]
    assert max(abs(a.nll - b.nll) for a, b in zip(batched, alone, strict=True)) <= 1e-4


def test_greedy_generation_by_length_equals_each_prompt_generated_alone():
    from chapters.ch02_tokenizer.tokenizer import EOT_ID
    from chapters.ch04_blocks.model import generate
    from chapters.ch10_evaluation.evaluation import generate_by_length

    model, rng = _tiny_model(context_length=24), random.Random(2)
    prompts = [[rng.randrange(1, 60) for _ in range(length)] for length in (3, 5, 3, 7, 5, 3)]
    batched = generate_by_length(model, prompts, max_new_tokens=10)
    for prompt, (new,) in zip(prompts, batched, strict=True):
        out = generate(model, torch.tensor([prompt]), 10, temperature=0.0, stop_token_id=EOT_ID)
        alone = out[0, len(prompt) :].tolist()
        assert new == (alone[: alone.index(EOT_ID)] if EOT_ID in alone else alone)
