# Generated from chapters/ch10_evaluation/ch10_evaluation.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""Chapter 10: evaluating every checkpoint of the course on one suite, as harnesses do.

The story, top to bottom: the checkpoints to compare (one dict entry each) and a check that
they speak the course tokenizer; perplexity and bits per byte on held-out text; multiple-choice
items (code from held-out files, and chapter 8's held-out tasks in the chat format) scored by
log-likelihood with the context/continuation boundary tokenized as lm-evaluation-harness does,
read from and written to JSONL with every bad item named; generative tasks (exact match on
chapter 8's held-out tasks, syntax validity of generated code, pass@k with the unbiased
estimator); a contamination check against the training split with chapter 1's shingles;
bootstrap intervals, paired differences with p-values and Holm-Bonferroni; and a report
(markdown tables plus figures) written atomically.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import io
import json
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from chapters.ch01_data.data_pipeline import CleanDocument, word_shingles
from chapters.ch02_tokenizer.tokenizer import EOT_ID, encode_text
from chapters.course import atomic_write


class EvaluationError(ValueError):
    """An evaluation input the suite cannot use; the message names the item or file."""


@dataclass(frozen=True)
class Checkpoint:
    """One model of the course: a name for the report and the `ensure_...` function (module
    and attribute) that returns it, loading it from the artifacts or rebuilding it."""

    name: str
    module: str
    loader: str


# The models the report compares, name -> "module:ensure_function". Adding a model is one
# line; one whose chapter or function does not exist yet is listed as unavailable, not an error.
CHECKPOINTS: dict[str, str] = {
    "base": "chapters.ch06_pretraining.trainer:ensure_base_model",
    "sft": "chapters.ch08_sft.sft:ensure_sft_model",
    "dpo": "chapters.ch09_alignment.alignment:ensure_dpo_model",
    "rlhf": "chapters.ch09_alignment.alignment:ensure_rlhf_model",
    "RL (checker)": "chapters.ch09_alignment.alignment:ensure_rl_checker_model",
    "expert iteration": "chapters.ch09_alignment.alignment:ensure_expert_iteration_model",
}


def parse_checkpoints(checkpoints: Mapping[str, str]) -> list[Checkpoint]:
    """`{name: "module:function"}` as `Checkpoint`s, in the dict's order."""
    parsed = []
    for name, spec in checkpoints.items():
        module, _, loader = spec.partition(":")
        if not module or not loader:
            raise EvaluationError(f"checkpoint {name!r}: {spec!r} is not 'module:function'")
        parsed.append(Checkpoint(name, module, loader))
    return parsed


def checkpoint_loader(checkpoint: Checkpoint) -> tuple[Callable[[], torch.nn.Module] | None, str]:
    """(the checkpoint's `ensure_...` function, "") or (None, why it is not available).

    A chapter that is missing, or still being written and failing to import, makes its
    checkpoint unavailable; the reason goes into the report instead of stopping the suite.
    """
    try:
        if importlib.util.find_spec(checkpoint.module) is None:
            return None, f"{checkpoint.module} does not exist yet"
        module = importlib.import_module(checkpoint.module)
    except ModuleNotFoundError:  # the parent package (the chapter folder) is missing
        return None, f"{checkpoint.module} does not exist yet"
    except Exception as error:  # a chapter under construction must not break this one
        return None, f"{checkpoint.module} failed to import ({type(error).__name__}: {error})"
    loader = getattr(module, checkpoint.loader, None)
    if loader is None:
        return None, f"{checkpoint.module} has no {checkpoint.loader}() yet"
    return loader, ""


def available_checkpoints(
    checkpoints: Mapping[str, str] = CHECKPOINTS,
) -> tuple[list[Checkpoint], list[tuple[Checkpoint, str]]]:
    """(checkpoints that can be loaded, [(checkpoint, why not) for the others])."""
    present, missing = [], []
    for checkpoint in parse_checkpoints(checkpoints):
        loader, reason = checkpoint_loader(checkpoint)
        if loader is None:
            missing.append((checkpoint, reason))
        else:
            present.append(checkpoint)
    return present, missing


def load_checkpoints(
    tokenizer, checkpoints: Mapping[str, str] = CHECKPOINTS
) -> tuple[dict[str, torch.nn.Module], list[tuple[Checkpoint, str]]]:
    """({name: model in eval mode}, [(checkpoint, why not) for those that cannot be loaded]).

    A chapter whose `ensure_...` fails (it is still being written, say) is reported, not
    fatal. A model trained with another tokenizer is fatal: it is a wrong input, not a gap.
    """
    models, missing = {}, []
    for checkpoint in parse_checkpoints(checkpoints):
        loader, reason = checkpoint_loader(checkpoint)
        if loader is None:
            missing.append((checkpoint, reason))
            continue
        try:
            model = loader()
        except Exception as error:
            missing.append(
                (checkpoint, f"{checkpoint.loader}() failed ({type(error).__name__}: {error})")
            )
            continue
        check_tokenizer_matches(
            model, tokenizer, f"checkpoint {checkpoint.name!r} ({checkpoint.loader})"
        )
        models[checkpoint.name] = model.eval()
    return models, missing


def check_tokenizer_matches(model: torch.nn.Module, tokenizer, where: str) -> None:
    """Raise if `model` was not trained with `tokenizer`: its vocabulary size must be the
    tokenizer's, or every id means a different string and every score is meaningless."""
    model_vocab = model.config.vocab_size
    tokenizer_vocab = tokenizer.get_vocab_size()
    if model_vocab != tokenizer_vocab:
        raise EvaluationError(
            f"{where}: the model has a vocabulary of {model_vocab} ids but the tokenizer has "
            f"{tokenizer_vocab}; this checkpoint was trained with a different tokenizer. "
            "Evaluate it with its own tokenizer, or compare models by bits per byte."
        )


def load_checkpoint_folder(folder: str | Path, tokenizer, tokenizer_file: str | Path | None = None):
    """A model saved with `save_pretrained`, after checking it uses `tokenizer`.

    If the folder carries its own `tokenizer.json`, it must be byte-identical to
    `tokenizer_file` (the tokenizer the suite encodes with).
    """
    from chapters.ch04_blocks.model import LanguageModel
    from chapters.course import sha256_of

    folder = Path(folder)
    model = LanguageModel.from_pretrained(folder)
    check_tokenizer_matches(model, tokenizer, str(folder / "config.json"))
    own = folder / "tokenizer.json"
    if own.is_file() and tokenizer_file is not None and sha256_of(own) != sha256_of(tokenizer_file):
        raise EvaluationError(
            f"{own} differs from the suite's tokenizer {tokenizer_file}: the checkpoint was "
            "trained with another tokenizer, so its token ids mean other strings."
        )
    return model


LN_2 = math.log(2.0)


def bits_per_byte(total_nll_nats: float, total_bytes: int) -> float:
    """Summed token negative log-likelihood (nats) over the text's UTF-8 byte count, in bits.

    Dividing by bytes instead of tokens removes the tokenizer from the unit: a model with a
    coarser tokenizer predicts fewer, harder tokens, but the same bytes.
    """
    if total_bytes <= 0:
        raise EvaluationError(f"total_bytes = {total_bytes}; bits per byte needs some text")
    return total_nll_nats / (total_bytes * LN_2)


@dataclass
class HeldOutScore:
    """Summed NLL (nats) of a held-out text, with its token and byte counts."""

    nll: float
    tokens: int
    bytes: int

    @property
    def perplexity(self) -> float:
        """exp(mean NLL per token): depends on the tokenizer."""
        return math.exp(self.nll / self.tokens)

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nll, self.bytes)


def document_windows(token_ids: Sequence[int], context: int) -> list[list[int]]:
    """A document cut into windows of `context` + 1 tokens that overlap by one token: each
    window predicts its tokens after the first, so every token after the document's first is
    predicted exactly once."""
    ids = list(token_ids)
    return [ids[start : start + context + 1] for start in range(0, max(len(ids) - 1, 0), context)]


def right_padded(rows: Sequence[Sequence[int]], fill: int) -> torch.Tensor:
    """Rows of token ids as one (B, longest) tensor, filled with `fill` after each row's end.

    The models are causal: position t attends to positions <= t only, so whatever follows a
    row's real tokens changes none of their logits, and one forward pass scores many rows."""
    batch = torch.full((len(rows), max(len(row) for row in rows)), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        batch[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return batch


@torch.inference_mode()
def window_nlls(
    model: torch.nn.Module, windows: Sequence[Sequence[int]], batch_size: int = 32
) -> list[float]:
    """Summed NLL (nats) of each window's tokens after its first, `batch_size` windows per
    forward pass (a tiny model on a CPU spends most of a one-window pass on overhead)."""
    nlls: list[float] = []
    for start in range(0, len(windows), batch_size):
        batch = right_padded(windows[start : start + batch_size], fill=-100)  # (B, T + 1)
        logits = model(batch[:, :-1].clamp(min=0))  # padding fed as id 0, after the real ids
        # -100 is cross_entropy's ignore_index: padded targets add 0 to a window's sum
        losses = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
        nlls += losses.sum(dim=1).tolist()
    return nlls


def document_nll(model: torch.nn.Module, token_ids: Sequence[int]) -> float:
    """Summed NLL (nats) of every token of a document after the first (`document_windows`)."""
    return sum(window_nlls(model, document_windows(token_ids, model.config.context_length)))


def held_out_scores(
    model: torch.nn.Module,
    tokenizer,
    documents: Iterable[CleanDocument],
    max_tokens: int = 40_000,
    batch_size: int = 32,
) -> list[HeldOutScore]:
    """One score per held-out document, each starting after `<|endoftext|>` as in training,
    until about `max_tokens` tokens are scored. Bytes count the document's UTF-8 text.
    Per-document scores let the bootstrap resample documents, as it resamples items. The
    windows of all documents go through the model together, `batch_size` at a time."""
    model.eval()
    encoded, tokens = [], 0
    for document in documents:
        ids = [EOT_ID, *encode_text(tokenizer, document.text)]
        encoded.append((ids, len(document.text.encode())))
        tokens += len(ids) - 1
        if tokens >= max_tokens:
            break
    if tokens == 0:
        raise EvaluationError("no held-out tokens were scored: the documents were empty")
    context = model.config.context_length
    windows = [document_windows(ids, context) for ids, _ in encoded]
    nlls = iter(window_nlls(model, [w for mine in windows for w in mine], batch_size))
    return [
        HeldOutScore(sum(next(nlls) for _ in mine), len(ids) - 1, n_bytes)
        for mine, (ids, n_bytes) in zip(windows, encoded, strict=True)
    ]


def total_score(scores: Iterable[HeldOutScore]) -> HeldOutScore:
    """The documents' scores added up: bits per byte of all their text together."""
    total = HeldOutScore(0.0, 0, 0)
    for score in scores:
        total.nll, total.tokens, total.bytes = (
            total.nll + score.nll,
            total.tokens + score.tokens,
            total.bytes + score.bytes,
        )
    return total


@dataclass
class MultipleChoiceItem:
    """One item: a context, candidate continuations, and the index of the right one.

    `chat=True`: the context is a user's prompt and each choice an assistant's answer; they
    are scored in chapter 8's chat template, built from its special ids (`encode_choice`),
    each choice followed by `<|endoftext|>`, so a model is also scored on stopping."""

    id: str
    task: str
    context: str
    choices: list[str]
    answer: int
    chat: bool = False

    def validate(self, where: str = "") -> None:
        """Raise EvaluationError, naming the item (and `where` it came from), if malformed."""
        name = f"{where}item {self.id!r}" if where else f"item {self.id!r}"
        if not isinstance(self.context, str) or not self.context:
            raise EvaluationError(f"{name}: 'context' must be a non-empty string")
        if (
            not isinstance(self.choices, list)
            or len(self.choices) < 2
            or not all(isinstance(c, str) and c for c in self.choices)
        ):
            raise EvaluationError(f"{name}: 'choices' must be a list of 2+ non-empty strings")
        if len(set(self.choices)) != len(self.choices):
            raise EvaluationError(f"{name}: two choices are identical, so the item is ambiguous")
        if (
            isinstance(self.answer, bool)
            or not isinstance(self.answer, int)
            or not 0 <= self.answer < len(self.choices)
        ):
            raise EvaluationError(
                f"{name}: answer index {self.answer!r} is out of range for "
                f"{len(self.choices)} choices (valid: 0 to {len(self.choices) - 1})"
            )


ITEM_FIELDS = ("id", "task", "context", "choices", "answer")


def item_from_dict(record: object, where: str = "") -> MultipleChoiceItem:
    """A validated item from a JSON object; errors name the item and `where` it came from."""
    if not isinstance(record, dict):
        raise EvaluationError(f"{where}expected a JSON object, got {type(record).__name__}")
    missing = [name for name in ITEM_FIELDS if name not in record]
    if missing:
        raise EvaluationError(
            f"{where}item {record.get('id', '<no id>')!r} is missing {', '.join(missing)}; "
            f"every item needs {', '.join(ITEM_FIELDS)}"
        )
    item = MultipleChoiceItem(**{name: record[name] for name in ITEM_FIELDS})
    chat = record.get("chat", False)
    if not isinstance(chat, bool):
        raise EvaluationError(f"{where}item {item.id!r}: 'chat' must be true or false")
    item.chat = chat
    item.validate(where)
    return item


def save_items(items: Iterable[MultipleChoiceItem], path: str | Path) -> Path:
    """Write items as JSONL, atomically."""
    with atomic_write(path) as file:
        for item in items:
            file.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")
    return Path(path)


def load_items(path: str | Path) -> list[MultipleChoiceItem]:
    """Read a JSONL file of items; the first bad line stops with an error naming the file,
    the line and the item, since a silently skipped item would change every accuracy."""
    path = Path(path)
    items, seen = [], set()
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}: "
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise EvaluationError(f"{where}not valid JSON ({error})") from error
            item = item_from_dict(record, where)
            if item.id in seen:
                raise EvaluationError(
                    f"{where}item id {item.id!r} appears twice; ids must be unique"
                )
            seen.add(item.id)
            items.append(item)
    return items


def _python_documents(documents: Iterable[CleanDocument]) -> list[CleanDocument]:
    return [d for d in documents if d.origin.endswith(".py")]


def _shuffled_choices(
    correct: str, distractors: list[str], rng: random.Random
) -> tuple[list[str], int]:
    choices = [correct, *distractors]
    rng.shuffle(choices)
    return choices, choices.index(correct)


def next_line_items(
    documents: Iterable[CleanDocument],
    n_items: int = 100,
    n_choices: int = 4,
    context_lines: int = 6,
    seed: int = 0,
) -> list[MultipleChoiceItem]:
    """ "Which line comes next?": a few lines of held-out code, the true next line and
    `n_choices - 1` lines drawn from other files. Chance is 1 / n_choices."""
    rng = random.Random(seed)
    files = [d.text.split("\n") for d in _python_documents(documents)]
    usable = lambda line: 12 <= len(line.strip()) <= 80 and not line.strip().startswith("#")  # noqa: E731
    pool = [(i, line) for i, lines in enumerate(files) for line in lines if usable(line)]
    items: list[MultipleChoiceItem] = []
    for _attempt in range(n_items * 50):
        if len(items) == n_items:
            break
        file_index = rng.randrange(len(files))
        lines = files[file_index]
        if len(lines) <= context_lines + 1:
            continue
        at = rng.randrange(context_lines, len(lines))
        correct = lines[at]
        if not usable(correct):
            continue
        distractors: list[str] = []
        while len(distractors) < n_choices - 1:
            other_file, line = rng.choice(pool)
            if other_file != file_index and line not in distractors and line != correct:
                distractors.append(line)
        choices, answer = _shuffled_choices(correct + "\n", [d + "\n" for d in distractors], rng)
        context = "\n".join(lines[at - context_lines : at]) + "\n"
        items.append(
            MultipleChoiceItem(f"next_line-{len(items)}", "next_line", context, choices, answer)
        )
    return items


def _documented_functions(text: str) -> list[tuple[str, str]]:
    """(signature line, first docstring line) of every function with a one-line summary."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    lines = text.split("\n")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.body:
            docstring = ast.get_docstring(node)
            signature = lines[node.lineno - 1]
            if docstring and signature.rstrip().endswith(":") and not node.name.startswith("__"):
                summary = docstring.strip().split("\n")[0].strip()
                if 10 <= len(summary) <= 80:
                    found.append((signature.strip(), summary))
    return found


def docstring_items(
    documents: Iterable[CleanDocument], n_items: int = 100, n_choices: int = 4, seed: int = 0
) -> list[MultipleChoiceItem]:
    """ "Which docstring belongs to this function?": a held-out function's signature, its own
    docstring summary and summaries of `n_choices - 1` other functions. Chance 1 / n_choices."""
    rng = random.Random(seed)
    functions = [
        pair for d in _python_documents(documents) for pair in _documented_functions(d.text)
    ]
    rng.shuffle(functions)
    summaries = sorted({summary for _, summary in functions})
    items: list[MultipleChoiceItem] = []
    for signature, summary in functions[:n_items]:
        distractors = rng.sample([s for s in summaries if s != summary], n_choices - 1)
        continuations = [f"{s}\n" for s in distractors]
        choices, answer = _shuffled_choices(f"{summary}\n", continuations, rng)
        context = f'{signature}\n    """'
        items.append(
            MultipleChoiceItem(f"docstring-{len(items)}", "docstring", context, choices, answer)
        )
    return items


def task_choice_items(records: Sequence, seed: int = 0) -> list[MultipleChoiceItem]:
    """Multiple choice on chapter 8's checkable tasks, in the chat format the fine-tuned
    models were trained with: the right response against three the checker rejects (another
    task's answer, the answer with a stray period, the answer said twice). The items are
    chat items: every choice is scored followed by `<|endoftext|>`, so a model is also scored
    on stopping. Chance is 1/4."""
    from chapters.ch08_sft.sft import check_answer

    rng = random.Random(seed)
    items: list[MultipleChoiceItem] = []
    for record in records:
        right = record.response
        others = [r.response for r in records if r.source == record.source]
        rejected = [a for a in others if not check_answer(record.task, a)]
        if not rejected:
            continue
        wrong = [rng.choice(rejected), right.rstrip() + ".", f"{right} {right.strip()}"]
        if any(check_answer(record.task, w) for w in wrong) or len({right, *wrong}) < 4:
            continue  # a distractor the checker accepts would make the item ambiguous
        choices, answer = _shuffled_choices(right, wrong, rng)
        name = f"task-{len(items)}"
        items.append(
            MultipleChoiceItem(name, "task choice", record.prompt, choices, answer, chat=True)
        )
    return items


def move_trailing_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """(context without its trailing whitespace, that whitespace + continuation).

    BPE merges a newline with the indentation after it ("\\n    " is one token), so a context
    that ends in whitespace ends in a token the model would never see before that text. As
    lm-evaluation-harness does, the whitespace moves into the continuation, where the
    tokenizer can merge it with what follows.
    """
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + continuation


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness encodes them: the trailing
    whitespace moved over, the two encoded *together*, the continuation being the tokens
    after the context's own encoding, so the boundary is tokenized as in running text."""
    context, continuation = move_trailing_whitespace(context, continuation)
    context_ids = encode_text(tokenizer, context)
    whole_ids = encode_text(tokenizer, context + continuation)
    return context_ids, whole_ids[len(context_ids) :]


def encode_choice(tokenizer, item: MultipleChoiceItem, choice: str) -> tuple[list[int], list[int]]:
    """(context ids, choice ids) of one choice: `encode_pair` for text, and for a chat item
    `<|user|>` prompt `<|assistant|>` and the answer + `<|endoftext|>`, from the special ids
    (chapter 8's `chat_prompt_ids`), never from special-token strings in the text."""
    from chapters.ch08_sft.sft import chat_prompt_ids

    if not item.chat:
        return encode_pair(tokenizer, item.context, choice)
    return chat_prompt_ids(tokenizer, item.context), [*encode_text(tokenizer, choice), EOT_ID]


@torch.inference_mode()
def pair_loglikelihoods(
    model: torch.nn.Module,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 64,
) -> list[float]:
    """Summed log-probability of each (context ids, continuation ids) pair's continuation.

    Each context is cut from the left so that context + continuation fits the model's window
    (as lm-evaluation-harness does); only continuation tokens are scored. The pairs go through
    the model `batch_size` at a time, right-padded (`right_padded`), sorted by length so
    that a batch pads little; the scores come back in the pairs' order.
    """
    window = model.config.context_length + 1
    rows, spans = [], []
    for context_ids, continuation in pairs:
        if not continuation:
            raise EvaluationError("a continuation encodes to zero tokens; nothing to score")
        rows.append([*context_ids, *continuation][-window:])
        spans.append(len(continuation))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    scores = [0.0] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = right_padded([rows[i] for i in chunk], fill=0)  # (B, W)
        logits = model(batch[:, :-1])  # (B, W - 1, V)
        for b, i in enumerate(chunk):
            end, span = len(rows[i]), spans[i]
            # the logits at end - span - 1 ... end - 2 predict the continuation's tokens
            log_probs = logits[b, end - span - 1 : end - 1].log_softmax(dim=-1)  # (span, V)
            scores[i] = float(log_probs.gather(1, batch[b, end - span : end, None]).sum())
    return scores


def continuation_logprobs(
    model: torch.nn.Module, context_ids: Sequence[int], continuations: Sequence[Sequence[int]]
) -> list[float]:
    """Summed log-probability of each continuation's tokens after one shared context."""
    return pair_loglikelihoods(model, [(context_ids, c) for c in continuations])


def choose(loglikelihoods: Sequence[float], byte_lengths: Sequence[int], normalised: bool) -> int:
    """Index of the best choice: highest log-likelihood, or highest per byte of the choice,
    which stops long choices from losing by length (lm-evaluation-harness's `acc_norm`
    divides by characters; for ASCII code the two are the same)."""
    if normalised:
        scores = [ll / n for ll, n in zip(loglikelihoods, byte_lengths, strict=True)]
    else:
        scores = list(loglikelihoods)
    return int(np.argmax(scores))


def score_multiple_choice(
    model, tokenizer, items: Sequence[MultipleChoiceItem], batch_size: int = 64
) -> list[dict]:
    """One row per item: its task, the log-likelihoods and whether the raw and the
    length-normalised choice is right. Context and choice are encoded together
    (`encode_pair`), so the boundary between them is tokenized as in running text. Every
    item's choices are scored together, `batch_size` (context, choice) pairs per forward."""
    model.eval()
    pairs = []
    for item in items:
        for choice in item.choices:
            context_ids, choice_ids = encode_choice(tokenizer, item, choice)
            pairs.append(([EOT_ID, *context_ids], choice_ids))
    scores = iter(pair_loglikelihoods(model, pairs, batch_size))
    rows = []
    for item in items:
        loglikelihoods = [next(scores) for _ in item.choices]
        lengths = [len(c.encode("utf-8")) for c in item.choices]
        rows.append(
            {
                "id": item.id,
                "task": item.task,
                "loglikelihoods": loglikelihoods,
                "correct_raw": choose(loglikelihoods, lengths, False) == item.answer,
                "correct_norm": choose(loglikelihoods, lengths, True) == item.answer,
            }
        )
    return rows


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c are correct (Chen et al. 2021):
    1 - C(n - c, k) / C(n, k), computed as a product so that large n never overflows."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise EvaluationError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every set of k samples contains a correct one
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@torch.inference_mode()
def generate_by_length(
    model,
    prompts: Sequence[Sequence[int]],
    n: int = 1,
    max_new_tokens: int = 24,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[list[list[int]]]:
    """`n` generated continuations (token ids, cut before `<|endoftext|>`) of each prompt.

    Chapter 4's `generate` takes no padding, so prompts of the same token length go through
    as one batch, with their `n` samples as rows of it: a few hundred prompts of a few dozen
    lengths need a few dozen calls instead of one each. Greedy rows are those the prompt
    alone would give; sampled rows draw from one generator, in a different order.
    """
    from chapters.ch04_blocks.model import generate

    by_length: dict[int, list[int]] = {}
    for index, ids in enumerate(prompts):
        by_length.setdefault(len(ids), []).append(index)
    generator = torch.Generator().manual_seed(seed)
    generated: list[list[list[int]]] = [[] for _ in prompts]
    for length, indices in by_length.items():
        rows = [i for i in indices for _ in range(n)]
        out = generate(
            model,
            torch.tensor([list(prompts[i]) for i in rows]),
            max_new_tokens,
            temperature=temperature,
            generator=generator,
            stop_token_id=EOT_ID,
        )
        for i, new in zip(rows, out[:, length:].tolist(), strict=True):
            generated[i].append(new[: new.index(EOT_ID)] if EOT_ID in new else new)
    return generated


def chat_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    n: int = 1,
    max_new_tokens: int = 24,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[list[str]]:
    """`n` answers to each chat prompt (greedy at temperature 0), each cut at `<|endoftext|>`:
    chapter 8's `sample_groups`, which builds the prompt as training did and batches prompts
    of the same length (the held-out tasks share one template per family)."""
    from chapters.ch08_sft.sft import response_text, sample_groups

    generator = torch.Generator().manual_seed(seed)
    groups = sample_groups(model, tokenizer, prompts, n, max_new_tokens, temperature, generator)
    return [[response_text(tokenizer, sample) for sample in group] for group in groups]


def evaluate_checkable_tasks(
    model,
    tokenizer,
    records: Sequence,
    n_samples: int = 5,
    ks: Sequence[int] = (1, 5),
    seed: int = 0,
) -> list[dict]:
    """Chapter 8's held-out tasks: greedy exact match, and pass@k from `n_samples` samples."""
    from chapters.ch08_sft.sft import check_answer

    prompts = [record.prompt for record in records]
    greedy = chat_responses(model, tokenizer, prompts)
    samples = chat_responses(model, tokenizer, prompts, n_samples, temperature=0.8, seed=seed)
    rows = []
    for index, record in enumerate(records):
        correct = sum(check_answer(record.task, answer) for answer in samples[index])
        row = {"id": f"{record.source}-{index}", "family": record.source, "prompt": record.prompt}
        row["greedy_correct"] = check_answer(record.task, greedy[index][0])
        row.update({f"pass@{k}": pass_at_k(n_samples, correct, k) for k in ks})
        rows.append(row)
    return rows


def function_body(generated: str) -> str:
    """The part of a generation that belongs to the function being written: complete lines
    only (a generation cut by the token limit ends mid-line), up to the first non-blank line
    that is not indented (the function has ended; HumanEval cuts at such stop sequences too)."""
    complete = generated[: generated.rfind("\n") + 1] if "\n" in generated else ""
    kept = []
    for line in complete.split("\n"):
        if line.strip() and not line.startswith((" ", "\t")):
            break
        kept.append(line)
    return "\n".join(kept).rstrip() + "\n" if any(line.strip() for line in kept) else ""


def is_valid_python(source: str) -> bool:
    """Whether `source` parses (`ast.parse`); says nothing about whether it runs."""
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


def syntax_validity(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[bool]:
    """For each code prompt (a function header and docstring), generate a body and check that
    prompt + the generated body (`function_body`) parses. An empty body counts as invalid.

    The model sees the prompt cut before its trailing newline (`move_trailing_whitespace`):
    the newline and the indentation after it are one token, which the model must write
    itself. A generation that does not start a new line has written no body. Prompts of the
    same token length are generated together (`generate_by_length`).
    """
    contexts = [move_trailing_whitespace(prompt, "")[0] for prompt in prompts]
    encoded = [[EOT_ID, *encode_text(tokenizer, c)] for c in contexts]
    generated = generate_by_length(model, encoded, 1, max_new_tokens, temperature, seed)
    valid = []
    for prompt, context, (new,) in zip(prompts, contexts, generated, strict=True):
        text = context + tokenizer.decode(new, skip_special_tokens=True)
        body = function_body(text[len(prompt) :]) if text.startswith(prompt) else ""
        valid.append(bool(body) and is_valid_python(prompt + body))
    return valid


def code_prompts(
    documents: Iterable[CleanDocument], n_prompts: int = 30, seed: int = 0
) -> list[str]:
    """Function headers with their one-line docstring from held-out files, as code prompts."""
    rng = random.Random(seed)
    functions = [
        pair for d in _python_documents(documents) for pair in _documented_functions(d.text)
    ]
    rng.shuffle(functions)
    return [f'{signature}\n    """{summary}"""\n' for signature, summary in functions[:n_prompts]]


def contamination(
    item_texts: dict[str, str], training_documents: Iterable[CleanDocument], n: int = 8
) -> dict[str, float]:
    """For each eval item, the fraction of its word n-grams (chapter 1's `word_shingles`)
    that also occur somewhere in the training documents.

    The items' n-grams are collected once; every training document is shingled and
    intersected with them, so the training split is streamed, never held in memory.
    """
    item_ngrams = {item_id: word_shingles(text, n) for item_id, text in item_texts.items()}
    wanted = set().union(*item_ngrams.values()) if item_ngrams else set()
    found: set[str] = set()
    for document in training_documents:
        found |= wanted & word_shingles(document.text, n)
    return {
        item_id: (len(ngrams & found) / len(ngrams) if ngrams else 0.0)
        for item_id, ngrams in item_ngrams.items()
    }


def contaminated_items(overlap: dict[str, float], threshold: float = 0.5) -> list[str]:
    """Ids of items whose n-gram overlap with the training data reaches `threshold`."""
    return sorted(item_id for item_id, fraction in overlap.items() if fraction >= threshold)


def _resampled_means(
    values: np.ndarray, weights: np.ndarray, n_resamples: int, seed: int
) -> np.ndarray:
    """The weighted mean of `values` over `n_resamples` resamples of the items."""
    index = np.random.default_rng(seed).integers(0, values.size, size=(n_resamples, values.size))
    return (values[index] * weights[index]).sum(axis=1) / weights[index].sum(axis=1)


def bootstrap_interval(
    outcomes: Sequence[float],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    weights: Sequence[float] | None = None,
) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean of `outcomes`
    (resample items with replacement, recompute the mean, take the middle `confidence`).

    `weights` makes it a weighted mean: per-document bits per byte weighted by each
    document's bytes is the bits per byte of all the text together."""
    values = np.asarray(outcomes, dtype=float)
    if values.size == 0:
        raise EvaluationError("no outcomes to bootstrap: the task has no items")
    w = np.ones_like(values) if weights is None else np.asarray(weights, dtype=float)
    means = _resampled_means(values, w, n_resamples, seed)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float((values * w).sum() / w.sum()), float(low), float(high)


@dataclass(frozen=True)
class PairedDifference:
    """mean(a) - mean(b) on the same items, its bootstrap interval and two-sided p-value."""

    diff: float
    low: float
    high: float
    p_value: float

    @property
    def significant(self) -> bool:  # at the interval's confidence, before any correction
        return self.low > 0 or self.high < 0


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    weights: Sequence[float] | None = None,
) -> PairedDifference:
    """The difference of two models on the same items, the items resampled together.

    Pairing removes the item-difficulty noise that two separate intervals would both carry.
    The p-value is twice the smaller share of resampled differences on either side of 0
    (capped at 1): how often a resample contradicts the sign of the difference.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise EvaluationError(
            f"paired outcomes must cover the same items; got {a.size} and {b.size}"
        )
    diff, low, high = bootstrap_interval(a - b, n_resamples, confidence, seed, weights)
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=float)
    means = _resampled_means(a - b, w, n_resamples, seed)
    p_value = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return PairedDifference(diff, low, high, p_value)


def holm_bonferroni(p_values: Sequence[float]) -> list[float]:
    """Holm's adjusted p-values, in the order given: the i-th smallest of m (i from 0) is
    multiplied by m - i, capped at 1, and never below the one before it. Calling "significant"
    only what stays below 0.05 keeps the chance of even one false verdict among all m below
    5% (Holm 1979), without Bonferroni's m-times penalty on every test."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def paired_rows(
    results: dict[str, dict[str, Sequence[float]]],
    baseline: str = "sft",
    weights: dict[str, Sequence[float]] | None = None,
) -> list[dict]:
    """For every metric and every model but `baseline`: the paired difference model -
    baseline on the same items, its 95% interval and two-sided p-value. `weights[metric]`,
    where given, weighs the items (each document's bytes, for bits per byte)."""
    weights = weights or {}
    rows = []
    for metric, base_outcomes in results[baseline].items():
        for model_name, metrics in results.items():
            if model_name == baseline:
                continue
            difference = paired_difference(
                metrics[metric], base_outcomes, weights=weights.get(metric)
            )
            rows.append(
                {"metric": metric, "model": model_name, "baseline": baseline}
                | {k: getattr(difference, k) for k in ("diff", "low", "high", "p_value")}
            )
    return rows


def mark_significance(rows: list[dict], primary: tuple[str, str], alpha: float = 0.05) -> None:
    """Add `p_holm` and `significant` to each paired row, in place. The `primary` (metric,
    model) row, declared before measuring, is tested alone at `alpha`; every other row is a
    secondary comparison, and Holm-Bonferroni adjusts their p-values as one family."""
    secondary = [row for row in rows if (row["metric"], row["model"]) != primary]
    if len(secondary) == len(rows):
        raise EvaluationError(f"the primary comparison {primary} is not among the paired rows")
    for row, adjusted in zip(
        secondary, holm_bonferroni([r["p_value"] for r in secondary]), strict=True
    ):
        row["p_holm"], row["primary"] = adjusted, False
    for row in rows:
        if (row["metric"], row["model"]) == primary:
            row["p_holm"], row["primary"] = row["p_value"], True
        row["significant"] = bool(row["p_holm"] < alpha)


def accuracy_table(results: dict[str, dict[str, Sequence[float]]]) -> list[dict]:
    """Rows (metric, model, mean, low, high) from per-item outcomes
    `results[model][metric] = [0/1 or a probability per item]`."""
    rows = []
    for model_name, metrics in results.items():
        for metric, outcomes in metrics.items():
            mean, low, high = bootstrap_interval(outcomes)
            rows.append(
                {
                    "metric": metric,
                    "model": model_name,
                    "mean": mean,
                    "low": low,
                    "high": high,
                    "items": len(outcomes),
                }
            )
    return rows


def significance_statements(rows: list[dict]) -> list[str]:
    """One sentence per paired row (after `mark_significance`): the difference, its interval,
    its p-value before and after Holm's correction, and the verdict."""
    statements = []
    for row in sorted(rows, key=lambda r: not r["primary"]):
        verdict = "significant" if row["significant"] else "not significant"
        role = "PRIMARY " if row["primary"] else ""
        statements.append(
            f"{role}{row['metric']}: {row['model']} - {row['baseline']} = {row['diff']:+.3f} "
            f"(95% CI {row['low']:+.3f} to {row['high']:+.3f}; p {row['p_value']:.4f}, "
            f"Holm {row['p_holm']:.4f}), {verdict}"
        )
    return statements


def markdown_table(rows: list[dict], held_out: dict[str, HeldOutScore]) -> str:
    """The report's two tables: held-out text, then every accuracy with its interval."""
    lines = ["| model | tokens | bytes | perplexity | bits per byte |", "|---|---:|---:|---:|---:|"]
    for name, score in held_out.items():
        lines.append(
            f"| {name} | {score.tokens} | {score.bytes} | {score.perplexity:.2f} | {score.bits_per_byte:.3f} |"
        )
    lines += ["", "| metric | model | items | accuracy | 95% CI |", "|---|---|---:|---:|---|"]
    for row in rows:
        lines.append(
            f"| {row['metric']} | {row['model']} | {row['items']} | {row['mean']:.3f} | "
            f"{row['low']:.3f} to {row['high']:.3f} |"
        )
    return "\n".join(lines)


def _save_figure(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    with atomic_write(path, "wb") as file:
        file.write(buffer.getvalue())


@dataclass
class Report:
    """Everything the report shows, and the notes that explain it."""

    held_out: dict[str, HeldOutScore]
    results: dict[str, dict[str, list[float]]]
    primary: tuple[str, str]  # (metric, model): the one comparison with the baseline declared first
    documents: dict[str, list[HeldOutScore]] = field(default_factory=dict)  # per held-out document
    baseline: str = "sft"
    notes: list[str] = field(default_factory=list)
    chance: float | None = None  # drawn as a line: the multiple-choice chance level

    def paired(self) -> list[dict]:
        """Every metric (bits per byte too, when `documents` is given) of every model against
        the baseline, marked significant or not by the primary test and Holm's rule."""
        outcomes = {name: dict(metrics) for name, metrics in self.results.items()}
        weights = {}
        if self.documents:  # bits per byte per document, weighted by its bytes
            for name, scores in self.documents.items():
                outcomes[name]["bits per byte"] = [score.bits_per_byte for score in scores]
            weights["bits per byte"] = [score.bytes for score in self.documents[self.baseline]]
        rows = paired_rows(outcomes, self.baseline, weights)
        mark_significance(rows, self.primary)
        return rows


def write_report(report: Report, folder: str | Path) -> Path:
    """Write report.md, results.json and two figures into `folder`, each file atomically."""
    import matplotlib.pyplot as plt

    from chapters.course import use_course_style

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = accuracy_table(report.results)
    paired = report.paired()
    use_course_style()

    figure, axis = plt.subplots(figsize=(8, 4))
    metrics = list(dict.fromkeys(row["metric"] for row in rows))
    models = list(report.results)
    width = 0.8 / max(len(models), 1)
    for m, name in enumerate(models):
        mine = [next(r for r in rows if r["model"] == name and r["metric"] == k) for k in metrics]
        x = np.arange(len(metrics)) + m * width
        errors = [[r["mean"] - r["low"] for r in mine], [r["high"] - r["mean"] for r in mine]]
        axis.bar(x, [r["mean"] for r in mine], width, yerr=errors, capsize=3, label=name)
    if report.chance is not None:
        axis.axhline(report.chance, color="gray", linestyle="--", label="multiple-choice chance")
    axis.set_xticks(
        np.arange(len(metrics)) + width * (len(models) - 1) / 2, metrics, rotation=30, ha="right"
    )
    axis.set(
        title="Accuracy per task with 95% bootstrap intervals",
        ylabel="accuracy (fraction)",
        ylim=(0, 1),
    )
    axis.legend()
    _save_figure(figure, folder / "accuracy.png")
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.bar(list(report.held_out), [s.bits_per_byte for s in report.held_out.values()])
    axis.set(
        title="Held-out bits per byte (lower is better)", xlabel="model", ylabel="bits per byte"
    )
    _save_figure(figure, folder / "bits_per_byte.png")
    plt.close(figure)

    text = "\n\n".join(
        [
            "# Chapter 10: evaluation report",
            markdown_table(rows, report.held_out),
            f"## Against {report.baseline} (paired bootstrap, 95%; primary, then Holm-Bonferroni)",
            "\n".join(f"- {s}" for s in significance_statements(paired)),
            "## Notes",
            "\n".join(f"- {note}" for note in report.notes),
            "![accuracy](accuracy.png)\n\n![bits per byte](bits_per_byte.png)",
        ]
    )
    with atomic_write(folder / "report.md") as file:
        file.write(text + "\n")
    results = {
        "held_out": {
            name: asdict(score) | {"bits_per_byte": score.bits_per_byte}
            for name, score in report.held_out.items()
        },
        "accuracy": rows,
        "paired": paired,
        "primary": {
            "metric": report.primary[0],
            "model": report.primary[1],
            "baseline": report.baseline,
        },
        "notes": report.notes,
    }
    with atomic_write(folder / "results.json") as file:
        json.dump(results, file, indent=1)
    return folder / "report.md"
