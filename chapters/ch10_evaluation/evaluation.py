# Generated from chapters/ch10_evaluation/ch10_evaluation.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""Chapter 10: evaluating every checkpoint of the course on one suite, as harnesses do.

The story, top to bottom: the checkpoints to compare (one list entry each) and a check that
they speak the course tokenizer; perplexity and bits per byte on held-out text; multiple-choice
items scored by log-likelihood (raw and length-normalised), read from and written to JSONL
with every bad item named; generative tasks (exact match on chapter 8's held-out tasks,
syntax validity of generated code, pass@k with the unbiased estimator); a contamination check
against the training split with chapter 1's shingles; bootstrap confidence intervals and
paired differences; and a report (markdown table plus figures) written atomically.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import io
import json
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from chapters.ch01_data.data_pipeline import CleanDocument, word_shingles
from chapters.ch02_tokenizer.tokenizer import EOT_ID
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


# Adding a model to the report is one entry here. A checkpoint whose chapter has not been
# written yet (its module or function is missing) is listed as unavailable, not an error.
CHECKPOINTS: tuple[Checkpoint, ...] = (
    Checkpoint("base", "chapters.ch06_pretraining.trainer", "ensure_base_model"),
    Checkpoint("sft", "chapters.ch08_sft.sft", "ensure_sft_model"),
    Checkpoint("dpo", "chapters.ch09_alignment.alignment", "ensure_dpo_model"),
    Checkpoint("rlhf", "chapters.ch09_alignment.alignment", "ensure_rlhf_model"),
)


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
    checkpoints: Sequence[Checkpoint] = CHECKPOINTS,
) -> tuple[list[Checkpoint], list[tuple[Checkpoint, str]]]:
    """(checkpoints that can be loaded, [(checkpoint, why not) for the others])."""
    present, missing = [], []
    for checkpoint in checkpoints:
        loader, reason = checkpoint_loader(checkpoint)
        if loader is None:
            missing.append((checkpoint, reason))
        else:
            present.append(checkpoint)
    return present, missing


def load_checkpoints(
    tokenizer, checkpoints: Sequence[Checkpoint] = CHECKPOINTS
) -> tuple[dict[str, torch.nn.Module], list[tuple[Checkpoint, str]]]:
    """({name: model in eval mode}, [(checkpoint, why not) for those that cannot be loaded]).

    A chapter whose `ensure_...` fails (it is still being written, say) is reported, not
    fatal. A model trained with another tokenizer is fatal: it is a wrong input, not a gap.
    """
    models, missing = {}, []
    for checkpoint in checkpoints:
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


@torch.no_grad()
def document_nll(model: torch.nn.Module, token_ids: Sequence[int]) -> float:
    """Summed NLL (nats) of every token of a document after the first, in windows of the
    model's context length that overlap by one token (each token is predicted once)."""
    context = model.config.context_length
    ids = torch.tensor(list(token_ids), dtype=torch.long)
    total = 0.0
    for start in range(0, max(len(ids) - 1, 0), context):
        window = ids[start : start + context + 1]  # (T + 1,)
        logits = model(window[None, :-1])  # (1, T, V)
        total += float(F.cross_entropy(logits[0], window[1:], reduction="sum"))
    return total


def held_out_score(
    model: torch.nn.Module,
    tokenizer,
    documents: Iterable[CleanDocument],
    max_tokens: int = 40_000,
) -> HeldOutScore:
    """NLL of held-out documents, each starting after `<|endoftext|>` as in training, until
    about `max_tokens` tokens are scored. Bytes count the UTF-8 text of the same documents."""
    model.eval()
    score = HeldOutScore(0.0, 0, 0)
    for document in documents:
        ids = [EOT_ID, *tokenizer.encode(document.text, add_special_tokens=False).ids]
        score.nll += document_nll(model, ids)
        score.tokens += len(ids) - 1
        score.bytes += len(document.text.encode("utf-8"))
        if score.tokens >= max_tokens:
            break
    if score.tokens == 0:
        raise EvaluationError("no held-out tokens were scored: the documents were empty")
    return score


@dataclass
class MultipleChoiceItem:
    """One item: a context, candidate continuations, and the index of the right one."""

    id: str
    task: str
    context: str
    choices: list[str]
    answer: int

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


@torch.no_grad()
def continuation_logprobs(
    model: torch.nn.Module, context_ids: Sequence[int], continuations: Sequence[Sequence[int]]
) -> list[float]:
    """Summed log-probability of each continuation's tokens after the context, in one batch.

    The context is cut from the left so that context + continuation fits the model's window
    (as lm-evaluation-harness does); only continuation tokens are scored.
    """
    context = model.config.context_length
    rows, spans = [], []
    for continuation in continuations:
        if not continuation:
            raise EvaluationError("a continuation encodes to zero tokens; nothing to score")
        ids = [*context_ids, *continuation][-(context + 1) :]
        rows.append(ids)
        spans.append(len(continuation))
    width = max(len(ids) for ids in rows)
    batch = torch.zeros(len(rows), width, dtype=torch.long)  # padded on the right, never scored
    for i, ids in enumerate(rows):
        batch[i, : len(ids)] = torch.tensor(ids)
    log_probs = model(batch[:, :-1]).log_softmax(dim=-1)  # (C, W - 1, V)
    scores = []
    for i, (ids, span) in enumerate(zip(rows, spans, strict=True)):
        targets = torch.tensor(ids[-span:])  # the continuation's ids
        positions = torch.arange(len(ids) - span - 1, len(ids) - 1)  # where each is predicted
        scores.append(float(log_probs[i, positions, targets].sum()))
    return scores


def choose(loglikelihoods: Sequence[float], byte_lengths: Sequence[int], normalised: bool) -> int:
    """Index of the best choice: highest log-likelihood, or highest per byte of the choice
    (lm-evaluation-harness's `acc_norm`), which stops long choices from losing by length."""
    if normalised:
        scores = [ll / n for ll, n in zip(loglikelihoods, byte_lengths, strict=True)]
    else:
        scores = list(loglikelihoods)
    return int(np.argmax(scores))


def score_multiple_choice(model, tokenizer, items: Sequence[MultipleChoiceItem]) -> list[dict]:
    """One row per item: its task, the log-likelihoods and whether the raw and the
    length-normalised choice is right."""
    model.eval()
    rows = []
    for item in items:
        context_ids = [EOT_ID, *tokenizer.encode(item.context, add_special_tokens=False).ids]
        continuations = [tokenizer.encode(c, add_special_tokens=False).ids for c in item.choices]
        loglikelihoods = continuation_logprobs(model, context_ids, continuations)
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


@torch.no_grad()
def sample_responses(
    model,
    tokenizer,
    prompt: str,
    n: int,
    max_new_tokens: int = 24,
    temperature: float = 0.8,
    seed: int = 0,
) -> list[str]:
    """`n` sampled answers to a chat prompt (one batch), each cut at `<|endoftext|>`."""
    from chapters.ch04_blocks.model import generate
    from chapters.ch08_sft.sft import format_prompt

    ids = tokenizer.encode(format_prompt(prompt), add_special_tokens=False).ids
    ids = ids[-(model.config.context_length - max_new_tokens) :]
    generator = torch.Generator().manual_seed(seed)
    out = generate(
        model,
        torch.tensor([ids] * n),
        max_new_tokens,
        temperature=temperature,
        generator=generator,
        stop_token_id=EOT_ID,
    )
    answers = []
    for row in out[:, len(ids) :].tolist():
        row = row[: row.index(EOT_ID)] if EOT_ID in row else row
        answers.append(tokenizer.decode(row, skip_special_tokens=True))
    return answers


def evaluate_checkable_tasks(
    model,
    tokenizer,
    records: Sequence,
    n_samples: int = 5,
    ks: Sequence[int] = (1, 5),
    seed: int = 0,
) -> list[dict]:
    """Chapter 8's held-out tasks: greedy exact match, and pass@k from `n_samples` samples."""
    from chapters.ch08_sft.sft import check_answer, greedy_response

    rows = []
    for index, record in enumerate(records):
        greedy = greedy_response(model, tokenizer, record.prompt)
        samples = sample_responses(model, tokenizer, record.prompt, n_samples, seed=seed + index)
        correct = sum(check_answer(record.task, answer) for answer in samples)
        row = {"id": f"{record.source}-{index}", "family": record.source, "prompt": record.prompt}
        row["greedy_correct"] = check_answer(record.task, greedy)
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


@torch.no_grad()
def syntax_validity(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[bool]:
    """For each code prompt (a function header and docstring), generate a body and check that
    prompt + the generated body (`function_body`) parses. An empty body counts as invalid."""
    from chapters.ch04_blocks.model import generate

    generator = torch.Generator().manual_seed(seed)
    valid = []
    for prompt in prompts:
        ids = [EOT_ID, *tokenizer.encode(prompt, add_special_tokens=False).ids]
        out = generate(
            model,
            torch.tensor([ids]),
            max_new_tokens,
            temperature=temperature,
            generator=generator,
            stop_token_id=EOT_ID,
        )
        body = function_body(
            tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)
        )
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


def bootstrap_interval(
    outcomes: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean of `outcomes`
    (resample items with replacement, recompute the mean, take the middle `confidence`)."""
    values = np.asarray(outcomes, dtype=float)
    if values.size == 0:
        raise EvaluationError("no outcomes to bootstrap: the task has no items")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_resamples, values.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float, bool]:
    """(mean of a - b, low, high, significant) on the same items, resampled together.

    Pairing removes the item-difficulty noise that two separate intervals would both carry;
    the difference is significant when its interval excludes 0.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise EvaluationError(
            f"paired outcomes must cover the same items; got {a.size} and {b.size}"
        )
    mean, low, high = bootstrap_interval(a - b, n_resamples, confidence, seed)
    return mean, low, high, bool(low > 0 or high < 0)


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


def significance_statements(results: dict[str, dict[str, Sequence[float]]]) -> list[str]:
    """One sentence per metric and pair of models: the paired difference and whether it is
    significant at 95%."""
    names = list(results)
    statements = []
    for metric in results[names[0]] if names else []:
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                mean, low, high, significant = paired_difference(
                    results[second][metric], results[first][metric]
                )
                verdict = "significant" if significant else "not significant"
                statements.append(
                    f"{metric}: {second} - {first} = {mean:+.3f} "
                    f"(95% CI {low:+.3f} to {high:+.3f}), {verdict}"
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
    notes: list[str] = field(default_factory=list)
    chance: float | None = None  # drawn as a line: the multiple-choice chance level


def write_report(report: Report, folder: str | Path) -> Path:
    """Write report.md, results.json and two figures into `folder`, each file atomically."""
    import matplotlib.pyplot as plt

    from chapters.course import use_course_style

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = accuracy_table(report.results)
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
            "## Significance (paired bootstrap, 95%)",
            "\n".join(f"- {s}" for s in significance_statements(report.results)),
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
        "notes": report.notes,
    }
    with atomic_write(folder / "results.json") as file:
        json.dump(results, file, indent=1)
    return folder / "report.md"
