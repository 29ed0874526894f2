"""The counting language model: counts, add-k smoothing, perplexity, sampling, and its errors."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

from gptcourse.ngram import (
    NGramModel,
    ZeroProbabilityWarning,
    count_ngrams,
    log_prob,
    ngrams,
    perplexity,
    smoothed_probs,
    unseen_fraction,
)


def test_count_ngrams_by_hand():
    assert count_ngrams("abab", 2) == {("a",): Counter({"b": 2}), ("b",): Counter({"a": 1})}
    assert count_ngrams("abcab", 3) == {
        ("a", "b"): Counter({"c": 1}),
        ("b", "c"): Counter({"a": 1}),
        ("c", "a"): Counter({"b": 1}),
    }
    assert count_ngrams("aab", 1) == {(): Counter({"a": 2, "b": 1})}
    assert count_ngrams("ab", 3) == {}


def test_counts_add_up_to_the_number_of_ngrams():
    rng = random.Random(0)
    tokens = [rng.randrange(5) for _ in range(500)]
    for n in range(1, 5):
        counts = count_ngrams(tokens, n)
        assert sum(sum(c.values()) for c in counts.values()) == len(tokens) - n + 1
        assert all(len(context) == n - 1 for context in counts)


def test_tensor_tokens_count_as_ints():
    assert count_ngrams(torch.tensor([1, 2, 1, 2]), 2) == count_ngrams([1, 2, 1, 2], 2)


def test_smoothed_probs_by_hand():
    # counts a:3, b:1, c:0 with k=1 over V=3: (4, 2, 1) / 7
    probs = smoothed_probs({"a": 3, "b": 1}, ["a", "b", "c"], k=1)
    assert torch.allclose(probs, torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=torch.float64))
    # k = 0 is the maximum-likelihood estimate: count / total
    assert smoothed_probs({"a": 3, "b": 1}, ["a", "b", "c"], k=0).tolist() == [0.75, 0.25, 0.0]


def test_smoothing_limits():
    counts, vocab = {"a": 9, "b": 1}, ["a", "b", "c", "d"]
    # k -> infinity: every token equally likely; an unseen context is uniform for every k, 0 included
    assert torch.allclose(smoothed_probs(counts, vocab, k=1e9), torch.full((4,), 0.25, dtype=torch.float64))
    for k in (0, 0.5, 3):
        assert torch.allclose(smoothed_probs({}, vocab, k), torch.full((4,), 0.25, dtype=torch.float64))
    # more smoothing moves mass from the seen token to the unseen ones, monotonically
    p_a = [smoothed_probs(counts, vocab, k)[0].item() for k in (0, 0.1, 1, 10)]
    assert p_a == sorted(p_a, reverse=True) and p_a[0] == 0.9


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [0, 0.01, 1.0])
def test_probabilities_sum_to_one_and_agree(n, k):
    rng = random.Random(n)
    tokens = [rng.choice("abcde") for _ in range(300)]
    model = NGramModel(n, k).fit(tokens, vocab=list("abcdefg"))  # f, g never occur
    for context in [tuple(tokens[i : i + n - 1]) for i in range(0, 200, 37)] + [("g",) * (n - 1)]:
        probs = model.probs(context)
        assert probs.shape == (7,) and (probs >= 0).all()
        assert math.isclose(probs.sum().item(), 1.0, rel_tol=1e-12)
        # prob() takes a shortcut past smoothed_probs: it must give the same numbers
        assert [model.prob(context, w) for w in model.vocab] == pytest.approx(probs.tolist(), rel=1e-12)


def test_context_uses_the_last_tokens_only():
    model = NGramModel(2, k=0).fit("abcabd")
    assert model.prob("zzzab", "c") == model.prob("b", "c") == 0.5


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    # a context never seen: uniform over V tokens, whatever k
    model = NGramModel(3, k=0.5).fit("aaaa", vocab=list("abcdefghij"))
    assert model.perplexity("bcdefghij") == pytest.approx(10.0, rel=1e-12)
    huge_k = NGramModel(2, k=1e12).fit("abababab", vocab=list("abcd"))
    assert huge_k.perplexity("abcdabcd") == pytest.approx(4.0, rel=1e-6)


def test_perplexity_by_hand():
    # bigram MLE on "aab": P(a|a)=1/2, P(b|a)=1/2. Scoring "aab": exp(-(ln 1/2 + ln 1/2)/2) = 2
    model = NGramModel(2, k=0).fit("aab")
    assert model.log_prob("aab") == pytest.approx(2 * math.log(0.5))
    assert model.perplexity("aab") == pytest.approx(2.0)
    # unigram with k=1 on "aab", V=2: P(a)=3/5, P(b)=2/5
    uni = NGramModel(1, k=1).fit("aab")
    assert uni.perplexity("ab") == pytest.approx(math.exp(-(math.log(3 / 5) + math.log(2 / 5)) / 2))
    # the free function scores any model given as prob(context, token)
    assert perplexity("xyz", 2, lambda context, token: 0.25) == pytest.approx(4.0)


def test_unseen_ngram_without_smoothing_gives_infinite_perplexity_with_a_reason():
    model = NGramModel(2, k=0).fit("abab")
    with pytest.warns(ZeroProbabilityWarning, match="never saw in training"):
        assert model.perplexity("abba") == math.inf
    with pytest.warns(ZeroProbabilityWarning):
        assert log_prob("abba", 2, model.prob) == -math.inf
    assert math.isfinite(NGramModel(2, k=0.01).fit("abab").perplexity("abba"))


def test_more_context_fits_training_text_better():
    rng = random.Random(1)
    text = "".join(rng.choice(["the cat ", "the dog ", "a cat sat ", "a dog ran "]) for _ in range(300))
    # unsmoothed on its own training text: a longer context never predicts worse
    ppl = [NGramModel(n, k=0).fit(text).perplexity(text) for n in (1, 2, 3, 4)]
    assert all(b <= a * 1.001 for a, b in zip(ppl, ppl[1:])) and ppl[0] > 2 * ppl[-1]


def test_unseen_fraction():
    assert unseen_fraction("abcabc", "abca", 2) == 0.0
    assert unseen_fraction("abcabc", "abba", 2) == pytest.approx(2 / 3)  # ab seen; bb, ba unseen
    assert unseen_fraction("abc", "cba", 1) == 0.0
    assert list(ngrams("abc", 2)) == [("a", "b"), ("b", "c")]


def test_sampling_is_deterministic_with_a_seed_and_follows_the_counts():
    model = NGramModel(3, k=0.1).fit("the quick brown fox jumps over the lazy dog " * 3)
    assert model.sample(50, seed=7) == model.sample(50, seed=7)
    assert model.sample(50, seed=7) != model.sample(50, seed=8)
    out = model.sample(20, seed=0, prompt="xyz the")
    assert len(out) == 27 and out[:7] == list("xyz the")
    # k = 0 on a text where every context has one continuation: sampling must reproduce it
    cycle = NGramModel(2, k=0).fit("abcdefabcdef")
    assert "".join(cycle.sample(10, seed=3, prompt="c")) == "cdefabcdefa"


def test_sample_frequencies_match_probabilities():
    model = NGramModel(2, k=0.5).fit("aaaaaaabbc", vocab=list("abcd"))
    draws = Counter(model.sample(1, seed=s, prompt="a")[-1] for s in range(4000))
    probs = model.probs("a")
    for w, p in zip(model.vocab, probs.tolist()):
        assert abs(draws[w] / 4000 - p) < 0.04


@pytest.mark.parametrize(
    "make",
    [
        lambda: NGramModel(0),
        lambda: NGramModel(2.5),
        lambda: NGramModel(2, k=-1),
        lambda: NGramModel(2, k=float("nan")),
        lambda: NGramModel(3).fit("ab"),
        lambda: NGramModel(2).fit("ab", vocab=["a"]),
        lambda: NGramModel(2).fit("ab").prob("a", "z"),
        lambda: NGramModel(3).fit("abc").prob("a", "b"),
        lambda: NGramModel(3).fit("abc").sample(5, prompt="a"),
        lambda: NGramModel(2).fit("abc").perplexity("a"),
        lambda: smoothed_probs({"z": 1}, ["a"], 1),
        lambda: smoothed_probs({}, [], 1),
        lambda: unseen_fraction("abc", "a", 2),
    ],
)
def test_bad_input_raises_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_unfitted_model_says_so():
    with pytest.raises(RuntimeError, match="fit"):
        NGramModel(2).prob("a", "b")


def test_shakespeare_characters(shakespeare):
    # 4-grams on a slice: clearly better than the unigram, and better than uniform over 65 characters
    text = shakespeare[:200_000]
    train, val = text[:180_000], text[180_000:]
    vocab = sorted(set(shakespeare))
    ppl = {n: NGramModel(n, k=0.1).fit(train, vocab).perplexity(val) for n in (1, 4)}
    assert ppl[4] < ppl[1] < len(vocab)
