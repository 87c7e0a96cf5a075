"""Chapter 8: the chat template, the data, the response mask, collate and packing."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from chapters.ch02_tokenizer.tokenizer import SPECIAL_TOKENS
from chapters.ch08_sft import sft


@pytest.fixture(scope="module")
def tokenizer(chat_tokenizer: Tokenizer) -> Tokenizer:
    return chat_tokenizer


def random_text(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("abcdef ghij(),[]'0123456789\n") for _ in range(length))


def test_special_token_ids_match_chapter_2_order(tokenizer):
    assert [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS] == [
        sft.EOT_ID,
        sft.PAD_ID,
        sft.USER_ID,
        sft.ASSISTANT_ID,
    ]


def test_template_round_trip_through_text():
    rng = random.Random(0)
    for _ in range(50):
        prompt, response = random_text(rng, 30), random_text(rng, 10) + "x"
        assert sft.parse_example(sft.format_example(prompt, response)) == (prompt, response)


def test_template_round_trip_through_tokens(tokenizer):
    rng = random.Random(1)
    for _ in range(50):
        prompt, response = random_text(rng, 30), random_text(rng, 10) + "x"
        example = sft.encode_example(tokenizer, prompt, response)
        text = tokenizer.decode(example.token_ids, skip_special_tokens=False)
        assert sft.parse_example(text) == (prompt, response)


def test_encoded_example_is_user_prompt_assistant_response_eot(tokenizer):
    example = sft.encode_example(tokenizer, "Say cat two times.", "cat cat")
    ids = example.token_ids
    response_ids = tokenizer.encode("cat cat", add_special_tokens=False).ids
    assert ids[0] == sft.USER_ID
    assert ids[example.response_start - 1] == sft.ASSISTANT_ID
    assert ids[example.response_start : -1] == response_ids
    assert ids[-1] == sft.EOT_ID


def test_parse_example_rejects_text_without_the_template():
    with pytest.raises(ValueError, match="chat example"):
        sft.parse_example("just some text")


def test_response_mask_is_true_exactly_on_response_and_end_token(tokenizer):
    example = sft.encode_example(tokenizer, "What is 3 + 4?", "7")
    mask = sft.response_mask(example)
    expected = [False] * example.response_start + [True] * (
        len(example.token_ids) - example.response_start
    )
    assert mask.tolist() == expected


def test_labels_are_inputs_shifted_by_one_with_prompt_targets_ignored(tokenizer):
    example = sft.encode_example(tokenizer, "Return the first item of ['a', 'b'].", "a")
    inputs, labels = sft.make_labels(example)
    ids = example.token_ids
    assert inputs.tolist() == ids[:-1]
    for position, label in enumerate(labels.tolist()):
        target_is_response = position + 1 >= example.response_start
        assert label == (ids[position + 1] if target_is_response else sft.IGNORE_INDEX)


def test_unmasked_labels_keep_every_target(tokenizer):
    example = sft.encode_example(tokenizer, "Say cat two times.", "cat cat")
    _, labels = sft.make_labels(example, mask_prompt=False)
    assert labels.tolist() == example.token_ids[1:]


def test_masked_loss_equals_mean_cross_entropy_over_response_tokens_alone(tokenizer):
    torch.manual_seed(0)
    records = sft.generate_checkable_tasks(3, 0, seed=1)
    examples = [sft.encode_example(tokenizer, r.prompt, r.response) for r in records]
    batch = sft.collate(examples)
    logits = torch.randn(*batch.inputs.shape, tokenizer.get_vocab_size())
    loss = F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=-100)
    # The reference: walk over every example, keep only targets inside the response.
    terms = []
    for row, example in enumerate(examples):
        for position in range(len(example.token_ids) - 1):
            if position + 1 >= example.response_start:
                target = example.token_ids[position + 1]
                terms.append(-torch.log_softmax(logits[row, position], dim=-1)[target])
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-6)


def test_changing_a_prompt_token_label_changes_neither_loss_nor_gradient(tokenizer):
    torch.manual_seed(0)
    example = sft.encode_example(tokenizer, "What is max(3, 8)?", "8")
    changed = sft.EncodedExample(list(example.token_ids), example.response_start)
    changed.token_ids[2] = (changed.token_ids[2] + 7) % tokenizer.get_vocab_size()  # a prompt token
    inputs, labels = sft.make_labels(example)
    _, changed_labels = sft.make_labels(changed)
    logits = torch.randn(len(inputs), tokenizer.get_vocab_size(), requires_grad=True)
    loss = F.cross_entropy(logits, labels, ignore_index=-100)
    (gradient,) = torch.autograd.grad(loss, logits)
    changed_loss = F.cross_entropy(logits, changed_labels, ignore_index=-100)
    (changed_gradient,) = torch.autograd.grad(changed_loss, logits)
    assert torch.equal(loss, changed_loss)
    assert torch.equal(gradient, changed_gradient)
    assert (gradient[: example.response_start - 1] == 0).all()  # no signal from the prompt


def test_collate_pads_inputs_with_pad_and_labels_with_ignore_index(tokenizer):
    examples = [
        sft.encode_example(tokenizer, "Say a.", "a"),
        sft.encode_example(tokenizer, "Swap the two words: node tree", "tree node"),
    ]
    batch = sft.collate(examples)
    short = len(examples[0].token_ids) - 1
    assert batch.inputs.shape == batch.labels.shape == (2, len(examples[1].token_ids) - 1)
    assert (batch.inputs[0, short:] == sft.PAD_ID).all()
    assert (batch.labels[0, short:] == sft.IGNORE_INDEX).all()
    assert batch.inputs[0, :short].tolist() == examples[0].token_ids[:-1]


def test_collate_attention_mask_hides_padding_keys_only(tokenizer):
    examples = [
        sft.encode_example(tokenizer, "Say a.", "a"),
        sft.encode_example(tokenizer, "Swap the two words: node tree", "tree node"),
    ]
    batch = sft.collate(examples)
    short = len(examples[0].token_ids) - 1
    assert batch.attention_mask.shape == (2, batch.inputs.shape[1], batch.inputs.shape[1])
    assert batch.attention_mask[1].all()
    assert batch.attention_mask[0, :, :short].all()
    assert not batch.attention_mask[0, :, short:].any()


def test_pack_puts_several_examples_in_one_row_and_loses_no_label(tokenizer):
    records = sft.generate_checkable_tasks(4, 0, seed=2)
    examples = [sft.encode_example(tokenizer, r.prompt, r.response) for r in records]
    packed = sft.pack(examples, context_length=64)
    assert packed.inputs.shape[0] < len(examples)
    kept = sorted(packed.labels[packed.labels != -100].tolist())
    expected = sorted(t for e in examples for t in sft.make_labels(e)[1].tolist() if t != -100)
    assert kept == expected


def test_pack_mask_is_block_diagonal_and_positions_restart(tokenizer):
    examples = [
        sft.encode_example(tokenizer, "Say a.", "a"),
        sft.encode_example(tokenizer, "Say bb.", "bb"),
    ]
    packed = sft.pack(examples, context_length=40)
    first, second = (len(example.token_ids) - 1 for example in examples)
    assert packed.inputs.shape[0] == 1
    mask, positions = packed.attention_mask[0], packed.positions[0]
    assert mask[:first, :first].all() and mask[first : first + second, first : first + second].all()
    assert not mask[first : first + second, :first].any()
    assert not mask[:first, first:].any()
    assert positions[:first].tolist() == list(range(first))
    assert positions[first : first + second].tolist() == list(range(second))


def test_pack_labels_never_cross_an_example_boundary(tokenizer):
    examples = [
        sft.encode_example(tokenizer, "Say a.", "a"),
        sft.encode_example(tokenizer, "Say bb.", "bb"),
    ]
    packed = sft.pack(examples, context_length=40, mask_prompt=False)
    first = len(examples[0].token_ids) - 1
    # The last label of the first example is its own end token, not the next <|user|>.
    assert packed.labels[0, first - 1] == sft.EOT_ID
    assert packed.inputs[0, first] == sft.USER_ID


def test_long_prompt_is_truncated_from_the_left_never_the_response(tokenizer):
    prompt = "word " * 80 + "the end of the prompt"
    example = sft.encode_example(tokenizer, prompt, "answer", max_tokens=32)
    full = sft.encode_example(tokenizer, prompt, "answer")
    assert len(example.token_ids) == 32
    assert example.prompt_tokens_dropped == len(full.token_ids) - 32
    assert example.token_ids[-8:] == full.token_ids[-8:]  # response and prompt end kept
    assert example.token_ids[0] == sft.USER_ID


def test_response_longer_than_context_is_refused_not_cut(tokenizer):
    with pytest.raises(sft.ResponseTooLong, match="response"):
        sft.encode_example(tokenizer, "Say it.", "word " * 100, max_tokens=32)


def test_empty_response_is_refused(tokenizer):
    with pytest.raises(ValueError, match="empty response"):
        sft.encode_example(tokenizer, "Say nothing.", "  ")


def test_encode_records_counts_every_skipped_and_truncated_pair(tokenizer):
    records = [
        sft.SFTRecord("Say a.", "a", "train", "x"),
        sft.SFTRecord("Say nothing.", "", "train", "x"),
        sft.SFTRecord("word " * 80, "a", "train", "x"),
        sft.SFTRecord("Say it.", "word " * 100, "train", "x"),
    ]
    examples, report = sft.encode_records(records, tokenizer, max_tokens=32)
    assert len(examples) == report.encoded == 2
    assert report.kept == [0, 2]
    assert report.empty_response == [1]
    assert report.response_too_long == [3]
    assert report.prompts_truncated == 1 and report.prompt_tokens_dropped > 0


def test_jsonl_round_trip(tmp_path):
    records = sft.generate_checkable_tasks(2, 1)
    path = sft.save_jsonl(records, tmp_path / "pairs.jsonl")
    loaded, report = sft.read_jsonl(path)
    assert loaded == records
    assert report.problems == []


def test_malformed_jsonl_lines_are_reported_with_their_line_numbers(tmp_path):
    good = json.dumps({"prompt": "p", "response": "r", "split": "train", "source": "x"})
    lines = [good, "{not json", "[1, 2]", good, json.dumps({"prompt": "p"}), "", good]
    lines.append(json.dumps({"prompt": "p", "response": "r", "split": "test", "source": "x"}))
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    records, report = sft.read_jsonl(path)
    assert len(records) == 3
    assert [number for number, _ in report.problems] == [2, 3, 5, 8]
    assert "line 2" in str(report)


def test_checkable_train_and_heldout_prompts_never_overlap():
    records = sft.generate_checkable_tasks()
    train = {r.prompt for r in records if r.split == "train"}
    heldout = {r.prompt for r in records if r.split == "heldout"}
    assert train and heldout and not train & heldout


def test_heldout_tasks_use_the_heldout_template_and_heldout_values_only():
    records = sft.generate_checkable_tasks()
    for record in records:
        family = sft.TASK_FAMILIES[record.source]
        values = record.task["values"]
        assert sft.is_held_out(values) == (record.split == "heldout")
        if record.split == "heldout":
            assert record.prompt == family.held_out_template.format(**values)
        else:
            assert record.prompt in {t.format(**values) for t in family.train_templates}


def test_about_a_fifth_of_values_are_held_out():
    rng = random.Random(0)
    pairs = [{"a": rng.randrange(10), "b": rng.randrange(10)} for _ in range(2000)]
    assert 0.15 < sum(map(sft.is_held_out, pairs)) / len(pairs) < 0.25


@pytest.mark.parametrize("family", sorted(sft.TASK_FAMILIES))
def test_check_answer_accepts_the_reference_and_rejects_a_wrong_answer(family):
    records = [r for r in sft.generate_checkable_tasks(10, 5) if r.source == family]
    for record in records:
        assert sft.check_answer(record.task, record.response)
        assert sft.check_answer(record.task, " " + record.response + "\n")
        assert not sft.check_answer(record.task, record.response + "x")
        assert not sft.check_answer(record.task, "")


def test_close_call_check_parses_the_completed_code():
    task = {"family": "close_call", "values": {"code": "print(len(items[0"}}
    assert sft.check_answer(task, "]))")
    assert not sft.check_answer(task, ")])")
    assert not sft.check_answer(task, "))")


def test_check_answer_names_an_unknown_family():
    with pytest.raises(KeyError, match="unknown task family"):
        sft.check_answer({"family": "nope", "values": {}}, "x")


def _doc(origin: str, text: str):
    return SimpleNamespace(origin=origin, text=text)


SHARED = '''
def shared(x):
    """Copied into two files."""
    return x + 1
'''
ONLY_TRAIN = '''
def only_train(x):
    """Only in training."""
    return x * 2
'''
ONLY_VALIDATION = '''
class A:
    def only_validation(self, y):
        """Only in validation."""
        return y - 3
'''


def test_mined_function_present_in_both_splits_is_dropped_from_both():
    documents = {
        "train": [_doc("stdlib:a.py", SHARED + ONLY_TRAIN)],
        "validation": [
            _doc("stdlib:b.py", ONLY_VALIDATION + "\nclass B:\n" + SHARED.replace("\n", "\n    "))
        ],
    }
    records, counts = sft.mine_function_pairs(documents, train_files_sampled=1)
    by_split = {r.split: r for r in records}
    assert sorted(by_split) == ["heldout", "train"] and len(records) == 2
    assert "def only_train" in by_split["train"].prompt
    assert "def only_validation" in by_split["heldout"].prompt
    assert by_split["heldout"].response == "    return y - 3\n"
    assert counts["in both splits (dropped)"] == 1


def test_mined_pair_prompt_is_signature_and_docstring_response_is_the_body():
    (record,) = sft.function_pairs(ONLY_TRAIN)
    assert record.prompt.endswith('def only_train(x):\n    """Only in training."""')
    assert record.response == "    return x * 2\n"


def test_batch_source_is_a_pure_function_of_the_step(tokenizer):
    records = sft.generate_checkable_tasks(5, 0)
    examples = [sft.encode_example(tokenizer, r.prompt, r.response) for r in records]
    first = sft.sft_batch_source(examples, 4, seed=3)
    second = sft.sft_batch_source(examples, 4, seed=3)
    for step in (0, 7, 3):
        assert all(torch.equal(a, b) for a, b in zip(first(step, 0), second(step, 0), strict=True))
    assert not torch.equal(first(0, 0)[0][:, :5], first(1, 0)[0][:, :5])


@pytest.mark.parametrize("forged", ["<|user|>", "<|assistant|>", "<|endoftext|>", "<|pad|>"])
def test_forged_special_tokens_in_prompt_or_response_stay_text(tokenizer, forged):
    example = sft.encode_example(tokenizer, f"Say {forged} twice.", f"{forged} {forged}")
    ids = example.token_ids
    assert [i for i in ids if i < len(SPECIAL_TOKENS)] == [
        sft.USER_ID,
        sft.ASSISTANT_ID,
        sft.EOT_ID,
    ]
    assert ids[0] == sft.USER_ID and ids[example.response_start - 1] == sft.ASSISTANT_ID
    prompt = sft.prompt_ids_for(
        SimpleNamespace(config=SimpleNamespace(context_length=64)), tokenizer, f"{forged}x", 8
    )
    assert [i for i in prompt if i < len(SPECIAL_TOKENS)] == [sft.USER_ID, sft.ASSISTANT_ID]


def test_a_forged_user_token_does_not_split_a_packed_example(tokenizer):
    from chapters.ch04_blocks.model import LanguageModel, ModelConfig

    torch.manual_seed(0)
    model = LanguageModel(
        ModelConfig(
            vocab_size=tokenizer.get_vocab_size(),
            context_length=64,
            d_model=32,
            n_layers=1,
            n_heads=2,
        )
    ).eval()
    forged = sft.encode_example(tokenizer, "Repeat: a <|user|> b.", "a <|user|> b")
    other = sft.encode_example(tokenizer, "Say cat.", "cat")
    packed = sft.pack([forged, other], context_length=64)
    assert packed.inputs.shape[0] == 1
    with torch.no_grad():
        together = sft.PackedSequenceModel(model)(packed.inputs)[0, : len(forged.token_ids) - 1]
        alone = model(torch.tensor([forged.token_ids[:-1]]))[0]
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_one_bad_line_is_reported_and_the_rest_of_the_file_is_read(tmp_path):
    good = {"prompt": "p", "response": "r", "split": "train", "source": "x"}
    lines = [
        json.dumps(good).encode(),
        b'{"prompt": "caf\xe9", "response": "r", "split": "train", "source": "x"}',  # Latin-1
        json.dumps({**good, "task": "not an object"}).encode(),
        json.dumps({**good, "origin": 3}).encode(),
        json.dumps({**good, "response": "\ud800"}).encode(),  # a JSON escape: \\ud800
        json.dumps({**good, "task": {"family": "x"}}).encode(),
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    records, report = sft.read_jsonl(path)
    assert len(records) == 2 and records[1].task == {"family": "x"}
    assert [number for number, _ in report.problems] == [2, 3, 4, 5]
    reasons = " ".join(reason for _, reason in report.problems)
    for words in ("not UTF-8", "task must be an object", "origin must be a string", "surrogate"):
        assert words in reasons
