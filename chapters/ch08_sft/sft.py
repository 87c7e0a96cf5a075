# Generated from chapters/ch08_sft/ch08_sft.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""Chapter 8: supervised fine-tuning (SFT) with the loss on response tokens only.

The story, top to bottom: a chat template built from chapter 2's special tokens; the
instruction-response pairs (mined from the corpus with `ast`, and checkable task families
whose answers a program verifies); JSONL with a split, read back with every malformed line
reported; tokenization with an exact prompt/response boundary; labels that ignore the prompt;
a padding collate and a packing collate; fine-tuning with chapter 6's trainer, with pre-training
text replayed in every batch so that the model keeps what it knew; evaluation
(masked response loss, exact-match accuracy); and `ensure_sft_model()` for chapters 9 and 10.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import random
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from chapters.ch02_tokenizer.tokenizer import (
    ASSISTANT_ID,
    EOT_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    USER_ID,
    encode_text,
    lone_surrogate_at,
)
from chapters.ch03_attention.attention import packed_sequence_mask, positions_within_documents
from chapters.ch06_pretraining.trainer import (
    Trainer,
    TrainingConfig,
    TrainingHistory,
    evaluate,
    random_window_batches,
    save_model_with_history,
)
from chapters.course import (
    artifacts_dir,
    atomic_write,
    digest_of,
    recipe_path,
    record_recipe,
    stale_reason,
)

IGNORE_INDEX = -100  # the label value torch's cross_entropy skips (chapter 6 uses the same)
# Chapter 2 fixed the special tokens and their ids; the chat template is built from them.
EOT_TOKEN, PAD_TOKEN, USER_TOKEN, ASSISTANT_TOKEN = SPECIAL_TOKENS


def format_prompt(prompt: str) -> str:
    """The text the model sees before it answers: `<|user|>` prompt `<|assistant|>`."""
    return f"{USER_TOKEN}{prompt}{ASSISTANT_TOKEN}"


def format_example(prompt: str, response: str) -> str:
    """One whole training example: `<|user|>` prompt `<|assistant|>` response `<|endoftext|>`."""
    return f"{format_prompt(prompt)}{response}{EOT_TOKEN}"


def parse_example(text: str) -> tuple[str, str]:
    """Invert `format_example`: return `(prompt, response)`, or raise if `text` is not one example."""
    if not (text.startswith(USER_TOKEN) and text.endswith(EOT_TOKEN)):
        raise ValueError(
            f"not a chat example: it must start with {USER_TOKEN} and end with {EOT_TOKEN}, "
            f"got {text[:40]!r}...{text[-20:]!r}"
        )
    body = text[len(USER_TOKEN) : -len(EOT_TOKEN)]
    if body.count(ASSISTANT_TOKEN) != 1:
        raise ValueError(
            f"a chat example holds exactly one {ASSISTANT_TOKEN}, found {body.count(ASSISTANT_TOKEN)}"
        )
    prompt, response = body.split(ASSISTANT_TOKEN)
    return prompt, response


# Common words (most are one BPE token of chapter 2's tokenizer).
WORDS = [
    "accept",
    "action",
    "active",
    "address",
    "allow",
    "append",
    "archive",
    "args",
    "base",
    "bind",
    "block",
    "body",
    "bound",
    "buffer",
    "build",
    "button",
    "byte",
    "cache",
    "call",
    "cancel",
    "canvas",
    "case",
    "change",
    "char",
    "check",
    "child",
    "chunk",
    "clear",
    "close",
    "code",
    "color",
    "column",
    "command",
    "comment",
    "compare",
    "config",
    "connect",
    "content",
    "context",
    "control",
    "convert",
    "copy",
    "count",
    "create",
    "current",
    "custom",
    "data",
    "date",
    "day",
    "debug",
    "decode",
    "default",
    "delete",
    "dialog",
    "diff",
    "display",
    "domain",
    "done",
    "dump",
    "edit",
    "element",
    "empty",
    "encode",
    "entry",
    "error",
    "escape",
    "event",
    "exit",
    "extra",
    "factory",
    "field",
    "file",
    "fill",
    "filter",
    "final",
    "find",
    "flag",
    "float",
    "font",
    "force",
    "format",
    "frame",
    "group",
    "handle",
    "handler",
    "hash",
    "head",
    "header",
    "height",
    "help",
    "host",
    "image",
    "index",
    "info",
    "input",
    "insert",
    "item",
    "join",
    "keep",
    "key",
    "label",
    "left",
    "length",
    "level",
    "limit",
    "line",
    "link",
    "load",
    "loader",
    "local",
    "locale",
    "lock",
    "log",
    "logger",
    "loop",
    "mail",
    "main",
    "manager",
    "mark",
    "master",
    "match",
    "member",
    "menu",
    "message",
    "method",
    "mode",
    "module",
    "month",
    "name",
    "node",
    "number",
    "object",
    "offset",
    "option",
    "order",
    "output",
    "package",
    "pair",
    "param",
    "parent",
    "parse",
    "parser",
    "part",
    "path",
    "pattern",
    "pipe",
    "place",
    "point",
    "policy",
    "port",
    "prefix",
    "process",
    "push",
    "queue",
    "quote",
    "range",
    "reader",
    "record",
    "release",
    "remove",
    "request",
    "reset",
    "result",
    "right",
    "root",
    "round",
    "row",
    "screen",
    "script",
    "search",
    "section",
    "select",
    "send",
    "state",
    "stream",
    "table",
    "task",
    "text",
    "thread",
    "time",
    "token",
    "tree",
    "type",
    "user",
    "value",
    "view",
    "width",
    "window",
    "word",
    "year",
]
CALLABLES = ("len", "print", "str", "sorted", "list", "abs", "repr", "int", "set", "tuple")
NUMBER_WORDS = {2: "two", 3: "three"}


def is_held_out(values: dict) -> bool:
    """Whether a task's values are held out: a fixed fifth of all value combinations, chosen
    by a stable hash (not Python's `hash`, which changes between runs)."""
    return zlib.crc32(json.dumps(values, sort_keys=True).encode()) % 5 == 0


def _sample_values(
    rng: random.Random, held_out: bool, draw: Callable[[random.Random], dict]
) -> dict:
    """Draw values until they fall on the requested side of the split."""
    while True:
        values = draw(rng)
        if is_held_out(values) == held_out:
            return values


@dataclass(frozen=True)
class TaskFamily:
    """Templates (the last one is held out) and a sampler of the values that fill them.

    `sample(rng, held_out)` returns the values of one task as a dict; `answer(values)` is the
    reference response; `verify(values, response)` says whether a (stripped) response is
    right, by computing it, not by looking it up. Where the prompt shows the words after a
    space, the reference answer starts with a space too, so that it is made of the very same
    BPE tokens (` tree` and `tree` are different tokens): the model can copy, not translate.
    """

    name: str
    templates: tuple[str, ...]
    sample: Callable[[random.Random, bool], dict]
    answer: Callable[[dict], str]
    verify: Callable[[dict, str], bool]

    @property
    def train_templates(self) -> tuple[str, ...]:
        return self.templates[:-1]

    @property
    def held_out_template(self) -> str:
        return self.templates[-1]


def _digit_pair(rng: random.Random) -> dict:
    return {"a": rng.randrange(10), "b": rng.randrange(10)}


def _nested_call(rng: random.Random) -> dict:
    depth = rng.randint(1, 3)
    functions = [rng.choice(CALLABLES) for _ in range(depth)]
    subscript = rng.random() < 0.5  # end with `word[0` half of the time: brackets differ
    code = "".join(f"{function}(" for function in functions) + rng.choice(WORDS)
    return {"code": code + ("[0" if subscript else "")}


def _closing_brackets(code: str) -> str:
    """The brackets that close every one still open in `code`, innermost first."""
    stack = []
    for character in code:
        if character in "([{":
            stack.append({"(": ")", "[": "]", "{": "}"}[character])
        elif character in ")]}":
            stack.pop()
    return "".join(reversed(stack))


def _closes_call(values: dict, response: str) -> bool:
    # The program check: only closing brackets, and the completed code parses as Python.
    if not response or set(response) - set(")]}"):
        return False
    try:
        ast.parse(values["code"] + response, mode="eval")
    except SyntaxError:
        return False
    return True


def _quoted(words: Sequence[str]) -> str:
    return "[" + ", ".join(repr(word) for word in words) + "]"


TASK_FAMILIES: dict[str, TaskFamily] = {
    family.name: family
    for family in [
        TaskFamily(
            "first_item",
            (
                "Return the first item of {items}.",
                "What is the first element of {items}?",
                "First item of {items}:",
                "Which word comes first in {items}?",
                "Take the first element of {items}.",
                "The first one in {items} is",
                "Show item 0 of {items}.",
                "Give the first entry in {items}.",
            ),
            lambda rng, held_out: _sample_values(
                rng, held_out, lambda r: {"items": _quoted(r.sample(WORDS, 3))}
            ),
            lambda v: ast.literal_eval(v["items"])[0],
            lambda v, r: r == ast.literal_eval(v["items"])[0],
        ),
        TaskFamily(
            "last_item",
            (
                "Return the last item of {items}.",
                "What is the last element of {items}?",
                "Last item of {items}:",
                "Which word comes last in {items}?",
                "Take the final element of {items}.",
                "The last one in {items} is",
                "Show the final item of {items}.",
                "Give the last entry in {items}.",
            ),
            lambda rng, held_out: _sample_values(
                rng, held_out, lambda r: {"items": _quoted(r.sample(WORDS, 3))}
            ),
            lambda v: ast.literal_eval(v["items"])[-1],
            lambda v, r: r == ast.literal_eval(v["items"])[-1],
        ),
        TaskFamily(
            "repeat_word",
            (
                "Repeat the word {word} {times} times.",
                "Say {word} {times} times.",
                "Write {word} {times} times, separated by spaces.",
                "Type {word} {times} times.",
                "Echo {word} {times} times.",
                "Output the word {word} {times} times.",
                "{word}, {times} times:",
                "Print the word {word} {times} times.",
            ),
            lambda rng, held_out: _sample_values(
                rng,
                held_out,
                lambda r: {"word": r.choice(WORDS), "times": NUMBER_WORDS[r.choice((2, 3))]},
            ),
            lambda v: " " + " ".join([v["word"]] * {"two": 2, "three": 3}[v["times"]]),
            lambda v, r: r.split(" ") == [v["word"]] * {"two": 2, "three": 3}[v["times"]],
        ),
        TaskFamily(
            "swap_words",
            (
                "Swap the two words: {first} {second}",
                "Reverse the order of: {first} {second}",
                "Swap these words: {first} {second}",
                "Flip the order: {first} {second}",
                "Exchange the words: {first} {second}",
                "Second word, then first: {first} {second}",
                "Switch these two: {first} {second}",
                "Put the second word first: {first} {second}",
            ),
            lambda rng, held_out: _sample_values(
                rng,
                held_out,
                lambda r: dict(zip(("first", "second"), r.sample(WORDS, 2), strict=True)),
            ),
            lambda v: f" {v['second']} {v['first']}",
            lambda v, r: r == f"{v['second']} {v['first']}",
        ),
        TaskFamily(
            "close_call",
            (
                "Close the brackets: {code}",
                "Complete the call: {code}",
                "Finish this expression: {code}",
                "Close every bracket: {code}",
                "End the expression: {code}",
                "Balance the brackets: {code}",
                "Close this call: {code}",
                "Add the missing brackets: {code}",
            ),
            lambda rng, held_out: _sample_values(rng, held_out, _nested_call),
            lambda v: _closing_brackets(v["code"]),
            _closes_call,
        ),
        TaskFamily(
            "add_digits",
            (
                "What is {a} + {b}?",
                "Compute {a}+{b}.",
                "{a} plus {b} equals?",
                "Sum {a} and {b}.",
                "{a} + {b} =",
                "What do {a} and {b} add up to?",
                "Calculate {a} plus {b}.",
                "Add {a} and {b}.",
            ),
            lambda rng, held_out: _sample_values(rng, held_out, _digit_pair),
            lambda v: f" {v['a'] + v['b']}",
            lambda v, r: r.strip().isdigit() and int(r) == v["a"] + v["b"],
        ),
        TaskFamily(
            "max_of_two",
            (
                "Evaluate max({a}, {b})",
                "What is max({a}, {b})?",
                "max({a}, {b}) returns?",
                "max({a}, {b}) =",
                "The larger of {a} and {b}?",
                "Return max({a}, {b}).",
                "Which is bigger: {a} or {b}?",
                "Compute the value of max({a}, {b}).",
            ),
            lambda rng, held_out: _sample_values(rng, held_out, _digit_pair),
            lambda v: f" {max(v['a'], v['b'])}",
            lambda v, r: r.strip().isdigit() and int(r) == max(v["a"], v["b"]),
        ),
    ]
}


def check_answer(task: dict, response: str) -> bool:
    """Whether `response` solves the checkable `task` (`{"family": ..., "values": {...}}`).

    Exact match after stripping surrounding whitespace: no partial credit.
    """
    family = TASK_FAMILIES.get(task.get("family", ""))
    if family is None:
        raise KeyError(
            f"unknown task family {task.get('family')!r}; known: {sorted(TASK_FAMILIES)}"
        )
    return bool(family.verify(task["values"], response.strip()))


@dataclass
class SFTRecord:
    """One instruction-response pair as stored in the JSONL file.

    `source` is "mined" or a task family's name; `task` holds what `check_answer` needs (None
    for mined pairs); `origin` says where a mined pair came from.
    """

    prompt: str
    response: str
    split: str  # "train" or "heldout"
    source: str
    task: dict | None = None
    origin: str = ""


def generate_checkable_tasks(
    per_family_train: int = 500, per_family_heldout: int = 60, seed: int = 0
) -> list[SFTRecord]:
    """Training pairs from the training templates and values, held-out pairs from the held-out
    template and held-out values (both held out at once, so accuracy measures generalization).

    Training pairs are distinct prompts (sampling stops early if a family runs out of them).
    """
    rng = random.Random(seed)
    records = []
    for family in TASK_FAMILIES.values():
        for split, count in (("train", per_family_train), ("heldout", per_family_heldout)):
            held_out = split == "heldout"
            seen: set[str] = set()
            for _attempt in range(count * 20):
                if len(seen) == count:
                    break
                values = family.sample(rng, held_out)
                template = (
                    family.held_out_template if held_out else rng.choice(family.train_templates)
                )
                prompt = template.format(**values)
                if prompt in seen:
                    continue
                seen.add(prompt)
                task = {"family": family.name, "values": values}
                records.append(SFTRecord(prompt, family.answer(values), split, family.name, task))
    return records


def _fingerprint(text: str) -> tuple[str, ...]:
    """A function's text with indentation and blank lines ignored, for matching across files."""
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _functions(statements: list) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every function defined in `statements`, nested ones included. It visits statements
    only, which is much faster than `ast.walk` (that also visits every expression)."""
    for node in statements:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node
        for name in ("body", "orelse", "finalbody", "handlers"):
            children = getattr(node, name, None)
            if isinstance(children, list):
                yield from _functions(children)


def function_pairs(source: str, origin: str = "", max_response_chars: int = 200) -> list[SFTRecord]:
    """Instruction-response pairs from the functions in one Python source text.

    The prompt is the signature plus the docstring; the response is the rest of the body.
    Only functions with a docstring, at least one statement after it, and a body of at most
    `max_response_chars` characters are kept (a small model cannot write long ones).
    Returns records without a split; `mine_function_pairs` assigns it.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []  # not parseable by this Python: nothing to mine
    lines = source.splitlines()
    pairs = []
    for node in _functions(tree.body):
        if ast.get_docstring(node) is None or len(node.body) < 2:
            continue
        docstring_end = node.body[0].end_lineno  # last line of the docstring
        function_lines = lines[node.lineno - 1 : node.end_lineno]
        indent = " " * node.col_offset
        if not all(line.startswith(indent) or not line.strip() for line in function_lines):
            continue  # a docstring line left of the `def`: cannot dedent cleanly
        # Dedent by the `def` line's indentation so that methods read like functions.
        function_lines = [line[node.col_offset :] for line in function_lines]
        split_at = docstring_end - node.lineno + 1
        header, body = "\n".join(function_lines[:split_at]), "\n".join(function_lines[split_at:])
        if not body.strip() or len(body) > max_response_chars:
            continue
        prompt = "Write the body of this function.\n" + header
        pairs.append(SFTRecord(prompt, body + "\n", "", "mined", None, origin))
    return pairs


def function_fingerprints(source: str) -> set[tuple[str, ...]]:
    """The fingerprint of every function in `source` (with or without a docstring)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    lines = source.splitlines()
    return {
        _fingerprint("\n".join(lines[node.lineno - 1 : node.end_lineno]))
        for node in _functions(tree.body)
    }


def _pair_fingerprint(record: SFTRecord) -> tuple[str, ...]:
    header = record.prompt.split("\n", 1)[1]
    return _fingerprint(header + "\n" + record.response)


def mine_function_pairs(
    documents_by_split: dict[str, Iterable],
    max_pairs: dict[str, int] | None = None,
    max_response_chars: int = 200,
    train_files_sampled: int = 8,
) -> tuple[list[SFTRecord], dict[str, int]]:
    """Mine `function_pairs` from chapter 1's documents, keeping the split clean.

    `documents_by_split` maps "train" and "validation" to iterables of documents with
    `.origin` and `.text` (chapter 1's `iter_split`); "validation" becomes "heldout".
    A function whose text (ignoring indentation) occurs in both splits is dropped, so no pair
    is both trained on and evaluated on; duplicates within a split are kept once. Every
    validation file is parsed; one training file in `train_files_sampled` (a stable hash of
    its origin) is parsed for pairs, but every training file is scanned for the held-out
    functions. Returns the records and counts of what was kept and dropped.
    """
    max_pairs = max_pairs or {}
    counts: Counter = Counter()
    validation_documents = [d for d in documents_by_split["validation"] if d.origin.endswith(".py")]
    heldout: dict[tuple[str, ...], SFTRecord] = {}
    validation_functions: set[tuple[str, ...]] = set()
    for document in validation_documents:
        validation_functions |= function_fingerprints(document.text)
        for record in function_pairs(document.text, document.origin, max_response_chars):
            heldout.setdefault(_pair_fingerprint(record), record)
    by_first_line: dict[str, list[tuple[str, ...]]] = {}
    for fingerprint in heldout:
        by_first_line.setdefault(fingerprint[0], []).append(fingerprint)

    train: dict[tuple[str, ...], SFTRecord] = {}
    in_both: set[tuple[str, ...]] = set()
    for document in documents_by_split["train"]:
        if not document.origin.endswith(".py"):
            continue
        lines = [line.strip() for line in document.text.splitlines() if line.strip()]
        for number, line in enumerate(lines):
            for fingerprint in by_first_line.get(line, ()):
                if tuple(lines[number : number + len(fingerprint)]) == fingerprint:
                    in_both.add(fingerprint)
        if zlib.crc32(document.origin.encode()) % train_files_sampled:
            continue
        for record in function_pairs(document.text, document.origin, max_response_chars):
            fingerprint = _pair_fingerprint(record)
            if fingerprint in validation_functions:
                in_both.add(fingerprint)
            else:
                train.setdefault(fingerprint, record)
    counts["in both splits (dropped)"] = len(in_both)
    records = []
    for name, found in (("train", train), ("heldout", heldout)):
        kept = [record for key, record in found.items() if key not in in_both]
        limit = max_pairs.get(name)
        if limit is not None and len(kept) > limit:
            kept = random.Random(f"mine-{name}").sample(kept, limit)  # a fixed, spread-out subset
        for record in kept:
            record.split = name
        records.extend(kept)
        counts[f"kept {name}"] = len(kept)
    return records, dict(counts)


def save_jsonl(records: Iterable[SFTRecord], path: str | Path) -> Path:
    """Write one JSON object per line, atomically (a crash leaves the old file or none)."""
    path = Path(path)
    with atomic_write(path) as file:
        for record in records:
            file.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
    return path


@dataclass
class JsonlReport:
    """What `read_jsonl` skipped: `(line number, reason)` for every malformed line."""

    lines_read: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"{self.lines_read} lines read, {len(self.problems)} malformed"
        return "\n".join(
            [head] + [f"  line {number}: {reason}" for number, reason in self.problems]
        )


def read_jsonl(path: str | Path) -> tuple[list[SFTRecord], JsonlReport]:
    """Read records back; a malformed line is skipped, counted and reported with its number.

    Malformed means: not UTF-8, not JSON, not an object, a missing or non-string
    prompt/response/split/source, a `task` that is not an object, an `origin` that is not a
    string, text with a lone surrogate, or a split other than "train"/"heldout". Blank lines
    are ignored.
    """
    records, report = [], JsonlReport()
    with open(path, "rb") as file:  # bytes: one bad line must not stop the whole file
        for number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                report.lines_read += 1
                report.problems.append((number, f"not UTF-8 (byte {error.start})"))
                continue
            if not line.strip():
                continue
            report.lines_read += 1
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                report.problems.append((number, f"not valid JSON ({error.msg})"))
                continue
            if not isinstance(data, dict):
                report.problems.append((number, f"a JSON {type(data).__name__}, not an object"))
                continue
            missing = [
                key
                for key in ("prompt", "response", "split", "source")
                if not isinstance(data.get(key), str)
            ]
            if missing:
                report.problems.append((number, f"missing or non-string field(s) {missing}"))
                continue
            if data["split"] not in ("train", "heldout"):
                report.problems.append((number, f"unknown split {data['split']!r}"))
                continue
            if not isinstance(data.get("task"), dict | None):
                report.problems.append((number, "task must be an object or null"))
                continue
            if not isinstance(data.get("origin", ""), str):
                report.problems.append((number, "origin must be a string"))
                continue
            if lone_surrogate_at(data["prompt"] + data["response"]) is not None:
                report.problems.append((number, "a lone surrogate (\\ud800-\\udfff) in the text"))
                continue
            known = {key: data[key] for key in SFTRecord.__dataclass_fields__ if key in data}
            records.append(SFTRecord(**known))
    return records, report


def build_sft_dataset(
    path: str | Path | None = None,
    per_family_train: int = 500,
    per_family_heldout: int = 60,
    mined_train: int = 300,
    mined_heldout: int = 60,
    seed: int = 0,
    documents_by_split: dict[str, Iterable] | None = None,
) -> tuple[list[SFTRecord], dict[str, int]]:
    """The chapter's dataset: checkable tasks plus pairs mined from chapter 1's corpus.

    Writes JSONL to `path` when given. `documents_by_split` defaults to chapter 1's
    `iter_split("train")` / `iter_split("validation")`. Returns the records and the mining
    counts.
    """
    if documents_by_split is None:
        from chapters.ch01_data.data_pipeline import iter_split

        documents_by_split = {"train": iter_split("train"), "validation": iter_split("validation")}
    records = generate_checkable_tasks(per_family_train, per_family_heldout, seed)
    mined, counts = mine_function_pairs(
        documents_by_split, {"train": mined_train, "heldout": mined_heldout}
    )
    records.extend(mined)
    if path is not None:
        save_jsonl(records, path)
    return records, counts


def sft_dataset_recipe() -> dict:
    """What the dataset is built from: its sizes, chapter 1's corpus (the mined pairs) and the
    task families (a digest of a few tasks of each, so a changed template or answer shows)."""
    from chapters.ch01_data.data_pipeline import ensure_clean_corpus

    tasks = [asdict(record) for record in generate_checkable_tasks(3, 3, seed=1)]
    families = hashlib.sha256(json.dumps(tasks, sort_keys=True).encode()).hexdigest()
    sizes = inspect.signature(build_sft_dataset).parameters  # the defaults ensure builds with
    return {
        "sizes": {name: p.default for name, p in sizes.items() if isinstance(p.default, int)},
        "corpus_manifest_sha256": digest_of(ensure_clean_corpus() / "manifest.json"),
        "task_families_sha256": families,
    }


def ensure_sft_dataset() -> Path:
    """The JSONL file in artifacts_dir("ch08"): built on first use, and again when its recipe
    (`sft_dataset_recipe`) changed, e.g. after a task family was edited."""
    path = artifacts_dir("ch08") / "sft_pairs.jsonl"
    recipe = sft_dataset_recipe()
    if reason := stale_reason(path, recipe):
        print(f"SFT dataset in the artifacts: {reason}. Building it.")
        recipe_path(path).unlink(missing_ok=True)
        build_sft_dataset(path)
        record_recipe(path, recipe)
    return path


@dataclass
class EncodedExample:
    """Token ids of `<|user|>` prompt `<|assistant|>` response `<|endoftext|>`.

    `response_start` indexes the first response token (right after `<|assistant|>`): the
    boundary is exact because prompt and response are tokenized separately.
    """

    token_ids: list[int]
    response_start: int
    prompt_tokens_dropped: int = 0


class ResponseTooLong(ValueError):
    """The response alone does not fit in the context: we never cut a response."""


def encode_example(
    tokenizer, prompt: str, response: str, max_tokens: int | None = None
) -> EncodedExample:
    """Tokenize one pair. If it has more than `max_tokens` tokens, drop prompt tokens from the
    left (the end of the prompt, next to the answer, matters most) and record how many.

    `tokenizer` is a `tokenizers.Tokenizer` (chapter 2) or anything with the same `encode`.
    Raises ValueError for an empty response and ResponseTooLong if even an empty prompt would
    not leave room for the whole response.
    """
    if not response.strip():
        raise ValueError(
            "empty response: a pair must have a non-blank response to learn from; "
            "drop the pair or fill in its response"
        )
    # read as text: a forged "<|user|>" in either cannot start a turn (chapter 2's encode_text)
    prompt_ids = encode_text(tokenizer, prompt)
    response_ids = encode_text(tokenizer, response)
    dropped = 0
    if max_tokens is not None:
        fixed = 3 + len(response_ids)  # <|user|>, <|assistant|>, response, <|endoftext|>
        if fixed > max_tokens:
            raise ResponseTooLong(
                f"the response has {len(response_ids)} tokens; with the 3 template tokens it "
                f"needs {fixed} > max_tokens={max_tokens}. Use a longer context or drop the pair."
            )
        dropped = max(0, len(prompt_ids) + fixed - max_tokens)
        prompt_ids = prompt_ids[dropped:]
    token_ids = [USER_ID, *prompt_ids, ASSISTANT_ID, *response_ids, EOT_ID]
    return EncodedExample(token_ids, len(prompt_ids) + 2, dropped)


def response_mask(example: EncodedExample) -> torch.Tensor:
    """Bool (T,) over `token_ids`: True on the response tokens and the closing `<|endoftext|>`."""
    mask = torch.zeros(len(example.token_ids), dtype=torch.bool)
    mask[example.response_start :] = True
    return mask


def make_labels(
    example: EncodedExample, mask_prompt: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(inputs, labels)`, each (T-1,): labels are the inputs shifted by one, with every
    position whose target is a prompt token set to IGNORE_INDEX (unless `mask_prompt=False`).

    So the model is trained to predict the response and its end, given the prompt: the first
    kept label is the first response token, predicted from `<|assistant|>`.
    """
    ids = torch.tensor(example.token_ids, dtype=torch.long)
    inputs, labels = ids[:-1], ids[1:].clone()
    if mask_prompt:
        labels[~response_mask(example)[1:]] = IGNORE_INDEX
    return inputs, labels


@dataclass
class EncodeReport:
    """What happened to the pairs on their way to token ids (nothing is dropped silently)."""

    encoded: int = 0
    kept: list[int] = field(default_factory=list)  # record index of each encoded example
    empty_response: list[int] = field(default_factory=list)  # indices of the skipped pairs
    response_too_long: list[int] = field(default_factory=list)
    prompts_truncated: int = 0
    prompt_tokens_dropped: int = 0

    def __str__(self) -> str:
        return (
            f"{self.encoded} encoded; skipped {len(self.empty_response)} with an empty response "
            f"and {len(self.response_too_long)} whose response does not fit; "
            f"{self.prompts_truncated} prompts truncated from the left "
            f"({self.prompt_tokens_dropped} tokens dropped)"
        )


def encode_records(
    records: Sequence[SFTRecord], tokenizer, max_tokens: int
) -> tuple[list[EncodedExample], EncodeReport]:
    """Encode every record that can be encoded; report the others by index."""
    examples, report = [], EncodeReport()
    for index, record in enumerate(records):
        try:
            example = encode_example(tokenizer, record.prompt, record.response, max_tokens)
        except ResponseTooLong:
            report.response_too_long.append(index)
            continue
        except ValueError:
            report.empty_response.append(index)
            continue
        examples.append(example)
        report.kept.append(index)
        report.encoded += 1
        if example.prompt_tokens_dropped:
            report.prompts_truncated += 1
            report.prompt_tokens_dropped += example.prompt_tokens_dropped
    return examples, report


@dataclass
class Batch:
    """A training batch: every tensor is (B, T) except the attention mask (B, T, T).

    `attention_mask[b, i, j]` is True when query i may attend to key j (the model combines
    it with causality); `positions` restart at 0 for every example, so packed examples see
    the same rotary positions as unpacked ones.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor


def collate(
    examples: Sequence[EncodedExample], mask_prompt: bool = True, pad_to: int | None = None
) -> Batch:
    """Right-pad examples to the longest (or to `pad_to`): inputs with `<|pad|>`, labels with
    IGNORE_INDEX, and an attention mask that hides padding keys.

    With right padding and a causal model, real tokens could never see padding anyway; the
    mask makes that explicit and keeps the batch correct for any padding side.
    """
    pairs = [make_labels(example, mask_prompt) for example in examples]
    length = max(len(inputs) for inputs, _ in pairs)
    if pad_to is not None:
        if pad_to < length:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest example ({length})")
        length = pad_to
    batch_size = len(pairs)
    inputs = torch.full((batch_size, length), PAD_ID, dtype=torch.long)
    labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
    is_real = torch.zeros(batch_size, length, dtype=torch.bool)
    for row, (example_inputs, example_labels) in enumerate(pairs):
        inputs[row, : len(example_inputs)] = example_inputs
        labels[row, : len(example_labels)] = example_labels
        is_real[row, : len(example_inputs)] = True
    # (B, T) -> (B, T, T): query i may look at key j when j is real; padded queries may look
    # at real keys too, so that no row of the mask is empty (an empty row would give NaN).
    attention_mask = is_real[:, None, :].expand(batch_size, length, length).clone()
    positions = torch.arange(length).expand(batch_size, length).clone()
    return Batch(inputs, labels, attention_mask, positions)


def pack(
    examples: Sequence[EncodedExample], context_length: int, mask_prompt: bool = True
) -> Batch:
    """Pack several examples per row (first-fit, in order) into rows of `context_length`.

    Each example contributes its own `(inputs, labels)`, so no label crosses from one example
    to the next. The attention mask is block-diagonal (a token sees only earlier tokens of
    its own example), positions restart at 0 for every example, and the tail of each row is
    padding with IGNORE_INDEX labels.
    """
    rows: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    free: list[int] = []
    for example in examples:
        inputs, labels = make_labels(example, mask_prompt)
        if len(inputs) > context_length:
            raise ValueError(
                f"an example of {len(inputs)} input tokens does not fit in context_length="
                f"{context_length}; encode with max_tokens=context_length + 1"
            )
        for row, space in enumerate(free):
            if space >= len(inputs):
                rows[row].append((inputs, labels))
                free[row] -= len(inputs)
                break
        else:
            rows.append([(inputs, labels)])
            free.append(context_length - len(inputs))
    batch_size = len(rows)
    inputs = torch.full((batch_size, context_length), PAD_ID, dtype=torch.long)
    labels = torch.full((batch_size, context_length), IGNORE_INDEX, dtype=torch.long)
    segment = torch.full((batch_size, context_length), -1, dtype=torch.long)  # -1 = padding
    for row, parts in enumerate(rows):
        start = 0
        for number, (example_inputs, example_labels) in enumerate(parts):
            end = start + len(example_inputs)
            inputs[row, start:end] = example_inputs
            labels[row, start:end] = example_labels
            segment[row, start:end] = number
            start = end
    # Chapter 3's helpers: a token sees only its own segment (padding is a segment of its
    # own, so no row of the mask is empty), and positions restart at 0 in every segment.
    attention_mask = packed_sequence_mask(segment)[:, 0]  # (B, T, T)
    positions = positions_within_documents(segment)  # (B, T)
    return Batch(inputs, labels, attention_mask, positions)


def sft_training_config(**overrides) -> TrainingConfig:
    """Chapter 6's TrainingConfig with fine-tuning defaults: a lower peak learning rate than
    pre-training (the model already knows a lot), a short warm-up, no weight decay, and no
    periodic evaluation or sampling (the chapter evaluates before and after)."""
    settings = {
        "steps": 300,
        "batch_size": 32,
        "context_length": 128,
        "learning_rate": 1e-3,
        "min_lr": 1e-4,
        "warmup_steps": 10,
        "weight_decay": 0.0,
        "eval_interval": 0,
        "log_interval": 10,
        "sample_interval": 0,
        "seed": 0,
    }
    settings.update(overrides)
    return TrainingConfig(**settings)


def sft_batch_source(
    examples: Sequence[EncodedExample],
    batch_size: int,
    *,
    accumulation: int = 1,
    seed: int = 0,
    mask_prompt: bool = True,
    packing: bool = False,
    context_length: int = 128,
) -> Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]:
    """`get_batch(step, micro_step) -> (inputs, labels)` for chapter 6's trainer.

    A pure function of (seed, step, micro_step): the examples are shuffled once per epoch with
    a seed derived from the epoch, and each call takes the next `batch_size` of them, so a
    resumed run sees exactly the batches it would have seen. With `packing`, those examples
    are packed into as few rows of `context_length` as they fit in (pair it with
    `PackedSequenceModel`, which rebuilds the block-diagonal mask from the token ids).
    """
    count = len(examples)
    if count == 0:
        raise ValueError("no training examples: check the EncodeReport for what was skipped")
    orders: dict[int, list[int]] = {}

    def order_of(epoch: int) -> list[int]:
        if epoch not in orders:
            orders[epoch] = random.Random(seed * 1_000_003 + epoch).sample(range(count), count)
        return orders[epoch]

    def get_batch(step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        first = (step * accumulation + micro_step) * batch_size
        chosen = []
        for offset in range(first, first + batch_size):
            epoch, index = divmod(offset, count)
            chosen.append(examples[order_of(epoch)[index]])
        if packing:
            batch = pack(chosen, context_length, mask_prompt)
        else:
            batch = collate(chosen, mask_prompt)
        return batch.inputs, batch.labels

    return get_batch


def with_replay(
    get_batch: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
    tokens: np.ndarray,
    rows: int,
    context_length: int,
    seed: int = 0,
) -> Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]:
    """`get_batch` with `rows` windows of pre-training text appended to every batch: replay.

    The windows are chapter 6's random windows, a pure function of (seed, step, micro_step),
    so a resumed run stays exact. They hold no `<|user|>`, so `PackedSequenceModel` treats
    each as one causal sequence with positions 0..T-1, exactly as in pre-training.
    """
    replay = random_window_batches(tokens, rows, context_length, seed)

    def mixed(step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = get_batch(step, micro_step)
        replay_inputs, replay_labels = replay(step, micro_step)
        return torch.cat([inputs, replay_inputs]), torch.cat([labels, replay_labels])

    return mixed


def segments_from_ids(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) token ids -> (attention mask (B, T, T), positions (B, T)) for packed rows.

    A new example starts at every `<|user|>`; trailing padding joins the last example, which
    is harmless: it comes after every real token and its labels are ignored.
    """
    segment = torch.cumsum(inputs == USER_ID, dim=1)  # (B, T): 1, 1, ..., 2, 2, ...
    # Chapter 3's helpers: (B, 1, T, T) same-segment mask, positions restarting per segment.
    return packed_sequence_mask(segment)[:, 0], positions_within_documents(segment)


class PackedSequenceModel(torch.nn.Module):
    """Wraps a LanguageModel so that `forward(inputs)` treats each `<|user|>`... `<|endoftext|>`
    run as its own sequence: block-diagonal attention and positions restarting at 0."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        mask, positions = segments_from_ids(inputs)
        return self.model(inputs, positions=positions, attention_mask=mask[:, None])  # (B, T, V)


def finetune(
    model: torch.nn.Module,
    train_examples: Sequence[EncodedExample],
    config: TrainingConfig,
    *,
    mask_prompt: bool = True,
    packing: bool = False,
    replay_tokens: np.ndarray | None = None,
    replay_rows: int = 0,
    show_progress: bool = True,
) -> TrainingHistory:
    """Fine-tune `model` in place with chapter 6's Trainer; return the training history.

    `mask_prompt=False` is the baseline without masking (loss on every token, prompt too).
    `replay_rows` windows of `replay_tokens` (pre-training token ids) join every batch.
    """
    get_batch = sft_batch_source(
        train_examples,
        config.batch_size,
        accumulation=config.grad_accumulation,
        seed=config.seed,
        mask_prompt=mask_prompt,
        packing=packing,
        context_length=config.context_length,
    )
    if replay_rows:
        if not packing or replay_tokens is None:
            raise ValueError(
                "replay needs packing=True (rows of context_length, like the replayed windows) "
                "and replay_tokens (e.g. chapter 2's load_tokens('train'))"
            )
        get_batch = with_replay(
            get_batch, replay_tokens, replay_rows, config.context_length, config.seed
        )
    wrapped = PackedSequenceModel(model) if packing else model
    trainer = Trainer(wrapped, config, get_batch, show_progress=show_progress)
    history = trainer.fit()
    model.eval()
    return history


def mean_response_loss(model, examples: Sequence[EncodedExample], batch_size: int = 64) -> float:
    """Cross-entropy per response token (nats), averaged over all response tokens of
    `examples` (token-weighted); chapter 6's `evaluate` does the sum over batches."""
    batches = (
        (batch.inputs, batch.labels)
        for start in range(0, len(examples), batch_size)
        for batch in [collate(examples[start : start + batch_size])]
    )
    return evaluate(model, batches)


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """`<|user|>` prompt `<|assistant|>` as ids, the prompt read as text (`encode_text`): what
    generation and chapter 10's chat items start from (`encode_example` places the same ids
    around a training response)."""
    return [USER_ID, *encode_text(tokenizer, prompt), ASSISTANT_ID]


def prompt_ids_for(
    model: torch.nn.Module, tokenizer, prompt: str, max_new_tokens: int
) -> list[int]:
    """`<|user|>` prompt `<|assistant|>`, left-truncated as chapter 8 does (keeping the template
    tokens) so that `max_new_tokens` more still fit in the context."""
    prompt_ids = chat_prompt_ids(tokenizer, prompt)
    room = model.config.context_length - max_new_tokens
    if len(prompt_ids) > room:
        prompt_ids = [USER_ID, *prompt_ids[-(room - 1) :]]
    return prompt_ids


@torch.no_grad()
def sample_groups(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    count: int,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[list[EncodedExample]]:
    """`count` sampled answers to each prompt, each as token ids `<|user|>` prompt
    `<|assistant|>` response, ending with `<|endoftext|>` when the model stopped by itself.

    Prompts of the same length in tokens share one `generate` call (no padding needed): on a
    CPU one call for 64 rows costs about what one call for 8 does. Groups come back in the
    order of `prompts`."""
    from chapters.ch04_blocks.model import generate

    device = next(model.parameters()).device
    encoded = [prompt_ids_for(model, tokenizer, prompt, max_new_tokens) for prompt in prompts]
    by_length: dict[int, list[int]] = {}
    for index, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(index)
    groups: list[list[EncodedExample]] = [[] for _ in prompts]
    for length, indices in by_length.items():
        rows = [index for index in indices for _ in range(count)]
        start = torch.tensor([encoded[index] for index in rows], device=device)  # (R, T0)
        tokens = generate(
            model,
            start,
            max_new_tokens,
            temperature=temperature,
            generator=generator,
            stop_token_id=EOT_ID,
        )  # (R, T0 + new)
        for index, row in zip(rows, tokens[:, length:].tolist(), strict=True):
            if EOT_ID in row:
                row = row[: row.index(EOT_ID) + 1]  # keep the end token: stopping is part of it
            groups[index].append(EncodedExample(encoded[index] + row, length))
    return groups


def respond(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 24,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> str:
    """The model's answer to `prompt` in the chat template: chapter 4's `generate` (greedy at
    temperature 0, sampled above it, with a KV cache) until `<|endoftext|>`, which is not
    part of the answer."""
    example = sample_groups(model, tokenizer, [prompt], 1, max_new_tokens, temperature, generator)[
        0
    ][0]
    return response_text(tokenizer, example)


def response_text(tokenizer, example: EncodedExample) -> str:
    """The decoded response of an encoded example, without the end token."""
    ids = [token for token in example.token_ids[example.response_start :] if token != EOT_ID]
    return tokenizer.decode(ids, skip_special_tokens=True)


def greedy_response(model, tokenizer, prompt: str, max_new_tokens: int = 24) -> str:
    """The model's greedy answer to `prompt` (`respond` at temperature 0)."""
    return respond(model, tokenizer, prompt, max_new_tokens)


def evaluate_checkable(
    model, tokenizer, records: Sequence[SFTRecord], max_new_tokens: int = 24
) -> tuple[float, list[dict]]:
    """Exact-match accuracy on the checkable records, and one row per record
    (family, prompt, expected, answer, correct)."""
    checkable = [record for record in records if record.task is not None]
    groups = sample_groups(model, tokenizer, [r.prompt for r in checkable], 1, max_new_tokens, 0.0)
    rows = []
    for record, group in zip(checkable, groups, strict=True):
        answer = response_text(tokenizer, group[0])
        rows.append(
            {
                "family": record.source,
                "prompt": record.prompt,
                "expected": record.response,
                "answer": answer,
                "correct": check_answer(record.task, answer),
            }
        )
    if not rows:
        raise ValueError("no checkable records to evaluate (records with a task)")
    return sum(row["correct"] for row in rows) / len(rows), rows


# The chapter's run: about 5 passes over the pairs, at two thirds of pre-training's peak rate,
# with four 128-token windows of pre-training text replayed in every batch.
SFT_TRAINING = {"steps": 600, "batch_size": 32, "learning_rate": 2e-3}
SFT_REPLAY_ROWS = 4


def load_sft_records(split: str | None = None) -> list[SFTRecord]:
    """The chapter's pairs from artifacts (built on first use), optionally one split only.

    Malformed lines are reported, never silently dropped."""
    records, report = read_jsonl(ensure_sft_dataset())
    if report.problems:
        print(f"sft_pairs.jsonl: {report}")
    return [record for record in records if split is None or record.split == split]


def train_sft_model(
    mask_prompt: bool = True,
    show_progress: bool = True,
    replay_rows: int = SFT_REPLAY_ROWS,
    **overrides,
) -> tuple[torch.nn.Module, TrainingHistory]:
    """Fine-tune a fresh copy of chapter 6's base model on the training pairs (packed), with
    `replay_rows` windows of chapter 2's training tokens in every batch (0: no replay)."""
    from chapters.ch02_tokenizer.tokenizer import ensure_tokenizer, load_tokens
    from chapters.ch06_pretraining.trainer import ensure_base_model

    tokenizer, model = ensure_tokenizer(), ensure_base_model()
    context = model.config.context_length
    examples, _ = encode_records(load_sft_records("train"), tokenizer, context + 1)
    config = sft_training_config(**{"context_length": context, **SFT_TRAINING, **overrides})
    history = finetune(
        model,
        examples,
        config,
        mask_prompt=mask_prompt,
        packing=True,
        replay_tokens=load_tokens("train") if replay_rows else None,
        replay_rows=replay_rows,
        show_progress=show_progress,
    )
    return model.cpu(), history


def sft_model_recipe() -> dict:
    """What the chapter's SFT model is built from: `train_sft_model`'s settings and the digests
    of chapter 6's base model, the tokenizer and the dataset."""
    from chapters.ch02_tokenizer.tokenizer import tokenizer_path
    from chapters.ch06_pretraining.trainer import ensure_base_model

    ensure_base_model()  # current (rebuilt if its own recipe changed) before it is digested
    return {
        "training": SFT_TRAINING,
        "replay_rows": SFT_REPLAY_ROWS,
        "mask_prompt": True,
        "base_model": digest_of(artifacts_dir("ch06") / "base"),
        "tokenizer": digest_of(tokenizer_path()),
        "sft_dataset": digest_of(ensure_sft_dataset()),
    }


def save_sft_model(
    model: torch.nn.Module, history: TrainingHistory | None = None, recipe: dict | None = None
) -> Path:
    """Save to artifacts_dir("ch08")/"sft", atomically (chapter 6's helper), with `recipe`
    beside it (default: the chapter's, `sft_model_recipe()`; pass yours if you trained
    otherwise, or `ensure_sft_model` will train the chapter's model again)."""
    target = artifacts_dir("ch08") / "sft"
    recipe = sft_model_recipe() if recipe is None else recipe
    recipe_path(target).unlink(missing_ok=True)
    save_model_with_history(model, target, history)
    record_recipe(target, recipe)
    return target


def ensure_sft_model():
    """The instruction-tuned model (a `LanguageModel`): loaded from artifacts_dir("ch08")/"sft"
    if the chapter's recipe built it, or fine-tuned from chapter 6's base model and saved there
    first (also when SFT_TRAINING, the data or the base model changed)."""
    from chapters.ch04_blocks.model import LanguageModel

    folder = artifacts_dir("ch08") / "sft"
    recipe = sft_model_recipe()
    if reason := stale_reason(folder, recipe):
        print(f"Fine-tuned model in the artifacts: {reason}. Fine-tuning the base model.")
        model, history = train_sft_model()
        save_sft_model(model, history, recipe)
    return LanguageModel.from_pretrained(folder)
