"""Checks for Lab 10 (sampling): temperature, top-k, top-p and a seeded sampler, compared as
distributions with ``gptcourse.generate.filter_logits`` on fresh random logits."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from gptcourse.generate import filter_logits
from gptcourse.grading import expect_close, expect_probabilities, expect_shape, exercise, fail


def _logits() -> torch.Tensor:
    return torch.randn(random.randint(1, 4), random.randint(5, 60)) * random.uniform(0.5, 4.0)


def _check_distribution(name: str, got: torch.Tensor, expected: torch.Tensor, hint: str) -> None:
    expect_shape(name, got, tuple(expected.shape))
    expect_probabilities(name, got)
    expect_close(name, got, expected, atol=1e-5, rtol=1e-4, hint=hint)


@exercise("lab10.temperature")
def check_temperature(temperature_probs: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    for t in (0.0, 0.3, 1.0, 2.5, random.uniform(0.05, 5.0)):
        logits = _logits()
        if t == 0:
            expected = torch.nn.functional.one_hot(logits.argmax(-1), logits.size(-1)).float()
        else:
            expected = torch.softmax(filter_logits(logits, temperature=t), -1)
        _check_distribution(f"temperature_probs(logits, {t:.3g})", temperature_probs(logits.clone(), t), expected,
                            "temperature 0 puts all the probability on the arg-max; otherwise softmax(logits / T)")


@exercise("lab10.top_k")
def check_top_k(top_k_probs: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    for _ in range(6):
        logits = _logits()
        k = random.choice([1, 2, random.randint(1, logits.size(-1)), logits.size(-1) + 3])
        expected = torch.softmax(filter_logits(logits, top_k=k), -1)
        _check_distribution(f"top_k_probs(logits, k={k}) for {logits.size(-1)} tokens",
                            top_k_probs(logits.clone(), k), expected,
                            "keep the k largest logits (all of them if k >= vocabulary), set the rest to "
                            "-inf, then softmax")


@exercise("lab10.top_p")
def check_top_p(top_p_probs: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    for p in (1e-3, 0.5, 0.9, 1.0, random.uniform(0.05, 0.99)):
        logits = _logits()
        expected = torch.softmax(filter_logits(logits, top_p=p), -1)
        _check_distribution(f"top_p_probs(logits, p={p:.3g})", top_p_probs(logits.clone(), p), expected,
                            "sort by probability, keep the smallest prefix whose total reaches p (the most "
                            "likely token always stays), renormalise")


@exercise("lab10.sample")
def check_sample(sample: Callable[..., torch.Tensor]) -> None:
    for temperature, top_k, top_p in ((0.0, None, None), (1.0, None, None), (0.7, 5, None), (1.3, None, 0.8),
                                      (1.0, 10, 0.9)):
        logits = _logits()
        seed = random.randrange(1 << 30)
        got = sample(logits.clone(), temperature, top_k, top_p, torch.Generator().manual_seed(seed))
        expect_shape(f"sample(...) of {logits.size(0)} rows", got, (logits.size(0), 1))
        if temperature == 0:
            expected = logits.argmax(-1, keepdim=True)
        else:
            probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), -1)
            expected = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed))
        if not torch.equal(got.long(), expected):
            fail(f"sample(temperature={temperature}, top_k={top_k}, top_p={top_p}) with seed {seed} drew "
                 f"{got.flatten().tolist()}, the reference drew {expected.flatten().tolist()}",
                 "temperature 0 is the arg-max; otherwise filter (temperature, then top-k, then top-p), softmax, "
                 "and draw with torch.multinomial(probs, 1, generator=generator)")
