"""Checks for Lab 2 (byte-pair encoding): pair counting, merging, training, encode and decode.

The learner's ``encode`` is graded twice: round trips on random unicode strings with merges trained
here, and id-for-id equality with tiktoken when given GPT-2's merges (recovered by
:meth:`gptcourse.tokenizers.BPETokenizer.from_tiktoken`).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

from gptcourse.grading import exercise, expect_equal, expect_type, fail
from gptcourse.tokenizers import BPETokenizer, get_stats, gpt2_encoding, merge

# Code-point ranges a random test string draws from: ASCII, accented Latin, Greek and Cyrillic,
# CJK, emoji (4 UTF-8 bytes), combining marks, and whitespace of several kinds.
_RANGES = [(0x20, 0x7E), (0xC0, 0x17F), (0x391, 0x3C9), (0x410, 0x44F), (0x4E00, 0x4FFF),
           (0x1F600, 0x1F64F), (0x300, 0x36F)]
_SPACES = [" ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000"]

SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's 3:45pm; we'll see.",
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "    four spaces, then\ttabs\t\tand  double  spaces   and trailing   \n\n\n",
    "Numbers: 1 12 123 1234 12345 3.14159 -42 1,000,000 2024-06-01 0x1F 1e-10",
    "HELLO Hello hello hELLO — capitalisation changes tokens.",
    "中文：你好，世界！日本語のテキスト。한국어 텍스트.",
    "Emoji 🙂👍🏽🇫🇷 and naïve café façade Ærøskøbing ĳ ﬁ",
    "Mixed: résumé 東京 🚀 x²+y²=z² ∑∫√ «quotes» “curly” ‘single’ — en–dash…",
]


def random_unicode(rng: random.Random, length: int) -> str:
    """A random string of ``length`` pieces: characters from many scripts, emoji and whitespace."""
    pieces = []
    for _ in range(length):
        if rng.random() < 0.15:
            pieces.append(rng.choice(_SPACES))
        else:
            lo, hi = rng.choice(_RANGES)
            pieces.append(chr(rng.randint(lo, hi)))
    return "".join(pieces)


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> BPETokenizer:
    """GPT-2's merges, recovered once per session (about 2 s)."""
    return BPETokenizer.from_tiktoken("gpt2")


def _random_ids(rng: random.Random) -> list[int]:
    # small ids so that pairs repeat; sometimes runs of one id ("aaaa") to test overlaps
    if rng.random() < 0.3:
        return [rng.randint(0, 2)] * rng.randint(0, 7) + [rng.randint(0, 3) for _ in range(rng.randint(0, 10))]
    return [rng.randint(0, 5) for _ in range(rng.randint(0, 30))]


@exercise("lab02.get_stats")
def check_get_stats(get_stats_fn: Callable) -> None:
    rng = random.Random()
    for _ in range(50):
        ids = _random_ids(rng)
        got = get_stats_fn(ids)
        expect_type("get_stats(ids)", got, dict)
        expected = get_stats(ids)
        if dict(got) != expected:
            wrong = next((p for p in set(got) | set(expected) if got.get(p) != expected.get(p)), None)
            fail(f"get_stats({ids}) counts pair {wrong} {got.get(wrong, 0)} time(s), expected "
                 f"{expected.get(wrong, 0)}", "count every adjacent pair (ids[i], ids[i+1]), overlapping ones too")


@exercise("lab02.merge")
def check_merge(merge_fn: Callable) -> None:
    rng = random.Random()
    for case in [([1, 1, 1], (1, 1), 9), ([], (1, 2), 9), ([1], (1, 2), 9), ([1, 2, 1, 2], (1, 2), 9)]:
        got, expected = merge_fn(list(case[0]), *case[1:]), merge(*case)
        expect_equal(f"merge({case[0]}, {case[1]}, {case[2]})", got, expected,
                     "scan left to right; after replacing a pair, skip both of its ids (so [1, 1, 1] -> [9, 1])")
    for _ in range(50):
        ids = _random_ids(rng)
        pair = (rng.randint(0, 3), rng.randint(0, 3))
        expect_equal(f"merge({ids}, {pair}, 99)", merge_fn(list(ids), pair, 99), merge(ids, pair, 99))


@exercise("lab02.train")
def check_train(train_fn: Callable) -> None:
    """Any tie-break is fine: each learned merge must be a most frequent pair at its step."""
    rng = random.Random()
    words = ["the ", "then ", "hat ", "that ", "a ", "cat ", "🙂", "猫 "]
    for trial in range(3):
        text = "".join(rng.choice(words) for _ in range(rng.randint(30, 80)))
        vocab_size = 256 + rng.randint(3, 12)
        merges = train_fn(text, vocab_size)
        expect_type("train(text, vocab_size)", merges, dict)
        ids = list(text.encode("utf-8"))
        if len(merges) != vocab_size - 256:
            fail(f"train(text, {vocab_size}) learned {len(merges)} merges, expected {vocab_size - 256} "
                 "(vocab_size counts the 256 byte tokens)")
        for step, (pair, idx) in enumerate(merges.items()):
            stats = get_stats(ids)
            if idx != 256 + step:
                fail(f"merge number {step} got id {idx}, expected {256 + step} (new ids count up from 256)")
            if stats.get(pair, 0) != max(stats.values()):
                fail(f"merge number {step} is {pair}, which occurs {stats.get(pair, 0)} times, but "
                     f"{max(stats, key=stats.get)} occurs {max(stats.values())} times",
                     "merge the most frequent pair of the CURRENT ids (after the earlier merges)")
            ids = merge(ids, pair, idx)
        with_error = None
        try:
            train_fn(text, 255)
        except ValueError as err:
            with_error = err
        if with_error is None:
            fail("train(text, 255) should raise ValueError: a vocabulary needs its 256 byte tokens")


def _trained_tokenizer(rng: random.Random) -> BPETokenizer:
    text = " ".join(SAMPLE_TEXTS) + random_unicode(rng, 200)
    return BPETokenizer().train(text, 256 + 60)


@exercise("lab02.decode")
def check_decode(decode_fn: Callable) -> None:
    rng = random.Random()
    tok = _trained_tokenizer(rng)
    for text in SAMPLE_TEXTS + [random_unicode(rng, rng.randint(0, 40)) for _ in range(20)]:
        ids = tok.encode(text)
        expect_equal(f"decode({ids[:8]}...)", decode_fn(ids, tok.vocab), text,
                     "join the bytes of every token, then bytes.decode('utf-8', errors='replace')")
    # half of a character: its first byte alone is not valid UTF-8 -> the replacement character
    expect_equal("decode of the first byte of '€'", decode_fn([0xE2], tok.vocab), "\ufffd",
                 "decode with errors='replace', as tiktoken does")


@exercise("lab02.encode")
def check_encode(encode_fn: Callable) -> None:
    # the merge learned first goes first, whatever comes first in the text or occurs most often
    for text, merges, expected in (("abc", {(98, 99): 256, (97, 98): 257}, [97, 256]),
                                   ("abab", {(98, 97): 256, (97, 98): 257}, [97, 256, 98])):
        expect_equal(f"encode({text!r}, {merges})", encode_fn(text, merges), expected,
                     "in each chunk, merge the pair with the LOWEST id in merges first (it was learned first)")
    rng = random.Random()
    tok = _trained_tokenizer(rng)
    for text in SAMPLE_TEXTS + [random_unicode(rng, rng.randint(0, 40)) for _ in range(20)]:
        got, expected = encode_fn(text, tok.merges), tok.encode(text)
        expect_type(f"encode({text[:20]!r}...)", got, list)
        if got != expected:
            fail(f"encode({text!r}) gave {got[:12]}..., expected {expected[:12]}...",
                 "split with the pattern, then in each chunk merge the pair with the LOWEST merge id first")
        if tok.decode(got) != text:
            fail(f"decode(encode({text!r})) does not give the text back")


@exercise("lab02.gpt2")
def check_gpt2(encode_fn: Callable) -> None:
    """With GPT-2's merges and byte order, the learner's encode must give tiktoken's ids."""
    rng = random.Random()
    enc, tok = gpt2_encoding("gpt2"), gpt2_tokenizer()
    for text in SAMPLE_TEXTS + [random_unicode(rng, rng.randint(1, 30)) for _ in range(10)]:
        got, expected = encode_fn(text, tok.merges, tok.byte_ids), enc.encode(text)
        if got != expected:
            where = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            fail(f"on {text!r} your ids differ from tiktoken's at position {where}: got {got[where:where + 5]}, "
                 f"expected {expected[where:where + 5]}",
                 "start each chunk from [byte_ids[b] for b in chunk_bytes] (GPT-2 numbers the bytes in its "
                 "own order), split with GPT2_SPLIT_PATTERN, and merge the lowest-id pair first")
