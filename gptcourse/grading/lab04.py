"""Checks for Lab 4 (scaled dot-product attention), against :mod:`gptcourse.attention` on fresh
random shapes: ``scaled_scores(q, k)`` and ``attention(q, k, v, mask=None)`` (True = may attend)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from gptcourse import attention as ref
from gptcourse.grading import call_learner, exercise, expect_close, expect_shape, fail


def random_qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh ``q (..., T, d)``, ``k (..., S, d)``, ``v (..., S, dv)`` with random sizes and 0 to 2
    leading (batch, head) dimensions; unseeded, so every run tests new inputs."""
    lead = tuple(torch.randint(1, 4, (int(torch.randint(0, 3, ())),)).tolist())
    T, S, d, dv = torch.randint(1, 12, (4,)).tolist()
    return torch.randn(*lead, T, d), torch.randn(*lead, S, d), torch.randn(*lead, S, dv)


@exercise("lab04.scores")
def check_scores(scaled_scores: Callable[..., Any], trials: int = 20) -> None:
    """``scaled_scores(q, k)`` is ``q k^T / sqrt(d)``, shape ``(..., T, S)``."""
    for _ in range(trials):
        q, k, _ = random_qkv()
        what = f"scaled_scores(q {tuple(q.shape)}, k {tuple(k.shape)})"
        got = call_learner(what, scaled_scores, q, k)
        expected = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        expect_shape(what, got, tuple(expected.shape))
        d = q.size(-1)
        if d > 1 and torch.allclose(got, expected * math.sqrt(d), atol=1e-5):
            fail(f"{what} is not scaled", f"divide by sqrt(d) = sqrt({d})")
        if d > 1 and torch.allclose(got, expected / math.sqrt(d), atol=1e-5):
            fail(f"{what} is divided by d, not by sqrt(d)", "use math.sqrt(q.size(-1))")
        expect_close(what, got, expected, hint="transpose the last two dimensions of k: k.transpose(-2, -1)")


@exercise("lab04.attention")
def check_attention(attention: Callable[..., Any], trials: int = 20) -> None:
    """``attention(q, k, v, mask=None)`` equals the package's, with no mask and with boolean masks."""
    for _ in range(trials):
        q, k, v = random_qkv()
        T, S = q.size(-2), k.size(-2)
        what = f"attention(q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)})"
        expect_close(what, call_learner(what, attention, q, k, v), ref.attention(q, k, v),
                     hint="softmax over the LAST dimension (the keys), then multiply by v")
        mask = torch.rand(T, S) < 0.6
        mask[:, 0] = True  # every query may see at least one key
        what_m = what[:-1] + f", mask {tuple(mask.shape)})"
        got = call_learner(what_m, attention, q, k, v, mask)
        expected = ref.attention(q, k, v, mask)
        flipped = ~mask
        flipped[~flipped.any(-1)] = True
        if (S > 1 and isinstance(got, torch.Tensor) and got.shape == expected.shape
                and not torch.allclose(got, expected, atol=1e-5)
                and torch.allclose(got, ref.attention(q, k, v, flipped), atol=1e-5)):
            fail(f"{what_m} attends where the mask is False",
                 "True means 'may attend': fill the scores where ~mask with -inf")
        expect_close(what_m, got, expected,
                     hint="set the scores where mask is False to -inf before the softmax: masked_fill(~mask, ...)")
        # a query that may see only one key copies that key's value
        only_last = torch.zeros(T, S, dtype=torch.bool)
        only_last[:, -1] = True
        what_1 = what[:-1] + ", a mask that allows only the last key)"
        expect_close(what_1, call_learner(what_1, attention, q, k, v, only_last),
                     v[..., -1:, :].expand(*v.shape[:-2], T, v.size(-1)))
