"""Checks for Lab 5 (the causal mask): ``causal_mask(T)``, ``masked_softmax(scores, mask)`` and
``causal_attention(q, k, v)``, the last graded by a leak test: changing a future position must
not change any earlier output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gptcourse import attention as ref
from gptcourse.grading import exercise, expect_close, expect_equal, expect_probabilities, expect_shape, fail
from gptcourse.grading import call_learner


@exercise("lab05.mask")
def check_mask(causal_mask: Callable[[int], Any]) -> None:
    """``causal_mask(T)`` is a boolean ``(T, T)`` tensor, True on and below the diagonal."""
    for T in [1, 2] + torch.randint(3, 40, (5,)).tolist():
        what = f"causal_mask({T})"
        got = call_learner(what, causal_mask, T)
        expect_shape(what, got, (T, T))
        expect_equal(f"{what}.dtype", got.dtype, torch.bool, "build it with dtype=torch.bool (True = may attend)")
        expected = ref.causal_mask(T)
        if T > 1 and torch.equal(got, expected.T):
            fail(f"{what} is transposed: it lets position 0 see every later position",
                 "query i (row) may see keys j <= i (columns): the lower triangle, torch.tril")
        if T > 1 and torch.equal(got, ~expected):
            fail(f"{what} has the polarity reversed", "True means 'may attend' (SDPA's convention)")
        if not torch.equal(got, expected):
            i, j = (got != expected).nonzero()[0].tolist()
            fail(f"{what}[{i}, {j}] is {bool(got[i, j])}: query {i} {'must not' if j > i else 'may'} see key {j}")


@exercise("lab05.masked_softmax")
def check_masked_softmax(masked_softmax: Callable[..., Any], trials: int = 20) -> None:
    """``masked_softmax(scores, mask)``: softmax over the last dimension where mask is True, 0 elsewhere."""
    for _ in range(trials):
        B, T = torch.randint(1, 4, ()).item(), torch.randint(1, 16, ()).item()
        scores = torch.randn(B, T, T) * 3
        if torch.rand(()) < 0.5:
            mask = ref.causal_mask(T)
        else:
            mask = (torch.rand(T, T) < 0.5) | torch.eye(T, dtype=torch.bool)
        what = f"masked_softmax(scores {tuple(scores.shape)}, mask {tuple(mask.shape)})"
        got = call_learner(what, masked_softmax, scores, mask)
        expect_shape(what, got, (B, T, T))
        expect_probabilities(what, got)
        if (got.masked_select(~mask.expand(B, T, T)) != 0).any():
            fail(f"{what} gives weight to masked positions", "fill the scores with -inf where mask is False")
        expect_close(what, got, torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1))


@exercise("lab05.causal_attention")
def check_causal_attention(causal_attention: Callable[..., Any], trials: int = 10) -> None:
    """``causal_attention(q, k, v)`` equals masked attention and never leaks the future."""
    for _ in range(trials):
        B, T, d = torch.randint(1, 4, ()).item(), torch.randint(2, 16, ()).item(), torch.randint(1, 9, ()).item()
        q, k, v = (torch.randn(B, T, d) for _ in range(3))
        what = f"causal_attention(q, k, v of shape {(B, T, d)})"
        out = call_learner(what, causal_attention, q, k, v)
        expect_shape(what, out, (B, T, d))
        # the leak test: change everything at one position t; nothing before t may move
        t = torch.randint(1, T, ()).item()
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[:, t] = torch.randn(B, d) * 5
        out2 = call_learner(what, causal_attention, q2, k2, v2)
        moved = (out2[:, :t] - out[:, :t]).abs().amax(dim=(0, 2)) > 1e-5
        if moved.any():
            p = int(moved.nonzero()[0])
            fail(f"leak: changing position {t} changed the output at earlier position {p}",
                 "query i must not see keys j > i: apply the causal mask before the softmax")
        expect_close(what, out, ref.attention(q, k, v, ref.causal_mask(T)), hint="scale the scores by 1/sqrt(d)")
