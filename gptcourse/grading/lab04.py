"""Exercise specs for Lab 4 (scaled dot-product attention): ``scaled_scores(q, k)`` and
``attention(q, k, v, mask=None)`` (mask True = may attend), against :mod:`gptcourse.attention`."""

from __future__ import annotations

import math

import torch

from gptcourse import attention as ref
from gptcourse.grading.spec import Case, Misconception, Spec


def _qkv(g: torch.Generator, lead: tuple[int, ...], T: int, S: int, d: int, dv: int) -> tuple[torch.Tensor, ...]:
    return (
        torch.randn(*lead, T, d, generator=g),
        torch.randn(*lead, S, d, generator=g),
        torch.randn(*lead, S, dv, generator=g),
    )


def _sizes(g: torch.Generator) -> tuple[int, int, int, int]:
    T, S, d, dv = (int(x) for x in torch.randint(2, 12, (4,), generator=g))
    return T, S if S != d else S + 1, d, dv  # S != d, so a scale by the wrong size shows


def score_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("no leading dimensions, T != S", _qkv(g, (), 3, 5, 4, 4)[:2]),
        Case("a batch dimension", _qkv(g, (2,), 4, 6, 8, 8)[:2]),
        Case("batch and head dimensions", _qkv(g, (2, 3), 5, 2, 6, 6)[:2]),
        Case("one query (T = 1)", _qkv(g, (2,), 1, 7, 3, 3)[:2]),
    ]
    for i in range(4):
        T, S, d, dv = _sizes(g)
        lead = tuple(int(x) for x in torch.randint(1, 4, (i % 3,), generator=g))
        cases.append(Case(f"random sizes {i + 1}", _qkv(g, lead, T, S, d, dv)[:2]))
    return cases


def reference_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))


def _softmax_inside(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.softmax(reference_scores(q, k), dim=-1)


SCORES = Spec(
    id="lab04.scores",
    points=2,
    name="scaled_scores",
    reference=reference_scores,
    cases=score_cases,
    hint="the score of query t and key s is the dot product of q[..., t, :] and k[..., s, :], divided by sqrt(d)",
    forbidden=("gptcourse.attention.attention", "torch.nn.functional.scaled_dot_product_attention"),
    misconceptions=(
        Misconception(
            "not scaled",
            lambda q, k: q @ k.transpose(-2, -1),
            "the dot products are not scaled: divide by the square root of the key size d",
        ),
        Misconception(
            "divided by d",
            lambda q, k: q @ k.transpose(-2, -1) / q.size(-1),
            "the scale is sqrt(d), not d: it keeps the scores' variance near 1 (Vaswani et al. 2017)",
        ),
        Misconception(
            "scaled by the number of keys",
            lambda q, k: q @ k.transpose(-2, -1) / math.sqrt(k.size(-2)),
            "d is the size of each query and key vector (the last dimension), not the number of keys",
        ),
        Misconception(
            "softmax already applied",
            _softmax_inside,
            "this function returns the scores before the softmax; the softmax is the next step",
        ),
    ),
)


def attention_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("no mask, no leading dimensions", _qkv(g, (), 3, 5, 4, 6)),
        Case("no mask, batch and head dimensions", _qkv(g, (2, 2), 4, 4, 8, 3)),
    ]
    q, k, v = _qkv(g, (2,), 4, 6, 5, 5)
    mask = torch.rand(4, 6, generator=g) < 0.5
    mask[:, 0] = True  # every query may see at least one key
    cases.append(Case("a boolean mask", (q, k, v, mask)))
    q, k, v = _qkv(g, (), 5, 5, 4, 4)
    cases.append(Case("a causal mask", (q, k, v, torch.ones(5, 5, dtype=torch.bool).tril())))
    q, k, v = _qkv(g, (3,), 2, 4, 4, 2)
    only_last = torch.zeros(2, 4, dtype=torch.bool)
    only_last[:, -1] = True
    cases.append(Case("a mask that allows only the last key", (q, k, v, only_last)))
    for i in range(3):
        T, S, d, dv = _sizes(g)
        q, k, v = _qkv(g, (2,) * (i % 3), T, S, d, dv)
        mask = torch.rand(T, S, generator=g) < 0.6
        mask[:, -1] = True
        cases.append(Case(f"random sizes and mask {i + 1}", (q, k, v, mask)))
    return cases


def _weights_then_values(dim: int, fill: float | None, flip: bool = False, scale: bool = True):
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = q @ k.transpose(-2, -1) / (math.sqrt(q.size(-1)) if scale else 1.0)
        if mask is not None and fill is not None:
            scores = scores.masked_fill(mask if flip else ~mask, fill)
        return torch.softmax(scores, dim=dim) @ v

    return attend


ATTENTION = Spec(
    id="lab04.attention",
    points=3,
    name="attention",
    reference=ref.attention,
    cases=attention_cases,
    hint="weights = softmax(scaled scores, over the keys); output = weights @ v; masked positions get weight 0",
    forbidden=("gptcourse.attention.attention", "torch.nn.functional.scaled_dot_product_attention"),
    misconceptions=(
        Misconception(
            "softmax over the queries",
            _weights_then_values(-2, float("-inf")),
            "the softmax normalises each query's weights over the keys: the last dimension of the scores",
        ),
        Misconception(
            "mask ignored",
            _weights_then_values(-1, None),
            "a mask was passed: positions where it is False must get weight 0",
        ),
        Misconception(
            "mask inverted",
            _weights_then_values(-1, -1e9, flip=True),
            "True in the mask means 'may attend': it is the False positions that are hidden",
        ),
        Misconception(
            "masked with zero",
            _weights_then_values(-1, 0.0),
            "a score of 0 still gets weight exp(0) > 0 after the softmax: hidden scores must be -inf",
        ),
        Misconception(
            "not scaled",
            _weights_then_values(-1, float("-inf"), scale=False),
            "scale the scores by 1/sqrt(d) before the softmax",
        ),
    ),
)

SPECS = (SCORES, ATTENTION)
