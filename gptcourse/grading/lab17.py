"""Exercise specs for Lab 17 (the modern recipe's normalisation and positions, ``learner/modern.py``),
against :mod:`gptcourse.layers`: ``RMSNorm``, ``rope_angles``, ``apply_rope``, the ``Rotary`` module,
RoPE's relative-position property (on the learner's ``Rotary``, so on their ``rope_angles`` and
``apply_rope``), ``ReLU2MLP`` (the squared-ReLU feed-forward), and ``modernise``, which puts the
learner's modules into a package ``GPT`` built with ``pos="rope"`` and ``norm_type="rmsnorm"``.

Modules are built from the same arguments as the package's, get the same weights
(:func:`load_reference_weights`) and are compared on outputs and gradients; the model of
``modernise`` is compared on its logits and a cached greedy generation, and on which modules are
still the package's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

import gptcourse.layers as ref
from gptcourse.generate import generate
from gptcourse.grading.lab07 import feed_forward_cases, feed_forward_run
from gptcourse.grading.spec import (
    AnswerError,
    Case,
    Misconception,
    Spec,
    close,
    compare_with_gradients,
    load_reference_weights,
    parameter_grads,
    randint,
    randomize_,
    seeded,
)
from gptcourse.model import GPT, GPTConfig

RMS = "Chapter 17, RMSNorm"
ROPE = "Chapter 17, Rotary position embeddings (RoPE)"
CONFIG = "Chapter 17, The modern GPT is a configuration"


# --- Step 1: RMSNorm ------------------------------------------------------------------------------------


def rms_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, shape: tuple[int, ...], eps: float, scale: float, offset: float, dtype=torch.float32) -> Case:
        dim = shape[-1]
        reference = ref.RMSNorm(dim, eps=eps)
        randomize_(reference, g)
        state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
        x = (torch.randn(shape, generator=g) * scale + offset).to(dtype)  # an offset shows a mean subtracted
        return Case(label, (dim, eps, state, x, torch.randn(shape, generator=g).to(dtype)))

    cases = [
        case("one vector (no leading dimensions), values around 30", (7,), 1e-6, 5.0, 30.0),
        case("(B, T, C) = (2, 3, 8)", (2, 3, 8), 1e-6, 2.0, 1.0),
        case("eps = 1 with small values", (4, 6), 1.0, 0.3, 0.2),
        case("a float64 input: the output is float64 too", (2, 5, 6), 1e-6, 3.0, -1.0, torch.float64),
        case("three leading dimensions", (2, 3, 4, 10), 1e-5, 10.0, -5.0),
    ]
    for i in range(2):
        lead = tuple(randint(g, 1, 3) for _ in range(randint(g, 1, 2)))
        eps = (1e-6, 1e-3, 1.0)[randint(g, 0, 2)]
        cases.append(case(f"random shape and eps {i + 1}", lead + (randint(g, 2, 32),), eps, 4.0, 2.0))
    return cases


def run_rms(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    dim, eps, state, x, proj = case.args
    module = answer(dim, eps=eps)
    if not isinstance(module, nn.Module):
        raise AnswerError(f"RMSNorm(dim, eps=eps) built a {type(module).__name__}, not an nn.Module")
    init = {k: p.detach().clone() for k, p in module.named_parameters()}
    load_reference_weights(module, state, "your RMSNorm")
    x = x.clone().requires_grad_(True)
    y = module(x)
    if not isinstance(y, torch.Tensor):
        raise AnswerError(f"your RMSNorm returned a {type(y).__name__}; return a tensor of x's shape")
    (y * proj).sum().backward()
    return {
        "initial parameters": init,
        "output dtype": str(y.dtype),
        "output": y.detach(),
        "grad of x": x.grad,
        "grads": parameter_grads(module),
    }


def _rms(mistake: str) -> type[nn.Module]:
    """An ``RMSNorm`` class with one known mistake (``mistake`` names it)."""

    class RMSNorm(nn.Module):
        def __init__(self, dim: int, eps: float = 1e-6):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            xf = x.float()
            dims = tuple(range(x.dim())) if mistake == "normalised over every dimension" else (-1,)
            if mistake == "mean subtracted (LayerNorm)":
                xf = xf - xf.mean(-1, keepdim=True)
                y = xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            elif mistake == "eps outside the square root":
                y = xf / (torch.sqrt(xf.pow(2).mean(-1, keepdim=True)) + self.eps)
            elif mistake == "the L2 norm instead of the RMS":
                y = xf / torch.sqrt(xf.pow(2).sum(-1, keepdim=True) + self.eps)
            elif mistake == "standard deviation instead of the RMS":
                y = xf / torch.sqrt(xf.var(-1, keepdim=True, unbiased=False) + self.eps)
            else:
                y = xf / torch.sqrt(xf.pow(2).mean(dim=dims, keepdim=True) + self.eps)
            y = y * self.weight.float()
            return y if mistake == "returned in float32" else y.type_as(x)

    return RMSNorm


RMS_HINTS = {
    "mean subtracted (LayerNorm)": f"({RMS}) RMSNorm does not centre x: no mean is subtracted, x is only divided by "
    "its own root mean square (that, and no bias, is what makes it cheaper than LayerNorm)",
    "the L2 norm instead of the RMS": f"({RMS}) the root MEAN square divides the sum of squares by C before the "
    "square root: with the plain L2 norm the output is sqrt(C) times too small",
    "standard deviation instead of the RMS": f"({RMS}) divide by the root mean square sqrt(mean(x²) + eps), not by "
    "the standard deviation: the mean is not taken out of the square",
    "normalised over every dimension": f"({RMS}) normalise each vector on its own: the mean of x² is over the last "
    "dimension only, whatever the leading dimensions",
    "eps outside the square root": f"({RMS}) eps is added to mean(x²), inside the square root (the case with eps = 1 "
    "shows it)",
    "returned in float32": f"({RMS}) compute in float32, but return the result in x's dtype (a float64 input gives a "
    "float64 output; under mixed precision a bfloat16 input gives bfloat16)",
}

RMS_NORM = Spec(
    id="lab17.rms_norm",
    points=2,
    name="RMSNorm",
    reference=ref.RMSNorm,
    cases=rms_cases,
    run=run_rms,
    compare=compare_with_gradients(atol=1e-5, rtol=1e-4),
    forbidden=("gptcourse.layers.RMSNorm.forward", "torch.nn.functional.rms_norm", "torch.nn.RMSNorm"),
    hint=f"({RMS}) y = x / sqrt(mean(x²) + eps) * weight over the last dimension, computed in float32 and returned "
    "in x's dtype; one parameter, weight, starting at ones",
    misconceptions=tuple(Misconception(n, _rms(n), h) for n, h in RMS_HINTS.items()),
)


# --- Step 2: the angles ---------------------------------------------------------------------------------


def angles_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("T=5, head_dim=8, positions from 0", (5, 8)),
        Case("start=3: positions 3..7 (after a KV cache of 3)", (5, 8), {"start": 3}),
        Case("base=100", (4, 6), {"base": 100.0}),
        Case("an odd head_dim (7): a ValueError", (4, 7)),
        Case("device='cpu' given, start=10", (3, 4), {"start": 10, "device": "cpu"}),
    ]
    for i in range(2):
        kwargs = {"base": (10000.0, 500.0, 1e6)[randint(g, 0, 2)], "start": randint(g, 0, 50)}
        cases.append(Case(f"random sizes and positions {i + 1}", (randint(g, 1, 20), 2 * randint(g, 2, 16)), kwargs))
    return cases


def run_angles(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    try:
        out = answer(*case.args, **case.kwargs)
    except ValueError:
        return {"raises ValueError": True, "dtype": None, "cos": None, "sin": None}
    if not isinstance(out, (tuple, list)) or len(out) != 2 or not all(isinstance(t, torch.Tensor) for t in out):
        raise AnswerError(f"rope_angles returned a {type(out).__name__}; return the pair (cos, sin) of tensors")
    cos, sin = out
    return {"raises ValueError": False, "dtype": str(cos.dtype), "cos": cos, "sin": sin}


def _angles(
    exponent: float = 2.0, offset: bool = True, first: int = 0, swap: bool = False, check: bool = True
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The reference angles with one piece changed (a misconception)."""

    def rope_angles(T: int, head_dim: int, base: float = 10000.0, start: int = 0, device=None):
        if check and head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
        i = torch.arange(head_dim // 2, dtype=torch.float32, device=device)
        inv_freq = base ** (-exponent * i / head_dim)
        s = (start if offset else 0) + first
        t = torch.arange(s, s + T, dtype=torch.float32, device=device)
        angles = torch.outer(t, inv_freq)
        return (angles.sin(), angles.cos()) if swap else (angles.cos(), angles.sin())

    return rope_angles


ROPE_ANGLES = Spec(
    id="lab17.rope_angles",
    points=2,
    name="rope_angles",
    reference=ref.rope_angles,
    cases=angles_cases,
    run=run_angles,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=("gptcourse.layers.rope_angles",),
    hint=f"({ROPE}) the angle of frequency i at position t is t · base^(-2i/head_dim), for t = start .. start + T - 1 "
    "and i = 0 .. head_dim/2 - 1, in float32; return (cos, sin), each (T, head_dim // 2)",
    misconceptions=(
        Misconception(
            "exponent -i/head_dim",
            _angles(exponent=1.0),
            f"({ROPE}) θ_i = base^(-2i/d): the exponent runs over the PAIRS, i = 0 .. d/2 - 1, times 2/d, so the "
            "slowest pair turns about base^(-1) per position; with -i/d the frequencies fall off half as fast",
        ),
        Misconception(
            "positions not offset by start",
            _angles(offset=False),
            f"({ROPE}) the rows are the positions start .. start + T - 1: after a KV cache of length start the new "
            "tokens are not at positions 0, 1, ...",
        ),
        Misconception(
            "positions counted from 1",
            _angles(first=1),
            f"({ROPE}) the angle is the position times the frequency, and the first position is 0 (angle 0: "
            "position 0 is not rotated); the row index is the position minus start",
        ),
        Misconception(
            "cos and sin swapped",
            _angles(swap=True),
            f"({ROPE}) return the cosines first, then the sines: (cos, sin)",
        ),
        Misconception(
            "no ValueError for an odd head_dim",
            _angles(check=False),
            f"({ROPE}) RoPE rotates PAIRS of features: an odd head_dim leaves one without a partner; raise a "
            "ValueError that says head_dim must be even",
        ),
    ),
)


# --- Step 3: the rotation -------------------------------------------------------------------------------


def rotation_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, shape: tuple[int, ...], base: float = 10000.0, start: int = 0, dtype=torch.float32) -> Case:
        T, hd = shape[-2], shape[-1]
        cos, sin = ref.rope_angles(T, hd, base, start)
        x = torch.randn(shape, generator=g).to(dtype)
        return Case(label, (x, cos, sin, torch.randn(shape, generator=g).to(dtype)))

    cases = [
        case("(B, nh, T, hd) = (2, 2, 5, 8)", (2, 2, 5, 8)),
        case("(T, hd) without leading dimensions", (6, 4)),
        case("positions 4.. (after a cache), base 100", (1, 3, 4, 6), base=100.0, start=4),
        case("head_dim 2: one pair", (2, 1, 5, 2), start=7),
        case("float64 x", (1, 2, 3, 8), start=2, dtype=torch.float64),
    ]
    for i in range(2):
        hd = 2 * randint(g, 1, 8)
        shape = (randint(g, 1, 2), randint(g, 1, 4), randint(g, 1, 9), hd)
        cases.append(case(f"random shape {i + 1}", shape, start=randint(g, 0, 40)))
    return cases


def run_rotation(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    x, cos, sin, proj = case.args
    x = x.clone().requires_grad_(True)
    y = answer(x, cos, sin)
    if not isinstance(y, torch.Tensor):
        raise AnswerError(f"apply_rope returned a {type(y).__name__}; return the rotated tensor, x's shape")
    if y.shape != x.shape:
        return {"output": y.detach(), "gradient of x": None}
    (y * proj).sum().backward()
    return {"output": y.detach(), "gradient of x": x.grad}


def _rotation(mistake: str) -> Callable[..., torch.Tensor]:
    """A rotation with one known mistake."""

    def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if mistake == "interleaved pairs (GPT-J)":
            x1, x2 = x[..., 0::2], x[..., 1::2]
            return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
        x1, x2 = x.chunk(2, dim=-1)
        if mistake == "rotated by -θ":
            return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2], dim=-1)  # "only the first half rotated"

    return apply_rope


APPLY_ROPE = Spec(
    id="lab17.apply_rope",
    points=2,
    name="apply_rope",
    reference=ref.apply_rope,
    cases=rotation_cases,
    run=run_rotation,
    compare=compare_with_gradients(atol=1e-5, rtol=1e-4),
    forbidden=("gptcourse.layers.apply_rope",),
    hint=f"({ROPE}) split the last dimension into halves x1, x2 (feature i pairs with i + hd/2) and rotate each pair "
    "by its angle: (x1 cos - x2 sin, x1 sin + x2 cos), the halves concatenated back",
    misconceptions=(
        Misconception(
            "interleaved pairs (GPT-J)",
            _rotation("interleaved pairs (GPT-J)"),
            f"({ROPE}) pairing features (0, 1), (2, 3), ... is GPT-J's layout: a rotation too, but not the "
            "package's (nor Llama's): pair feature i with feature i + hd/2 (the two halves), so the same weights "
            "give the same model",
        ),
        Misconception(
            "rotated by -θ",
            _rotation("rotated by -θ"),
            f"({ROPE}) the rotation by +θ is (x1 cos - x2 sin, x1 sin + x2 cos): the signs you wrote rotate by -θ",
        ),
        Misconception(
            "only the first half rotated",
            _rotation("only the first half rotated"),
            f"({ROPE}) a rotation changes both coordinates of a pair: the second half becomes x1 sin + x2 cos "
            "(without it the vector's norm changes and q·k no longer depends only on m - n)",
        ),
    ),
)


# --- Step 4: the Rotary module --------------------------------------------------------------------------


def rotary_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, hd: int, max_len: int, T: int, start: int, base: float = 10000.0) -> Case:
        q = torch.randn(2, 2, T, hd, generator=g)
        k = torch.randn(2, 1, T, hd, generator=g)  # grouped-query attention: fewer key heads
        proj = (torch.randn(q.shape, generator=g), torch.randn(k.shape, generator=g))
        return Case(label, (hd, max_len, base, q, k, start, proj))

    cases = [
        case("positions 0..4, inside the table", 8, 16, 5, 0),
        case("start=6: positions past the first block / after a KV cache of 6", 8, 16, 4, 6),
        case("one new token at position 9 (decoding)", 8, 16, 1, 9),
        case("positions 14..18 cross the end of a 16-row table (a long KV cache)", 8, 16, 5, 14),
        case("positions past the table: a cache of 40, table of 16", 6, 16, 3, 40),
        case("base=500", 4, 8, 6, 1, base=500.0),
    ]
    for i in range(2):
        cases.append(
            case(f"random {i + 1}", 2 * randint(g, 1, 8), randint(g, 4, 16), randint(g, 1, 8), randint(g, 0, 24))
        )
    return cases


def run_rotary(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    hd, max_len, base, q, k, start, (pq, pk) = case.args
    module = answer(hd, max_len=max_len, base=base)
    if not isinstance(module, nn.Module):
        raise AnswerError(f"Rotary(head_dim, max_len=, base=) built a {type(module).__name__}, not an nn.Module")
    out: dict[str, Any] = {
        "state_dict keys": sorted(module.state_dict()),
        "parameters": [n for n, _ in module.named_parameters()],
        "the angle table is a buffer (it follows .to(device))": any(True for _ in module.buffers()),
        "error": None,
    }
    q, k = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    try:
        result = module(q, k, start)
    except (RuntimeError, IndexError) as err:  # e.g. a table sliced past its end
        return out | {"error": type(err).__name__}
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise AnswerError(f"Rotary's forward returned a {type(result).__name__}; return the pair (q, k) rotated")
    rq, rk = result
    if rq.shape != q.shape or rk.shape != k.shape:
        return out | {"q rotated": rq.detach(), "k rotated": rk.detach()}
    ((rq * pq).sum() + (rk * pk).sum()).backward()
    return out | {"q rotated": rq.detach(), "k rotated": rk.detach(), "gradient of q": q.grad, "gradient of k": k.grad}


def _rotary(mistake: str) -> type[nn.Module]:
    """A ``Rotary`` class with one known mistake."""

    class Rotary(nn.Module):
        def __init__(self, head_dim: int, max_len: int = 1024, base: float = 10000.0):
            super().__init__()
            self.head_dim, self.base = head_dim, base
            cos, sin = ref.rope_angles(max_len, head_dim, base)
            persistent = mistake == "angle table saved in the state_dict"
            if mistake == "the table a plain attribute":
                self.cos, self.sin = cos, sin
            else:
                self.register_buffer("cos", cos, persistent=persistent)
                self.register_buffer("sin", sin, persistent=persistent)

        def forward(self, q: torch.Tensor, k: torch.Tensor, start: int = 0):
            T = q.size(-2)
            if mistake == "start ignored":
                start = 0
            if start + T <= self.cos.size(0) or mistake == "the table sliced past its end":
                cos, sin = self.cos[start : start + T], self.sin[start : start + T]
            else:
                cos, sin = ref.rope_angles(T, self.head_dim, self.base, start)
            rq = ref.apply_rope(q, cos, sin)
            return rq, (k if mistake == "only the queries rotated" else ref.apply_rope(k, cos, sin))

    return Rotary


ROTARY_HINTS = {
    "angle table saved in the state_dict": f"({ROPE}) the table is computed from head_dim, max_len and base: register "
    "it as a buffer with persistent=False, so that it follows .to(device) but is not saved in (nor expected from) a "
    "checkpoint",
    "the table a plain attribute": f"({ROPE}) keep the table with register_buffer(..., persistent=False): a plain "
    "tensor attribute stays on the CPU when the model moves to a GPU (model.to(device) moves parameters and buffers "
    "only)",
    "start ignored": f"({ROPE}) start is the length of the KV cache: the T new queries and keys are at positions start "
    ".. start + T - 1, not 0 .. T - 1, or cached decoding gives other logits than the full forward",
    "the table sliced past its end": f"({ROPE}) positions past the table (a long cache) have no rows in it: compute "
    "their angles on the fly with your rope_angles(T, head_dim, base, start)",
    "only the queries rotated": f"({ROPE}) rotate the keys too, by the angles of the same positions: the score q_m·k_n "
    "depends on m - n only when both are rotated",
}

ROTARY = Spec(
    id="lab17.rotary",
    points=3,
    name="Rotary",
    reference=ref.Rotary,
    cases=rotary_cases,
    run=run_rotary,
    compare=compare_with_gradients(atol=1e-5, rtol=1e-4),
    forbidden=("gptcourse.layers.Rotary.forward", "gptcourse.layers.rope_angles", "gptcourse.layers.apply_rope"),
    hint=f"({ROPE}) the (cos, sin) of the first max_len positions kept as non-persistent buffers; forward rotates q "
    "and k (your apply_rope) by the rows start .. start + T - 1, computed with your rope_angles when they run past "
    "the table; no parameters",
    misconceptions=tuple(Misconception(n, _rotary(n), h) for n, h in ROTARY_HINTS.items()),
)


# --- RoPE's property, on the learner's Rotary -------------------------------------------------------------


def relative_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, hd: int, T: int, start: int, base: float = 10000.0) -> Case:
        q, k = torch.randn(hd, generator=g), torch.randn(hd, generator=g)
        return Case(label, (hd, base, T, start, q, k))

    cases = [
        case("one query and one key vector at positions 3..10", 8, 8, 3),
        case("head_dim 16, base 100, positions 0..5", 16, 6, 0, 100.0),
        case("positions 20..25 (after a cache of 20)", 4, 6, 20),
    ]
    for i in range(2):
        cases.append(case(f"random {i + 1}", 2 * randint(g, 1, 8), randint(g, 2, 8), randint(g, 1, 20)))
    return cases


def run_relative(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """The same query vector at every position m and the same key vector at every position n, rotated by
    the answer's ``Rotary``: the scores ``S[m, n] = q_m · k_n`` and how far each diagonal strays from
    its first entry (``S[m+1, n+1] - S[m, n]``: 0 when a score depends on m - n alone)."""
    hd, base, T, start, q, k = case.args
    module = answer(hd, max_len=32, base=base)
    Q, K = q.expand(1, 1, T, hd).clone(), k.expand(1, 1, T, hd).clone()
    rq, rk = module(Q, K, start)
    scores = (rq[0, 0] @ rk[0, 0].T).detach()
    return {"S[m+1, n+1] - S[m, n] (0 if it depends on m - n only)": scores[1:, 1:] - scores[:-1, :-1], "S": scores}


class _KeysFromZero(nn.Module):
    """Queries rotated from ``start``, keys from position 0 (a misconception)."""

    def __init__(self, head_dim: int, max_len: int = 1024, base: float = 10000.0):
        super().__init__()
        self.inner = ref.Rotary(head_dim, max_len, base)

    def forward(self, q: torch.Tensor, k: torch.Tensor, start: int = 0):
        return self.inner(q, q, start)[0], self.inner(k, k, 0)[1]


class _HalfRotary(nn.Module):
    """A Rotary whose rotation turns the first half only (a misconception)."""

    def __init__(self, head_dim: int, max_len: int = 1024, base: float = 10000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base

    def forward(self, q: torch.Tensor, k: torch.Tensor, start: int = 0):
        cos, sin = ref.rope_angles(q.size(-2), self.head_dim, self.base, start)
        turn = _rotation("only the first half rotated")
        return turn(q, cos, sin), turn(k, cos, sin)


RELATIVE = Spec(
    id="lab17.rope_relative",
    points=1,
    name="Rotary",
    reference=ref.Rotary,
    cases=relative_cases,
    run=run_relative,
    compare=close(atol=1e-4, rtol=1e-4),
    forbidden=("gptcourse.layers.Rotary.forward", "gptcourse.layers.rope_angles", "gptcourse.layers.apply_rope"),
    hint=f"({ROPE}) after rotating q by mθ and k by nθ, q_m·k_n = q·R((n - m)θ)k: a function of m - n alone. Check "
    "that your Rotary rotates queries and keys of the same positions, each pair by a true rotation",
    misconceptions=(
        Misconception(
            "only the first half rotated",
            _HalfRotary,
            f"({ROPE}) your rotation is not a rotation: a pair (x1, x2) becomes (x1 cos - x2 sin, x1 sin + x2 cos), "
            "both coordinates change (check your apply_rope)",
        ),
        Misconception(
            "only the queries rotated",
            _rotary("only the queries rotated"),
            f"({ROPE}) rotate the keys too: with the queries alone the score depends on the query's position, "
            "not on the distance",
        ),
        Misconception(
            "keys rotated from position 0",
            _KeysFromZero,
            f"({ROPE}) queries and keys of the same call are at the same positions start ..: rotate both by the "
            "same rows, or the distance the scores see is off by start",
        ),
    ),
)


# --- Step 5: the squared-ReLU feed-forward ----------------------------------------------------------------


relu2_cases = feed_forward_cases(ref.ReLU2MLP)  # Lab 7's MLP cases, on the squared-ReLU reference
run_relu2 = feed_forward_run("your ReLU2MLP")


def _relu2(mistake: str) -> type[nn.Module]:
    """A ``ReLU2MLP`` class with one known mistake, on the package's parameters."""

    class ReLU2MLP(ref.MLP):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.c_fc(x)
            if mistake == "ReLU not squared":
                h = torch.relu(h)
            elif mistake == "squared before the ReLU":
                h = torch.relu(h.square())
            elif mistake == "GELU squared":
                h = torch.nn.functional.gelu(h, approximate="tanh").square()
            else:
                h = torch.relu(h).square()
            if mistake == "dropout before c_proj":
                return self.c_proj(self.dropout(h))
            return self.dropout(self.c_proj(h))

    return ReLU2MLP


MLP_SECTION = "Chapter 17, The MLP: ReLU² and SwiGLU"
RELU2_HINTS = {
    "ReLU not squared": f"({MLP_SECTION}) Primer's activation is ReLU(x)², the square of the ReLU: a plain ReLU is "
    "half of it",
    "squared before the ReLU": f"({MLP_SECTION}) first the ReLU, then the square: x² is never negative, so a ReLU "
    "after it does nothing and negative inputs count as much as positive ones",
    "GELU squared": f"({MLP_SECTION}) the squared activation is the ReLU's, max(0, x)², not GPT-2's GELU's",
    "dropout before c_proj": "the dropout goes on the feed-forward's output, after c_proj, as in Lab 7's MLP",
}

RELU2_MLP = Spec(
    id="lab17.relu2_mlp",
    points=1,
    name="ReLU2MLP",
    reference=ref.ReLU2MLP,
    cases=relu2_cases,
    run=run_relu2,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=("gptcourse.layers.ReLU2MLP.forward", "gptcourse.layers.MLP.forward"),
    hint="c_fc (C -> hidden, 4C by default), ReLU(x)², c_proj (hidden -> C), then dropout; every Linear with "
    "bias=config.bias; any leading dimensions",
    misconceptions=tuple(Misconception(n, _relu2(n), h) for n, h in RELU2_HINTS.items()),
)


# --- Step 6: modernise a package GPT --------------------------------------------------------------------


class _RMSNorm(nn.Module):
    """RMSNorm written apart from the package's (the reference ``modernise`` puts it in)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).type_as(x)


class _Rotary(nn.Module):
    """Rotary written apart from the package's class (on its functions: they are not what is graded here)."""

    def __init__(self, head_dim: int, max_len: int = 1024, base: float = 10000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        cos, sin = ref.rope_angles(max_len, head_dim, base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, start: int = 0):
        T = q.size(-2)
        if start + T <= self.cos.size(0):
            cos, sin = self.cos[start : start + T], self.sin[start : start + T]
        else:
            cos, sin = ref.rope_angles(T, self.head_dim, self.base, start, device=q.device)
        return ref.apply_rope(q, cos, sin), ref.apply_rope(k, cos, sin)


def _modernise(
    swap: bool = True, keep: bool = True, final: bool = True, qk: bool = True, config_base: bool = True
) -> Callable[[GPT], GPT]:
    """The reference swap with one piece changed (a misconception)."""

    def modernise(model: GPT) -> GPT:
        if not swap:
            return model
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is ref.RMSNorm:
                    if (name == "ln_f" and not final) or (name in ("q_norm", "k_norm") and not qk):
                        continue
                    new = _RMSNorm(child.weight.numel(), child.eps).to(child.weight.device)
                    if keep:
                        new.load_state_dict(child.state_dict())
                    setattr(parent, name, new)
                elif type(child) is ref.Rotary:
                    base = child.base if config_base else 10000.0
                    setattr(parent, name, _Rotary(child.head_dim, child.cos.size(0), base).to(child.cos.device))
        return model

    return modernise


def modernise_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, **kw: Any) -> Case:
        config = GPTConfig(
            **{
                "vocab_size": 23,
                "block_size": 12,
                "n_layer": 2,
                "n_head": 2,
                "n_embd": 16,
                "pos": "rope",
                "norm_type": "rmsnorm",
                **kw,
            }
        )
        with seeded(g):
            model = GPT(config)
        randomize_(model, g, scale=0.3)  # the gains are not 1: a swap that drops them shows
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        idx = torch.randint(config.vocab_size, (2, config.block_size), generator=g)
        prompt = torch.randint(config.vocab_size, (1, 3), generator=g)
        return Case(label, (config, state, idx, prompt))

    cases = [
        case("+rope +rmsnorm, 2 blocks"),
        case("rope_base=500, 4 heads", rope_base=500.0, n_head=4),
        case("QK-norm too (qk_norm=True)", qk_norm=True),
        case("grouped-query attention (n_kv_head=1) and biases", n_kv_head=1, bias=True),
    ]
    for i in range(1):
        cases.append(case(f"random {i + 1}", n_layer=randint(g, 1, 3), rope_base=(100.0, 10000.0)[randint(g, 0, 1)]))
    return cases


def run_modernise(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    config, state, idx, prompt = case.args
    model = GPT(config)
    model.load_state_dict(state)
    out = answer(model)
    model = out if isinstance(out, nn.Module) else model
    if not isinstance(model, GPT):
        raise AnswerError(f"modernise returned a {type(model).__name__}; return the model it was given")
    model.eval()
    with torch.no_grad():
        logits, _ = model(idx)
        tokens = generate(model, prompt, max_new_tokens=config.block_size + 3, temperature=0.0)
    names = dict(model.named_modules())
    return {
        "the package's RMSNorm modules left": [n for n, m in names.items() if type(m) is ref.RMSNorm],
        "the package's Rotary modules left": [n for n, m in names.items() if type(m) is ref.Rotary],
        "state_dict keys": sorted(model.state_dict()),
        "logits": logits,
        "greedy generation with the KV cache, past block_size": tokens,
    }


MODERNISE = Spec(
    id="lab17.modernise",
    points=3,
    name="modernise",
    reference=_modernise(),
    cases=modernise_cases,
    run=run_modernise,
    compare=close(atol=1e-4, rtol=1e-4),
    hint=f"({CONFIG}) every package RMSNorm of the model (ln_1, ln_2 of "
    "each block, ln_f, and q_norm, k_norm with QK-norm) becomes your RMSNorm with the same size, eps and weight "
    "(load its state dict), and every block's attn.rotary your Rotary with the same head_dim, table length and "
    "base; return the model",
    misconceptions=(
        Misconception(
            "the package's modules left in place",
            _modernise(swap=False),
            f"({CONFIG}) modernise must put YOUR modules into the model: replace each package RMSNorm and "
            "Rotary (setattr on the module that holds it), not only build yours",
        ),
        Misconception(
            "the gains not kept",
            _modernise(keep=False),
            f"({RMS}) a new RMSNorm starts with its gains at 1: load the state dict of the module it replaces, so the "
            "model keeps its weights and computes the same function",
        ),
        Misconception(
            "the final norm left out",
            _modernise(final=False),
            f"({CONFIG}) the model's last normalisation, transformer.ln_f, is an RMSNorm too: replace it as well",
        ),
        Misconception(
            "the QK-norms left out",
            _modernise(qk=False),
            f"({CONFIG}) with qk_norm=True each attention holds two more RMSNorms, attn.q_norm and attn.k_norm "
            "(over a head's features): replace them too",
        ),
        Misconception(
            "the rotary base not kept",
            _modernise(config_base=False),
            f"({ROPE}) build your Rotary with the base of the module it replaces (GPTConfig.rope_base), not the "
            "default 10000",
        ),
    ),
)

SPECS = (RMS_NORM, ROPE_ANGLES, APPLY_ROPE, ROTARY, RELATIVE, RELU2_MLP, MODERNISE)
