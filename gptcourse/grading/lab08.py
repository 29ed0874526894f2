"""Exercise specs for Lab 8 (the GPT forward pass with tied weights, and parameter counting), against
:class:`gptcourse.model.GPT` and :func:`gptcourse.model.count_params`: ``embed(model, idx)``
(``h0 = U We + Wp``), ``gpt_forward(model, idx)`` (the logits, with the output layer read from the
token embedding) and ``count_params(config)``. Models get random weights, LayerNorm gains included."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptcourse.grading.spec import AnswerError, Case, Misconception, Spec, exact, randomize_, seeded
from gptcourse.model import GPT, GPTConfig, count_params


def _model(
    g: torch.Generator,
    *,
    vocab_size: int,
    block_size: int,
    n_layer: int,
    n_head: int,
    n_embd: int,
    norm: str = "pre",
    final_norm: bool = True,
) -> GPT:
    """A small GPT with random weights: norm gains near 1 but not 1, so a skipped gain shows."""
    config = GPTConfig(
        vocab_size=vocab_size,
        block_size=block_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        norm=norm,
        final_norm=final_norm,
    )
    with seeded(g):
        model = GPT(config)
    return randomize_(model, g).eval()


def _random_case(g: torch.Generator, label: str, n_layer: int, norm: str = "pre", final_norm: bool = True) -> Case:
    """A random small model of ``n_layer`` blocks and a random batch ``(B, T)``, ``T <= block_size``."""
    n_head = (1, 2, 4)[int(torch.randint(3, (1,), generator=g))]
    vocab_size, block_size, width, B = (
        int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((5, 40), (4, 13), (2, 5), (1, 4))
    )
    model = _model(
        g,
        vocab_size=vocab_size,
        block_size=block_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_head * width,
        norm=norm,
        final_norm=final_norm,
    )
    return Case(label, (model, _idx(g, model, B, int(torch.randint(1, block_size + 1, (1,), generator=g)))))


def _idx(g: torch.Generator, model: GPT, B: int, T: int) -> torch.Tensor:
    return torch.randint(model.config.vocab_size, (B, T), generator=g)


def run_model(answer: Callable[..., Any], case: Case) -> Any:
    """``answer(model, idx)`` with the model in eval mode (no dropout) and no gradients."""
    model, idx = case.args
    model.eval()
    with torch.no_grad():
        return answer(model, idx)


# --- Exercise 1: the input embedding -----------------------------------------------------------------------


def embed_cases(g: torch.Generator) -> list[Case]:
    model = _model(g, vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=6)  # shared: each case is copied

    def case(label: str, B: int, T: int) -> Case:
        return Case(label, (model, _idx(g, model, B, T)))

    # shorter sequences first: counting positions from 1 runs off the table only at T = block_size
    cases = [
        case("a batch of 3, T = 5", 3, 5),
        case("a single token (T = 1)", 2, 1),
        case("one sequence (B = 1)", 1, 6),
        case("T = block_size (the full context)", 2, 8),
    ]
    cases += [_random_case(g, f"random model and sizes {i + 1}", n_layer=1) for i in range(2)]
    return cases


def reference_embed(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    return model.transformer.wte(idx) + model.transformer.wpe(torch.arange(idx.size(1)))


def _embed_from_one(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    return model.transformer.wte(idx) + model.transformer.wpe(torch.arange(1, idx.size(1) + 1))


EMBED = Spec(
    id="lab08.embed",
    points=1,
    name="embed",
    reference=reference_embed,
    cases=embed_cases,
    run=run_model,
    forbidden=("gptcourse.model.GPT.forward",),
    hint="h0 = U We + Wp: each token's row of the token embedding plus its position's row of the position "
    "embedding; positions are 0, 1, ..., T-1 for every sequence of the batch",
    misconceptions=(
        Misconception(
            "token embeddings only",
            lambda model, idx: model.transformer.wte(idx),
            "add the position embeddings (wpe) of positions 0 .. T-1: without them the model cannot "
            "tell the order of the tokens",
        ),
        Misconception(
            "positions counted from 1",
            _embed_from_one,
            "positions start at 0: the first token of a sequence gets the first row of wpe",
        ),
        Misconception(
            "token embeddings scaled by sqrt(C)",
            lambda model, idx: (
                model.transformer.wte(idx) * math.sqrt(model.config.n_embd)
                + model.transformer.wpe(torch.arange(idx.size(1)))
            ),
            "GPT adds the two embeddings as they are: scaling the token embedding by sqrt(C) is the "
            "original Transformer's, not GPT's",
        ),
    ),
)


# --- Exercise 2: the forward pass with tied weights -----------------------------------------------------------


class _UseTheEmbedding(nn.Module):
    """Stands in for ``lm_head`` so that a forward pass must read the tied matrix ``We`` itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AnswerError(
            "gpt_forward called model.lm_head; this exercise computes the output layer from the tied "
            "token embedding instead"
        )


def forward_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, model: GPT, B: int, T: int) -> Case:
        return Case(label, (model, _idx(g, model, B, T)))

    # models are shared between cases (each case is copied before it runs): building them is the slow part
    sizes = {"vocab_size": 13, "block_size": 8, "n_head": 2, "n_embd": 8}
    gpt2 = _model(g, n_layer=2, norm="pre", final_norm=True, **sizes)
    gpt1 = _model(g, n_layer=2, norm="post", final_norm=False, **sizes)
    cases = [
        case("GPT-2-like: pre-LN, final LayerNorm, 2 blocks", gpt2, 2, 6),
        case("GPT-1-like: post-LN, no final LayerNorm, 2 blocks", gpt1, 2, 6),
        case("three blocks", _model(g, n_layer=3, **sizes), 1, 5),
        case("a single token (T = 1)", gpt2, 3, 1),
        case("T = block_size (the full context)", gpt1, 2, 8),
    ]
    for i, norm in enumerate(("pre", "post")):
        n_layer = int(torch.randint(2, 4, (1,), generator=g))
        cases.append(_random_case(g, f"random {norm}-LN model {i + 1}", n_layer, norm, final_norm=norm == "pre"))
    return cases


def run_forward(answer: Callable[..., Any], case: Case) -> Any:
    """Like :func:`run_model`, with ``model.lm_head`` replaced: the answer must use ``We`` itself."""
    case.args[0].lm_head = _UseTheEmbedding()  # the case is a fresh copy: changing its model changes nothing else
    return run_model(answer, case)


def _forward(mistake: str) -> Callable[..., torch.Tensor]:
    """``gpt_forward`` with one known mistake (``mistake`` names it; "" makes none)."""

    def gpt_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
        t = model.transformer
        h = t.wte(idx)
        if mistake != "no position embeddings":
            h = h + t.wpe(torch.arange(idx.size(1)))
        for block in t.h[:1] if mistake == "only the first block" else t.h:
            h, _ = block(h)
        if model.config.final_norm and mistake == "final LayerNorm without its gain and shift":
            h = F.layer_norm(h, (h.size(-1),))
        elif model.config.final_norm and mistake != "final LayerNorm skipped":
            h = t.ln_f(h)
        logits = h @ t.wte.weight.T
        return logits.softmax(dim=-1) if mistake == "probabilities, not logits" else logits

    return gpt_forward


FORWARD_HINTS = {
    "final LayerNorm skipped": "a model with config.final_norm (GPT-2) normalises the last block's output with "
    "model.transformer.ln_f before the output layer",
    "final LayerNorm without its gain and shift": "the final LayerNorm has its own learned gain and shift: use "
    "the model's ln_f module, not a bare normalisation",
    "only the first block": "run every block of model.transformer.h, in order, each on the previous one's output",
    "no position embeddings": "h0 is the token embedding plus the position embedding (Exercise 1's embed)",
    "probabilities, not logits": "return the logits h We^T: the softmax belongs to the loss and to sampling",
}

FORWARD = Spec(
    id="lab08.forward",
    points=3,
    name="gpt_forward",
    reference=_forward(""),
    cases=forward_cases,
    run=run_forward,
    forbidden=("gptcourse.model.GPT.forward",),
    hint="h0 from embed; every block in order (keep the first of the pair it returns); ln_f only if "
    "model.config.final_norm; then the output layer, which is the transposed token embedding matrix",
    misconceptions=tuple(Misconception(name, _forward(name), hint) for name, hint in FORWARD_HINTS.items()),
)


# --- Exercise 3: counting parameters -----------------------------------------------------------------------------


def count_cases(g: torch.Generator) -> list[Case]:
    small = {"vocab_size": 100, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 16}
    cases = [
        Case("GPT-2 small (124,439,808)", (GPTConfig(),)),
        Case(
            "GPT-1: no final LayerNorm", (GPTConfig(vocab_size=40478, block_size=512, norm="post", final_norm=False),)
        ),
        Case("no biases (bias=False)", (GPTConfig(**small, bias=False),)),
        Case("no position embedding (pos='none')", (GPTConfig(**small, pos="none"),)),
        Case("sinusoidal positions (no parameters)", (GPTConfig(**small, pos="sinusoidal"),)),
        Case("grouped-query: 2 kv heads", (GPTConfig(**small, n_kv_head=2),)),
        Case("multi-query: 1 kv head", (GPTConfig(**small, n_kv_head=1),)),
    ]
    for i in range(5):
        n_head = (1, 2, 3, 4, 6, 8)[int(torch.randint(6, (1,), generator=g))]
        divisors = [d for d in range(1, n_head + 1) if n_head % d == 0]
        vocab_size, block_size, n_layer, width = (
            int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((2, 1000), (1, 513), (1, 13), (1, 17))
        )
        n_kv_head = divisors[int(torch.randint(len(divisors), (1,), generator=g))]
        bias, final_norm = (bool(b) for b in torch.rand(2, generator=g) < 0.5)
        pos = ("learned", "none")[int(torch.randint(2, (1,), generator=g))]
        config = GPTConfig(
            vocab_size=vocab_size,
            block_size=block_size,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_head * width,
            n_kv_head=n_kv_head,
            bias=bias,
            final_norm=final_norm,
            pos=pos,
        )
        cases.append(
            Case(
                f"random {i + 1}: bias={bias}, final_norm={final_norm}, pos={pos!r}, {n_kv_head} of {n_head} kv heads",
                (config,),
            )
        )
    return cases


def _count(mistake: str) -> Callable[[GPTConfig], int]:
    """``count_params`` with one known mistake (``mistake`` names it)."""

    def count(config: GPTConfig) -> int:
        C = config.n_embd
        b = 1 if config.bias or mistake == "biases always counted" else 0
        kv = config.n_head if mistake == "keys and values as wide as the queries" else config.kv_heads
        qkv = (config.n_head + 2 * kv) * (C // config.n_head)
        ln = C + b * C
        mlp = 4 * C * C + b * 4 * C + (0 if mistake == "one MLP layer" else 4 * C * C + b * C)
        total = config.vocab_size * C * (2 if mistake == "output layer counted again" else 1)
        total += config.n_layer * (C * qkv + b * qkv + C * C + b * C + mlp + 2 * ln)
        if mistake == "positions always counted" or (config.pos == "learned" and mistake != "positions forgotten"):
            total += config.block_size * C
        if mistake == "final LayerNorm always counted" or (
            config.final_norm and mistake != "final LayerNorm forgotten"
        ):
            total += ln
        return total

    return count


COUNT_HINTS = {
    "output layer counted again": "the output layer is tied to the token embedding, one V x C matrix: count it once",
    "positions forgotten": "count the learned position embedding, block_size x C, when config.pos is 'learned'",
    "positions always counted": "only learned positions are parameters: pos='none' has none and sinusoidal codes "
    "are computed, not learned",
    "final LayerNorm always counted": "the final LayerNorm exists only when config.final_norm (GPT-1 has none)",
    "final LayerNorm forgotten": "count the final LayerNorm (C gains, and C shifts with bias) when config.final_norm",
    "biases always counted": "with bias=False no Linear layer has a bias and no LayerNorm a shift",
    "keys and values as wide as the queries": "c_attn has (n_head + 2 n_kv) head_dim outputs with n_kv = "
    "config.kv_heads: keys and values have fewer heads than queries in GQA",
    "one MLP layer": "the MLP has two Linear layers, C -> 4C and 4C -> C",
}


def compare_count(got: Any, expected: Any, case: Case) -> str | None:
    """Exactly equal, with both counts written out in full (a float format would hide a small difference)."""
    if isinstance(got, int) and not isinstance(got, bool) and got != expected:
        return f"returned {got:,}, expected {expected:,} (off by {got - expected:+,})"
    return exact()(got, expected, case)


COUNT_PARAMS = Spec(
    id="lab08.count_params",
    points=3,
    name="count_params",
    reference=count_params,
    cases=count_cases,
    compare=compare_count,
    forbidden=("gptcourse.model.count_params", "gptcourse.model.GPT"),
    hint="go through Exercise 3's list term by term: embeddings, then per block c_attn, c_proj, the MLP's two layers "
    "and two LayerNorms (biases and shifts only with config.bias), then the final LayerNorm; return an int",
    misconceptions=tuple(Misconception(name, _count(name), hint) for name, hint in COUNT_HINTS.items()),
)

SPECS = (EMBED, FORWARD, COUNT_PARAMS)
