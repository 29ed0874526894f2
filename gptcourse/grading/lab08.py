"""Checks for Lab 8 (the GPT forward pass with tied weights, and parameter counting), against
:class:`gptcourse.model.GPT` and :func:`gptcourse.model.count_params` on fresh random configurations.

The learner writes ``embed(model, idx)`` (``h0 = U We + Wp``), ``gpt_forward(model, idx)`` (the
logits, reading the output layer from the token embedding), and ``count_params(config)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn as nn

from gptcourse.grading import call_learner, exercise, expect_close, expect_equal, expect_shape, expect_type, fail
from gptcourse.model import GPT, GPTConfig
from gptcourse.model import count_params as reference_count


def _random_model(rng: random.Random, norm: str | None = None) -> GPT:
    n_head = rng.choice([1, 2, 4])
    norm = norm or rng.choice(["pre", "post"])
    config = GPTConfig(vocab_size=rng.randint(5, 60), block_size=rng.randint(4, 16), n_layer=rng.randint(1, 3),
                       n_head=n_head, n_embd=n_head * rng.randint(2, 6), norm=norm,
                       final_norm=norm == "pre")  # GPT-2 (pre-LN + final LayerNorm) or GPT-1 (post-LN, none)
    return GPT(config).eval()


class _UseTheEmbedding(nn.Module):
    """Stands in for ``lm_head`` so that a forward pass must read the tied matrix ``We`` itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fail("gpt_forward called model.lm_head; this exercise is about the tied weights",
             "compute the logits from the token embedding: h @ model.transformer.wte.weight.T")


@exercise("lab08.embed")
def check_embed(embed: Callable[..., torch.Tensor], trials: int = 5) -> None:
    """``embed(model, idx)`` is ``wte(idx) + wpe(0..T-1)``, shape ``(B, T, C)``."""
    rng = random.Random()
    for _ in range(trials):
        model = _random_model(rng)
        c = model.config
        B, T = rng.randint(1, 4), rng.randint(1, c.block_size)
        idx = torch.randint(c.vocab_size, (B, T))
        what = f"embed(model, idx of shape {(B, T)})"
        with torch.no_grad():
            got = call_learner(what, embed, model, idx)
            expect_shape(what, got, (B, T, c.n_embd))
            tokens_only = model.transformer.wte(idx)
            if torch.allclose(got, tokens_only):
                fail(f"{what} has the token embeddings only", "add the position embeddings wpe(positions 0..T-1)")
            expected = tokens_only + model.transformer.wpe(torch.arange(T))
        expect_close(what, got, expected, hint="positions are 0, 1, ..., T-1 for every sequence of the batch")


@exercise("lab08.forward")
def check_forward(gpt_forward: Callable[..., torch.Tensor], trials: int = 4) -> None:
    """``gpt_forward(model, idx)`` equals ``model(idx)[0]`` without calling ``model.lm_head``."""
    rng = random.Random()
    for trial in range(trials):
        model = _random_model(rng, norm="pre" if trial % 2 == 0 else "post")
        c = model.config
        B, T = rng.randint(1, 3), rng.randint(1, c.block_size)
        idx = torch.randint(c.vocab_size, (B, T))
        what = (f"gpt_forward(model with norm={c.norm!r}, final_norm={c.final_norm}, "
                f"idx of shape {(B, T)})")
        with torch.no_grad():
            expected, _ = model(idx)
            model.lm_head = _UseTheEmbedding()
            got = call_learner(what, gpt_forward, model, idx)
        expect_shape(what, got, (B, T, c.vocab_size))
        expect_close(what, got, expected, atol=1e-5, rtol=1e-4,
                     hint="h0 = embed(model, idx); every block in order (keep the first of the pair it "
                          "returns); ln_f only if model.config.final_norm; then h @ wte.weight.T")


@exercise("lab08.count_params")
def check_count_params(count_params: Callable[[GPTConfig], int], trials: int = 40) -> None:
    """``count_params(config)`` equals the number of parameters of ``GPT(config)`` for random configs."""
    rng = random.Random()
    gpt2 = GPTConfig()
    configs = [gpt2]
    for _ in range(trials):
        n_head = rng.choice([1, 2, 3, 4, 6, 8])
        configs.append(GPTConfig(
            vocab_size=rng.randint(2, 1000), block_size=rng.randint(1, 512), n_layer=rng.randint(1, 12),
            n_head=n_head, n_embd=n_head * rng.randint(1, 16),
            n_kv_head=rng.choice([None] + [d for d in range(1, n_head + 1) if n_head % d == 0]),
            bias=rng.random() < 0.5, final_norm=rng.random() < 0.5, pos=rng.choice(["learned", "none"])))
    for config in configs:
        settings = {k: getattr(config, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd",
                                                      "n_kv_head", "bias", "final_norm", "pos")}
        what = f"count_params(GPTConfig({', '.join(f'{k}={v!r}' for k, v in settings.items())}))"
        got = call_learner(what, count_params, config)
        expect_type(what, got, int)
        expected = reference_count(config)
        if got == expected:
            continue
        diff = got - expected
        C = config.n_embd
        hints = {config.vocab_size * C: "the output layer is tied to the token embedding: count V*C once",
                 -config.block_size * C: "count the learned position embedding (block_size * n_embd)",
                 config.block_size * C: 'pos="none" has no position embedding',
                 C: "the final LayerNorm is there only when config.final_norm",
                 -C: "count the final LayerNorm when config.final_norm"}
        hint = hints.get(diff, "per block: c_attn C*(n_head + 2*n_kv_head)*hd, c_proj C*C, MLP 8*C*C, two "
                               "LayerNorms; biases and LayerNorm shifts only when config.bias")
        fail(f"{what} is {got:,}, expected {expected:,} (off by {diff:+,})", hint)
    expect_equal("count_params(GPTConfig()) (GPT-2 small)", count_params(gpt2), 124_439_808)
