"""Checks for Lab 7 (LayerNorm, GELU and the Transformer block), against torch and
:class:`gptcourse.model.Block` on fresh random inputs.

The learner writes ``layer_norm(x, weight, bias, eps)``, ``gelu_tanh(x)`` and
``block_forward(block, x, norm)``, the last one wiring a package ``Block``'s sub-modules
(``ln_1``, ``attn``, ``ln_2``, ``mlp``) with residual connections in pre-LN or post-LN order.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gptcourse.grading import call_learner, exercise, expect_close, expect_shape, fail
from gptcourse.model import GPTConfig, make_block


@exercise("lab07.layer_norm")
def check_layer_norm(layer_norm: Callable[..., torch.Tensor], trials: int = 10) -> None:
    """``layer_norm(x, weight, bias, eps)`` normalises the last dimension like ``F.layer_norm``."""
    rng = random.Random()
    for trial in range(trials):
        shape = tuple(rng.randint(1, 5) for _ in range(rng.randint(1, 3))) + (rng.randint(2, 40),)
        C = shape[-1]
        # large offsets and scales catch a missing mean subtraction or a std taken per batch
        x = torch.randn(shape, dtype=torch.float64) * rng.uniform(0.1, 20) + rng.uniform(-50, 50)
        weight, bias = torch.randn(C, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
        eps = rng.choice([1e-5, 1e-2, 1.0])
        what = f"layer_norm(x of shape {shape}, eps={eps})"
        got = call_learner(what, layer_norm, x.clone(), weight, bias, eps)
        expect_shape(what, got, shape)
        expected = F.layer_norm(x, (C,), weight, bias, eps)
        unbiased = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=True) + eps)
        if torch.allclose(got.double(), unbiased * weight + bias, atol=1e-6):
            fail(f"{what} uses the unbiased variance (dividing by C - 1)",
                 "LayerNorm divides by C: x.var(-1, unbiased=False, keepdim=True)")
        if eps >= 1e-2 and torch.allclose(got.double(), F.layer_norm(x, (C,), weight, bias, 0.0), atol=1e-6):
            fail(f"{what} ignores eps", "add eps to the variance inside the square root: sqrt(var + eps)")
        expect_close(what, got, expected, atol=1e-6, rtol=1e-5,
                     hint="normalise over the LAST dimension only: (x - mean) / sqrt(var + eps), then * weight + bias")


@exercise("lab07.gelu")
def check_gelu(gelu_tanh: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """``gelu_tanh(x)`` is GPT-2's GELU: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    x = torch.cat([torch.linspace(-8, 8, 401), torch.randn(100) * 3]).double()
    got = call_learner("gelu_tanh(x)", gelu_tanh, x.clone())
    expect_shape("gelu_tanh(x)", got, tuple(x.shape))
    if torch.allclose(got.double(), F.gelu(x), atol=1e-9) and not torch.allclose(F.gelu(x), F.gelu(x, approximate="tanh")):
        fail("gelu_tanh(x) is the exact GELU x * Phi(x) (with erf)",
             "GPT-2 uses the tanh approximation: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))")
    expect_close("gelu_tanh(x)", got, F.gelu(x, approximate="tanh"), atol=1e-6, rtol=1e-5)


@exercise("lab07.block")
def check_block(block_forward: Callable[..., torch.Tensor], trials: int = 4) -> None:
    """``block_forward(block, x, norm)`` equals ``Block`` with ``norm="pre"`` and ``norm="post"``."""
    rng = random.Random()
    for trial in range(trials):
        n_head = rng.choice([1, 2, 4])
        C, B, T = n_head * rng.randint(2, 8), rng.randint(1, 3), rng.randint(1, 10)
        for norm in ("pre", "post"):
            config = GPTConfig(vocab_size=2, block_size=T, n_layer=1, n_head=n_head, n_embd=C, norm=norm)
            block = make_block(config).eval()
            with torch.no_grad():  # non-trivial LayerNorm gains and biases, so their use is checked too
                for module in (block.ln_1, block.ln_2):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.normal_(0, 0.3)
            x = torch.randn(B, T, C) * 2 + 1
            what = f'block_forward(block, x of shape {(B, T, C)}, norm="{norm}")'
            with torch.no_grad():
                got = call_learner(what, block_forward, block, x.clone(), norm)
                expected, _ = block(x)
                expect_shape(what, got, (B, T, C))
                other = make_block(GPTConfig(**{**config.to_dict(), "norm": "post" if norm == "pre" else "pre"}))
                other.load_state_dict(block.state_dict())
                if torch.allclose(got, other.eval()(x)[0], atol=1e-5):
                    fail(f"{what} computes the {'post' if norm == 'pre' else 'pre'}-LN block",
                         "pre-LN: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)).  "
                         "post-LN: x = ln_1(x + attn(x)); x = ln_2(x + mlp(x)).")
            expect_close(what, got, expected, atol=1e-5, rtol=1e-4,
                         hint="each sub-layer sits in a residual branch: keep x and ADD the sub-layer's output")
