"""Checks for Lab 1 (a counting language model), against :mod:`gptcourse.ngram` on fresh random tokens.

Each check takes the learner's function with the same signature as the package's:
``count_ngrams(tokens, n)``, ``smoothed_probs(next_counts, vocab, k)``, ``perplexity(tokens, n, prob)``
and ``sample(next_probs, vocab, prompt, length, n, generator)``.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from gptcourse import ngram
from gptcourse.grading import call_learner, exercise, expect_close, expect_probabilities, expect_type, fail

_ALPHABETS = ("abcd", "abcdefgh", "xy", "ab cd,e")


def _random_tokens(rng: random.Random, length: int) -> tuple[Any, list[Any]]:
    """Random tokens, as a str of characters or as a list of ints; returns (tokens, vocab)."""
    if rng.random() < 0.5:
        alphabet = rng.choice(_ALPHABETS)
        return "".join(rng.choice(alphabet) for _ in range(length)), sorted(alphabet)
    vocab = list(range(rng.randint(2, 9)))
    return [rng.choice(vocab) for _ in range(length)], vocab


def _context_size(n: int) -> str:
    return "no context at all (the empty tuple ())" if n == 1 else f"the {n - 1} token(s) just before"


@exercise("lab01.counts")
def check_counts(count_ngrams: Callable[..., Any], trials: int = 30) -> None:
    """``count_ngrams(tokens, n)`` maps each context tuple to the counts of the tokens that follow it."""
    rng = random.Random()
    for trial in range(trials):
        n = rng.randint(1, 4)
        tokens, _ = _random_tokens(rng, rng.randint(n - 1, 40) if trial else 1)
        what = f"count_ngrams({tokens!r}, n={n})"
        got = call_learner(what, count_ngrams, tokens, n)
        expect_type(what, got, Mapping)
        expected = ngram.count_ngrams(tokens, n)
        for context, following in got.items():
            if not isinstance(context, tuple):
                fail(f"{what} has the context {context!r} (a {type(context).__name__}); contexts should be "
                     "tuples of tokens, like ('a', 'b')", "tuple(tokens[i - n + 1:i]) makes one")
            if len(context) != n - 1:
                fail(f"{what} has the context {context!r} of {len(context)} tokens; with n={n} a context "
                     f"is the {n - 1} token(s) before the predicted one")
            expect_type(f"{what}[{context!r}]", following, Mapping)
        got_plain = {c: {w: x for w, x in f.items() if x} for c, f in got.items()}
        got_plain = {c: f for c, f in got_plain.items() if f}
        for context, following in expected.items():
            if context not in got_plain:
                fail(f"{what} is missing the context {context!r}, which is followed by {dict(following)}")
            if got_plain[context] != dict(following):
                fail(f"{what}[{context!r}] is {got_plain[context]}, expected {dict(following)}",
                     "count every position: the last token of the sequence is predicted too")
        extra = set(got_plain) - set(expected)
        if extra:
            fail(f"{what} has the context {sorted(extra, key=repr)[0]!r}, which never occurs before a token")


@exercise("lab01.smoothing")
def check_smoothing(smoothed_probs: Callable[..., Any], trials: int = 30) -> None:
    """``smoothed_probs(next_counts, vocab, k)`` is the add-k distribution over ``vocab``, a (V,) tensor."""
    rng = random.Random()
    for trial in range(trials):
        _, vocab = _random_tokens(rng, 0)
        next_counts = {w: rng.randint(1, 20) for w in vocab if rng.random() < 0.6}
        k = [0, 1, 0.01, round(rng.uniform(0.05, 3), 3)][trial % 4]
        if trial == 1:
            next_counts, k = {}, 0
        what = f"smoothed_probs({next_counts}, vocab={vocab}, k={k})"
        got = call_learner(what, smoothed_probs, dict(next_counts), list(vocab), k)
        expected = ngram.smoothed_probs(next_counts, vocab, k)
        hint = None
        if not next_counts and k == 0:
            hint = ("a context never seen has no counts, so with k = 0 the formula is 0 / 0; the course "
                    "gives every token 1 / V there (the limit of add-k as k -> 0)")
        elif k:
            hint = "add k to every token's count, seen or not, so the total grows by k * V"
        expect_close(what, got, expected, atol=1e-6, rtol=1e-5, hint=hint)
        expect_probabilities(what, got)


@exercise("lab01.perplexity")
def check_perplexity(perplexity: Callable[..., Any], trials: int = 20) -> None:
    """``perplexity(tokens, n, prob)`` = exp(-mean log prob(context, token)) over tokens[n-1:]."""
    rng = random.Random()
    cases = []
    for _ in range(trials):
        n = rng.randint(1, 4)
        train, vocab = _random_tokens(rng, 60)
        heldout = [rng.choice(vocab) for _ in range(rng.randint(n, 30))]
        if isinstance(train, str):
            heldout = "".join(heldout)
        model = ngram.NGramModel(n, k=rng.choice([0.1, 0.5, 1.0])).fit(train, vocab)
        cases.append((heldout, n, model.prob, None))
    v = rng.randint(2, 30)
    cases.append((list(range(v)) * 2, rng.randint(1, 3), lambda context, token: 1.0 / v,
                  "a model that gives every token 1 / V has perplexity exactly V"))
    # an unsmoothed model meeting a bigram it never saw in training
    cases.append(([0, 1, 1, 0], 2, ngram.NGramModel(2, k=0).fit([0, 1, 0, 1, 0, 1]).prob,
                  "return float('inf') as soon as a probability is 0 (log 0 = -inf)"))
    for heldout, n, scorer, hint in cases:
        calls: list[tuple[Any, Any]] = []

        def prob(context: Any, token: Any) -> float:
            context = tuple(context)
            if len(context) != n - 1:
                fail(f"your perplexity asked for P({token!r} | {context!r}), a context of {len(context)} "
                     f"tokens; an n={n} model conditions on {_context_size(n)}",
                     "the first n - 1 tokens are context only: score tokens[n - 1:]" if len(context) < n - 1
                     else "for n = 1 the context is empty: tokens[i - 0:i] is empty, but tokens[-0:] is everything")
            calls.append((context, token))
            return scorer(context, token)

        what = f"perplexity({heldout!r}, n={n}, prob)"
        got = call_learner(what, perplexity, heldout, n, prob, hint=hint)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ngram.ZeroProbabilityWarning)
            expected = ngram.perplexity(heldout, n, scorer)
        expect_type(what, got, (float, int, torch.Tensor))
        got = float(got)
        if math.isinf(expected):
            if not math.isinf(got):
                fail(f"{what} is {got:.6g}, but the model gives probability 0 to a token that occurs, so the "
                     "perplexity is infinite", hint)
            continue
        if len(calls) != len(heldout) - n + 1:
            fail(f"{what} asked the model for {len(calls)} probabilities; a sequence of {len(heldout)} tokens "
                 f"has {len(heldout) - n + 1} predictions with n={n} (the first {n - 1} token(s) are context only)")
        if not math.isclose(got, expected, rel_tol=1e-6):
            fail(f"{what} is {got:.6g}, expected {expected:.6g}", hint or
                 "perplexity = exp(-(1/N) * sum of natural logs of the probabilities), N = number of predictions")


def _skewed(rng: random.Random, size: int) -> torch.Tensor:
    """A random distribution far from uniform: a wrong sampler (argmax, uniform) cannot match it."""
    # one weight >= 1.7, the others in [0.2, 1]: never close to uniform, never close to one-hot
    weights = torch.tensor([rng.uniform(0.2, 1.0) for _ in range(size)], dtype=torch.float64)
    weights[rng.randrange(size)] += 1.5
    return weights / weights.sum()


@exercise("lab01.sampling")
def check_sampling(sample: Callable[..., Any]) -> None:
    """``sample(next_probs, vocab, prompt, length, n, generator)``: the prompt plus ``length`` tokens,
    each drawn from ``next_probs`` of the last ``n - 1`` tokens."""
    rng = random.Random()

    def run(next_probs: Callable[[tuple], torch.Tensor], vocab: list, prompt: list, length: int, n: int,
            generator: torch.Generator | None = None) -> list:
        what = f"sample(next_probs, vocab={vocab}, prompt={prompt}, length={length}, n={n})"
        contexts: list[tuple] = []

        def recorded(context: Any) -> torch.Tensor:
            context = tuple(context)
            if len(context) != n - 1:
                fail(f"{what} called next_probs with a context of {len(context)} tokens; an n={n} model "
                     f"conditions on {_context_size(n)}",
                     "for n = 1 the context is empty: careful, out[-0:] is the whole list, not an empty one")
            contexts.append(context)
            return next_probs(context)

        out = call_learner(what, sample, recorded, vocab, list(prompt), length, n, generator)
        expect_type(what, out, (list, tuple))
        out = list(out)
        if len(out) != len(prompt) + length or out[: len(prompt)] != list(prompt):
            fail(f"{what} returned {len(out)} tokens starting {out[:len(prompt)]}; expected the prompt "
                 f"followed by {length} new tokens ({len(prompt) + length} in all)")
        if any(t not in vocab for t in out[len(prompt):]):
            fail(f"{what} produced tokens outside the vocabulary, e.g. {[t for t in out if t not in vocab][0]!r}",
                 "the sampled index i stands for the token vocab[i]")
        for i, context in enumerate(contexts):
            end = len(prompt) + i
            if list(context) != out[end - n + 1: end] and n > 1:
                fail(f"{what}: new token {i} was drawn after the context {context}, but the {n - 1} token(s) "
                     f"before it are {tuple(out[end - n + 1:end])}", "feed each new token back in: autoregression")
        if len(contexts) != length:
            fail(f"{what} called next_probs {len(contexts)} times for {length} new tokens; draw one token per call")
        return out

    # 1. a deterministic model (one token has probability 1): sampling must follow it exactly
    for n in (2, 3):
        vocab = list(range(6))
        successor = {}

        def one_hot(context: tuple) -> torch.Tensor:
            p = torch.zeros(len(vocab), dtype=torch.float64)
            p[successor.setdefault(context, rng.randrange(len(vocab)))] = 1.0
            return p

        prompt = [rng.randrange(6) for _ in range(n - 1 + rng.randint(0, 2))]
        out = run(one_hot, vocab, prompt, 12, n)
        for end in range(len(prompt), len(out)):
            context = tuple(out[end - n + 1:end])
            if out[end] != successor[context]:
                fail(f"after {context} the model gives {successor[context]} probability 1, but your sample drew "
                     f"{out[end]}", "draw the index with torch.multinomial(probs, 1) and map it through vocab")

    # 2. the same seed gives the same sample
    probs = _skewed(rng, 5)
    vocab = list("abcde")
    seed = rng.randrange(2**31)
    first = run(lambda c: probs, vocab, [], 30, 1, torch.Generator().manual_seed(seed))
    again = run(lambda c: probs, vocab, [], 30, 1, torch.Generator().manual_seed(seed))
    if first != again:
        fail("two samples with generators seeded alike differ", "pass generator=generator to torch.multinomial")

    # 3. frequencies: 4000 unigram draws; then 4000 draws of a bigram model, per context.
    # The bounds are > 5 standard deviations, so a correct sampler fails about once in a million runs.
    draws = 4000
    out = run(lambda c: probs, vocab, [], draws, 1)
    for w, p in zip(vocab, probs.tolist()):
        freq = out.count(w) / draws
        if abs(freq - p) > 0.05:
            fail(f"in {draws} samples from a fixed distribution, {w!r} came up {freq:.3f} of the time, but its "
                 f"probability is {p:.3f}", "sample in proportion to the probabilities (torch.multinomial), not argmax")
    table = {(w,): _skewed(rng, 3) for w in "xyz"}
    out = run(lambda c: table[c], list("xyz"), ["x"], draws, 2)
    for w in "xyz":
        after = [b for a, b in zip(out, out[1:]) if a == w]
        if len(after) < 300:
            continue
        for v, p in zip("xyz", table[(w,)].tolist()):
            freq = after.count(v) / len(after)
            if abs(freq - p) > 6 * math.sqrt(0.25 / len(after)):
                fail(f"with a bigram model, {v!r} followed {w!r} {freq:.3f} of the time in your samples, but "
                     f"P({v!r} | {w!r}) = {p:.3f}", "use the distribution of the current context, each step")
