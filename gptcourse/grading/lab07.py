"""Exercise specs for Lab 7 (LayerNorm, GELU and the Transformer block), against torch and
:class:`gptcourse.model.Block`: ``layer_norm(x, weight, bias, eps)``, ``gelu_tanh(x)`` and
``block_forward(block, x, norm)``, the last wiring a package block's sub-modules (``ln_1``,
``attn``, ``ln_2``, ``mlp``) with residual connections, pre-LN or post-LN."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from gptcourse.grading.spec import Case, Misconception, Spec, close, randomize_, seeded
from gptcourse.model import Block, GPTConfig, make_block

# --- Exercise 1: LayerNorm -------------------------------------------------------------------------------


def layer_norm_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, shape: tuple[int, ...], scale: float, offset: float, eps: float) -> Case:
        # large offsets and scales show a missing mean subtraction or a variance over the wrong values
        x = torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset
        C = shape[-1]
        weight = 1.0 + 0.5 * torch.randn(C, generator=g, dtype=torch.float64)
        bias = torch.randn(C, generator=g, dtype=torch.float64)
        return Case(label, (x, weight, bias, eps))

    cases = [
        case("one vector (no leading dimensions)", (7,), 5.0, 30.0, 1e-5),
        case("C = 2", (3, 2), 2.0, -1.0, 1e-5),
        case("eps = 1 with a small variance", (4, 6), 0.3, 2.0, 1.0),
        case("three leading dimensions", (2, 3, 4, 10), 20.0, -40.0, 1e-2),
    ]
    for i in range(3):
        lead = tuple(int(v) for v in torch.randint(1, 5, (int(torch.randint(0, 3, (1,), generator=g)),), generator=g))
        C = int(torch.randint(2, 41, (1,), generator=g))
        scale, offset = (float(v) for v in torch.rand(2, generator=g) * torch.tensor([20.0, 100.0]))
        eps = (1e-5, 1e-2, 1.0)[int(torch.randint(3, (1,), generator=g))]
        cases.append(case(f"random shape, offset and eps {i + 1}", lead + (C,), scale + 0.1, offset - 50.0, eps))
    return cases


def reference_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, (x.size(-1),), weight, bias, eps)


def _layer_norm(mistake: str) -> Callable[..., torch.Tensor]:
    """``layer_norm`` with one known mistake (``mistake`` names it)."""

    def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
        dims = tuple(range(x.dim())) if mistake == "normalised over every dimension" else (-1,)
        mean = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, keepdim=True, unbiased=mistake == "unbiased variance")
        centred = x if mistake == "mean not subtracted" else x - mean
        if mistake == "eps ignored":
            x_hat = centred / var.sqrt()
        elif mistake == "eps outside the square root":
            x_hat = centred / (var.sqrt() + eps)
        elif mistake == "variance instead of standard deviation":
            x_hat = centred / (var + eps)
        else:
            x_hat = centred / (var + eps).sqrt()
        return x_hat if mistake == "gain and shift not applied" else x_hat * weight + bias

    return layer_norm


LAYER_NORM_HINTS = {
    "unbiased variance": "LayerNorm's variance divides by C, not C - 1 (the equation of Exercise 1): torch's var "
    "divides by C - 1 unless told otherwise",
    "mean not subtracted": "subtract each vector's mean mu before dividing by the standard deviation",
    "eps ignored": "eps is added to the variance inside the square root (it keeps the division safe when the "
    "variance is tiny); here it was left out",
    "eps outside the square root": "eps goes inside the square root, added to the variance, not to the "
    "standard deviation",
    "variance instead of standard deviation": "divide by the standard deviation, the square root of "
    "(variance + eps), not by the variance",
    "normalised over every dimension": "normalise each vector on its own: the mean and variance are over the "
    "last dimension (C) only, not over the whole tensor",
    "gain and shift not applied": "after normalising, scale by weight and shift by bias (both of shape (C,))",
}

LAYER_NORM = Spec(
    id="lab07.layer_norm",
    points=2,
    name="layer_norm",
    reference=reference_layer_norm,
    cases=layer_norm_cases,
    compare=close(atol=1e-6, rtol=1e-5),
    forbidden=("torch.nn.functional.layer_norm", "torch.layer_norm", "torch.nn.LayerNorm"),
    hint="normalise each vector over the last dimension only: subtract its mean, divide by the square root of its "
    "variance (a sum divided by C) plus eps, then scale by weight and shift by bias",
    misconceptions=tuple(Misconception(name, _layer_norm(name), hint) for name, hint in LAYER_NORM_HINTS.items()),
)


# --- Exercise 2: GPT-2's GELU --------------------------------------------------------------------------------


def gelu_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("a grid from -8 to 8", (torch.linspace(-8, 8, 401, dtype=torch.float64),)),
        Case("large magnitudes", (torch.cat([torch.linspace(-60, -10, 26), torch.linspace(10, 60, 26)]).double(),)),
        Case("zero and tiny values", (torch.tensor([0.0, 1e-8, -1e-8, 1e-4, -1e-4], dtype=torch.float64),)),
        Case("a (2, 3, 4) tensor", (torch.randn(2, 3, 4, generator=g, dtype=torch.float64) * 3,)),
        Case("float32", (torch.randn(50, generator=g) * 3,)),
    ]
    cases += [
        Case(f"random values {i + 1}", (torch.randn(100, generator=g, dtype=torch.float64) * 3,)) for i in range(2)
    ]
    return cases


def _gelu(inner: Callable[[torch.Tensor], torch.Tensor], half: float = 0.5) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: half * x * (1.0 + torch.tanh(inner(x)))


_C = math.sqrt(2.0 / math.pi)

GELU = Spec(
    id="lab07.gelu",
    points=1,
    name="gelu_tanh",
    reference=lambda x: F.gelu(x, approximate="tanh"),
    cases=gelu_cases,
    compare=close(atol=1e-6, rtol=1e-5),
    forbidden=("torch.nn.functional.gelu", "torch.nn.GELU"),
    hint="GPT-2's GELU is the tanh approximation of Exercise 2's equation, element by element: check each "
    "constant and power against it",
    misconceptions=(
        Misconception(
            "exact GELU (erf)",
            lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0))),
            "that is the exact GELU x Phi(x); GPT-2 uses the tanh approximation of it",
        ),
        Misconception(
            "sigmoid approximation",
            lambda x: x * torch.sigmoid(1.702 * x),
            "x sigmoid(1.702 x) is another approximation (Hendrycks and Gimpel's); GPT-2 uses the tanh one",
        ),
        Misconception(
            "cubic term missing",
            _gelu(lambda x: _C * x),
            "inside the tanh goes sqrt(2/pi) times (x + 0.044715 x^3): the cubic term is missing",
        ),
        Misconception(
            "sqrt(2/pi) missing",
            _gelu(lambda x: x + 0.044715 * x**3),
            "the bracket (x + 0.044715 x^3) is multiplied by sqrt(2/pi) inside the tanh",
        ),
        Misconception(
            "2/pi without the square root",
            _gelu(lambda x: 2.0 / math.pi * (x + 0.044715 * x**3)),
            "the factor is the square root of 2/pi (about 0.798), not 2/pi",
        ),
        Misconception(
            "factor 1/2 missing",
            _gelu(lambda x: _C * (x + 0.044715 * x**3), half=1.0),
            "the formula starts with 1/2: for large x the GELU is x itself, not 2x",
        ),
    ),
)


# --- Exercise 3: the block's residual wiring --------------------------------------------------------------------


def block_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, norm: str, n_head: int, C: int, B: int, T: int, bias: bool = True) -> Case:
        config = GPTConfig(vocab_size=2, block_size=T, n_layer=1, n_head=n_head, n_embd=C, norm=norm, bias=bias)
        with seeded(g):
            block = make_block(config).eval()
        randomize_(block, g)  # LayerNorm gains and shifts unlike 1 and 0, so skipping or swapping them shows
        return Case(label, (block, torch.randn(B, T, C, generator=g) * 2 + 1, norm))

    cases = [
        case("pre-LN (GPT-2)", "pre", 2, 8, 2, 5),
        case("post-LN (GPT-1)", "post", 2, 8, 2, 5),
        case("a single position (T = 1), pre-LN", "pre", 2, 6, 3, 1),
        case("one head, post-LN", "post", 1, 4, 1, 6),
        case("no biases (bias=False), pre-LN", "pre", 4, 8, 2, 3, bias=False),
    ]
    for i in range(4):
        n_head = (1, 2, 4)[int(torch.randint(3, (1,), generator=g))]
        width, B, T = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((2, 5), (1, 4), (1, 9)))
        cases.append(case(f"random sizes {i + 1}", ("pre", "post")[i % 2], n_head, n_head * width, B, T))
    return cases


def run_block(answer: Callable[..., Any], case: Case) -> Any:
    """``answer(block, x, norm)`` with the block in eval mode (no dropout) and no gradients."""
    block, x, norm = case.args
    block.eval()
    with torch.no_grad():
        return answer(block, x, norm)


def reference_block(block: Block, x: torch.Tensor, norm: str) -> torch.Tensor:
    return block(x)[0]


def _block(mistake: str) -> Callable[..., torch.Tensor]:
    """``block_forward`` with one known mistake (``mistake`` names it)."""

    def block_forward(block: Block, x: torch.Tensor, norm: str) -> torch.Tensor:
        ln_1, ln_2 = (block.ln_2, block.ln_1) if mistake == "LayerNorms swapped" else (block.ln_1, block.ln_2)
        if mistake == "ln_1 used twice":
            ln_2 = block.ln_1
        norm = {"always pre-LN": "pre", "always post-LN": "post"}.get(mistake, norm)
        keep = 0.0 if mistake == "no residual connections" else 1.0
        if norm == "post":
            x = ln_1(keep * x + block.attn(x))
            return ln_2(keep * x + block.mlp(x))
        if mistake == "the stream normalised":
            x = ln_1(x)
            x = x + block.attn(x)
            x = ln_2(x)
            return x + block.mlp(x)
        x = keep * x + block.attn(ln_1(x))
        return keep * x + block.mlp(ln_2(x))

    return block_forward


BLOCK_HINTS = {
    "always pre-LN": 'norm="post" is GPT-1\'s wiring: each sub-layer reads the stream as it is, and the '
    "LayerNorm comes after the residual sum (Exercise 3, second bullet)",
    "always post-LN": 'norm="pre" is GPT-2\'s wiring: each sub-layer reads a normalised copy of the stream and '
    "its output is added to the stream unnormalised (Exercise 3, first bullet)",
    "no residual connections": "each sub-layer sits in a residual branch: keep x and add the sub-layer's output to it",
    "the stream normalised": "in a pre-LN block the residual stream itself is never normalised: the LayerNorm's "
    "output goes into the sub-layer only, and the sub-layer's output is added to the x "
    "that came in",
    "LayerNorms swapped": "ln_1 belongs to the attention sub-layer and ln_2 to the MLP",
    "ln_1 used twice": "each sub-layer has its own LayerNorm with its own gain and shift: ln_2 goes with the MLP",
}

BLOCK = Spec(
    id="lab07.block",
    points=3,
    name="block_forward",
    reference=reference_block,
    cases=block_cases,
    run=run_block,
    forbidden=("gptcourse.model.Block.forward", "gptcourse.model.PostNormBlock.forward"),
    hint="each sub-layer sits in a residual branch (keep x and add); pre-LN normalises what goes into a "
    "sub-layer, post-LN normalises each sum (Exercise 3's two lines)",
    misconceptions=tuple(Misconception(name, _block(name), hint) for name, hint in BLOCK_HINTS.items()),
)

SPECS = (LAYER_NORM, GELU, BLOCK)
