"""Exercise specs for Lab 4 (scaled dot-product attention): ``scaled_scores(q, k)`` and
``attention(q, k, v, mask=None)`` (mask True = may attend), against :mod:`gptcourse.attention`;
then ``learner/head.py``: ``padding_mask(lengths, T, left=False)`` and ``Head(n_embd, head_size,
dropout=0.0, bias=False)``, one causal self-attention head with a padding mask, against
:class:`ReferenceHead` (written with :func:`gptcourse.attention.attention_weights`) on the same weights.

Padding positions are defined to output 0 (their row of weights is all 0): real queries never see a
padding key, and no NaN appears for a query that may see nothing."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcourse import attention as ref
from gptcourse.grading.spec import (
    AnswerError,
    Case,
    Misconception,
    Spec,
    close,
    exact,
    load_reference_weights,
    parameter_grads,
    randomize_,
    seeded,
)


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


# --- Exercise 3: the padding mask -----------------------------------------------------------------------------


def padding_mask_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("right padding (the default), lengths 3, 5, 1 of T = 5", (torch.tensor([3, 5, 1]), 5)),
        Case("left padding, lengths 2, 4 of T = 6", (torch.tensor([2, 4]), 6), {"left": True}),
        Case("a length of 0 and a full row, right padding", (torch.tensor([0, 4]), 4)),
        Case("a length of 0 and a full row, left padding", (torch.tensor([4, 0]), 4), {"left": True}),
    ]
    for i in range(3):
        T = int(torch.randint(2, 12, (1,), generator=g))
        lengths = torch.randint(0, T + 1, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g)
        cases.append(Case(f"random lengths {i + 1}", (lengths, T), {"left": i % 2 == 1}))
    return cases


def reference_padding_mask(lengths: torch.Tensor, T: int, left: bool = False) -> torch.Tensor:
    positions = torch.arange(T, device=lengths.device)
    if left:
        return positions >= T - lengths[:, None]
    return positions < lengths[:, None]


def _padding_mask(mistake: str):
    def padding_mask(lengths: torch.Tensor, T: int, left: bool = False) -> torch.Tensor:
        if mistake == "side ignored":
            left = False
        elif mistake == "sides swapped":
            left = not left
        positions = torch.arange(T)
        if mistake == "one position too many":
            mask = positions >= T - lengths[:, None] - 1 if left else positions <= lengths[:, None]
        else:
            mask = positions >= T - lengths[:, None] if left else positions < lengths[:, None]
        return mask.float() if mistake == "float mask" else mask

    return padding_mask


PADDING_MASK = Spec(
    id="lab04.padding_mask",
    points=1,
    name="padding_mask",
    reference=reference_padding_mask,
    cases=padding_mask_cases,
    compare=exact(),
    hint="row b is True at the lengths[b] positions that hold real tokens: the first ones with right padding, "
    "the last ones with left padding; a boolean (B, T) tensor",
    misconceptions=(
        Misconception(
            "one position too many",
            _padding_mask("one position too many"),
            "a sequence of length n has n real tokens: positions 0 .. n - 1 (right padding), one fewer than "
            "this mask marks",
        ),
        Misconception(
            "side ignored",
            _padding_mask("side ignored"),
            "with left=True the padding comes first: the real tokens are the LAST lengths[b] positions",
        ),
        Misconception(
            "sides swapped",
            _padding_mask("sides swapped"),
            "left=False is right padding (real tokens first, padding after them); left=True puts the padding first",
        ),
        Misconception(
            "float mask",
            _padding_mask("float mask"),
            "the mask must be boolean (True = a real token), the convention of every mask in the course",
        ),
    ),
)


# --- Exercise 4: one causal head with a padding mask -------------------------------------------------------------


class ReferenceHead(nn.Module):
    """The specification of ``Head``, written with :func:`gptcourse.attention.attention_weights`: causal,
    padding keys hidden, padding positions output 0 (their weights are all 0), dropout on the weights."""

    def __init__(self, n_embd: int, head_size: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.head_size = head_size
        self.query = nn.Linear(n_embd, head_size, bias=bias)
        self.key = nn.Linear(n_embd, head_size, bias=bias)
        self.value = nn.Linear(n_embd, head_size, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        T = x.size(-2)
        allowed = ref.causal_mask(T, device=x.device)
        if padding_mask is not None:
            allowed = allowed & padding_mask[..., None, :] & padding_mask[..., :, None]
        weights = ref.attention_weights(self.query(x), self.key(x), allowed)
        out = self.dropout(weights) @ self.value(x)
        return (out, weights) if return_weights else out


class _WrongHead(ReferenceHead):
    """The reference written out, with one known mistake (``mistake``)."""

    mistake = ""

    def forward(self, x, padding_mask=None, return_weights=False):
        mistake, T, C = self.mistake, x.size(-2), x.size(-1)
        q, k, v = self.query(x), self.key(x), self.value(x)
        if mistake == "queries and keys swapped":
            q, k = k, q
        scale = {"scaled by sqrt(T)": T, "scaled by sqrt(n_embd)": C}.get(mistake, self.head_size)
        scores = q @ k.transpose(-2, -1) / math.sqrt(scale)
        allowed = torch.ones(T, T, dtype=torch.bool)
        if mistake != "no causal mask":
            allowed = allowed.tril()
        if padding_mask is not None:
            if mistake != "padding mask on the query axis":
                allowed = allowed & padding_mask[..., None, :]
            if mistake != "padding positions not zeroed":
                allowed = allowed & padding_mask[..., :, None]
        if mistake == "masked after the softmax":
            weights = torch.softmax(scores, dim=-1) * allowed
        else:
            scores = scores.masked_fill(~allowed, float("-inf"))
            weights = torch.softmax(scores, dim=-2 if mistake == "softmax over the queries" else -1)
            if mistake != "NaN at padding positions":
                weights = weights.nan_to_num(0.0)
        if mistake == "dropout also in eval mode":
            dropped = F.dropout(weights, self.dropout.p)
        elif mistake == "dropout on the output":
            dropped = weights
        else:
            dropped = self.dropout(weights)
        out = dropped @ v
        if mistake == "dropout on the output":
            out = self.dropout(out)
        if mistake == "weights returned after dropout":
            weights = dropped
        return (out, weights) if return_weights else out


HEAD_HINTS = {
    "scaled by sqrt(T)": "the scores are divided by sqrt(head_size), the width of each query and key, not by the "
    "square root of the number of positions T (Chapter 4, Step 3: divide by sqrt(d))",
    "scaled by sqrt(n_embd)": "q and k are head_size wide after their projections: the scale is sqrt(head_size), not "
    "sqrt(n_embd), the width of x (Chapter 4, Queries, keys and values)",
    "queries and keys swapped": "score [t, s] is query t against key s: q @ k^T with q from self.query and k from "
    "self.key; swapped, each row mixes the wrong positions (Chapter 4, Queries, keys and values)",
    "softmax over the queries": "each query's weights are normalised over the keys, the last dimension of the scores "
    "(Chapter 4, Step 4: softmax, row by row)",
    "no causal mask": "the head is causal: query t may see keys 0 .. t only (Chapter 5, The causal mask, step by step)",
    "masked after the softmax": "hide the scores (-inf) before the softmax: zeroing weights afterwards leaves rows "
    "that do not sum to 1 (Chapter 5, The causal mask, step by step)",
    "padding mask on the query axis": "padding hides KEYS: no real query may give weight to a padding position, "
    "so the mask of the real tokens acts along the last axis of the scores (the columns), not only the rows",
    "padding positions not zeroed": "the specification says a padding position outputs 0 and its row of weights is "
    "all 0, even where causality would let it see earlier real tokens",
    "NaN at padding positions": "a row with every score at -inf gives 0/0 = NaN in the softmax: a query that may see "
    "nothing must get weights 0 and output 0, with no NaN in the output or the gradients",
    "dropout also in eval mode": "dropout acts only in training mode: in eval mode the head is deterministic "
    "(an nn.Dropout module follows the module's mode, F.dropout does not unless told)",
    "dropout on the output": "dropout goes on the attention weights (after the softmax, before the product with the "
    "values), not on the head's output",
    "weights returned after dropout": "the weights returned with return_weights=True are the softmax weights before "
    "dropout (each real row sums to 1); dropout only changes what is multiplied with the values",
}


def _head(mistake: str) -> type[nn.Module]:
    return type("Head", (_WrongHead,), {"mistake": mistake})


def _seed(g: torch.Generator) -> int:
    return int(torch.randint(2**31, (1,), generator=g))


def _lengths_mask(lengths: list[int], T: int, left: bool = False) -> torch.Tensor:
    return reference_padding_mask(torch.tensor(lengths), T, left)


def head_cases(g: torch.Generator) -> list[Case]:
    def case(
        label: str,
        shape: tuple[int, ...],
        head_size: int,
        pad: torch.Tensor | None = None,
        how: str = "eval",
        dropout: float = 0.0,
        bias: bool = False,
    ) -> Case:
        C = shape[-1]
        with seeded(g):
            reference = ReferenceHead(C, head_size, dropout, bias)
        randomize_(reference, g)
        state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
        x = torch.randn(shape, generator=g)
        proj = torch.randn(*shape[:-1], head_size, generator=g)
        inputs = {"state": state, "x": x, "proj": proj, "pad": pad, "how": how, "seed": _seed(g)}
        return Case(label, (C, head_size, dropout, bias), {"inputs": inputs})

    middle = torch.ones(2, 6, dtype=torch.bool)
    middle[0, 2], middle[1, [1, 4]] = False, False
    cases = [
        case("(B, T, C) = (2, 5, 12), head_size 3, no padding mask", (2, 5, 12), 3),
        case(
            "left padding (lengths 4 and 2 of 6): real queries must not see the padding",
            (2, 6, 8),
            3,
            _lengths_mask([4, 2], 6, left=True),
        ),
        case(
            "right padding (lengths 5 and 2 of 6): padding positions output 0", (2, 6, 8), 3, _lengths_mask([5, 2], 6)
        ),
        case("padding in the middle of a row", (2, 6, 10), 4, middle),
        case("a fully padded row beside a full one", (2, 4, 8), 2, _lengths_mask([0, 4], 4)),
        case("no batch dimension: x (T, C), padding mask (T,)", (5, 8), 3, _lengths_mask([3], 5, left=True)[0]),
        case("two leading dimensions (2, 3, T, C)", (2, 3, 5, 6), 4, torch.rand(2, 3, 5, generator=g) < 0.7),
        case("bias=True", (2, 4, 8), 3, _lengths_mask([4, 3], 4), bias=True),
        case(
            "return_weights=True: (output, weights)", (2, 5, 8), 3, _lengths_mask([3, 5], 5, left=True), how="weights"
        ),
        case("dropout=0.3 in eval mode (no dropout)", (2, 5, 8), 3, _lengths_mask([5, 4], 5), dropout=0.3),
        case(
            "dropout=0.3 in training mode (same seed as the reference)",
            (2, 5, 8),
            3,
            _lengths_mask([5, 4], 5),
            how="train",
            dropout=0.3,
        ),
        case("return_weights=True in training mode, dropout=0.3", (2, 5, 8), 3, None, how="train weights", dropout=0.3),
    ]
    for i in range(2):
        B, T, C, hs = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 4), (2, 9), (2, 13), (1, 7)))
        lengths = torch.randint(0, T + 1, (B,), generator=g)
        cases.append(
            case(f"random sizes and padding {i + 1}", (B, T, C), hs, reference_padding_mask(lengths, T, left=i == 0))
        )
    return cases


def run_head(answer: Any, case: Case) -> Any:
    """Build ``answer(n_embd, head_size, dropout, bias)``, load the case's weights, run it (eval or
    training mode, a fixed seed), and return the output (and the weights when asked) and the gradients."""
    inputs = case.kwargs["inputs"]
    state, x, proj, pad, how, seed = (inputs[k] for k in ("state", "x", "proj", "pad", "how", "seed"))
    with torch.random.fork_rng(devices=[]):  # its init draws from torch's generator: leave the learner's alone
        module = answer(*case.args)
    load_reference_weights(module, state, "your Head")
    module.train(how.startswith("train"))
    x = x.clone().requires_grad_(True)
    args = () if pad is None else (pad.clone(),)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same dropout draws as the reference's
        if how.endswith("weights"):
            result = module(x, *args, return_weights=True)
            if not (isinstance(result, (tuple, list)) and len(result) == 2):
                raise AnswerError("with return_weights=True, forward must return a pair (output, weights)")
            y, weights = result
        else:
            y, weights = module(x, *args), None
    if not isinstance(y, torch.Tensor) or y.shape != proj.shape:
        return {"output": y}
    (y * proj).sum().backward()
    out = {"output": y.detach(), "grad of x": x.grad, "grads": parameter_grads(module)}
    if weights is not None:
        out["weights"] = weights.detach() if isinstance(weights, torch.Tensor) else weights
    return out


HEAD = Spec(
    id="lab04.head",
    points=4,
    name="Head",
    reference=ReferenceHead,
    cases=head_cases,
    run=run_head,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=(
        "gptcourse.attention.attention",
        "gptcourse.attention.attention_weights",
        "torch.nn.functional.scaled_dot_product_attention",
        "torch.nn.MultiheadAttention",
    ),
    hint="q, k, v from self.query, self.key, self.value; scores q k^T / sqrt(head_size); a key is hidden when it is "
    "later than the query or padding; softmax over the keys; padding positions get weights 0 and output 0; "
    "dropout on the weights in training mode only",
    misconceptions=tuple(Misconception(n, _head(n), h) for n, h in HEAD_HINTS.items()),
)

SPECS = (SCORES, ATTENTION, PADDING_MASK, HEAD)
