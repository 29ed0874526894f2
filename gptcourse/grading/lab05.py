"""Exercise specs for Lab 5 (the causal mask and positions): ``causal_mask(T, S=None, device=None)``
(with the offset of a KV cache), ``masked_softmax(scores, mask)`` and ``causal_attention(q, k, v)``,
against :mod:`gptcourse.attention`; then ``sinusoidal_positions(T, C)`` and ``positions(config)``
(the learned table, the sinusoidal module, no positions), against :mod:`gptcourse.layers` and
:func:`gptcourse.model.positions` on the same weights. ``causal_mask``, the codes and the modules
are the learner's ``learner/positions.py``.

Causal attention is graded with a *leak test* as well as by value: the inputs at each position in
turn are changed and no earlier output may move. :func:`with_leaks` and :func:`causal_compare` do
that for any causal ``(B, T, ...) -> (B, T, ...)`` computation (Lab 6's module uses them too).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

import gptcourse.layers
import gptcourse.model
from gptcourse import attention as ref
from gptcourse.grading.spec import (
    AnswerError,
    Case,
    Compare,
    Misconception,
    Spec,
    close,
    exact,
    load_reference_weights,
    randomize_,
    seeded,
)
from gptcourse.model import GPTConfig

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


# --- Exercise 1: the mask, with the offset of a KV cache ------------------------------------------------------


def mask_cases(g: torch.Generator) -> list[Case]:
    # a middling T first: at T = 1 several wrong masks agree with each other
    cases = [
        Case("T = 6 (S not given: S = T)", (6,)),
        Case("a single position (T = 1)", (1,)),
        Case("T = 2", (2,)),
        Case("3 new queries over S = 7 keys (a KV cache of 4)", (3, 7)),
        Case("one new query over S = 5 keys: it sees them all", (1, 5)),
        Case("S = T given explicitly", (4, 4)),
        Case("device='cpu' given", (2, 6), {"device": "cpu"}),
    ]
    for i in range(4):
        T = int(torch.randint(1, 20, (1,), generator=g))
        S = T + int(torch.randint(0, 20, (1,), generator=g)) if i % 2 else None
        cases.append(Case(f"random T and S {i + 1}", (T,) if S is None else (T, S)))
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


def _ones(T: int, S: int | None = None) -> torch.Tensor:
    return torch.ones(T, T if S is None else S, dtype=torch.bool)


def _wrong_mask(mistake: str) -> Callable[..., torch.Tensor]:
    def causal_mask(T: int, S: int | None = None, device: Any = None) -> torch.Tensor:
        S = T if S is None else S
        offset = {"offset ignored": 0, "offset from the wrong end": T - S}.get(mistake, S - T)
        if mistake == "transposed":
            return _ones(T, S).triu(diagonal=offset)
        if mistake == "diagonal excluded":
            return _ones(T, S).tril(diagonal=offset - 1)
        mask = _ones(T, S).tril(diagonal=offset)
        if mistake == "polarity reversed":
            return ~mask
        if mistake == "float mask":
            return mask.float()
        if mistake == "additive mask":
            return torch.zeros(T, S).masked_fill(~mask, float("-inf"))
        return mask

    return causal_mask


MASK_HINTS = {
    "transposed": "rows are queries and columns are keys: query i may see keys j <= i, the lower triangle, "
    "not the upper one (which lets position 0 see every later position)",
    "diagonal excluded": "a position may attend to itself (j = i): keep the diagonal, or query 0 sees nothing",
    "polarity reversed": "True means 'may attend' (the convention of F.scaled_dot_product_attention): "
    "the allowed keys are the True ones",
    "float mask": "the mask must be boolean (dtype torch.bool): attention adds a float mask to the scores, "
    "so 0.0 and 1.0 would hide nothing",
    "additive mask": "this exercise asks for the boolean form (True = may attend), not an additive 0 / -inf mask",
    "offset ignored": "with S > T the T queries are the LAST T of the S positions (the cache holds the first "
    "S - T): query i sits at position S - T + i and sees keys 0 .. S - T + i (Chapter 5, the causal mask; "
    "Chapter 11 decodes with it)",
    "offset from the wrong end": "the queries sit S - T positions AFTER the start, so each sees S - T more keys "
    "than in the square mask, not fewer: a single new query sees every cached key",
}

MASK = Spec(
    id="lab05.mask",
    points=2,
    name="causal_mask",
    reference=ref.causal_mask,
    cases=mask_cases,
    compare=compare_mask,
    forbidden=("gptcourse.attention.causal_mask",),
    hint="row i is query i, at absolute position S - T + i; column j is key j: True exactly where "
    "j <= S - T + i, a boolean (T, S) tensor",
    misconceptions=tuple(Misconception(n, _wrong_mask(n), h) for n, h in MASK_HINTS.items()),
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


# --- Exercise 4: the sinusoidal codes -------------------------------------------------------------------------


def sinusoidal_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("T = 8 positions, C = 16", (8, 16)),
        Case("one position (T = 1)", (1, 4)),
        Case("many positions, few columns (T = 60, C = 6)", (60, 6)),
        Case("odd C = 7: the last column is a sine", (5, 7)),
        Case("C = 2: one pair", (10, 2)),
    ]
    for i in range(3):
        T, C = int(torch.randint(1, 80, (1,), generator=g)), int(torch.randint(1, 33, (1,), generator=g))
        cases.append(Case(f"random T and C {i + 1}", (T, C)))
    return cases


def _sinusoidal(mistake: str) -> Callable[[int, int], torch.Tensor]:
    def sinusoidal_positions(T: int, C: int) -> torch.Tensor:
        start = 1 if mistake == "positions counted from 1" else 0
        t = torch.arange(start, T + start, dtype=torch.float32)[:, None]
        if mistake == "one frequency per column":
            freq = 10000.0 ** (-torch.arange(C, dtype=torch.float32) / C)
            pe = torch.zeros(T, C)
            pe[:, 0::2] = torch.sin(t * freq[0::2])
            pe[:, 1::2] = torch.cos(t * freq[1::2])
            return pe
        pair = torch.arange(0, C, 2, dtype=torch.float32)  # 2i
        exponent = {"exponent i/C instead of 2i/C": pair / 2 / C, "frequencies grow with i": -pair / C}.get(
            mistake, pair / C
        )
        freq = 10000.0 ** (-exponent)
        sin, cos = torch.sin(t * freq), torch.cos(t * freq)[:, : C // 2]
        if mistake == "sine and cosine concatenated":
            return torch.cat([sin, cos], dim=-1)
        if mistake == "sine and cosine swapped":
            sin, cos = torch.cos(t * freq), torch.sin(t * freq)[:, : C // 2]
        pe = torch.zeros(T, C)
        pe[:, 0::2], pe[:, 1::2] = sin, cos
        return pe

    return sinusoidal_positions


SINUSOIDAL_HINTS = {
    "sine and cosine concatenated": "the sines and cosines are interleaved: column 2i is sin(p w_i) and column 2i + 1 "
    "is cos(p w_i), each pair sharing one frequency (Chapter 5, Positions), not all sines then all cosines",
    "sine and cosine swapped": "the even columns (0, 2, 4, ...) are the sines and the odd ones the cosines: at "
    "position 0 the code is 0, 1, 0, 1, ... (Chapter 5, Positions)",
    "one frequency per column": "the two columns of a pair share one frequency w_i = 10000^(-2i/C), with i the pair's "
    "index (column // 2), not the column's own index (Chapter 5, Positions)",
    "exponent i/C instead of 2i/C": "the exponent of w_i = 10000^(-2i/C) runs from 0 to nearly 1 over the pairs: with "
    "i/C the slowest pair turns far too fast (Chapter 5, Positions)",
    "frequencies grow with i": "the exponent is negative: w_i = 10000^(-2i/C) falls from 1 (the first pair) towards "
    "1/10000, so later pairs turn slowly (Chapter 5, Positions)",
    "positions counted from 1": "positions start at 0: the first row is sin(0) = 0 and cos(0) = 1 in every pair",
}

SINUSOIDAL = Spec(
    id="lab05.sinusoidal",
    points=2,
    name="sinusoidal_positions",
    reference=gptcourse.layers.sinusoidal_positions,
    cases=sinusoidal_cases,
    compare=close(atol=1e-4, rtol=1e-4),
    forbidden=("gptcourse.layers.sinusoidal_positions", "gptcourse.layers.SinusoidalPositions"),
    hint="PE[p, 2i] = sin(p w_i), PE[p, 2i+1] = cos(p w_i), w_i = 10000^(-2i/C), p = 0 .. T - 1; a float (T, C) "
    "tensor, the last column a sine when C is odd",
    misconceptions=tuple(Misconception(n, _sinusoidal(n), h) for n, h in SINUSOIDAL_HINTS.items()),
)


# --- Exercise 5: the position modules, positions(config) ---------------------------------------------------------


def _config(pos: str, block_size: int = 12, n_embd: int = 8) -> GPTConfig:
    return GPTConfig(vocab_size=30, block_size=block_size, n_layer=1, n_head=1, n_embd=n_embd, pos=pos)


def positions_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, pos: str, positions: torch.Tensor, block_size: int = 12, n_embd: int = 8) -> Case:
        config = _config(pos, block_size, n_embd)
        with seeded(g):
            reference = gptcourse.model.positions(config)
        randomize_(reference, g)
        state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
        B, T = 2, positions.numel()
        x = torch.randn(B, T, n_embd, generator=g)
        proj = torch.randn(B, T, n_embd, generator=g)
        return Case(label, (config,), {"inputs": {"state": state, "pos": positions, "x": x, "proj": proj}})

    cases = [
        case("learned: positions 0 .. 4", "learned", torch.arange(5)),
        case("learned: positions 6 .. 8, after a cache of 6", "learned", torch.arange(6, 9)),
        case("sinusoidal: positions 0 .. 4", "sinusoidal", torch.arange(5)),
        case("sinusoidal: positions 6 .. 8, after a cache of 6", "sinusoidal", torch.arange(6, 9)),
        case("sinusoidal: every position of the block, odd n_embd = 7", "sinusoidal", torch.arange(10), 10, 7),
        case("none: nothing added", "none", torch.arange(4)),
        case("learned: one position, the last of the block", "learned", torch.tensor([11])),
    ]
    for i in range(2):
        kind = ("learned", "sinusoidal")[i]
        start, T = int(torch.randint(0, 6, (1,), generator=g)), int(torch.randint(1, 7, (1,), generator=g))
        cases.append(case(f"random {kind} positions {i + 1}", kind, torch.arange(start, start + T)))
    return cases


def run_positions(answer: Callable[..., Any], case: Case) -> Any:
    """Build ``answer(config)``, list its parameters and saved state, load the reference's weights when
    they have the same names and shapes, and return ``x + module(pos)`` and the gradients."""
    (config,) = case.args
    inputs = case.kwargs["inputs"]
    with torch.random.fork_rng(devices=[]):
        module = answer(config)
    if not isinstance(module, nn.Module):
        raise AnswerError(f"positions(config) returned a {type(module).__name__}, not an nn.Module")
    params = {k: list(p.shape) for k, p in module.named_parameters()}
    saved = sorted(module.state_dict())
    expected = {k: list(v.shape) for k, v in inputs["state"].items()}
    if params == expected:
        load_reference_weights(module, inputs["state"], "your position module")
    out = inputs["x"] + module(inputs["pos"].clone())
    result = {"parameters": params, "saved in the state dict": saved, "x + positions(pos)": out.detach()}
    if params and isinstance(out, torch.Tensor) and out.requires_grad:
        (out * inputs["proj"]).sum().backward()
        result["grads"] = {k: p.grad for k, p in module.named_parameters()}
    elif params:
        result["grads"] = {k: None for k in params}
    return result


class _WrongSinusoidal(nn.Module):
    def __init__(self, block_size: int, n_embd: int, mistake: str):
        super().__init__()
        code = gptcourse.layers.sinusoidal_positions(block_size, n_embd)
        self.mistake = mistake
        if mistake == "sinusoidal codes trainable":
            self.code = nn.Parameter(code)
        else:
            self.register_buffer("code", code, persistent=mistake == "codes saved in the state dict")

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        if self.mistake == "position values ignored":
            return self.code[: pos.numel()]
        return self.code[pos]


class _WrongLearned(nn.Embedding):
    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.weight[: pos.numel()]


def _positions(mistake: str) -> Callable[[GPTConfig], nn.Module]:
    def positions(config: GPTConfig) -> nn.Module:
        if config.pos == "learned":
            if mistake == "learned table sized by the vocabulary":
                return nn.Embedding(config.vocab_size, config.n_embd)
            if mistake == "position values ignored":
                return _WrongLearned(config.block_size, config.n_embd)
            return nn.Embedding(config.block_size, config.n_embd)
        if config.pos == "sinusoidal":
            return _WrongSinusoidal(config.block_size, config.n_embd, mistake)
        return gptcourse.layers.NoPositions()

    return positions


POSITIONS_HINTS = {
    "position values ignored": "the module returns the codes OF the positions it is given (a lookup), not the first "
    "len(pos) rows: after a KV cache the new tokens sit at positions S - T .. S - 1",
    "learned table sized by the vocabulary": "the learned table has one row per POSITION (block_size rows), not one "
    "per token: it is GPT's wpe, not its wte",
    "codes saved in the state dict": "the sinusoidal codes are computed, not learned: a buffer registered with "
    "persistent=False, so the state dict (and a GPT-2 checkpoint) does not hold them",
    "sinusoidal codes trainable": "the sinusoidal codes are fixed: a buffer, not an nn.Parameter (the optimizer must "
    "not change them, and the module has no parameters)",
}

POSITIONS = Spec(
    id="lab05.positions",
    points=3,
    name="positions",
    reference=gptcourse.model.positions,
    cases=positions_cases,
    run=run_positions,
    compare=close(atol=1e-4, rtol=1e-4),
    forbidden=(
        "gptcourse.model.positions",
        "gptcourse.layers.SinusoidalPositions",
        "gptcourse.layers.sinusoidal_positions",
        "gptcourse.layers.NoPositions",
    ),
    hint="'learned': nn.Embedding(block_size, n_embd); 'sinusoidal': your SinusoidalPositions (a non-persistent "
    "buffer 'code', codes looked up at the given positions); 'none': a zero that broadcasts",
    misconceptions=tuple(Misconception(n, _positions(n), h) for n, h in POSITIONS_HINTS.items()),
)

SPECS = (MASK, MASKED_SOFTMAX, CAUSAL_ATTENTION, SINUSOIDAL, POSITIONS)
