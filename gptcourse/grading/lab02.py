"""Exercise specs for Lab 2 (byte-pair encoding), against :mod:`gptcourse.tokenizers`:
``get_stats(ids)``, ``merge(ids, pair, idx)``, ``train(text, vocab_size)``, ``decode(ids, vocab)`` and
``encode(text, merges, byte_ids=range(256))``.

Training accepts any tie-break (each learned merge must be a most frequent pair of its step).
``encode`` is graded twice: against this package's BPE with merges trained here, and id for id
against tiktoken with GPT-2's merges (:func:`gpt2_merges` recovers the ones a text can use, as
:meth:`gptcourse.tokenizers.BPETokenizer.from_tiktoken` does for all 50,000).
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import regex
import torch

from gptcourse.grading.lab01 import diagnosed
from gptcourse.grading.spec import AnswerError, Case, Misconception, Spec, randint
from gptcourse.tokenizers import GPT2_SPLIT_PATTERN, BPETokenizer, _bpe_bytes, get_stats, gpt2_encoding, merge

# Code-point ranges a random test string draws from: ASCII, accented Latin, Greek and Cyrillic,
# CJK, emoji (4 UTF-8 bytes), combining marks, and whitespace of several kinds.
_RANGES = [
    (0x20, 0x7E),
    (0xC0, 0x17F),
    (0x391, 0x3C9),
    (0x410, 0x44F),
    (0x4E00, 0x4FFF),
    (0x1F600, 0x1F64F),
    (0x300, 0x36F),
]
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
_SAMPLE_LABELS = [
    "English prose",
    "Python code",
    "runs of whitespace",
    "numbers",
    "capitalisation",
    "Chinese, Japanese and Korean",
    "emoji and accents",
    "mixed scripts and symbols",
]


def random_unicode(rng: random.Random | torch.Generator, length: int) -> str:
    """A random string of ``length`` pieces: characters from many scripts, emoji and whitespace.
    ``rng`` is a ``random.Random`` (the tests') or a ``torch.Generator`` (the specs')."""
    if isinstance(rng, random.Random):
        randint = rng.randint
    else:

        def randint(lo: int, hi: int) -> int:
            return int(torch.randint(lo, hi + 1, (1,), generator=rng))

    pieces = []
    for _ in range(length):
        if randint(0, 99) < 15:
            pieces.append(_SPACES[randint(0, len(_SPACES) - 1)])
        else:
            lo, hi = _RANGES[randint(0, len(_RANGES) - 1)]
            pieces.append(chr(randint(lo, hi)))
    return "".join(pieces)


def _kind(value: Any) -> str:
    return f"a {type(value).__name__}"


def compare_ids(got: Any, expected: Any, case: Case) -> str | None:
    """Equal lists of int ids (merge's and encode's outputs); otherwise where they first differ."""
    if got == expected and isinstance(got, list):
        return None
    if not isinstance(got, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in got):
        return f"returned {_kind(got)}, expected a list of int ids"
    where = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    lengths = f"{len(got)} ids, expected {len(expected)}" if len(got) != len(expected) else f"{len(got)} ids"
    return (
        f"returned {lengths}; they differ from position {where}: got {got[where : where + 5]}, expected "
        f"{expected[where : where + 5]}"
    )


# --- Exercise 1: counting pairs -------------------------------------------------------------------------


def _random_ids(g: torch.Generator) -> list[int]:
    """Small ids, so that pairs repeat; sometimes a run of one id first, to test overlaps."""
    run = [randint(g, 0, 2)] * randint(g, 0, 7) if randint(g, 0, 9) < 3 else []
    return run + torch.randint(6, (randint(g, 0, 30),), generator=g).tolist()


def stats_cases(g: torch.Generator) -> list[Case]:
    # the first case tells every misconception apart: a run (overlaps), a repeated pair, a last pair
    cases = [
        Case("a run and a repeated pair", ([1, 1, 1, 1, 2, 3, 1, 2],)),
        Case("the lab's example", ([1, 2, 3, 1, 2],)),
        Case("overlapping pairs: [1, 1, 1]", ([1, 1, 1],)),
        Case("no ids", ([],)),
        Case("a single id: no pair", ([5],)),
    ]
    cases += [Case(f"random ids {i + 1}", (_random_ids(g),)) for i in range(4)]
    return cases


def run_pairs(answer: Callable[..., Any], case: Case) -> dict:
    """The counts as a plain dict, zero counts dropped."""
    counts = answer(*case.args)
    if not isinstance(counts, Mapping):
        raise AnswerError(f"returned {_kind(counts)}, expected a dict {{(a, b): count}}")
    return {pair: count for pair, count in counts.items() if count}


def compare_pairs(got: Any, expected: Any, case: Case) -> str | None:
    if got == expected:
        return None
    if not isinstance(got, dict):
        return f"returned {_kind(got)}, expected a dict"
    wrong = next(p for p in [*expected, *got] if got.get(p) != expected.get(p))
    return f"counts the pair {wrong!r} {got.get(wrong, 0)} time(s), expected {expected.get(wrong, 0)}"


def _stats(pairs: Callable[[list[int]], list[tuple[int, int]]]) -> Callable[[list[int]], dict]:
    def count(ids: list[int]) -> dict:
        counts: dict = {}
        for pair in pairs(ids):
            counts[pair] = counts.get(pair, 0) + 1
        return counts

    return count


def _non_overlapping(ids: list[int]) -> dict:
    """Each pair counted as merge would replace it: occurrences that overlap an earlier one are skipped."""
    return {p: len(ids) - len(merge(ids, p, -1)) for p in dict.fromkeys(itertools.pairwise(ids))}


STATS = Spec(
    id="lab02.get_stats",
    points=1,
    name="get_stats",
    reference=get_stats,
    cases=stats_cases,
    run=run_pairs,
    compare=compare_pairs,
    forbidden=("gptcourse.tokenizers.get_stats",),
    hint="every position i that has a next id starts one pair (ids[i], ids[i + 1]); count how often each pair occurs",
    misconceptions=(
        Misconception(
            "each pair counted once",
            lambda ids: dict.fromkeys(itertools.pairwise(ids), 1),
            "count how many times each pair occurs, not only which pairs occur",
        ),
        Misconception(
            "overlapping pairs skipped",
            _non_overlapping,
            "pairs overlap: every adjacent pair counts, so [1, 1, 1] holds (1, 1) twice (merge, not "
            "get_stats, is the step that skips overlaps)",
        ),
        Misconception(
            "last pair missed",
            _stats(lambda ids: list(itertools.pairwise(ids[:-1]))),
            "the last pair is (ids[-2], ids[-1]): a list of L ids has L - 1 adjacent pairs",
        ),
        Misconception(
            "wraps around",
            _stats(lambda ids: list(itertools.pairwise(ids + ids[:1])) if len(ids) > 1 else []),
            "the last id has no next id: the sequence does not wrap around to its start",
        ),
    ),
)


# --- Exercise 2: merging a pair -------------------------------------------------------------------------------


def merge_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("overlapping occurrences: [1, 1, 1]", ([1, 1, 1], (1, 1), 9)),
        Case("no ids", ([], (1, 2), 9)),
        Case("a single id", ([1], (1, 2), 9)),
        Case("two occurrences", ([1, 2, 1, 2], (1, 2), 9)),
        Case("the lab's example", ([5, 6, 6, 7, 9, 1], (6, 7), 99)),
        Case("the pair at the very end", ([3, 4, 1, 2], (1, 2), 7)),
    ]
    for i in range(4):
        pair = (randint(g, 0, 3), randint(g, 0, 3))
        cases.append(Case(f"random ids {i + 1}", (_random_ids(g), pair, 99)))
    return cases


def _merge(
    step: int = 2, keep_last: bool = True, first_only: bool = False, from_right: bool = False
) -> Callable[[list[int], tuple[int, int], int], list[int]]:
    """A merge that skips ``step`` ids after a match, drops the last id when not ``keep_last``, stops
    after one replacement when ``first_only``, and scans from the right when ``from_right``."""

    def merge(ids: list[int], pair: tuple[int, int], idx: int) -> list[int]:
        if from_right:
            ids, pair = ids[::-1], pair[::-1]
        out, i, done = [], 0, False
        while i < len(ids) - (0 if keep_last else 1):
            if not done and i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
                out.append(idx)
                i += step
                done = first_only
            else:
                out.append(ids[i])
                i += 1
        return out[::-1] if from_right else out

    return merge


MERGE = Spec(
    id="lab02.merge",
    points=1,
    name="merge",
    reference=merge,
    cases=merge_cases,
    compare=compare_ids,
    forbidden=("gptcourse.tokenizers.merge",),
    hint="scan from left to right; where ids[i], ids[i + 1] is the pair, emit idx and continue after both ids; "
    "everything else is copied",
    misconceptions=(
        Misconception(
            "overlapping occurrences merged",
            _merge(step=1),
            "after replacing a pair, continue after both of its ids: occurrences never overlap, so "
            "[1, 1, 1] becomes [9, 1]",
        ),
        Misconception(
            "last id dropped",
            _merge(keep_last=False),
            "when the scan reaches the last id there is no pair left to test, but the id stays in the output",
        ),
        Misconception(
            "only the first occurrence",
            _merge(first_only=True),
            "replace every occurrence of the pair, not only the first",
        ),
        Misconception(
            "scanned from the right",
            _merge(from_right=True),
            "scan from left to right: in [1, 1, 1] the left occurrence of (1, 1) is the one replaced",
        ),
    ),
)


# --- Exercise 3: training -----------------------------------------------------------------------------------

_WORDS = ("the ", "then ", "hat ", "that ", "a ", "cat ", "🙂", "猫 ")


def _words(g: torch.Generator, count: int, words: Sequence[str] = _WORDS) -> str:
    return "".join(words[i] for i in torch.randint(len(words), (count,), generator=g).tolist())


def train_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("repeated words", (_words(g, 60), 256 + 8)),
        Case("vocab_size 255: no room for the bytes", (_words(g, 20), 255)),
        Case("vocab_size 256: no merge", (_words(g, 20), 256)),
        Case("ties: every pair occurs once", ("abcdefgh", 256 + 3)),
        Case("multi-byte characters", (_words(g, 40, ("🙂", "猫 ", "é", "a")), 256 + 6)),
    ]
    for i in range(2):
        cases.append(Case(f"random words {i + 1}", (_words(g, randint(g, 30, 80)), 256 + randint(g, 3, 12))))
    return cases


def reference_train(text: str, vocab_size: int) -> dict[tuple[int, int], int]:
    """The merges the lab asks for: on the whole text as one sequence (no pre-split)."""
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be >= 256 (the 256 byte tokens), got {vocab_size}")
    ids, merges = list(text.encode("utf-8")), {}
    for idx in range(256, vocab_size):
        stats = get_stats(ids)
        if not stats:
            break
        pair = max(stats, key=stats.get)
        ids = merge(ids, pair, idx)
        merges[pair] = idx
    return merges


def run_train(answer: Callable[..., Any], case: Case) -> Any:
    """The learned merges as a list of ``(pair, id)`` in order; ``"raised ValueError"`` where the
    case asks for one (vocab_size < 256)."""
    try:
        merges = answer(*case.args)
    except ValueError:
        if case.args[1] >= 256:
            raise
        return "raised ValueError"
    if not isinstance(merges, Mapping):
        raise AnswerError(f"returned {_kind(merges)}, expected a dict {{(a, b): new_id}}")
    return [(pair, idx) for pair, idx in merges.items()]


def diagnose_train(got: Any, case: Case) -> tuple[str, str] | None:
    """What is wrong with learned merges, replayed on the text: their number, their ids, and whether
    each merged a most frequent pair of the ids at its step."""
    text, vocab_size = case.args
    if vocab_size < 256:
        if got == "raised ValueError":
            return None
        return "no error", "returned instead of raising: a vocab_size below 256 has no room for the 256 byte tokens"
    if not isinstance(got, list) or not all(isinstance(m, tuple) and len(m) == 2 for m in got):
        return "type", f"returned {_kind(got)}, expected a dict {{(a, b): new_id}}"
    wanted = len(reference_train(text, vocab_size))
    if len(got) != wanted:
        return "count", (
            f"learned {len(got)} merges, expected {wanted}: vocab_size counts every token, the 256 bytes included"
        )
    ids = list(text.encode("utf-8"))
    for step, (pair, idx) in enumerate(got):
        if idx != 256 + step:
            return "ids", f"gave merge number {step} the id {idx!r}, expected {256 + step}"
        stats = get_stats(ids)
        best = max(stats, key=stats.get)
        if not isinstance(pair, tuple) or stats.get(pair, 0) != stats[best]:
            count = stats.get(pair, 0) if isinstance(pair, tuple) else 0
            return ("first merge" if step == 0 else "later merge"), (
                f"learned {pair!r} as merge number {step}; it occurs {count} time(s) in the ids at that step, "
                f"but {best} occurs {stats[best]} times"
            )
        ids = merge(ids, pair, idx)
    return None


def _train(
    stale: bool = False, pick: Callable = max, first_id: int = 256, extra: int = 0, check: bool = True
) -> Callable[[str, int], dict]:
    """A training loop that counts pairs once (``stale``), picks with ``pick``, numbers new ids from
    ``first_id``, learns ``extra`` merges too many and raises below 256 when ``check``."""

    def train(text: str, vocab_size: int) -> dict:
        if check and vocab_size < 256:
            raise ValueError("vocab_size must be >= 256")
        ids, merges = list(text.encode("utf-8")), {}
        ranked = sorted(get_stats(ids).items(), key=lambda item: -item[1])
        for i in range(vocab_size - 256 + extra):
            stats = get_stats(ids)
            if not stats or (stale and i >= len(ranked)):
                break
            pair = ranked[i][0] if stale else pick(stats, key=stats.get)
            ids = merge(ids, pair, first_id + i)
            merges[pair] = first_id + i
        return merges

    return train


TRAIN = Spec(
    id="lab02.train",
    points=2,
    name="train",
    reference=reference_train,
    cases=train_cases,
    run=run_train,
    compare=diagnosed(diagnose_train),
    forbidden=("gptcourse.tokenizers.BPETokenizer.train",),
    hint="start from the text's UTF-8 bytes; vocab_size - 256 times: count the pairs of the current ids, merge "
    "the most frequent one into the next new id (256, 257, ...), and record it",
    misconceptions=(
        Misconception(
            "counts not updated after a merge",
            _train(stale=True),
            "count the pairs of the CURRENT ids at every step: a merge changes which pairs occur, and how often",
        ),
        Misconception(
            "least frequent pair",
            _train(pick=min),
            "merge the most frequent pair: it is the one that shortens the text the most",
        ),
        Misconception(
            "ids from 257",
            _train(first_id=257),
            "ids 0 to 255 are the bytes, so the first new token gets id 256, the next 257, ...",
        ),
        Misconception(
            "one merge too many",
            _train(extra=1),
            "vocab_size counts every token, the 256 bytes included: it leaves room for vocab_size - 256 merges",
        ),
        Misconception(
            "no ValueError below 256",
            _train(check=False),
            "a vocab_size below 256 has no room for the 256 byte tokens: raise a ValueError that says so "
            "instead of returning",
        ),
    ),
)


# --- Exercise 4: decoding -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _trained_on(text: str) -> BPETokenizer:
    return BPETokenizer().train(text, 256 + 60)


def _trained(g: torch.Generator) -> BPETokenizer:
    """The package's tokenizer with 60 merges, trained on the sample texts and random unicode (once
    per text: the grader builds a seed's cases several times)."""
    return _trained_on(" ".join(SAMPLE_TEXTS) + random_unicode(g, 200))


@functools.lru_cache(maxsize=256)
def _encoded(tok: BPETokenizer, text: str) -> tuple[int, ...]:
    return tuple(tok.encode(text))


def _texts(g: torch.Generator, count: int) -> list[tuple[str, str]]:
    """``(label, text)``: the sample texts, then ``count`` random unicode strings."""
    texts = list(zip(_SAMPLE_LABELS, SAMPLE_TEXTS))
    return texts + [(f"random unicode {i + 1}", random_unicode(g, randint(g, 1, 40))) for i in range(count)]


def decode_cases(g: torch.Generator) -> list[Case]:
    tok = _trained(g)
    cases = [
        Case("an emoji given as its 4 single bytes", (list("🙂".encode()), tok.vocab)),
        Case("the first byte of '€' alone (half a character)", ([0xE2], tok.vocab)),
        Case("no ids: the empty text", ([], tok.vocab)),
    ]
    return cases + [Case(label, (list(_encoded(tok, text)), tok.vocab)) for label, text in _texts(g, 3)]


def run_decode(answer: Callable[..., Any], case: Case) -> Any:
    """The text; ``{"raised": "UnicodeDecodeError"}`` if decoding the bytes strictly failed."""
    try:
        return answer(*case.args)
    except UnicodeDecodeError:
        return {"raised": "UnicodeDecodeError"}


def reference_decode(ids: list[int], vocab: dict[int, bytes]) -> str:
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def compare_text(got: Any, expected: Any, case: Case) -> str | None:
    if type(got) is type(expected) and got == expected:
        return None
    if isinstance(got, dict) and "raised" in got:
        return f"raised {got['raised']}: the bytes are not valid UTF-8 (half a character), expected {expected!r}"
    if not isinstance(got, str):
        return f"returned {_kind(got)} ({got!r:.60}), expected the str {expected!r:.60}"
    if not isinstance(expected, str):
        return f"returned the str {got!r:.60}, not {_kind(expected)}"
    where = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    return (
        f"returned a text that differs at character {where}: got {got[where : where + 12]!r}, expected "
        f"{expected[where : where + 12]!r}"
    )


DECODE = Spec(
    id="lab02.decode",
    points=1,
    name="decode",
    reference=reference_decode,
    cases=decode_cases,
    run=run_decode,
    compare=compare_text,
    forbidden=("gptcourse.tokenizers.BPETokenizer.decode", "tiktoken.Encoding.decode"),
    hint="join the bytes of every token into one bytes object, then decode it as UTF-8, with the bytes that are not "
    "valid UTF-8 replaced by U+FFFD",
    misconceptions=(
        Misconception(
            "bytes returned",
            lambda ids, vocab: b"".join(vocab[i] for i in ids),
            "decode returns text (a str): the joined bytes still have to be decoded as UTF-8",
        ),
        Misconception(
            "decoded token by token",
            lambda ids, vocab: "".join(vocab[i].decode("utf-8", errors="replace") for i in ids),
            "a character can be split over several tokens (an emoji is 4 bytes): join the bytes of all "
            "tokens first, then decode them once",
        ),
        Misconception(
            "bytes read as Latin-1",
            lambda ids, vocab: "".join(chr(b) for i in ids for b in vocab[i]),
            "the bytes are UTF-8: a character outside ASCII takes 2 to 4 bytes, so one byte is not one character",
        ),
        Misconception(
            "strict UTF-8",
            lambda ids, vocab: b"".join(vocab[i] for i in ids).decode("utf-8"),
            "a token can end in the middle of a character: decode with the 'replace' error handler, so that invalid "
            "bytes become U+FFFD as in tiktoken",
        ),
        Misconception(
            "invalid bytes dropped",
            lambda ids, vocab: b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore"),
            "invalid bytes become U+FFFD (the 'replace' error handler), as in tiktoken: dropping them "
            "hides that the ids ended in the middle of a character",
        ),
    ),
)


# --- Exercise 5: encoding ---------------------------------------------------------------------------------------


def encode_cases(g: torch.Generator) -> list[Case]:
    tok = _trained(g)
    cases = [
        Case("three merges: the lowest id first", ("abcd", {(99, 100): 256, (97, 98): 257, (98, 99): 258})),
        Case("the merge learned first, whatever comes first", ("abc", {(98, 99): 256, (97, 98): 257})),
        Case("the merge learned first, not the most frequent", ("abab", {(98, 97): 256, (97, 98): 257})),
        Case("a merge that would cross a chunk boundary", ("ab ab", {(98, 32): 256})),
        Case("a byte order other than 0-255", ("ab", {(158, 157): 256}, list(range(255, -1, -1)))),
        Case("a character of two UTF-8 bytes", ("é", {(0xC3, 0xA9): 256})),
        Case("the empty text", ("", {(97, 98): 256})),
    ]
    return cases + [Case(label, (text, tok.merges)) for label, text in _texts(g, 3)]


def reference_encode(
    text: str, merges: Mapping[tuple[int, int], int], byte_ids: Sequence[int] = range(256)
) -> list[int]:
    """The package's BPE with these merges and byte ids (GPT-2's pre-split, lowest id first)."""
    tok = BPETokenizer()
    tok.merges, tok.byte_ids = dict(merges), list(byte_ids)
    return tok.encode_ordinary(text)


def run_encode(answer: Callable[..., Any], case: Case) -> Any:
    ids = answer(*case.args)
    return list(ids) if isinstance(ids, tuple) else ids


def _encode(pick: str = "lowest", split: bool = True, bytes_of: str = "utf-8") -> Callable[..., list[int]]:
    """An encoder that merges the pair picked by ``pick`` (lowest | highest id, first in the chunk, most
    frequent), pre-splits when ``split``, and starts from ``bytes_of`` (utf-8 | raw bytes | code points)."""

    def encode(text: str, merges: Mapping[tuple[int, int], int], byte_ids: Sequence[int] = range(256)) -> list[int]:
        ids: list[int] = []
        for chunk in regex.findall(GPT2_SPLIT_PATTERN, text) if split else [text]:
            if bytes_of == "code points":
                chunk_ids = [byte_ids[ord(c)] if ord(c) < 256 else ord(c) for c in chunk]
            else:
                chunk_ids = [b if bytes_of == "raw bytes" else byte_ids[b] for b in chunk.encode("utf-8")]
            while len(chunk_ids) >= 2:
                stats = get_stats(chunk_ids)
                if pick == "first":
                    pair = next((p for p in stats if p in merges), None)
                elif pick == "frequent":
                    pair = max(stats, key=stats.get)
                elif pick == "highest":
                    pair = max((p for p in stats if p in merges), key=merges.get, default=None)
                else:
                    pair = min(stats, key=lambda p: merges.get(p, float("inf")))
                if pair not in merges:
                    break
                chunk_ids = merge(chunk_ids, pair, merges[pair])
            ids.extend(chunk_ids)
        return ids

    return encode


_ENCODE_MISCONCEPTIONS = (
    Misconception(
        "first pair of the chunk",
        _encode(pick="first"),
        "merge the pair that was learned first (the lowest new id in merges), wherever it is in the chunk, "
        "not the first mergeable pair from the left",
    ),
    Misconception(
        "most frequent pair",
        _encode(pick="frequent"),
        "encoding does not count pairs as training did: apply the merges in the order they were learned "
        "(lowest new id first)",
    ),
    Misconception(
        "highest id first",
        _encode(pick="highest"),
        "a lower id was learned earlier, and the merges are replayed in the order they were learned: the "
        "lowest id first",
    ),
    Misconception(
        "no pre-split",
        _encode(split=False),
        "split the text into chunks with GPT-2's pattern first: merges never cross a chunk boundary (Chapter 2)",
    ),
    Misconception(
        "byte_ids ignored",
        _encode(bytes_of="raw bytes"),
        "each byte starts as the id byte_ids gives it: GPT-2 numbers its 256 byte tokens in its own order",
    ),
)

ENCODE = Spec(
    id="lab02.encode",
    points=3,
    name="encode",
    reference=reference_encode,
    cases=encode_cases,
    run=run_encode,
    compare=compare_ids,
    forbidden=(
        "gptcourse.tokenizers.BPETokenizer.encode",
        "gptcourse.tokenizers.BPETokenizer.encode_ordinary",
        "tiktoken.Encoding.encode",
    ),
    hint="split with GPT-2's pattern; in each chunk start from the ids of its UTF-8 bytes and repeatedly merge the "
    "adjacent pair with the lowest id in merges, until no pair of the chunk is in merges",
    misconceptions=(
        *_ENCODE_MISCONCEPTIONS,
        Misconception(
            "code points, not UTF-8 bytes",
            _encode(bytes_of="code points"),
            "start from the text's UTF-8 bytes: a character outside ASCII is 2 to 4 bytes, not one id per character",
        ),
    ),
)


# --- Exercise 6: GPT-2's tokenizer -------------------------------------------------------------------------------


class Named(dict):
    """A dict that messages show by name (GPT-2's merges are too many to print)."""

    def __init__(self, name: str, items: Any = ()) -> None:
        super().__init__(items)
        self.name = name

    def __repr__(self) -> str:
        return self.name


@functools.lru_cache(maxsize=1)
def _gpt2() -> tuple[dict[bytes, int], int, list[int]]:
    """GPT-2's ranks ``{token bytes: id}``, its longest token's length and its byte ids."""
    ranks = gpt2_encoding("gpt2")._mergeable_ranks  # tiktoken has no public getter
    return ranks, max(map(len, ranks)), [ranks[bytes([b])] for b in range(256)]


@functools.lru_cache(maxsize=64)
def gpt2_merges(text: str) -> dict[tuple[int, int], int]:
    """GPT-2's merges that can take part in encoding ``text``, in the order they were learned.

    A merge makes a token of contiguous bytes, so only tokens that are substrings of the text can
    ever form; for each, BPE on its bytes with the lower-ranked tokens leaves its two parts (as
    :meth:`~gptcourse.tokenizers.BPETokenizer.from_tiktoken` recovers all 50,000). Any merge-based
    encoder gives the same ids with these merges as with all of GPT-2's."""
    ranks, longest, _ = _gpt2()
    data = text.encode("utf-8")
    found = {}
    for i in range(len(data)):
        for j in range(i + 2, min(len(data), i + longest) + 1):
            rank = ranks.get(data[i:j])
            if rank is not None and rank not in found:
                left, right = _bpe_bytes(ranks, data[i:j], max_rank=rank)
                found[rank] = (ranks[left], ranks[right])
    return {found[rank]: rank for rank in sorted(found)}


def gpt2_cases(g: torch.Generator) -> list[Case]:
    byte_ids = _gpt2()[2]
    return [
        Case(label, (text, Named("GPT-2's merges", gpt2_merges(text)), list(byte_ids))) for label, text in _texts(g, 4)
    ]


def reference_gpt2(text: str, merges: Mapping[tuple[int, int], int], byte_ids: Sequence[int]) -> list[int]:
    """tiktoken's ids: the merges and byte ids are GPT-2's, so the answer must give these."""
    return gpt2_encoding("gpt2").encode_ordinary(text)


GPT2 = Spec(
    id="lab02.gpt2",
    points=2,
    name="encode",
    reference=reference_gpt2,
    cases=gpt2_cases,
    run=run_encode,
    compare=compare_ids,
    forbidden=ENCODE.forbidden + ("tiktoken.Encoding.encode_ordinary",),
    hint="with GPT-2's merges and byte ids your encode must give tiktoken's ids: each byte b starts as GPT-2's id "
    "for it (from byte_ids), chunks come from GPT-2's pattern, and the lowest-id pair is merged first",
    misconceptions=_ENCODE_MISCONCEPTIONS,
)

SPECS = (STATS, MERGE, TRAIN, DECODE, ENCODE, GPT2)
