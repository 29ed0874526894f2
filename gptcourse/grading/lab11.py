"""Checks for Lab 11 (sparse attention): the local band and the strided mask."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from gptcourse.attention import local_mask, strided_mask
from gptcourse.grading import exercise, expect_shape, expect_type, fail


def _sizes(param: str) -> list[tuple[int, int, int | None]]:
    """Fresh ``(T, param value, S or None)`` cases, with the edge cases always included."""
    rng = random.Random()
    cases = [(1, 1, None), (6, 1, None), (5, 9, None), (8, 8, None), (3, 2, 10), (1, 4, 12)]
    for _ in range(8):
        T = rng.randint(2, 40)
        cases.append((T, rng.randint(1, T + 3), None))
        cases.append((T, rng.randint(1, 10), T + rng.randint(0, 20)))
    return cases


def _compare(name: str, fn: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor], param: str) -> None:
    for T, value, S in _sizes(param):
        args = (T, value) if S is None else (T, value, S)
        call = f"{name}({', '.join(map(str, args))})"
        got = fn(*args)
        expect_type(call, got, torch.Tensor)
        if got.dtype != torch.bool:
            fail(f"{call} has dtype {got.dtype}; return a boolean mask (True = may attend)",
                 "comparisons like (i - j >= 0) already give booleans; combine them with & and |")
        expected = reference(T, value, S)
        expect_shape(call, got, tuple(expected.shape))
        if torch.equal(got, expected):
            continue
        Sv = T if S is None else S
        i, j = (int(v) for v in torch.nonzero(got != expected)[0])
        pos = Sv - T + i
        verb = "may attend" if expected[i, j] else "must not attend"
        future = j > pos
        fail(f"{call} is wrong at row {i}, column {j}: the query at absolute position {pos} {verb} to key {j} "
             f"(distance {pos - j}, {param}={value})",
             "a query must never see a later key (j > i): that leaks the future" if future and got[i, j] else
             "with S > T the rows are the LAST T positions: query row i sits at position S - T + i" if S is not None
             else None)


@exercise("lab11.local_mask")
def check_local_mask(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(T, window, S=None)`` must equal :func:`gptcourse.attention.local_mask`."""
    _compare("local_mask", fn, lambda T, w, S: local_mask(T, w, S), "window")


@exercise("lab11.strided_mask")
def check_strided_mask(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(T, stride, S=None)`` must equal :func:`gptcourse.attention.strided_mask`."""
    _compare("strided_mask", fn, lambda T, s, S: strided_mask(T, s, S), "stride")
