"""Exercise specs for Lab 1 (a counting language model), against :mod:`gptcourse.ngram`:
``count_ngrams(tokens, n)``, ``smoothed_probs(next_counts, vocab, k)``, ``perplexity(tokens, n, prob)``
and ``sample(next_probs, vocab, prompt, length, n, generator)``, saved in ``learner/ngram.py`` with the
class built from them, ``NGramModel(n, k)`` (``fit``, ``probs``, ``prob``, ``log_prob``, ``perplexity``,
``sample``).

``NGramModel`` is fitted on the same tokens as the package's and asked the same questions: its
vocabulary and counts, the distributions after contexts of every kind (seen, never seen, longer than
``n - 1``), single probabilities, the log-probability and perplexity of held-out tokens, and samples
drawn with a seed, which must be the package's token for token (the same seeded generator and the
same probabilities draw the same tokens).

Tokens are characters of a string or integer ids. Sampling is judged by properties, so that any
correct sampler passes: the prompt is kept, each step asks the model about the right context, a
token with probability 1 always comes up, a seeded generator repeats the sample, and over many
draws the frequencies match the probabilities.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch

from gptcourse import ngram
from gptcourse.grading.spec import AnswerError, Case, Compare, Misconception, Spec, close, global_seed, number

_ALPHABETS = ("abcd", "abcdefgh", "xy", "ab cd,e")


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """A random integer in ``[lo, hi]``, both included."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def _random_tokens(g: torch.Generator, length: int) -> tuple[str | list[int], list[Hashable]]:
    """Random tokens, as a str of characters or as a list of ints; returns (tokens, vocab)."""
    if _randint(g, 0, 1):
        alphabet = _ALPHABETS[_randint(g, 0, len(_ALPHABETS) - 1)]
        picks = torch.randint(len(alphabet), (length,), generator=g).tolist()
        return "".join(alphabet[i] for i in picks), sorted(alphabet)
    vocab = list(range(_randint(g, 2, 9)))
    return torch.randint(len(vocab), (length,), generator=g).tolist(), vocab


def _context_size(n: int) -> str:
    return "no context at all (the empty tuple ())" if n == 1 else f"the {n - 1} token(s) just before"


def _kind(value: Any) -> str:
    return f"a {type(value).__name__}"


# --- Exercise 1: counting n-grams ------------------------------------------------------------------------


def count_cases(g: torch.Generator) -> list[Case]:
    # first and last predictions differ, so that dropping either one shows as itself
    cases = [
        Case("a short string, n = 2", ("abcbca", 2)),
        Case("the lab's example", ("abab", 2)),
        Case("n = 1: the empty context ()", (_random_tokens(g, 12)[0], 1)),
        Case("int ids, n = 3", (torch.randint(4, (20,), generator=g).tolist(), 3)),
        Case("exactly n tokens: one prediction", ("dcba", 4)),
        Case("fewer than n tokens: nothing to count", ("ab", 3)),
    ]
    for i in range(4):
        n = _randint(g, 1, 4)
        cases.append(Case(f"random tokens {i + 1}", (_random_tokens(g, _randint(g, n, 40))[0], n)))
    return cases


def run_counts(answer: Callable[..., Any], case: Case) -> dict:
    """The counts as plain dicts ``{context: {token: count}}``, zero counts and empty contexts dropped."""
    counts = answer(*case.args)
    if not isinstance(counts, Mapping):
        raise AnswerError(f"returned {_kind(counts)}, expected a dict mapping contexts to Counters")
    plain = {}
    for context, following in counts.items():
        if not isinstance(following, Mapping):
            raise AnswerError(f"maps the context {context!r} to {_kind(following)}, expected a Counter of next tokens")
        kept = {token: count for token, count in following.items() if count}
        if kept:
            plain[context] = kept
    return plain


def compare_counts(got: Any, expected: Any, case: Case) -> str | None:
    """Equal dicts; otherwise name the first wrong context (its type, its length, its counts)."""
    if got == expected:
        return None
    n = case.args[1]
    if not isinstance(got, dict):
        return f"returned {_kind(got)}, expected a dict"
    for context in got:
        if not isinstance(context, tuple):
            return (
                f"has the context {context!r} ({_kind(context)}); contexts are tuples of tokens, "
                "like ('a', 'b'), so that a context of any length is one key"
            )
        if len(context) != n - 1:
            size = (
                "every context is the empty tuple ()"
                if n == 1
                else f"a context is the {n - 1} token(s) before the predicted one"
            )
            return f"has the context {context!r} of {len(context)} token(s); with n={n} {size}"
    for context, following in expected.items():
        if context not in got:
            return f"is missing the context {context!r}, which is followed by {following}"
        if got[context] != following:
            return f"counts {got[context]} after the context {context!r}, expected {following}"
    extra = next(c for c in got if c not in expected)
    return f"has the context {extra!r}, which never occurs before a token"


def _count(
    tokens: Sequence[Hashable], start: int, stop: int, context: Callable[[Sequence[Hashable], int], Any]
) -> dict:
    """Counts of the tokens at positions ``start`` to ``stop - 1``, each under ``context(tokens, i)``."""
    counts: dict = {}
    for i in range(start, stop):
        counts.setdefault(context(tokens, i), Counter())[tokens[i]] += 1
    return counts


COUNTS = Spec(
    id="lab01.counts",
    points=2,
    name="count_ngrams",
    reference=ngram.count_ngrams,
    cases=count_cases,
    run=run_counts,
    compare=compare_counts,
    forbidden=("gptcourse.ngram.count_ngrams", "gptcourse.ngram.ngrams"),
    hint="every position from n - 1 to the end is one prediction: its context is the tuple of the n - 1 tokens "
    "before it, and the token at that position is what gets counted",
    misconceptions=(
        Misconception(
            "contexts not tuples",
            lambda t, n: _count(t, n - 1, len(t), lambda t, i: t[i - n + 1 : i]),
            "a slice of a string is a string, not a tuple: a context is the tuple of its tokens, so "
            "that characters and integer ids are handled alike",
        ),
        Misconception(
            "last position not counted",
            lambda t, n: _count(t, n - 1, len(t) - 1, lambda t, i: tuple(t[i - n + 1 : i])),
            "the last token of the sequence is predicted too: the positions run up to and including "
            "len(tokens) - 1, so the counts add up to len(tokens) - n + 1",
        ),
        Misconception(
            "first prediction skipped",
            lambda t, n: _count(t, n, len(t), lambda t, i: tuple(t[i - n + 1 : i])),
            "the first prediction is at position n - 1 (the first token with n - 1 tokens before it), "
            "so the counts add up to len(tokens) - n + 1",
        ),
        Misconception(
            "predicted token in the context",
            lambda t, n: _count(t, n - 1, len(t), lambda t, i: tuple(t[i - n + 1 : i + 1])),
            "the context is the n - 1 tokens before the predicted one; the predicted token itself is "
            "what the Counter counts",
        ),
        Misconception(
            "n = 1 context is the whole prefix",
            lambda t, n: _count(t, n - 1, len(t), lambda t, i: tuple(t[:i][-(n - 1) :])),
            "for n = 1 the context is the empty tuple (): a slice that starts at -(n - 1) = -0 starts at "
            "the beginning, so it takes every token before the position",
        ),
    ),
)


# --- Exercise 2: add-k smoothing --------------------------------------------------------------------------


def smoothing_cases(g: torch.Generator) -> list[Case]:
    def counts(vocab: Sequence[Hashable]) -> dict:
        """Random counts of some tokens of vocab: at least one token seen, at least one never seen."""
        seen = torch.rand(len(vocab), generator=g) < 0.6
        i = _randint(g, 0, len(vocab) - 1)
        seen[i] = True
        seen[(i + _randint(g, 1, len(vocab) - 1)) % len(vocab)] = False
        return {w: _randint(g, 1, 20) for w, s in zip(vocab, seen.tolist()) if s}

    letters = list("abcdef")
    cases = [
        Case("k = 1, some tokens unseen", (counts(letters), letters, 1)),
        Case("k = 0: the relative frequencies", (counts(letters), letters, 0)),
        Case("an unseen context with k = 0: uniform", ({}, letters, 0)),
        Case("an unseen context with k = 0.5", ({}, list(range(4)), 0.5)),
        Case("a small k (0.01), int tokens", (counts(list(range(7))), list(range(7)), 0.01)),
    ]
    for i in range(3):
        vocab = _random_tokens(g, 0)[1]
        k = round(0.05 + 2.95 * float(torch.rand(1, generator=g)), 3)
        cases.append(Case(f"random counts and k {i + 1}", (counts(vocab), vocab, k)))
    return cases


def _smoothed(
    next_counts: Mapping[Hashable, int],
    vocab: Sequence[Hashable],
    k: float,
    seen_only: bool = False,
    with_k: bool = True,
    k_in_total: bool = True,
) -> torch.Tensor:
    """Add-k ``(V,)`` probabilities, with k only on the seen tokens, no k at all, or no k V in the total,
    and no special case for 0 / 0."""
    k = k if with_k else 0
    counts = torch.tensor(
        [next_counts.get(w, 0) + (k if w in next_counts or not seen_only else 0) for w in vocab], dtype=torch.float64
    )
    total = sum(next_counts.values()) + (k * (len(next_counts) if seen_only else len(vocab)) if k_in_total else 0)
    return counts / total


SMOOTHING = Spec(
    id="lab01.smoothing",
    points=2,
    name="smoothed_probs",
    reference=ngram.smoothed_probs,
    cases=smoothing_cases,
    compare=close(atol=1e-6, rtol=1e-5),
    forbidden=("gptcourse.ngram.smoothed_probs",),
    hint="P(w | c) = (count(c, w) + k) / (count(c) + k V) for every token w of vocab, in vocab's order; with no "
    "counts and k = 0 the distribution is uniform",
    misconceptions=(
        Misconception(
            "0 / 0 not handled",
            _smoothed,
            "a context never seen has no counts, so with k = 0 the formula is 0 / 0; the course gives "
            "every token 1 / V there (the limit of add-k as k -> 0)",
        ),
        Misconception(
            "k ignored",
            lambda c, v, k: _smoothed(c, v, k, with_k=False),
            "add k to every token's count before normalising: that is what makes unseen tokens possible",
        ),
        Misconception(
            "k added to the seen tokens only",
            lambda c, v, k: _smoothed(c, v, k, seen_only=True),
            "add k to every token of the vocabulary, seen or not, so the total grows by k * V",
        ),
        Misconception(
            "k V missing from the total",
            lambda c, v, k: _smoothed(c, v, k, k_in_total=False),
            "the denominator is count(c) + k V: every one of the V tokens got k extra counts, so the "
            "probabilities sum to 1",
        ),
    ),
)


# --- Exercise 3: perplexity ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class Scorer:
    """A model's ``P(token | context)``, named in messages: an n-gram model, or uniform (``model=None``)."""

    name: str
    vocab: tuple
    model: ngram.NGramModel | None = None

    def __call__(self, context: tuple, token: Hashable) -> float:
        return 1.0 / len(self.vocab) if self.model is None else self.model.prob(context, token)

    def __repr__(self) -> str:
        return self.name


def _fitted(
    g: torch.Generator, n: int, k: float, as_text: bool | None = None, length: int | None = None
) -> tuple[Sequence[Hashable], int, Scorer]:
    """``(heldout tokens, n, model)``: an n-gram model fitted with add-k on other random tokens of the same
    vocabulary (characters when ``as_text``, ids when not, either when None)."""
    train, vocab = _random_tokens(g, 60)
    while as_text is not None and isinstance(train, str) != as_text:
        train, vocab = _random_tokens(g, 60)
    picks = torch.randint(len(vocab), (length or _randint(g, n + 1, 30),), generator=g).tolist()
    heldout = [vocab[i] for i in picks]
    model = ngram.NGramModel(n, k).fit(train, vocab)
    return (
        "".join(heldout) if isinstance(train, str) else heldout,
        n,
        Scorer(f"an n={n} model, k={k}", tuple(vocab), model),
    )


def perplexity_cases(g: torch.Generator) -> list[Case]:
    cases = [Case("a bigram model on a string", _fitted(g, 2, 0.5, as_text=True))]
    v = _randint(g, 2, 30)
    cases.append(
        Case("a uniform model: perplexity V", (list(range(v)) * 2, 2, Scorer(f"uniform over {v}", tuple(range(v)))))
    )
    cases.append(Case("n = 1: no context", _fitted(g, 1, 1.0, as_text=True)))
    cases.append(Case("a trigram model on int ids", _fitted(g, 3, 0.1, as_text=False)))
    unseen = ngram.NGramModel(2, k=0).fit([0, 1, 0, 1, 0, 1])  # (1, 1) never occurs in training
    cases.append(
        Case(
            "an unseen bigram with k = 0: infinite",
            ([0, 1, 1, 0], 2, Scorer("a bigram model with k=0", (0, 1), unseen)),
        )
    )
    cases.append(Case("exactly n tokens: one prediction", _fitted(g, 3, 0.5, length=3)))
    for i in range(3):
        n = _randint(g, 1, 4)
        cases.append(Case(f"random model and tokens {i + 1}", _fitted(g, n, (0.1, 0.5, 1.0)[_randint(g, 0, 2)])))
    return cases


def run_perplexity(answer: Callable[..., Any], case: Case) -> dict:
    """The perplexity (a float), the sizes of the contexts the answer asked about, and how many it asked."""
    tokens, n, model = case.args
    sizes: set[int] = set()
    asked = 0

    def prob(context: Sequence[Hashable], token: Hashable) -> float:
        nonlocal asked
        context = tuple(context)
        asked += 1
        sizes.add(len(context))
        # a context of the wrong size gets some probability, so the answer runs on and the sizes are reported
        return model(context, token) if len(context) == n - 1 else 1.0 / len(model.vocab)

    try:
        value = answer(tokens, n, prob)
    except ValueError as err:
        if "math domain error" not in str(err):
            raise
        raise AnswerError(
            "raised ValueError: math domain error, from the log of a probability 0: the model gives "
            "probability 0 to a token that occurs, so the perplexity is infinite (math.inf)"
        ) from None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AnswerError(f"returned {_kind(value)}, expected a number")
    return {"perplexity": float(value), "context sizes": sorted(sizes), "predictions": asked}


def reference_perplexity(tokens: Sequence[Hashable], n: int, prob: Callable[[tuple, Hashable], float]) -> float:
    with warnings.catch_warnings():  # the zero-probability case warns; the learner needs no warning here
        warnings.simplefilter("ignore", ngram.ZeroProbabilityWarning)
        return ngram.perplexity(tokens, n, prob)


def compare_perplexity(got: Any, expected: Any, case: Case) -> str | None:
    """Same context sizes, then the same perplexity (both infinite, or equal within 1e-6)."""
    if not (isinstance(got, dict) and set(got) == set(expected) and isinstance(got["perplexity"], float)):
        return close()(got, expected, case)
    tokens, n, _ = case.args
    sizes = got["context sizes"]
    if sizes != expected["context sizes"]:
        shown = f"{sizes[0]} to {sizes[-1]}" if isinstance(sizes, list) and len(sizes) > 4 else sizes
        return (
            f"asked the model for P(token | context) with contexts of {shown} token(s); "
            f"an n={n} model conditions on {_context_size(n)}"
        )
    p, e = got["perplexity"], expected["perplexity"]
    if p == e or math.isclose(p, e, rel_tol=1e-6):
        return None
    if math.isinf(e):
        return f"returned {p:.6g}, but the model gives probability 0 to a token that occurs: the perplexity is infinite"
    wrong = f"returned {p:.6g}, expected {e:.6g}"
    if got["predictions"] != expected["predictions"]:
        wrong += (
            f" (it asked the model for {got['predictions']} probabilities; {len(tokens)} tokens make "
            f"{expected['predictions']} predictions with n={n})"
        )
    return wrong


def _previous(tokens: Sequence[Hashable], i: int, n: int) -> tuple:
    """The context of position i: the n - 1 tokens before it."""
    return tuple(tokens[i - n + 1 : i])


def _perplexity(
    first: int | None = None,
    context: Callable[[Sequence[Hashable], int, int], tuple] = _previous,
    over_all: bool = False,
    sign: float = -1.0,
    mean: bool = True,
    skip_zero: bool = False,
) -> Callable:
    """A perplexity that scores from position ``first`` (default n - 1), asks ``context(tokens, i, n)``,
    divides by len(tokens) when ``over_all``, and skips zero probabilities when ``skip_zero``."""

    def perplexity(tokens: Sequence[Hashable], n: int, prob: Callable[[tuple, Hashable], float]) -> float:
        total = 0.0
        for i in range(n - 1 if first is None else first, len(tokens)):
            p = prob(context(tokens, i, n), tokens[i])
            if p == 0 and skip_zero:
                continue
            if p == 0:
                return math.inf
            total += math.log(p)
        count = len(tokens) if over_all else len(tokens) - n + 1
        return math.exp(sign * total / (count if mean else 1))

    return perplexity


PERPLEXITY = Spec(
    id="lab01.perplexity",
    points=2,
    name="perplexity",
    reference=reference_perplexity,
    cases=perplexity_cases,
    run=run_perplexity,
    compare=compare_perplexity,
    forbidden=("gptcourse.ngram.perplexity", "gptcourse.ngram.log_prob", "gptcourse.ngram.NGramModel.perplexity"),
    hint="perplexity = exp of minus the mean natural log of the probabilities of the N = len(tokens) - n + 1 "
    "predictions, each token scored after the n - 1 tokens before it",
    misconceptions=(
        Misconception(
            "scored from position 0",
            _perplexity(first=0, context=lambda t, i, n: tuple(t[max(0, i - n + 1) : i])),
            "the first n - 1 tokens are context only: score the tokens from position n - 1 on, each after "
            "a full context of n - 1 tokens",
        ),
        Misconception(
            "n = 1 context is the whole prefix",
            _perplexity(context=lambda t, i, n: tuple(t[:i][-(n - 1) :])),
            "for n = 1 the context is the empty tuple (): a slice that starts at -(n - 1) = -0 starts at "
            "the beginning, so it takes every token before the position",
        ),
        Misconception(
            "divided by len(tokens)",
            _perplexity(over_all=True),
            "the mean is over the N = len(tokens) - n + 1 predictions, not over every token: the first "
            "n - 1 tokens are never predicted",
        ),
        Misconception(
            "no minus sign",
            _perplexity(sign=1.0),
            "log-probabilities are negative: perplexity is exp of MINUS their mean, so it is at least 1 "
            "(a uniform model over V tokens has perplexity V)",
        ),
        Misconception(
            "sum, not mean",
            _perplexity(mean=False),
            "average the log-probabilities over the N predictions before exponentiating: perplexity "
            "does not grow with the length of the text",
        ),
        Misconception(
            "zero probabilities skipped",
            _perplexity(skip_zero=True),
            "a token the model gives probability 0 makes the whole text impossible: the perplexity is "
            "then infinite, it is not scored without that token",
        ),
    ),
)


# --- Exercise 4: sampling ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class NextProbs:
    """``next_probs(context)`` for the sampling cases: a ``(V,)`` float64 distribution per context
    tuple; any other context (one of the wrong size) gets the uniform distribution."""

    name: str
    table: dict
    deterministic: bool = False  # one token has probability 1 after every context

    def __call__(self, context: Sequence[Hashable]) -> torch.Tensor:
        probs = self.table.get(tuple(context))
        if probs is None:
            size = len(next(iter(self.table.values())))
            return torch.full((size,), 1.0 / size, dtype=torch.float64)
        return probs.clone()  # a fresh tensor, so that an answer that changes it in place changes nothing

    def __repr__(self) -> str:
        return self.name


FREQUENT = 300  # a case with at least this many new tokens is judged by frequencies too
MIN_DRAWS = 100  # contexts drawn after fewer times than this are not judged by frequency


def _skewed(g: torch.Generator, size: int) -> torch.Tensor:
    """A random distribution far from uniform and from one-hot: one weight >= 1.7, the others in [0.2, 1]."""
    weights = 0.2 + 0.8 * torch.rand(size, generator=g, dtype=torch.float64)
    weights[_randint(g, 0, size - 1)] += 1.5
    return weights / weights.sum()


def _contexts(vocab: Sequence[Hashable], size: int) -> list[tuple]:
    """Every tuple of ``size`` tokens of vocab."""
    contexts: list[tuple] = [()]
    for _ in range(size):
        contexts = [c + (w,) for c in contexts for w in vocab]
    return contexts


def _deterministic(g: torch.Generator, vocab: Sequence[Hashable], n: int) -> NextProbs:
    """A model in which one token has probability 1 after each context, never the context's last token
    (so that an answer that does not feed tokens back cannot agree with it by chance)."""
    table = {}
    for context in _contexts(vocab, n - 1):
        last = vocab.index(context[-1]) if context else 0
        probs = torch.zeros(len(vocab), dtype=torch.float64)
        probs[(last + _randint(g, 1, len(vocab) - 1)) % len(vocab)] = 1.0
        table[context] = probs
    return NextProbs(f"a deterministic n={n} model", table, deterministic=True)


def _seed(g: torch.Generator) -> int:
    """A seed for the generator a case hands the answer."""
    return int(torch.randint(2**31, (1,), generator=g))


def sample_cases(g: torch.Generator) -> list[Case]:
    letters, ids, few = list("abcdef"), list(range(10, 16)), list("abcde")
    unigram = NextProbs("a fixed distribution", {(): _skewed(g, 5)})
    bigram = NextProbs("a bigram model", {(w,): _skewed(g, 3) for w in "xyz"})
    cases = [
        Case(
            "a deterministic bigram model",
            (_deterministic(g, letters, 2), letters, ["c", "a"], 12, 2),
            {"generator_seed": _seed(g)},
        ),
        Case(
            "a deterministic trigram model over int ids",
            (_deterministic(g, ids, 3), ids, [11, 11, 14], 12, 3),
            {"generator_seed": _seed(g)},
        ),
        Case("n = 1: the empty context", (unigram, few, [], 20, 1), {"generator_seed": _seed(g)}),
        Case("the same seed twice", (unigram, few, ["b"], 40, 1), {"generator_seed": _seed(g), "repeat": True}),
        Case("300 draws from a fixed distribution", (unigram, few, [], 300, 1), {"generator_seed": _seed(g)}),
        Case("450 draws from a bigram model", (bigram, list("xyz"), ["x"], 450, 2), {"generator_seed": _seed(g)}),
    ]
    for i in range(2):
        n = _randint(g, 1, 4)
        alphabet = list(_ALPHABETS[_randint(g, 0, len(_ALPHABETS) - 1)])[:4]
        prompt = [alphabet[j] for j in torch.randint(len(alphabet), (n - 1 + _randint(g, 0, 2),), generator=g)]
        cases.append(
            Case(
                f"a random deterministic model {i + 1}",
                (_deterministic(g, alphabet, n), alphabet, prompt, 10, n),
                {"generator_seed": _seed(g)},
            )
        )
    return cases


def run_sample(answer: Callable[..., Any], case: Case) -> dict:
    """The tokens, the context of every call to next_probs, and (for a ``repeat`` case) the tokens of
    a second run with a generator seeded alike."""
    model, vocab, prompt, length, n = case.args

    def draw() -> tuple[Any, list[tuple]]:
        contexts: list[tuple] = []

        def next_probs(context: Sequence[Hashable]) -> torch.Tensor:
            contexts.append(tuple(context))
            return model(context)

        out = answer(
            next_probs,
            list(vocab),
            list(prompt),
            length,
            n,
            torch.Generator().manual_seed(case.kwargs["generator_seed"]),
        )
        return (list(out) if isinstance(out, (list, tuple)) else out), contexts

    tokens, contexts = draw()
    return {"tokens": tokens, "contexts": contexts, "again": draw()[0] if case.kwargs.get("repeat") else None}


def _is_token(token: Any, vocab: Sequence[Hashable]) -> bool:
    return isinstance(token, (str, int)) and not isinstance(token, bool) and token in vocab


def diagnose_sample(got: Any, case: Case) -> tuple[str, str] | None:
    """What is wrong with a sample, as ``(kind, message)``, or None: properties any correct sampler has."""
    model, vocab, prompt, length, n = case.args
    if not (
        isinstance(got, dict) and set(got) == {"tokens", "contexts", "again"} and isinstance(got["contexts"], list)
    ):
        return "malformed", "returned a malformed output"
    tokens, contexts = got["tokens"], got["contexts"]
    if not isinstance(tokens, list):
        return "type", f"returned {_kind(tokens)}, expected a list of tokens"
    if len(tokens) != len(prompt) + length or tokens[: len(prompt)] != list(prompt):
        return "length", (
            f"returned {len(tokens)} tokens starting {tokens[: len(prompt)]!r}; expected the prompt "
            f"followed by {length} new tokens ({len(prompt) + length} in all)"
        )
    new = tokens[len(prompt) :]
    outside = [t for t in new if not _is_token(t, vocab)]
    if outside:
        return "vocabulary", f"produced {outside[0]!r}, which is not a token of vocab"
    if len(contexts) != length:
        return "calls", f"called next_probs {len(contexts)} time(s) for {length} new tokens"
    for i, context in enumerate(contexts):
        end = len(prompt) + i
        before = tuple(tokens[end - n + 1 : end]) if n > 1 else ()
        if not isinstance(context, tuple) or len(context) != n - 1:
            return "context size", (
                f"called next_probs with a context of {len(context)} token(s) for new token {i}; "
                f"an n={n} model conditions on {_context_size(n)}"
            )
        if context != before:
            return "stale context", (
                f"drew new token {i} after the context {context}, but the {n - 1} token(s) before it are {before}"
            )
        sure = vocab[int(model(before).argmax())] if model.deterministic else new[i]
        if sure != new[i]:
            return "improbable", f"drew {new[i]!r} after {before}, where the model gives {sure!r} probability 1"
    if case.kwargs.get("repeat") and got["again"] != tokens:
        return "not repeatable", "gave two different samples with generators seeded alike"
    if length >= FREQUENT:
        return _frequencies(model, vocab, tokens, n, len(prompt))
    return None


def _frequencies(
    model: NextProbs, vocab: Sequence[Hashable], tokens: list, n: int, start: int
) -> tuple[str, str] | None:
    """Each context's next-token frequencies against its probabilities, within 6 standard deviations
    (a correct sampler fails about once in a hundred million runs)."""
    after: dict[tuple, Counter] = {}
    for end in range(start, len(tokens)):
        after.setdefault(tuple(tokens[end - n + 1 : end]) if n > 1 else (), Counter())[tokens[end]] += 1
    for context, seen in after.items():
        draws = sum(seen.values())
        if draws < MIN_DRAWS:
            continue
        for w, p in zip(vocab, model(context).tolist()):
            freq = seen[w] / draws
            if abs(freq - p) > 6 * math.sqrt(0.25 / draws):
                where = f"after {context}" if context else "in a unigram model's"
                return "frequencies", (
                    f"drew {w!r} {freq:.3f} of the time {where} {draws} draws, but its probability is {p:.3f}"
                )
    return None


def diagnosed(diagnose: Callable[[Any, Case], tuple[str, str] | None]) -> Compare:
    """A comparison by properties: ``diagnose(output, case)`` says what kind of defect an output has
    and how to say so, or None. An output is right when it has no defect, and it matches another
    output when both have the same kind of defect (two samplers that draw differently can both be
    right, or wrong in the same way)."""

    def compare(got: Any, expected: Any, case: Case) -> str | None:
        mine, theirs = diagnose(got, case), diagnose(expected, case)
        if mine is None:
            return None if theirs is None else "has no defect, unlike the output it is compared with"
        return None if theirs is not None and mine[0] == theirs[0] else mine[1]

    return compare


def _sampler(
    draw: str = "multinomial", context_of: str = "last", token: bool = True, use_generator: bool = True
) -> Callable:
    """A sampler that draws by ``draw`` (multinomial | argmax | uniform | all at once), takes the
    context as ``context_of`` (last | prompt | slice), and appends the token or its index."""

    def sample(
        next_probs: Callable,
        vocab: Sequence[Hashable],
        prompt: Sequence[Hashable],
        length: int,
        n: int,
        generator: torch.Generator | None = None,
    ) -> list:
        out = list(prompt)
        generator = generator if use_generator else None
        if draw == "all at once":
            probs = next_probs(tuple(out[len(out) - n + 1 :]) if n > 1 else ())
            return out + [vocab[i] for i in torch.multinomial(probs, length, replacement=True, generator=generator)]
        for _ in range(length):
            if context_of == "prompt":
                context = tuple(prompt[len(prompt) - n + 1 :]) if n > 1 else ()
            elif context_of == "slice":
                context = tuple(out[-(n - 1) :])
            else:
                context = tuple(out[len(out) - n + 1 :]) if n > 1 else ()
            probs = next_probs(context)
            if draw == "argmax":
                index = int(probs.argmax())
            elif draw == "uniform":
                index = int(torch.randint(len(vocab), (1,), generator=generator))
            else:
                index = int(torch.multinomial(probs, 1, generator=generator))
            out.append(vocab[index] if token else index)
        return out

    return sample


SAMPLING = Spec(
    id="lab01.sampling",
    points=2,
    name="sample",
    reference=ngram.sample,
    cases=sample_cases,
    run=run_sample,
    compare=diagnosed(diagnose_sample),
    forbidden=("gptcourse.ngram.sample", "gptcourse.ngram.NGramModel.sample"),
    hint="each step: the context is the last n - 1 tokens so far, the model gives a distribution over vocab for "
    "it, one index is drawn from that distribution with the generator, and its token is appended",
    misconceptions=(
        Misconception(
            "index, not token",
            _sampler(token=False),
            "torch.multinomial returns an index into vocab; the sample is made of the tokens at those indices",
        ),
        Misconception(
            "one call for all tokens",
            _sampler(draw="all at once"),
            "draw one token per step and ask the model again each time: the context, and so the "
            "distribution, changes after every new token",
        ),
        Misconception(
            "context not fed back",
            _sampler(context_of="prompt"),
            "feed each new token back in: the context of every step is the last n - 1 tokens of the "
            "output so far, the new ones included (autoregression)",
        ),
        Misconception(
            "n = 1 context is the whole prefix",
            _sampler(context_of="slice"),
            "for n = 1 the context is the empty tuple (): a slice that starts at -(n - 1) = -0 starts at "
            "the beginning, so it takes the whole list",
        ),
        Misconception(
            "most likely token (argmax)",
            _sampler(draw="argmax"),
            "sample in proportion to the probabilities: always taking the most likely token (greedy "
            "decoding) is deterministic and never produces the less likely tokens",
        ),
        Misconception(
            "uniform draw",
            _sampler(draw="uniform"),
            "draw each index with the model's probabilities as weights: a token with probability 1 must "
            "always come up, one with probability 0 never",
        ),
        Misconception(
            "generator ignored",
            _sampler(use_generator=False),
            "the sample must be repeatable: give the generator you were passed to torch.multinomial, so "
            "that a generator seeded alike gives the same tokens",
        ),
    ),
)


# --- Exercise 5: the NGramModel class -------------------------------------------------------------------------

MODEL_PACKAGE = (  # the package's model and the functions it is built from: the learner's class uses their own
    "gptcourse.ngram.NGramModel.fit",
    "gptcourse.ngram.NGramModel.probs",
    "gptcourse.ngram.NGramModel.prob",
    "gptcourse.ngram.NGramModel.log_prob",
    "gptcourse.ngram.NGramModel.perplexity",
    "gptcourse.ngram.NGramModel.sample",
    "gptcourse.ngram.count_ngrams",
    "gptcourse.ngram.smoothed_probs",
    "gptcourse.ngram.log_prob",
    "gptcourse.ngram.perplexity",
    "gptcourse.ngram.sample",
)


@dataclasses.dataclass(frozen=True, repr=False)
class Questions:
    """What a model case asks a fitted model: ``probs`` of each context, ``prob`` of each
    ``(context, token)``, ``log_prob`` and ``perplexity`` of ``heldout``, and one sample per
    ``(length, seed, prompt)`` (prompt ``None``: left at the default)."""

    contexts: tuple
    pairs: tuple
    heldout: Sequence[Hashable]
    samples: tuple

    def __repr__(self) -> str:
        return "the questions"


def _strings(tokens: Sequence[Hashable], vocab: Sequence[Hashable]) -> Sequence[Hashable]:
    return "".join(tokens) if all(isinstance(w, str) for w in vocab) else list(tokens)


def _questions(g: torch.Generator, tokens: Sequence[Hashable], vocab: Sequence[Hashable], n: int) -> Questions:
    """Contexts seen in ``tokens``, a random one (often never seen), one longer than n - 1 tokens; pairs
    of those contexts with random tokens; held-out random tokens; a sample with the default prompt and
    one with a prompt of its own."""

    def pick(size: int) -> list:
        return [vocab[i] for i in torch.randint(len(vocab), (size,), generator=g).tolist()]

    start = _randint(g, 0, len(tokens) - n)
    seen = tuple(tokens[start : start + n - 1])
    longer = tuple(pick(_randint(g, 1, 3))) + seen  # its last n - 1 tokens are the seen context
    contexts = (seen, tuple(pick(n - 1)), longer)
    pairs = tuple((c, w) for c in contexts for w in pick(2))
    heldout = _strings(pick(_randint(g, n + 2, 25)), vocab)
    seeds = torch.randint(2**31, (2,), generator=g).tolist()
    prompt = _strings(pick(n - 1 + _randint(g, 0, 2)), vocab)
    return Questions(
        contexts, pairs, heldout, ((_randint(g, 5, 20), seeds[0], None), (_randint(g, 5, 20), seeds[1], prompt))
    )


def model_cases(g: torch.Generator) -> list[Case]:
    """``(n, k, train, vocab, questions)``; ``k`` None: left at its default; ``questions`` None: a
    constructor that must raise a ValueError."""

    def case(label: str, n: int, k: float | None, train: Sequence[Hashable], vocab: list | None, q_vocab=None) -> Case:
        q_vocab = q_vocab or vocab or sorted(set(train))
        return Case(label, (n, k, train, vocab, _questions(g, train, q_vocab, n)))

    letters = "abcd"
    first = "cab" + "".join(letters[i] for i in torch.randint(4, (40,), generator=g).tolist())
    ids = torch.randint(4, (50,), generator=g).tolist()
    unigram = "".join("abcde"[i] for i in torch.randint(5, (30,), generator=g).tolist())
    cases = [
        case(
            "a bigram model of a string, k = 0.5, the default vocabulary (the text starts 'cab')", 2, 0.5, first, None
        ),
        case("a trigram model of int ids 0-3, k = 0.1, vocab 0-5 (unseen tokens)", 3, 0.1, ids, list(range(6))),
        case("n = 1: every context is (), even a longer one, k = 1", 1, 1.0, unigram, None),
    ]
    # k = 0: ('c',) never occurs, so it is uniform; 'a' always follows 'b' and 'b' always 'a'
    zero = case(
        "k = 0: an unseen context is uniform, an unseen bigram has probability 0", 2, 0.0, "abababab", list("abc")
    )
    q = zero.args[4]
    zero = Case(
        zero.label,
        zero.args[:4]
        + (dataclasses.replace(q, contexts=(("c",),) + q.contexts, pairs=((("a",), "a"),) + q.pairs, heldout="abba"),),
    )
    cases.append(zero)
    cases.append(case("the default k (1.0), a 4-gram model", 4, None, _random_tokens(g, 40)[0], None))
    cases.append(Case("NGramModel(0): a ValueError (n counts tokens, at least 1)", (0, 1.0, None, None, None)))
    cases.append(Case("NGramModel(2, k=-1): a ValueError (k is a count, at least 0)", (2, -1.0, None, None, None)))
    for i in range(2):
        n = _randint(g, 1, 4)
        train, vocab = _random_tokens(g, _randint(g, 20, 60))
        cases.append(case(f"random tokens {i + 1}, n = {n}", n, (0.01, 0.1, 1.0)[_randint(g, 0, 2)], train, vocab))
    return cases


def _outcome(thunk: Callable[[], Any]) -> Any:
    """What ``thunk()`` returns, or ``"raised NameOfError"`` (a NotImplementedError passes through)."""
    try:
        return thunk()
    except NotImplementedError:
        raise
    except Exception as err:
        return f"raised {type(err).__name__}"


def _probs(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().double()
    raise AnswerError(f"probs returned {_kind(value)}, expected a (V,) tensor")


def run_model(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """Build and fit the answer as the case says, and return its answers to the case's questions."""
    n, k, train, vocab, q = case.args
    args = (n,) if k is None else (n, k)
    if q is None:
        return {"constructor": _outcome(lambda: (answer(*args), "built a model")[1])}
    with global_seed(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ngram.ZeroProbabilityWarning)
        model = answer(*args)
        fitted = model.fit(train) if vocab is None else model.fit(train, vocab)
        out: dict[str, Any] = {"fit returns the model": fitted is model}
        out["vocab"] = _outcome(lambda: list(model.vocab))
        out["counts"] = _outcome(lambda: run_counts(lambda *_: model.counts, case))
        out["probs"] = [_outcome(lambda c=c: _probs(model.probs(c))) for c in q.contexts]
        out["prob"] = [_outcome(lambda c=c, w=w: number(model.prob(c, w), "prob")) for c, w in q.pairs]
        out["log_prob"] = _outcome(lambda: number(model.log_prob(q.heldout), "log_prob"))
        out["perplexity"] = _outcome(lambda: number(model.perplexity(q.heldout), "perplexity"))
        out["samples"] = [
            _outcome(
                lambda length=length, seed=seed, prompt=prompt: list(
                    model.sample(length, seed=seed)
                    if prompt is None
                    else model.sample(length, seed=seed, prompt=prompt)
                )
            )
            for length, seed, prompt in q.samples
        ]
    return out


def _shown(tokens: Any) -> str:
    if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        text = "".join(tokens)
        return repr(text if len(text) <= 30 else text[:27] + "...")
    return repr(tokens) if len(repr(tokens)) <= 40 else repr(tokens)[:37] + "..."


def _sample_call(length: int, seed: int, prompt: Any) -> str:
    return f"sample({length}, seed={seed}" + ("" if prompt is None else f", prompt={prompt!r}") + ")"


def compare_model(got: Any, expected: Any, case: Case) -> str | None:
    """The first part that differs, named as the call that gave it."""
    if not isinstance(got, dict) or set(got) != set(expected):
        return close()(got, expected, case)
    if "constructor" in expected:
        if got["constructor"] != expected["constructor"]:
            return f"{got['constructor']} for NGramModel{case.args[:2]!r}, expected a ValueError"
        return None
    _, _, _, _, q = case.args
    if got["fit returns the model"] != expected["fit returns the model"]:
        return "fit(...) returned something other than the model itself"
    for part in ("vocab", "counts"):
        if got[part] != expected[part]:
            shown = repr(got[part]) if len(repr(got[part])) <= 80 else repr(got[part])[:77] + "..."
            want = repr(expected[part]) if len(repr(expected[part])) <= 80 else repr(expected[part])[:77] + "..."
            return f"has model.{part} = {shown}, expected {want}"
    for context, mine, theirs in zip(q.contexts, got["probs"], expected["probs"]):
        if isinstance(mine, str) or isinstance(theirs, str):
            if not (isinstance(mine, str) and mine == theirs):
                return f"probs({context!r}) {mine if isinstance(mine, str) else 'returned a tensor'}, expected " + (
                    theirs if isinstance(theirs, str) else "a (V,) tensor of probabilities"
                )
            continue
        wrong = close(atol=1e-6, rtol=1e-5)(mine, theirs, case)
        if wrong:
            return f"probs({context!r}) {wrong}"
    calls = [(f"prob({c!r}, {w!r})", got["prob"][i], expected["prob"][i]) for i, (c, w) in enumerate(q.pairs)]
    calls += [(f"{part}({q.heldout!r})", got[part], expected[part]) for part in ("log_prob", "perplexity")]
    for call, mine, theirs in calls:
        if isinstance(mine, float) and (mine == theirs or math.isclose(mine, theirs, rel_tol=1e-5, abs_tol=1e-6)):
            continue
        return f"{call} {mine if isinstance(mine, str) else f'returned {mine!r}'}, expected {theirs!r}"
    for (length, seed, prompt), mine, theirs in zip(q.samples, got["samples"], expected["samples"]):
        if mine != theirs:
            return f"{_sample_call(length, seed, prompt)} gave {_shown(mine)}, expected {_shown(theirs)}"
    return None


def reference_model(n: int, k: float = 1.0) -> ngram.NGramModel:
    return ngram.NGramModel(n, k)


def _uniform_before_full(model: ngram.NGramModel, context: Sequence[Hashable]) -> torch.Tensor:
    """What a learner's probs gives for a context shorter than n - 1: a context never counted."""
    return torch.full((len(model.vocab),), 1.0 / len(model.vocab), dtype=torch.float64)


def _model(mistake: str) -> type:
    """An ``NGramModel`` with one known mistake (``mistake`` names it)."""

    class NGramModel(ngram.NGramModel):
        def __init__(self, n: int, k: float = 1.0):
            if mistake == "n and k not checked":
                self.n, self.k, self.counts, self.vocab = n, k, {}, []
                return
            super().__init__(n, k)

        def fit(self, tokens: Sequence[Hashable], vocab: Sequence[Hashable] | None = None) -> Any:
            if mistake == "vocabulary in order of appearance" and vocab is None:
                vocab = list(dict.fromkeys(tokens))
            super().fit(tokens, vocab)
            return None if mistake == "fit returns nothing" else self

        def _context(self, context: Sequence[Hashable]) -> tuple:
            context = tuple(context)
            if mistake == "whole context used":
                return context
            if mistake == "n = 1 context is the whole context":
                return context[-(self.n - 1) :]
            return super()._context(context)

        def probs(self, context: Sequence[Hashable]) -> torch.Tensor:
            if len(tuple(context)) < self.n - 1:
                return _uniform_before_full(self, context)
            return super().probs(context)

        def prob(self, context: Sequence[Hashable], token: Hashable) -> float:
            if mistake == "prob not smoothed":
                following = self.counts.get(self._context(context), {})
                total = sum(following.values())
                return following.get(token, 0) / total if total else 1.0 / len(self.vocab)
            return super().prob(context, token)

        def log_prob(self, tokens: Sequence[Hashable]) -> float:
            total = super().log_prob(tokens)
            return total / (len(tokens) - self.n + 1) if mistake == "log_prob averaged" else total

        def sample(self, length: int, seed: int | None = None, prompt: Sequence[Hashable] | None = None) -> list:
            generator = None if seed is None or mistake == "seed ignored" else torch.Generator().manual_seed(seed)
            if prompt is None:
                prompt = [] if mistake == "default prompt empty" else self.start
            out = list(prompt)
            for _ in range(length):
                context = tuple(out[len(out) - self.n + 1 :]) if self.n > 1 else ()
                out.append(self.vocab[int(torch.multinomial(self.probs(context), 1, generator=generator))])
            return out[len(prompt) :] if mistake == "prompt left out" else out

    return NGramModel


MODEL_HINTS = {
    "n and k not checked": "(Chapter 1, Counting and Add-k smoothing) n is a number of tokens, at least 1, and k a "
    "count added to every count, at least 0: the constructor refuses other values with a ValueError rather than "
    "build a model that fails later",
    "fit returns nothing": "fit returns the model itself, so that fitting and scoring chain in one expression as in "
    "Chapter 1 (Perplexity: measuring a model on held-out text)",
    "vocabulary in order of appearance": "(Chapter 1, The data: Tiny Shakespeare) without a vocab, the vocabulary is "
    "the distinct training tokens in sorted order, so that two models of the same text list their probabilities "
    "in the same order",
    "n = 1 context is the whole context": "(Chapter 1, Counting) a unigram model has no context at all: the last "
    "n - 1 = 0 tokens of any context are the empty tuple; a slice from -(n - 1) = -0 starts at the beginning "
    "and keeps everything",
    "whole context used": "(Chapter 1, Counting) an n-gram model reads only the last n - 1 tokens of the context it is "
    "given: a longer context is cut to those, it is not a context never seen",
    "prob not smoothed": "(Chapter 1, Add-k smoothing) prob(context, token) is one entry of probs(context): the same "
    "add-k formula, so that perplexity scores the distribution that sampling draws from",
    "log_prob averaged": "(Chapter 1, A language model scores text) the log-probability of a text is the sum of the "
    "log-probabilities of its predictions (the log of their product); perplexity is the one that takes the mean",
    "default prompt empty": "(Chapter 1, Sampling: writing one character at a time) without a prompt, sampling starts "
    "from the first n - 1 training tokens: the first draw already needs a full context of n - 1 tokens",
    "prompt left out": "(Chapter 1, Sampling: writing one character at a time) sample returns the prompt followed by "
    "the length new tokens, as your sample function does",
    "seed ignored": "(Chapter 1, Sampling: writing one character at a time) the same seed must give the same text: "
    "draw with a random-number generator of the sample's own, seeded with seed, not with torch's global one",
}

MODEL = Spec(
    id="lab01.model",
    points=4,
    name="NGramModel",
    reference=reference_model,
    cases=model_cases,
    run=run_model,
    compare=compare_model,
    forbidden=MODEL_PACKAGE,
    hint="(Chapter 1, Counting to Sampling) fit counts the training tokens with your count_ngrams and keeps the "
    "vocabulary; every question about a context reads its last n - 1 tokens; probs is your smoothed_probs, "
    "prob one of its entries, perplexity your perplexity, sample your sample with a generator seeded by seed",
    misconceptions=tuple(Misconception(name, _model(name), hint) for name, hint in MODEL_HINTS.items()),
)

SPECS = (COUNTS, SMOOTHING, PERPLEXITY, SAMPLING, MODEL)
