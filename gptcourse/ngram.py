"""Counting language models: n-grams, add-k smoothing, perplexity and sampling.

An n-gram model predicts the next token from the ``n - 1`` tokens before it (its *context*), with
probabilities read off counts in training text. Tokens can be anything hashable: characters of a
string, ids from a tokenizer, words.

Conventions (each tested in tests/test_ngram.py):

* add-k smoothing over a fixed vocabulary of V tokens:
  ``P(w | c) = (count(c, w) + k) / (count(c) + k * V)``;
* a context never seen in training has no evidence at all; for every k > 0 the formula gives
  ``1 / V`` to each token there, and we keep that uniform distribution for k = 0 as well (its limit),
  so that every context's probabilities sum to 1;
* log-probabilities and perplexities score the tokens from position ``n - 1`` on: the first
  ``n - 1`` tokens of a sequence are context only;
* with k = 0, an n-gram never seen in training (in a context that was seen) has probability 0, so
  the log-probability of a sequence containing it is ``-inf`` and its perplexity is ``inf``; a
  :class:`ZeroProbabilityWarning` names the culprit.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence

import torch

Token = Hashable
Context = tuple[Token, ...]


class ZeroProbabilityWarning(RuntimeWarning):
    """A model gave probability 0 to a token that occurs, so the perplexity is infinite."""


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (1 = unigram, 2 = bigram, ...), got {n!r}")


def _check_k(k: float) -> None:
    if not isinstance(k, (int, float)) or isinstance(k, bool) or not k >= 0 or math.isinf(k):
        raise ValueError(f"k (the add-k smoothing count) must be a finite number >= 0, got {k!r}")


def _as_tokens(tokens: Sequence[Token]) -> Sequence[Token]:
    # a tensor's elements are 0-d tensors, hashed by identity: compare ids as Python ints instead
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be 1-D, got a tensor of shape {tuple(tokens.shape)}")
        return tokens.tolist()
    if not isinstance(tokens, Sequence):
        raise TypeError(f"tokens must be a sequence (str, list, tuple, 1-D tensor), got {type(tokens).__name__}")
    return tokens


def ngrams(tokens: Sequence[Token], n: int) -> Iterator[tuple[Token, ...]]:
    """Every window of ``n`` consecutive tokens, as tuples: ``ngrams("abc", 2)`` -> ``('a','b'), ('b','c')``."""
    _check_n(n)
    tokens = _as_tokens(tokens)
    return zip(*(tokens[i:] for i in range(n)))


def count_ngrams(tokens: Sequence[Token], n: int) -> dict[Context, Counter]:
    """Map each context (the ``n - 1`` tokens before a position) to a Counter of the tokens that follow it.

    ``count_ngrams("abab", 2)`` -> ``{('a',): Counter({'b': 2}), ('b',): Counter({'a': 1})}``;
    for ``n = 1`` the only context is ``()`` and its Counter holds every token's frequency.
    """
    counts: dict[Context, Counter] = {}
    # Counter over the n-gram tuples runs in C; grouping the distinct ones by context is then cheap
    for gram, count in Counter(ngrams(tokens, n)).items():
        counts.setdefault(gram[:-1], Counter())[gram[-1]] = count
    return counts


def smoothed_probs(next_counts: Mapping[Token, int], vocab: Sequence[Token], k: float) -> torch.Tensor:
    """Add-k probabilities of every token of ``vocab`` after one context, shape ``(V,)``, float64.

    ``next_counts`` counts the tokens seen after that context (missing tokens count 0). With no
    counts at all and ``k = 0``, the distribution is uniform (see the module docstring).
    """
    _check_k(k)
    if len(vocab) == 0:
        raise ValueError("vocab is empty: a model needs at least one token to predict")
    counts = torch.tensor([float(next_counts.get(w, 0)) for w in vocab], dtype=torch.float64)
    if counts.sum().item() != sum(next_counts.values()):
        missing = [w for w in next_counts if w not in set(vocab)]
        raise ValueError(
            f"next_counts has tokens that are not in vocab (e.g. {missing[:3]!r}); "
            "build the vocabulary from every token the model will meet"
        )
    counts += k
    total = counts.sum()
    if total == 0:
        return torch.full((len(vocab),), 1.0 / len(vocab), dtype=torch.float64)
    return counts / total


def log_prob(tokens: Sequence[Token], n: int, prob: Callable[[Context, Token], float]) -> float:
    """Natural-log probability of ``tokens[n-1:]``, each given its ``n - 1`` predecessors.

    ``prob(context, token)`` is any model's ``P(token | context)``; ``-inf`` when one of them is 0.
    """
    _check_n(n)
    tokens = _as_tokens(tokens)
    if len(tokens) < n:
        raise ValueError(f"need at least n={n} tokens to score one prediction, got {len(tokens)}")
    total = 0.0
    for gram in ngrams(tokens, n):
        p = prob(gram[:-1], gram[-1])
        if p <= 0.0:
            warnings.warn(
                f"the model gives probability 0 to {gram[-1]!r} after {gram[:-1]!r}, an n-gram it never "
                "saw in training (k = 0 adds nothing), so the log-probability is -inf and the perplexity "
                "is infinite; smooth with k > 0",
                ZeroProbabilityWarning,
                stacklevel=2,
            )
            return -math.inf
        total += math.log(p)
    return total


def perplexity(tokens: Sequence[Token], n: int, prob: Callable[[Context, Token], float]) -> float:
    """``exp(-mean log P)`` over the ``len(tokens) - n + 1`` predictions of ``tokens``.

    A model that spreads its probability uniformly over V tokens has perplexity V; ``inf`` when the
    model gives probability 0 to a token that occurs.
    """
    return math.exp(-log_prob(tokens, n, prob) / (len(tokens) - n + 1))


def sample(
    next_probs: Callable[[Context], torch.Tensor],
    vocab: Sequence[Token],
    prompt: Sequence[Token],
    length: int,
    n: int,
    generator: torch.Generator | None = None,
) -> list[Token]:
    """Autoregressive sampling: ``prompt`` followed by ``length`` new tokens, drawn one at a time.

    Each new token is drawn from ``next_probs(context)`` (a ``(V,)`` tensor over ``vocab``), where
    the context is the last ``n - 1`` tokens so far, prompt included; ``generator`` makes it repeatable.
    """
    _check_n(n)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    out = list(_as_tokens(prompt))
    if len(out) < n - 1:
        raise ValueError(f"an n={n} model needs a prompt of at least {n - 1} tokens, got {len(out)}")
    for _ in range(length):
        context = tuple(out[len(out) - n + 1 :]) if n > 1 else ()
        index = torch.multinomial(next_probs(context), 1, generator=generator).item()
        out.append(vocab[index])
    return out


def unseen_fraction(train: Sequence[Token], heldout: Sequence[Token], n: int) -> float:
    """Share of the n-grams of ``heldout`` (counted with repeats) that never occur in ``train``."""
    seen = set(ngrams(train, n))
    grams = list(ngrams(heldout, n))
    if not grams:
        raise ValueError(f"heldout has fewer than n={n} tokens: it has no n-gram")
    return sum(g not in seen for g in grams) / len(grams)


class NGramModel:
    """An n-gram language model with add-k smoothing: ``NGramModel(3, k=0.1).fit(text).perplexity(val)``."""

    def __init__(self, n: int, k: float = 1.0):
        _check_n(n)
        _check_k(k)
        self.n, self.k = n, k
        self.counts: dict[Context, Counter] = {}
        self.vocab: list[Token] = []

    def fit(self, tokens: Sequence[Token], vocab: Sequence[Token] | None = None) -> NGramModel:
        """Count the n-grams of ``tokens``. ``vocab`` (default: the tokens seen) fixes what can be predicted."""
        tokens = _as_tokens(tokens)
        if len(tokens) < self.n:
            raise ValueError(f"need at least n={self.n} tokens to count one n-gram, got {len(tokens)}")
        if vocab is None:
            try:
                vocab = sorted(set(tokens))
            except TypeError:  # tokens of mixed types: keep the order of first appearance
                vocab = list(dict.fromkeys(tokens))
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        if len(self.index) != len(self.vocab):
            raise ValueError("vocab has repeated tokens")
        unknown = set(tokens) - self.index.keys()
        if unknown:
            raise ValueError(f"tokens {sorted(map(repr, unknown))[:3]} are not in vocab")
        self.counts = count_ngrams(tokens, self.n)
        self.totals = {c: sum(counter.values()) for c, counter in self.counts.items()}
        self.start = list(tokens[: self.n - 1])
        return self

    def _check_fitted(self) -> None:
        if not self.vocab:
            raise RuntimeError("this model has not been fitted: call fit(tokens) first")

    def probs(self, context: Sequence[Token]) -> torch.Tensor:
        """``P(w | context)`` for every token of the vocabulary, shape ``(V,)``."""
        self._check_fitted()
        return smoothed_probs(self.counts.get(self._context(context), {}), self.vocab, self.k)

    def prob(self, context: Sequence[Token], token: Token) -> float:
        """``P(token | context)``; the context is the last ``n - 1`` tokens (fewer is an error)."""
        self._check_fitted()
        if token not in self.index:
            raise ValueError(
                f"token {token!r} is not in the model's vocabulary of {len(self.vocab)} tokens; "
                "pass fit(..., vocab=...) covering every token you will score"
            )
        context = self._context(context)
        total = self.totals.get(context, 0)
        if total == 0 and self.k == 0:
            return 1.0 / len(self.vocab)
        return (self.counts.get(context, {}).get(token, 0) + self.k) / (total + self.k * len(self.vocab))

    def _context(self, context: Sequence[Token]) -> Context:
        context = tuple(_as_tokens(context))
        if len(context) < self.n - 1:
            raise ValueError(f"an n={self.n} model needs a context of {self.n - 1} tokens, got {len(context)}")
        return context[len(context) - self.n + 1 :] if self.n > 1 else ()

    def log_prob(self, tokens: Sequence[Token]) -> float:
        """Natural-log probability of ``tokens[n-1:]`` given what precedes each token."""
        self._check_fitted()
        return log_prob(tokens, self.n, self.prob)

    def perplexity(self, tokens: Sequence[Token]) -> float:
        """Perplexity of held-out ``tokens`` (``inf`` if some token gets probability 0)."""
        self._check_fitted()
        return perplexity(tokens, self.n, self.prob)

    def sample(self, length: int, seed: int | None = None, prompt: Sequence[Token] | None = None) -> list[Token]:
        """``prompt`` (default: the first ``n - 1`` training tokens) plus ``length`` sampled tokens.

        The same ``seed`` gives the same sample; ``None`` uses torch's global generator.
        """
        self._check_fitted()
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        prompt = self.start if prompt is None else prompt
        return sample(self.probs, self.vocab, prompt, length, self.n, generator)

    def __repr__(self) -> str:
        return f"NGramModel(n={self.n}, k={self.k}, vocab_size={len(self.vocab)}, contexts={len(self.counts)})"
