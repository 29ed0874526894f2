"""Exercise specs for Lab 11 (sparse attention masks): ``local_mask(T, window, S=None)`` and
``strided_mask(T, stride, S=None)``, boolean ``(T, S)`` masks (True = may attend), against
:mod:`gptcourse.attention`. With ``S`` given, the ``T`` rows are the last ``T`` of ``S`` positions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gptcourse.attention import local_mask, strided_mask
from gptcourse.grading.spec import Case, Compare, Misconception, Spec

FORBIDDEN = ("gptcourse.attention.local_mask", "gptcourse.attention.strided_mask", "gptcourse.attention.sparse_mask")
Mask = Callable[..., torch.Tensor]


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """An int in ``[low, high]``."""
    return int(torch.randint(low, high + 1, (), generator=g))


def mask_cases(param: str) -> Callable[[torch.Generator], list[Case]]:
    """Cases ``(T, value)`` or ``(T, value, S)`` for a mask whose size parameter is ``param``."""

    def cases(g: torch.Generator) -> list[Case]:
        fixed = [
            Case(f"T = 8, {param} 3", (8, 3)),
            Case(f"a single position (T = 1, {param} 1)", (1, 1)),
            Case(f"{param} 1", (6, 1)),
            Case(f"{param} larger than T", (5, 9)),
            Case(f"{param} equal to T", (8, 8)),
            Case("the last 3 of S = 10 positions", (3, 2, 10)),
            Case("one new query after 11 cached keys (S = 12)", (1, 4, 12)),
        ]
        for i in range(4):
            T = _randint(g, 2, 40)
            fixed.append(Case(f"random sizes {i + 1}", (T, _randint(g, 1, T + 3))))
            fixed.append(Case(f"random sizes with S > T {i + 1}", (T, _randint(g, 1, 10), T + _randint(g, 1, 20))))
        return fixed

    return cases


def _distances(T: int, S: int | None, last_rows: bool = True) -> torch.Tensor:
    """``(T, S)`` distances ``i - j`` from each query's absolute position to each key."""
    S = T if S is None else S
    i = torch.arange(S - T, S) if last_rows else torch.arange(T)
    return i[:, None] - torch.arange(S)[None, :]


def mask_compare(param: str) -> Compare:
    """Exactly equal, of the same dtype; the first wrong entry is described as a query, a key and
    their distance."""

    def compare(got: Any, expected: Any, case: Case) -> str | None:
        if not isinstance(got, torch.Tensor):
            return f"returned a {type(got).__name__}, expected a boolean tensor of shape {tuple(expected.shape)}"
        if got.dtype != expected.dtype:
            return f"returned dtype {got.dtype}, expected {expected.dtype} (True = may attend)"
        if got.shape != expected.shape:
            return f"returned shape {tuple(got.shape)}, expected {tuple(expected.shape)}: (T, S), queries by keys"
        if torch.equal(got, expected):
            return None
        T, value = case.args[:2]
        S = case.args[2] if len(case.args) > 2 else T
        i, j = (int(v) for v in torch.nonzero(got != expected)[0])
        pos = S - T + i
        verb = "may attend" if bool(expected[i, j]) else "must not attend"
        return (
            f"is wrong at row {i}, column {j}: the query at position {pos} {verb} to key {j} "
            f"(distance {pos - j}, {param} {value})"
        )

    return compare


def _local(
    T: int, window: int, S: int | None = None, causal: bool = True, last_rows: bool = True, extra: int = 0
) -> torch.Tensor:
    d = _distances(T, S, last_rows)
    return ((d >= 0) if causal else (d > -window)) & (d < window + extra)


def _strided(
    T: int,
    stride: int,
    S: int | None = None,
    band: bool = True,
    strides: bool = True,
    causal: bool = True,
    last_rows: bool = True,
    key_multiples: bool = False,
) -> torch.Tensor:
    d = _distances(T, S, last_rows)
    j = torch.arange(d.size(1))[None, :]
    multiple = (j % stride == 0) if key_multiples else (d % stride == 0)
    allowed = ((d < stride) & (d > -stride) if band else torch.zeros_like(d, dtype=torch.bool)) | (
        multiple if strides else torch.zeros_like(d, dtype=torch.bool)
    )
    return allowed & (d >= 0) if causal else allowed


LOCAL_MASK = Spec(
    id="lab11.local_mask",
    points=2,
    name="local_mask",
    reference=lambda T, w, S=None: local_mask(T, w, S),
    cases=mask_cases("window"),
    compare=mask_compare("window"),
    forbidden=FORBIDDEN,
    hint="the query in row r sits at absolute position i = S - T + r; it sees key j when 0 <= i - j < window "
    "(itself and the window - 1 positions before it); a boolean (T, S) tensor",
    misconceptions=(
        Misconception(
            "rows are the first T positions",
            lambda T, w, S=None: _local(T, w, S, last_rows=False),
            "with S > T the rows are the LAST T positions (the new queries after the cached ones): row r "
            "is the query at absolute position S - T + r",
        ),
        Misconception(
            "not causal",
            lambda T, w, S=None: _local(T, w, S, causal=False),
            "a query must never see a later key (j > i): that leaks the future; the band lies only behind the query",
        ),
        Misconception(
            "one key too many",
            lambda T, w, S=None: _local(T, w, S, extra=1),
            "the window counts the query itself: it sees itself and the window - 1 keys before it, "
            "so distances 0 .. window - 1",
        ),
        Misconception(
            "float mask",
            lambda T, w, S=None: local_mask(T, w, S).float(),
            "return a boolean mask (dtype torch.bool): comparisons such as i - j >= 0 already give "
            "booleans; combine them with & and |",
        ),
        Misconception(
            "mask inverted",
            lambda T, w, S=None: ~local_mask(T, w, S),
            "True means 'may attend' (the convention of F.scaled_dot_product_attention): the keys in "
            "the band are the True ones",
        ),
    ),
)

STRIDED_MASK = Spec(
    id="lab11.strided_mask",
    points=2,
    name="strided_mask",
    reference=lambda T, s, S=None: strided_mask(T, s, S),
    cases=mask_cases("stride"),
    compare=mask_compare("stride"),
    forbidden=FORBIDDEN,
    hint="the query at absolute position i = S - T + r sees key j when i - j >= 0 and either i - j < stride "
    "(the band) or i - j is a multiple of stride (the strides): two heads of the Sparse Transformer merged",
    misconceptions=(
        Misconception(
            "rows are the first T positions",
            lambda T, s, S=None: _strided(T, s, S, last_rows=False),
            "with S > T the rows are the LAST T positions (the new queries after the cached ones): row r "
            "is the query at absolute position S - T + r",
        ),
        Misconception(
            "not causal",
            lambda T, s, S=None: _strided(T, s, S, causal=False),
            "a query must never see a later key (j > i): that leaks the future; both the band and the "
            "strides look backwards only",
        ),
        Misconception(
            "band missing",
            lambda T, s, S=None: _strided(T, s, S, band=False),
            "besides every stride-th key back, the query also sees the last stride positions "
            "(0 <= i - j < stride): the local head of the pattern",
        ),
        Misconception(
            "strides missing",
            lambda T, s, S=None: _strided(T, s, S, strides=False),
            "besides the band, the query sees every earlier key a multiple of stride back "
            "((i - j) mod stride = 0): the strided head of the pattern",
        ),
        Misconception(
            "key positions that are multiples of stride",
            lambda T, s, S=None: _strided(T, s, S, key_multiples=True),
            "the strides are counted back from each query: its distance i - j is a multiple of stride, "
            "not the key's position j",
        ),
        Misconception(
            "float mask",
            lambda T, s, S=None: strided_mask(T, s, S).float(),
            "return a boolean mask (dtype torch.bool): comparisons already give booleans; combine them with & and |",
        ),
    ),
)

SPECS = (LOCAL_MASK, STRIDED_MASK)
