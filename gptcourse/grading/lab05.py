"""Exercise specs for Lab 5 (the causal mask): ``causal_mask(T)``, ``masked_softmax(scores, mask)``
and ``causal_attention(q, k, v)``, against :mod:`gptcourse.attention`.

Causal attention is graded with a *leak test* as well as by value: the inputs at each position in
turn are changed and no earlier output may move. :func:`with_leaks` and :func:`causal_compare` do
that for any causal ``(B, T, ...) -> (B, T, ...)`` computation (Lab 6's module uses them too).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from gptcourse import attention as ref
from gptcourse.grading.spec import Case, Compare, Misconception, Spec, close, exact

LEAK_TOL = 1e-5  # a change this small at an earlier position is rounding, not a leak


def with_leaks(forward: Callable[..., Any], *inputs: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """Run ``forward(*inputs)`` (each input ``(B, T, ...)``), then once more per position ``t >= 1``
    with every input changed at ``t`` only. Returns ``(output, leaks)``: ``leaks`` is ``(T, T)``,
    ``leaks[t, p]`` the largest change of the output at an earlier position ``p < t``."""
    out = forward(*inputs)
    B, T = inputs[0].shape[:2]
    leaks = torch.zeros(T, T)
    if not isinstance(out, torch.Tensor) or out.dim() < 3 or tuple(out.shape[:2]) != (B, T):
        return out, leaks  # the output's shape is wrong: the comparison says so, leaks are moot
    for t in range(1, T):
        changed = []
        for x in inputs:
            x = x.clone()
            x[:, t] = -2.0 * x[:, t] + 1.0  # a fixed change, so the case alone decides the outcome
            changed.append(x)
        moved = forward(*changed)
        if isinstance(moved, torch.Tensor) and moved.shape == out.shape:
            leaks[t, :t] = (moved[:, :t] - out[:, :t]).abs().flatten(2).amax(dim=(0, 2)).float()
    return out, leaks


def causal_compare(atol: float = 1e-5, rtol: float = 1e-4) -> Compare:
    """Compare ``(output, leaks)`` pairs from :func:`with_leaks`: the output's shape, then a leak
    (a change of an earlier output that the expected answer does not have), then the values."""
    values = close(atol, rtol)

    def compare(got: Any, expected: Any, case: Case) -> str | None:
        if not (
            isinstance(got, (tuple, list))
            and len(got) == 2
            and isinstance(got[1], torch.Tensor)
            and got[1].shape == expected[1].shape
        ):
            return "returned a malformed output (not an output and its leak map)"
        (out, leaks), (e_out, e_leaks) = got, expected
        if not isinstance(out, torch.Tensor) or out.shape != e_out.shape:
            return values(out, e_out, case)
        leaky, e_leaky = leaks > LEAK_TOL, e_leaks > LEAK_TOL
        if (leaky & ~e_leaky).any():
            t, p = (int(i) for i in (leaky & ~e_leaky).nonzero()[0])
            return f"leaks the future: changing the inputs at position {t} changed the output at earlier position {p}"
        if (e_leaky & ~leaky).any():
            return "has a different leak map"  # only between two wrong answers: the reference has no leak
        return values(out, e_out, case)

    return compare


# --- Exercise 1: the mask -----------------------------------------------------------------------------


def mask_cases(g: torch.Generator) -> list[Case]:
    # a middling T first: at T = 1 several wrong masks agree with each other
    cases = [Case("T = 6", (6,)), Case("a single position (T = 1)", (1,)), Case("T = 2", (2,))]
    cases += [Case(f"random T {i + 1}", (int(torch.randint(3, 40, (1,), generator=g)),)) for i in range(4)]
    return cases


def compare_mask(got: Any, expected: Any, case: Case) -> str | None:
    """Exactly equal, and boolean: an integer or float 0/1 mask means something else to attention."""
    if (
        isinstance(got, torch.Tensor)
        and isinstance(expected, torch.Tensor)
        and got.shape == expected.shape
        and got.dtype != expected.dtype
    ):
        return f"returned dtype {got.dtype}, expected {expected.dtype}"
    return exact()(got, expected, case)


def _ones(T: int) -> torch.Tensor:
    return torch.ones(T, T, dtype=torch.bool)


def _additive(T: int) -> torch.Tensor:
    return torch.zeros(T, T).masked_fill(~_ones(T).tril(), float("-inf"))


MASK = Spec(
    id="lab05.mask",
    points=1,
    name="causal_mask",
    reference=ref.causal_mask,
    cases=mask_cases,
    compare=compare_mask,
    forbidden=("gptcourse.attention.causal_mask",),
    hint="row i is query i and column j is key j: True exactly where j <= i, a boolean (T, T) tensor",
    misconceptions=(
        Misconception(
            "transposed",
            lambda T: _ones(T).triu(),
            "rows are queries and columns are keys: query i may see keys j <= i, the lower triangle, "
            "not the upper one (which lets position 0 see every later position)",
        ),
        Misconception(
            "diagonal excluded",
            lambda T: _ones(T).tril(diagonal=-1),
            "a position may attend to itself (j = i): keep the diagonal, or query 0 sees nothing",
        ),
        Misconception(
            "polarity reversed",
            lambda T: ~_ones(T).tril(),
            "True means 'may attend' (the convention of F.scaled_dot_product_attention): "
            "the allowed keys j <= i are the True ones",
        ),
        Misconception(
            "float mask",
            lambda T: torch.ones(T, T).tril(),
            "the mask must be boolean (dtype torch.bool): attention adds a float mask to the scores, "
            "so 0.0 and 1.0 would hide nothing",
        ),
        Misconception(
            "additive mask",
            _additive,
            "this exercise asks for the boolean form (True = may attend), not an additive 0 / -inf mask",
        ),
    ),
)


# --- Exercise 2: the masked softmax ---------------------------------------------------------------------


def _random_mask(g: torch.Generator, *shape: int) -> torch.Tensor:
    """A random boolean mask in which every row allows at least one key (its last)."""
    mask = torch.rand(*shape, generator=g) < 0.5
    mask[..., -1] = True
    return mask


def softmax_cases(g: torch.Generator) -> list[Case]:
    def scores(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 3

    one_key = torch.zeros(4, 6, dtype=torch.bool)
    one_key[torch.arange(4), torch.tensor([0, 5, 2, 5])] = True
    cases = [
        Case("a causal mask", (scores(2, 5, 5), ref.causal_mask(5))),
        Case("no leading dimensions, T != S", (scores(4, 6), _random_mask(g, 4, 6))),
        Case("a (T, S) mask broadcast over batch and heads", (scores(2, 3, 4, 7), _random_mask(g, 4, 7))),
        Case("a mask with the batch dimension", (scores(3, 4, 4), _random_mask(g, 3, 4, 4))),
        Case("one allowed key per row", (scores(2, 4, 6), one_key)),
        Case("a single query and key", (scores(2, 1, 1), torch.ones(1, 1, dtype=torch.bool))),
    ]
    for i in range(3):
        B, T, S = (int(x) for x in torch.randint(1, 12, (3,), generator=g))
        cases.append(Case(f"random sizes and mask {i + 1}", (scores(B, T, S), _random_mask(g, T, S))))
    return cases


def reference_masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def compare_masked_softmax(got: Any, expected: Any, case: Case) -> str | None:
    """Close, and exactly 0 wherever the expected weight is (the masked positions)."""
    if isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor) and got.shape == expected.shape:
        leaked = (expected == 0) & (got != 0)
        if leaked.any():
            index = tuple(int(i) for i in leaked.nonzero()[0])
            return f"gives weight {got[index].item():.3g} at index {index}, a masked position (must be exactly 0)"
    return close(1e-6, 1e-5)(got, expected, case)


def _softmax(fill: float | None, dim: int = -1, invert: bool = False) -> Callable[..., torch.Tensor]:
    def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if fill is not None:
            scores = scores.masked_fill(mask if invert else ~mask, fill)
        return torch.softmax(scores, dim=dim)

    return masked_softmax


MASKED_SOFTMAX = Spec(
    id="lab05.masked_softmax",
    points=2,
    name="masked_softmax",
    reference=reference_masked_softmax,
    cases=softmax_cases,
    compare=compare_masked_softmax,
    forbidden=("gptcourse.attention.attention_weights", "gptcourse.attention.attention"),
    hint="hide the scores where mask is False (a score of -inf gets weight exp(-inf) = 0), then take the softmax "
    "over the last dimension (the keys); the mask broadcasts against the scores",
    misconceptions=(
        Misconception(
            "mask ignored", _softmax(None), "a mask was passed: positions where it is False must get weight exactly 0"
        ),
        Misconception(
            "mask inverted",
            _softmax(float("-inf"), invert=True),
            "True in the mask means 'may attend': it is the False positions that are hidden",
        ),
        Misconception(
            "masked with zero",
            _softmax(0.0),
            "a score of 0 still gets weight exp(0) > 0 after the softmax: hidden scores must be -inf",
        ),
        Misconception(
            "zeroed after the softmax",
            lambda s, m: torch.softmax(s, dim=-1) * m,
            "zeroing weights after the softmax leaves rows that no longer sum to 1: hide the scores "
            "before normalising (Chapter 5)",
        ),
        Misconception(
            "softmax over the queries",
            _softmax(float("-inf"), dim=-2),
            "each query's weights are normalised over the keys: the last dimension of the scores",
        ),
    ),
)


# --- Exercise 3: causal attention ---------------------------------------------------------------------------


def attention_cases(g: torch.Generator) -> list[Case]:
    def qkv(B: int, T: int, d: int) -> tuple[torch.Tensor, ...]:
        return tuple(torch.randn(B, T, d, generator=g) for _ in range(3))

    cases = [
        Case("batch of 2, T = 6", qkv(2, 6, 4)),
        Case("a single position (T = 1)", qkv(3, 1, 5)),
        Case("one sequence, d = 1", qkv(1, 5, 1)),
        Case("T = 2", qkv(2, 2, 8)),
    ]
    for i in range(3):
        B, T, d = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 4), (2, 12), (1, 9)))
        cases.append(Case(f"random sizes {i + 1}", qkv(B, T, d)))
    return cases


def run_causal(answer: Callable[..., Any], case: Case) -> tuple[Any, torch.Tensor]:
    """The output on the case's ``q, k, v`` and the leak map (:func:`with_leaks`)."""
    return with_leaks(answer, *case.args)


def reference_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ref.attention(q, k, v, ref.causal_mask(q.size(-2)))


def _attend(
    mask: Callable[[int], torch.Tensor] | None, scale: bool = True, dim: int = -1, after: bool = False
) -> Callable[..., torch.Tensor]:
    def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = q @ k.transpose(-2, -1) / (math.sqrt(q.size(-1)) if scale else 1.0)
        if mask is None:
            return torch.softmax(scores, dim=dim) @ v
        allowed = mask(q.size(-2))
        if after:
            return torch.softmax(scores, dim=dim) * allowed @ v
        return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=dim) @ v

    return causal_attention


CAUSAL_ATTENTION = Spec(
    id="lab05.causal_attention",
    points=3,
    name="causal_attention",
    reference=reference_causal_attention,
    cases=attention_cases,
    run=run_causal,
    compare=causal_compare(),
    forbidden=(
        "gptcourse.attention.attention",
        "gptcourse.attention.attention_weights",
        "gptcourse.attention.causal_mask",
        "torch.nn.functional.scaled_dot_product_attention",
    ),
    hint="scores q k^T / sqrt(d), hidden where key j > query i, a softmax over the keys, then times v",
    misconceptions=(
        Misconception(
            "no mask",
            _attend(None),
            "query i must not see keys j > i: apply the causal mask to the scores before the softmax",
        ),
        Misconception(
            "mask transposed",
            _attend(lambda T: _ones(T).triu()),
            "the mask is the lower triangle: row i (a query) keeps the columns j <= i (keys)",
        ),
        Misconception(
            "softmax over the queries",
            _attend(lambda T: _ones(T).tril(), dim=-2),
            "normalise each query's weights over the keys (the last dimension): a softmax over the "
            "queries mixes in later positions",
        ),
        Misconception(
            "not scaled",
            _attend(lambda T: _ones(T).tril(), scale=False),
            "scale the scores by 1/sqrt(d), d the size of each query and key vector",
        ),
        Misconception(
            "diagonal excluded",
            _attend(lambda T: _ones(T).tril(diagonal=-1)),
            "a position may attend to itself (j <= i, not j < i): otherwise query 0 has nothing to see",
        ),
        Misconception(
            "masked after the softmax",
            _attend(lambda T: _ones(T).tril(), after=True),
            "a softmax before the mask still divides by a sum over the later keys, so the future leaks "
            "in (and the rows no longer sum to 1): hide the scores first, then normalise",
        ),
    ),
)

SPECS = (MASK, MASKED_SOFTMAX, CAUSAL_ATTENTION)
