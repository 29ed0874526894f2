"""Exercise specs for Lab 7 (the whole Transformer block, saved as ``learner/block.py``), against torch
and the package: ``LayerNorm`` (:class:`torch.nn.LayerNorm`), ``gelu`` (the tanh GELU), ``MLP``
(:class:`gptcourse.layers.MLP`), the pre-LN ``Block`` (:class:`gptcourse.model.Block`) and
``make_block`` with its post-LN block (:func:`gptcourse.model.make_block`).

Each class answer is built from the same arguments as the reference, gets the reference's weights
(:func:`load_reference_weights`: the parameter names must be the package's), and is compared on
outputs and gradients; dropout is checked in training mode with the same random seed."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import gptcourse.layers
import gptcourse.model
from gptcourse.attention import LayerCache
from gptcourse.grading.spec import (
    Case,
    Misconception,
    Spec,
    close,
    load_reference_weights,
    parameter_grads,
    randomize_,
    seeded,
)
from gptcourse.model import GPTConfig


def _seed(g: torch.Generator) -> int:
    return int(torch.randint(2**31, (1,), generator=g))


# --- Step 1: LayerNorm ----------------------------------------------------------------------------------


def layer_norm_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, shape: tuple[int, ...], bias: bool, eps: float, scale: float, offset: float) -> Case:
        C = shape[-1]
        reference = nn.LayerNorm(C, eps=eps, bias=bias)
        randomize_(reference, g)
        state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
        x = torch.randn(shape, generator=g) * scale + offset  # offsets and scales show a missing mean or std
        return Case(label, (C, bias, eps, state, x, torch.randn(shape, generator=g)))

    cases = [
        case("one vector (no leading dimensions)", (7,), True, 1e-5, 5.0, 30.0),
        case("bias=False (no shift parameter)", (3, 8), False, 1e-5, 2.0, -1.0),
        case("eps = 1 with a small variance", (4, 6), True, 1.0, 0.3, 2.0),
        case("three leading dimensions", (2, 3, 4, 10), True, 1e-2, 20.0, -40.0),
    ]
    for i in range(3):
        lead = tuple(int(v) for v in torch.randint(1, 4, (int(torch.randint(0, 3, (1,), generator=g)),), generator=g))
        C = int(torch.randint(2, 33, (1,), generator=g))
        eps = (1e-5, 1e-2, 1.0)[int(torch.randint(3, (1,), generator=g))]
        cases.append(case(f"random shape and eps {i + 1}", lead + (C,), i % 2 == 0, eps, 5.0, 10.0))
    return cases


def run_layer_norm(answer: Callable[..., Any], case: Case) -> Any:
    """Build ``answer(C, bias=, eps=)``, read its initial parameters, load the case's weights, and
    return the output and the gradients of a weighted sum of it."""
    C, bias, eps, state, x, proj = case.args
    module = answer(C, bias=bias, eps=eps)
    if not isinstance(module, nn.Module):
        return {"not a module": type(module).__name__}
    init = {k: p.detach().clone() for k, p in module.named_parameters()}
    load_reference_weights(module, state, "your LayerNorm")
    x = x.clone().requires_grad_(True)
    y = module(x)
    (y * proj).sum().backward()
    return {"initial parameters": init, "output": y.detach(), "grad of x": x.grad, "grads": parameter_grads(module)}


def reference_layer_norm(ndim: int, bias: bool = True, eps: float = 1e-5) -> nn.Module:
    return nn.LayerNorm(ndim, eps=eps, bias=bias)


def _layer_norm(mistake: str) -> type[nn.Module]:
    """A ``LayerNorm`` class with one known mistake (``mistake`` names it)."""

    class LayerNorm(nn.Module):
        def __init__(self, ndim: int, bias: bool = True, eps: float = 1e-5):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(ndim))
            self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            dims = tuple(range(x.dim())) if mistake == "normalised over every dimension" else (-1,)
            mean = 0.0 if mistake == "mean not subtracted" else x.mean(dim=dims, keepdim=True)
            var = x.var(dim=dims, keepdim=True, unbiased=mistake == "unbiased variance")
            if mistake == "eps outside the square root":
                x_hat = (x - mean) / (var.sqrt() + self.eps)
            elif mistake == "eps ignored":
                x_hat = (x - mean) / var.sqrt()
            else:
                x_hat = (x - mean) / (var + self.eps).sqrt()
            y = x_hat * self.weight
            return y if self.bias is None else y + self.bias

    return LayerNorm


LAYER_NORM_HINTS = {
    "unbiased variance": "LayerNorm's variance divides by C, not C - 1 (the equation of Step 1); torch's var "
    "divides by C - 1 unless told otherwise",
    "eps outside the square root": "eps is added to the variance, inside the square root, not to the "
    "standard deviation",
    "eps ignored": "eps belongs in the denominator, added to the variance (the case with eps = 1 shows it)",
    "normalised over every dimension": "normalise each vector on its own: the statistics are over the last dimension "
    "only, whatever the leading dimensions",
    "mean not subtracted": "centre each vector first: subtract its mean over the last dimension before dividing",
}

LAYER_NORM = Spec(
    id="lab07.layer_norm",
    points=2,
    name="LayerNorm",
    reference=reference_layer_norm,
    cases=layer_norm_cases,
    run=run_layer_norm,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=("torch.nn.functional.layer_norm", "torch.layer_norm", "torch.nn.LayerNorm"),
    hint="weight starts at ones and bias at zeros (None with bias=False); normalise over the last dimension with the "
    "variance of Step 1's equation and eps inside the square root",
    misconceptions=tuple(Misconception(n, _layer_norm(n), h) for n, h in LAYER_NORM_HINTS.items()),
)


# --- Step 2: GPT-2's GELU --------------------------------------------------------------------------------


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
    name="gelu",
    reference=lambda x: F.gelu(x, approximate="tanh"),
    cases=gelu_cases,
    compare=close(atol=1e-6, rtol=1e-5),
    forbidden=("torch.nn.functional.gelu", "torch.nn.GELU"),
    hint="GPT-2's GELU is the tanh approximation of Step 2's equation, element by element: check each "
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


# --- Step 3: the MLP -------------------------------------------------------------------------------------


def _config(C: int, n_head: int = 2, T: int = 8, **kw: Any) -> GPTConfig:
    return GPTConfig(vocab_size=2, block_size=T, n_layer=1, n_head=n_head, n_embd=C, **kw)


def feed_forward_cases(reference: type[nn.Module]) -> Callable[[torch.Generator], list[Case]]:
    """The cases of a feed-forward layer built as ``reference(config, hidden=None)`` with the MLP's
    parameters (``c_fc``, ``c_proj``, ``dropout``): this step's MLP, and Lab 17's ``ReLU2MLP``."""

    def cases_of(g: torch.Generator) -> list[Case]:
        def case(label: str, shape: tuple[int, ...], hidden: int | None, training: bool, **kw: Any) -> Case:
            config = _config(shape[-1], **kw)
            with seeded(g):
                module = reference(config, hidden)
            randomize_(module, g)
            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            x = torch.randn(shape, generator=g)
            return Case(label, (config, hidden, state, x, torch.randn(shape, generator=g), training, _seed(g)))

        cases = [
            case("(B, T, C), no dropout", (2, 3, 8), None, False),
            case("one vector (C,)", (6,), None, False),
            case("three leading dimensions and hidden=10", (2, 2, 3, 4), 10, False),
            case("bias=False", (2, 5, 8), None, False, bias=False),
            case("dropout=0.3 in eval mode (no dropout)", (2, 4, 8), None, False, dropout=0.3),
            case("dropout=0.3 in training mode", (2, 4, 8), None, True, dropout=0.3),
        ]
        for i in range(2):
            C = int(torch.randint(2, 17, (1,), generator=g)) * 2
            cases.append(case(f"random sizes {i + 1}", (2, 3, C), None if i else 3 * C, i == 1, dropout=0.2 * i))
        return cases

    return cases_of


def feed_forward_run(what: str) -> Callable[[Callable[..., Any], Case], Any]:
    """The driver of :func:`feed_forward_cases`: build the answer (``what`` names it in messages) on
    the reference's weights, run it with the reference's dropout draws, and backpropagate."""

    def run(answer: Callable[..., Any], case: Case) -> Any:
        config, hidden, state, x, proj, training, seed = case.args
        module = answer(config) if hidden is None else answer(config, hidden)
        load_reference_weights(module, state, what)
        module.train(training)
        x = x.clone().requires_grad_(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the same dropout draws as the reference's
            y = module(x)
        (y * proj).sum().backward()
        return {"output": y.detach(), "grad of x": x.grad, "grads": parameter_grads(module)}

    return run


mlp_cases = feed_forward_cases(gptcourse.layers.MLP)
run_mlp = feed_forward_run("your MLP")


def _mlp(mistake: str) -> type[nn.Module]:
    """An ``MLP`` class with one known mistake."""

    class MLP(gptcourse.layers.MLP):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.c_fc(x)
            if mistake == "exact GELU (erf)":
                h = F.gelu(h)
            elif mistake == "ReLU instead of GELU":
                h = F.relu(h)
            else:
                h = F.gelu(h, approximate="tanh")
            if mistake == "dropout before c_proj":
                return self.c_proj(self.dropout(h))
            if mistake == "dropout also in eval mode":
                return F.dropout(self.c_proj(h), self.dropout.p, training=True)
            return self.dropout(self.c_proj(h))

    return MLP


MLP_HINTS = {
    "exact GELU (erf)": "the MLP's non-linearity is GPT-2's tanh GELU, your gelu of Step 2, not the exact erf one",
    "ReLU instead of GELU": "the non-linearity between c_fc and c_proj is the GELU (Step 2), not ReLU",
    "dropout also in eval mode": "dropout acts only in training mode: in eval mode the MLP is deterministic "
    "(an nn.Dropout module follows the module's train/eval mode)",
    "dropout before c_proj": "the dropout goes on the MLP's output, after c_proj (Chapter 7, the MLP), not on "
    "the hidden layer",
}

MLP_SPEC = Spec(
    id="lab07.mlp",
    points=2,
    name="MLP",
    reference=gptcourse.layers.MLP,
    cases=mlp_cases,
    run=run_mlp,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=("gptcourse.layers.MLP.forward", "torch.nn.functional.gelu", "torch.nn.GELU"),
    hint="c_fc (C -> hidden, 4C by default), your gelu, c_proj (hidden -> C), then dropout, every Linear with "
    "bias=config.bias; it must work on any leading dimensions",
    misconceptions=tuple(Misconception(n, _mlp(n), h) for n, h in MLP_HINTS.items()),
)


# --- Exercises 4 and 5: the blocks -----------------------------------------------------------------------------

BLOCK_FORBIDDEN = (
    "gptcourse.model.Block.forward",
    "gptcourse.model.PostNormBlock.forward",
    "gptcourse.model.make_block",
)


def _band(T: int, width: int = 2) -> torch.Tensor:
    i = torch.arange(T)
    return (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < width)


def block_cases(norm: str) -> Callable[[torch.Generator], list[Case]]:
    def cases(g: torch.Generator) -> list[Case]:
        def case(label: str, C: int, n_head: int, B: int, T: int, how: str = "plain", **kw: Any) -> Case:
            config = _config(C, n_head, T=T, norm=norm, **kw)
            with seeded(g):
                reference = gptcourse.model.make_block(config)
            randomize_(reference, g)
            state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
            x = torch.randn(B, T, C, generator=g) * 2 + 1
            return Case(label, (config, state, x, torch.randn(B, T, C, generator=g), how, _seed(g)))

        out = [
            case("(B, T, C) = (2, 5, 8), two heads", 8, 2, 2, 5),
            case("bias=False", 8, 4, 2, 3, bias=False),
            case("a mask (a band of width 2) passed to attention", 8, 2, 2, 6, how="mask"),
            case("a cache: 4 positions, then 2 more", 8, 2, 1, 6, how="cache"),
            case("dropout=0.2 in eval mode", 8, 2, 2, 4, dropout=0.2),
            case("dropout=0.2 in training mode", 8, 2, 2, 4, how="train", dropout=0.2),
            case("a mixture of experts (ffn='moe'): its aux loss", 8, 2, 2, 4, ffn="moe", n_expert=4, expert_top_k=2),
            case("the other norm's config: a ValueError", 8, 2, 1, 2, how="wrong norm"),
        ]
        for i in range(2):
            n_head = (1, 2, 4)[int(torch.randint(3, (1,), generator=g))]
            width, B, T = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((2, 5), (1, 4), (1, 8)))
            out.append(case(f"random sizes {i + 1}", n_head * width, n_head, B, T))
        return out

    return cases


def _run_block(make: Callable[[GPTConfig], Any], case: Case, what: str) -> Any:
    config, state, x, proj, how, seed = case.args
    if how == "wrong norm":
        other = GPTConfig(**{**config.to_dict(), "norm": "post" if config.norm == "pre" else "pre"})
        cls = type(make(config))
        try:
            cls(other)
        except ValueError:
            return {"ValueError": True}
        return {"ValueError": False}
    block = make(config)
    load_reference_weights(block, state, what)
    block.train(how == "train")
    x = x.clone().requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if how == "cache":
            cache = LayerCache()
            y1, aux1 = block(x[:, :4], cache)
            y2, aux = block(x[:, 4:], cache)
            y = torch.cat([y1, y2], dim=1)
        else:
            y, aux = block(x, None, _band(x.size(1)) if how == "mask" else None)
    loss = (y * proj).sum() + (0.0 if aux is None else 10.0 * aux)
    loss.backward()
    return {
        "class norm": getattr(type(block), "norm", None),
        "output": y.detach(),
        "aux": None if aux is None else aux.detach(),
        "grad of x": x.grad,
        "grads": parameter_grads(block),
    }


def run_block(answer: Callable[..., Any], case: Case) -> Any:
    return _run_block(answer, case, "your Block")


def _block(mistake: str, post: bool = False) -> type[nn.Module]:
    """A block class with one known mistake, on the package's parameters."""

    class Wrong(gptcourse.model.PostNormBlock if post else gptcourse.model.Block):
        def __init__(self, config: GPTConfig):
            if mistake == "no ValueError for the wrong norm":
                config = GPTConfig(**{**config.to_dict(), "norm": self.norm})
            super().__init__(config)

        def forward(self, x: torch.Tensor, cache: Any = None, mask: Any = None) -> Any:
            if mistake == "mask not passed to attention":
                mask = None
            if mistake == "cache not passed to attention":
                cache = None
            y, aux = self.wired(x, cache, mask)
            return y, None if mistake == "aux loss dropped" else aux

        def wired(self, x: torch.Tensor, cache: Any, mask: Any) -> Any:
            if post:
                if mistake == "sub-layer before the residual sum normalised":
                    x = x + self.ln_1(self.attn(x, cache, mask))
                    y, aux = self.ffn(x)
                    return x + self.ln_2(y), aux
                if mistake == "pre-LN wiring":
                    x = x + self.attn(self.ln_1(x), cache, mask)
                    y, aux = self.ffn(self.ln_2(x))
                    return x + y, aux
                x = self.ln_1(x + self.attn(x, cache, mask))
                y, aux = self.ffn(x)
                return self.ln_2(x + y), aux
            if mistake == "the stream normalised":
                x = self.ln_1(x)
                x = x + self.attn(x, cache, mask)
                x = self.ln_2(x)
                y, aux = self.ffn(x)
                return x + y, aux
            if mistake == "post-LN wiring":
                x = self.ln_1(x + self.attn(x, cache, mask))
                y, aux = self.ffn(x)
                return self.ln_2(x + y), aux
            x = x + self.attn(self.ln_1(x), cache, mask)
            y, aux = self.ffn(self.ln_2(x))
            return x + y, aux

    return Wrong


BLOCK_HINTS = {
    "the stream normalised": "in a pre-LN block the residual stream itself is never normalised: the LayerNorm's output "
    "goes into the sub-layer only, and the sub-layer's output is added to the x that came in",
    "post-LN wiring": "Block is GPT-2's pre-LN block: each sub-layer reads a normalised copy of the stream; the "
    "normalise-the-sum wiring is Step 5's PostNormBlock",
    "mask not passed to attention": "forward's mask goes on to the attention sub-layer (its third argument): "
    "without it attention stays causal-only",
    "cache not passed to attention": "forward's cache goes on to the attention sub-layer, which stores the keys and "
    "values there; a second call must see the first call's positions",
    "aux loss dropped": "with a mixture of experts the feed-forward returns its load-balancing loss too: ffn passes it "
    "up and forward returns it as the second item (None for a plain MLP)",
    "no ValueError for the wrong norm": "building the block from a config whose norm is not the class's norm "
    "attribute must raise a ValueError that says to use make_block",
}

BLOCK = Spec(
    id="lab07.block",
    points=3,
    name="Block",
    reference=gptcourse.model.Block,
    cases=block_cases("pre"),
    run=run_block,
    compare=close(atol=1e-4, rtol=1e-4),
    forbidden=BLOCK_FORBIDDEN,
    hint="ln_1, attn, ln_2 and mlp, as in Step 4's equations; forward(x, cache, mask) returns (x, aux) and "
    "passes cache and mask to attention; the class attribute norm is 'pre'",
    misconceptions=tuple(Misconception(n, _block(n), h) for n, h in BLOCK_HINTS.items()),
)


def run_make_block(answer: Callable[..., Any], case: Case) -> Any:
    return _run_block(answer, case, "the block from your make_block")


def _make_block(mistake: str) -> Callable[[GPTConfig], nn.Module]:
    post = _block(mistake, post=True)
    return lambda config: post(config) if config.norm == "post" else gptcourse.model.Block(config)


POST_HINTS = {
    "no ValueError for the wrong norm": "PostNormBlock, built from a config whose norm is not 'post', must raise the "
    "same ValueError as Block (its norm class attribute is what the check compares)",
    "pre-LN wiring": "PostNormBlock is GPT-1's wiring: each sub-layer reads the stream as it is, and the LayerNorm "
    "comes after the residual sum (Step 5's equation)",
    "sub-layer before the residual sum normalised": "post-LN normalises the sum x + f(x), not the sub-layer's "
    "output alone: the LayerNorm sits on the residual stream",
    "aux loss dropped": "the post-LN block returns the feed-forward's aux loss too, like Block",
    "mask not passed to attention": "PostNormBlock's forward passes mask on to attention, like Block's",
}

MAKE_BLOCK = Spec(
    id="lab07.make_block",
    points=2,
    name="make_block",
    reference=gptcourse.model.make_block,
    cases=block_cases("post"),
    run=run_make_block,
    compare=close(atol=1e-4, rtol=1e-4),
    forbidden=BLOCK_FORBIDDEN,
    hint='make_block(config) builds Block for norm="pre" and PostNormBlock for "post"; PostNormBlock has the same '
    "parameters as Block, its own forward (Step 5's equation) and norm = 'post'",
    misconceptions=tuple(Misconception(n, _make_block(n), h) for n, h in POST_HINTS.items()),
)

SPECS = (LAYER_NORM, GELU, MLP_SPEC, BLOCK, MAKE_BLOCK)
