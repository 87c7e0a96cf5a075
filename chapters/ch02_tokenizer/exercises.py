"""Checks for the exercises of chapter 2 (hand-written, not generated).

Each check calls the student's function on small cases and raises NotRightYet with a hint when
the answer is wrong; a stub's NotImplementedError passes through (check_exercise reports it).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from chapters.ch02_tokenizer.bpe import BPETokenizer, Tokenizer, best_pair, merge
from chapters.course import NotRightYet


def check_merge_pair(merge_pair: Callable[[list[int], tuple[int, int], int], list[int]]) -> None:
    """Compare with the chapter's `merge` on hand-picked and random cases."""
    cases = [
        ([1, 2, 3, 1, 2], (1, 2), 256),
        ([7, 7, 7], (7, 7), 256),
        ([7, 7, 7, 7], (7, 7), 300),
        ([], (1, 2), 256),
        ([1], (1, 2), 256),
        ([2, 1], (1, 2), 256),
    ]
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(4) for _ in range(rng.randrange(12))]
        cases.append((ids, (rng.randrange(4), rng.randrange(4)), 256))
    for ids, pair, new_id in cases:
        expected = merge(ids, pair, new_id)
        answer = merge_pair(list(ids), pair, new_id)
        if answer != expected:
            raise NotRightYet(
                f"merge_pair({ids}, {pair}, {new_id}) returned {answer}, expected {expected}. "
                "Scan left to right; after replacing a pair, continue after its second element."
            )


def check_choose_pair(
    choose_pair: Callable[[dict[tuple[int, int], int], dict[int, bytes]], tuple[int, int]],
) -> None:
    """Compare with the chapter's `best_pair`, including ties where ids and bytes disagree."""
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[256] = b"za"  # a high id whose bytes sort high
    vocab[257] = b"ab"  # a higher id whose bytes sort low
    cases = [
        {(97, 98): 5, (98, 99): 3},  # the most frequent pair
        {(97, 98): 4, (98, 97): 4},  # tie: b"b" > b"a", so (98, 97)
        {(256, 97): 2, (257, 122): 2},  # tie: b"za" > b"ab" although 256 < 257
        {(97, 256): 3, (97, 257): 3},  # tie on the first string, decided by the second
        {(97, 97): 2, (97, 257): 2},  # b"a" vs b"ab": the longer one is greater
    ]
    rng = random.Random(1)
    for _ in range(100):
        ids = [97, 98, 99, 256, 257]
        cases.append(
            {
                (rng.choice(ids), rng.choice(ids)): rng.randrange(1, 4)
                for _ in range(rng.randrange(1, 8))
            }
        )
    for pair_counts in cases:
        expected = best_pair(pair_counts, vocab)
        answer = choose_pair(dict(pair_counts), vocab)
        if answer != expected:
            shown = {(vocab[a], vocab[b]): count for (a, b), count in pair_counts.items()}
            raise NotRightYet(
                f"for the pair counts {shown} you chose {(vocab[answer[0]], vocab[answer[1]])}, "
                f"expected {(vocab[expected[0]], vocab[expected[1]])}. Highest count first; on a "
                "tie compare the pairs of byte strings (vocab[a], vocab[b]), not the ids."
            )


def check_add_special_token(add_special_token: Callable[[Tokenizer, str], int]) -> None:
    """Train a tiny tokenizer, add `<|tool|>`, and check ids, encode and decode."""
    tokenizer = BPETokenizer()
    tokenizer.train(
        "hello world, hello tokens " * 20, vocab_size=270, special_tokens=["<|endoftext|>"]
    )
    before_vocab = dict(tokenizer.vocab)
    before_special = dict(tokenizer.special_tokens)
    size_before = tokenizer.vocab_size
    new_id = add_special_token(tokenizer, "<|tool|>")
    if new_id != size_before:
        raise NotRightYet(
            f"the new token got id {new_id}, expected {size_before}: the next free id after "
            f"the {size_before} existing ones."
        )
    if tokenizer.vocab != before_vocab or any(
        tokenizer.special_tokens.get(token) != i for token, i in before_special.items()
    ):
        raise NotRightYet("existing ids changed; only add the new token.")
    text = "hello<|tool|> world<|endoftext|>"
    ids = tokenizer.encode(text)
    if ids.count(new_id) != 1:
        raise NotRightYet(
            f"encode({text!r}) gave {ids}: the new token should appear once as {new_id}."
        )
    if tokenizer.decode(ids) != text:
        raise NotRightYet(f"decode(encode({text!r})) gave {tokenizer.decode(ids)!r}.")
    if tokenizer.vocab_size != size_before + 1:
        raise NotRightYet(f"vocab_size is {tokenizer.vocab_size}, expected {size_before + 1}.")


def check_compression_ratio(compression_ratio: Callable[[object, list[str]], float]) -> None:
    """Compare with bytes / tokens on code, prose and non-ASCII text under the course tokenizer."""
    from chapters.ch02_tokenizer.tokenizer import ensure_tokenizer

    tokenizer = ensure_tokenizer()
    code = [
        "def area(radius: float) -> float:\n    return 3.14159 * radius ** 2\n",
        "for index, value in enumerate(values):\n    if value is None:\n        continue\n",
    ]
    prose = [
        "The quick brown fox jumps over the lazy dog while the farmer sleeps.",
        "Tokenizers decide what a language model can see; choose them with care.",
    ]
    non_ascii = ["Größenänderung: naïve café, 東京 und 🤖."]
    for texts in (code, prose, non_ascii):
        total_bytes = sum(len(text.encode("utf-8")) for text in texts)
        tokens = sum(len(tokenizer.encode(text, add_special_tokens=False).ids) for text in texts)
        expected = total_bytes / tokens
        answer = compression_ratio(tokenizer, texts)
        if not isinstance(answer, float | int) or abs(answer - expected) > 1e-9:
            raise NotRightYet(
                f"on {texts[0][:30]!r}... you got {answer}, expected {expected:.4f}. Divide the "
                "number of UTF-8 bytes (len(text.encode('utf-8'))) by the number of token ids."
            )
