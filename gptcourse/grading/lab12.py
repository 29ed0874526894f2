"""Exercise specs for Lab 12 (Mixture of Experts): ``top_k_gates(logits, k)``,
``load_balancing_loss(probs, experts, alpha)`` and ``moe_forward(x, router, experts, k)``, against
:mod:`gptcourse.moe`. Shapes: ``N`` tokens, ``E`` experts, ``C`` model width."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gptcourse import moe as ref
from gptcourse.grading.spec import AnswerError, Case, Misconception, Spec, close, randomize_, seeded
from gptcourse.model import GPTConfig

_close = close(atol=1e-5, rtol=1e-4)


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """An int in ``[low, high]``."""
    return int(torch.randint(low, high + 1, (), generator=g))


def _logits(g: torch.Generator, N: int, E: int, scale: float) -> torch.Tensor:
    """``(N, E)`` router logits without near ties, so that every correct top-k picks the same experts."""
    while True:
        logits = torch.randn(N, E, generator=g) * scale
        ordered = logits.sort(dim=-1).values
        if (ordered[:, 1:] - ordered[:, :-1]).min() > 1e-3:
            return logits


# --- Exercise 1: the router's top-k gates -----------------------------------------------------------------


def gate_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("k = 2 of 4 experts", (_logits(g, 6, 4, 1.0), 2)),
        Case("k = 1: the gate is the raw probability", (_logits(g, 5, 4, 1.0), 1)),
        Case("k = E: every expert", (_logits(g, 4, 3, 1.0), 3)),
        Case("a single token", (_logits(g, 1, 6, 2.0), 3)),
        Case("confident router (large logits)", (_logits(g, 8, 5, 4.0), 2)),
    ]
    for i in range(3):
        N, E = _randint(g, 1, 30), _randint(g, 2, 10)
        cases.append(Case(f"random routing {i + 1}", (_logits(g, N, E, (0.5, 1.0, 4.0)[i]), _randint(g, 1, E))))
    return cases


def run_gates(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """The three returned tensors by name, the root of the others first."""
    result = answer(*case.args)
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        what = f"{len(result)} values" if isinstance(result, (tuple, list)) else f"a {type(result).__name__}"
        raise AnswerError(f"top_k_gates should return 3 tensors (gates, experts, probs), it returned {what}")
    gates, experts, probs = result
    return {"probs": probs, "experts": experts, "gates": gates}


def _gates(
    renormalise: str = "k > 1",
    masked_probs: bool = False,
    largest: bool = True,
    softmax: bool = True,
    dim: int = -1,
    order: str = "gep",
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Top-k gating with one piece changed (a misconception); ``renormalise`` is "k > 1", "always"
    or "never"; ``order`` is the order of gates (g), experts (e) and probs (p) in the result."""

    def top_k_gates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        probs = torch.softmax(logits, dim=dim) if softmax else logits
        gates, experts = probs.topk(k, dim=-1, largest=largest)
        if renormalise == "always" or (renormalise == "k > 1" and k > 1):
            gates = gates / gates.sum(dim=-1, keepdim=True)
        if masked_probs:
            probs = torch.zeros_like(probs).scatter(-1, experts, probs.gather(-1, experts))
        parts = {"g": gates, "e": experts, "p": probs}
        return tuple(parts[c] for c in order)

    return top_k_gates


TOP_K_GATES = Spec(
    id="lab12.top_k_gates",
    points=2,
    name="top_k_gates",
    reference=ref.top_k_gates,
    cases=gate_cases,
    run=run_gates,
    forbidden=("gptcourse.moe.top_k_gates", "gptcourse.moe.MoE.route"),
    hint="probs is the softmax over all E experts; experts are the k most probable (best first); gates are their "
    "probabilities, divided by their sum when k > 1 and kept raw when k = 1",
    misconceptions=(
        Misconception(
            "k = 1 renormalised",
            _gates(renormalise="always"),
            "with k = 1 keep the raw probability as the gate (Switch Transformer): a renormalised single "
            "gate is always 1, and the router would learn nothing from the language-model loss",
        ),
        Misconception(
            "gates not renormalised",
            _gates(renormalise="never"),
            "with k > 1 divide the k kept probabilities by their sum, so that each token's gates sum to 1",
        ),
        Misconception(
            "probs only over the chosen experts",
            _gates(masked_probs=True),
            "probs is the softmax over ALL experts, unchanged by the choice (the balancing loss needs it)",
        ),
        Misconception(
            "the least probable experts",
            _gates(largest=False),
            "route each token to its k MOST probable experts, best first",
        ),
        Misconception(
            "no softmax",
            _gates(softmax=False),
            "probs and gates are probabilities: softmax the router's logits over the experts first",
        ),
        Misconception(
            "softmax over the tokens",
            _gates(dim=0),
            "each token's probabilities are a distribution over the experts: normalise along the last "
            "dimension (E), not across the tokens",
        ),
        Misconception(
            "results in another order",
            _gates(order="egp"),
            "return the three tensors in the order (gates, experts, probs)",
        ),
    ),
)


# --- Exercise 2: the load-balancing loss ------------------------------------------------------------------


def _routing(g: torch.Generator, N: int, E: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probs (N, E), experts (N, k))`` of a random router; ``probs`` is a leaf (the driver takes
    the loss's gradient with respect to it)."""
    _, experts, probs = ref.top_k_gates(_logits(g, N, E, 3.0), k)
    return probs, experts


def balance_cases(g: torch.Generator) -> list[Case]:
    E = 4
    cases = [
        Case("random routing, k = 2", (*_routing(g, 12, 5, 2), 0.01)),
        Case(
            "perfectly uniform routing: exactly alpha",
            (torch.full((4 * E, E), 1.0 / E), (torch.arange(4 * E) % E)[:, None], 0.01),
        ),
        Case("k = 1, alpha = 0.1", (*_routing(g, 10, 4, 1), 0.1)),
        Case(
            "every token on one expert",
            (torch.softmax(torch.randn(6, 3, generator=g), -1), torch.zeros(6, 1, dtype=torch.long), 1.0),
        ),
        Case("a single token", (*_routing(g, 1, 6, 3), 0.01)),
    ]
    for i in range(3):
        N, E = _randint(g, 1, 40), _randint(g, 2, 10)
        cases.append(Case(f"random routing {i + 1}", (*_routing(g, N, E, _randint(g, 1, E)), (0.01, 0.1, 1.0)[i])))
    return cases


def run_balance(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """The loss as a number, and its gradient with respect to ``probs`` (None when it has none)."""
    probs, experts, alpha = case.args
    probs = probs.detach().requires_grad_()
    loss = answer(probs, experts, alpha)
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        grad = torch.autograd.grad(loss.sum(), probs, allow_unused=True)[0] if loss.requires_grad else None
        return {"loss": float(loss.detach()), "gradient": grad}
    if isinstance(loss, (int, float)) and not isinstance(loss, bool):
        return {"loss": float(loss), "gradient": None}
    shape = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else f"a {type(loss).__name__}"
    raise AnswerError(f"load_balancing_loss returned {shape}; return one number, a scalar tensor")


def compare_with_gradient(got: Any, expected: Any, case: Case) -> str | None:
    """The values; a missing gradient is named as such."""
    if isinstance(got, dict) and got.get("gradient") is None and expected.get("gradient") is not None:
        wrong = _close(got.get("loss"), expected["loss"], case)
        return wrong or "has no gradient with respect to probs: the loss must stay differentiable through P_i"
    return _close(got, expected, case)


def _balance(
    fraction_of: str = "N k", factor_E: bool = True, P: str = "mean", detach: bool = False
) -> Callable[..., torch.Tensor]:
    """The loss with one piece changed (a misconception); ``fraction_of`` is what the counts are
    divided by ("N k", "N" or "1"); ``P`` is "mean", "sum" or "f" (the counted fractions again)."""

    def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor, alpha: float = 0.01) -> torch.Tensor:
        E = probs.size(-1)
        counts = torch.bincount(experts.reshape(-1), minlength=E).to(probs.dtype)
        f = counts / {"N k": experts.numel(), "N": experts.size(0), "1": 1}[fraction_of]
        source = probs.detach() if detach else probs
        p = {"mean": source.mean(dim=0), "sum": source.sum(dim=0), "f": f}[P]
        return alpha * (E if factor_E else 1) * (f * p).sum()

    return load_balancing_loss


LOAD_BALANCING_LOSS = Spec(
    id="lab12.load_balancing_loss",
    points=2,
    name="load_balancing_loss",
    reference=ref.load_balancing_loss,
    cases=balance_cases,
    run=run_balance,
    compare=compare_with_gradient,
    forbidden=("gptcourse.moe.load_balancing_loss",),
    hint="alpha * E * sum_i f_i * P_i: f_i the fraction of the N * k assignments that went to expert i, P_i the "
    "mean of probs[:, i] over the N tokens (differentiable); uniform routing gives exactly alpha",
    misconceptions=(
        Misconception(
            "fractions of the tokens, not of the assignments",
            _balance(fraction_of="N"),
            "with k experts per token there are N * k assignments: f_i is the share of those that went "
            "to expert i, so the f_i sum to 1",
        ),
        Misconception(
            "counts instead of fractions",
            _balance(fraction_of="1"),
            "f_i is a fraction (a count divided by the number of assignments, N * k), not a count",
        ),
        Misconception(
            "factor E missing",
            _balance(factor_E=False),
            "multiply by the number of experts E: it makes perfectly uniform routing cost exactly alpha, whatever E is",
        ),
        Misconception(
            "P_i summed over the tokens",
            _balance(P="sum"),
            "P_i is the MEAN router probability of expert i over the N tokens, not the sum",
        ),
        Misconception(
            "P_i replaced by f_i",
            _balance(P="f"),
            "the second factor is P_i, the mean of the router's probabilities (probs): it carries the "
            "gradient; the counted fractions f_i have none",
        ),
        Misconception(
            "P_i detached",
            _balance(detach=True),
            "the loss trains the router through P_i: compute it from probs without .detach() or .item(); "
            "only f_i, a count, has no gradient",
        ),
    ),
)


# --- Exercise 3: the sparse layer -------------------------------------------------------------------------


def _layer(g: torch.Generator, C: int, E: int, k: int, N: int) -> tuple[torch.Tensor, nn.Module, nn.ModuleList, int]:
    config = GPTConfig(
        vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=C, ffn="moe", n_expert=E, expert_top_k=k
    )
    with seeded(g):
        layer = ref.MoE(config)
    randomize_(layer, g)
    return torch.randn(N, C, generator=g), layer.router, layer.experts, k


def forward_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("k = 2 of 4 experts", _layer(g, 8, 4, 2, 10)),
        Case("k = 1: one expert per token", _layer(g, 8, 4, 1, 10)),
        Case("k = E: every expert", _layer(g, 8, 3, 3, 6)),
        Case("a single token", _layer(g, 8, 5, 2, 1)),
    ]
    for i in range(2):
        E = _randint(g, 2, 6)
        cases.append(Case(f"random layer {i + 1}", _layer(g, (8, 16)[i], E, _randint(g, 1, E), _randint(g, 1, 30))))
    return cases


def run_forward(answer: Callable[..., Any], case: Case) -> Any:
    """The answer's output with the router and experts in eval mode, without gradients."""
    x, router, experts, k = case.args
    router.eval()
    experts.eval()
    with torch.no_grad():
        return answer(x, router, experts, k)


def reference_forward(x: torch.Tensor, router: nn.Module, experts: nn.ModuleList, k: int) -> torch.Tensor:
    """The dense reference: every token through every expert, weighted by a gate matrix that is zero
    for the experts a token did not choose (what :func:`gptcourse.moe.moe_dense_reference` does)."""
    gates, chosen, _ = ref.top_k_gates(router(x), k)
    weights = torch.zeros(x.size(0), len(experts)).scatter_add_(1, chosen, gates)
    return torch.einsum("ne,nec->nc", weights, torch.stack([expert(x) for expert in experts], dim=1))


def _moe(
    gated: bool = True,
    renormalise_one: bool = False,
    dense: bool = False,
    first_only: bool = False,
    gate_inside: bool = False,
    residual: bool = False,
) -> Callable[..., torch.Tensor]:
    """The sparse layer with one piece changed (a misconception)."""

    def moe_forward(x: torch.Tensor, router: nn.Module, experts: nn.ModuleList, k: int) -> torch.Tensor:
        gates, chosen, probs = ref.top_k_gates(router(x), k)
        if dense:
            gates, chosen = probs, torch.arange(len(experts)).expand_as(probs)
        if renormalise_one and k == 1:
            gates = torch.ones_like(gates)
        if first_only:
            gates, chosen = gates[:, :1], chosen[:, :1]
        out = x if residual else torch.zeros_like(x)
        for e, expert in enumerate(experts):
            token, slot = torch.nonzero(chosen == e, as_tuple=True)
            if token.numel():
                gate = gates[token, slot, None] if gated else 1.0
                y = expert(gate * x[token]) if gate_inside else gate * expert(x[token])
                out = out.index_add(0, token, y)
        return out

    return moe_forward


MOE_FORWARD = Spec(
    id="lab12.moe_forward",
    points=3,
    name="moe_forward",
    reference=reference_forward,
    cases=forward_cases,
    run=run_forward,
    forbidden=(
        "gptcourse.moe.moe_dense_reference",
        "gptcourse.moe.MoE.forward",
        "gptcourse.moe.top_k_gates",
        "gptcourse.moe.MoE.route",
    ),
    hint="each token's output is the sum over its k chosen experts of gate * expert(token); the experts it did "
    "not choose contribute nothing; route with your own top_k_gates",
    misconceptions=(
        Misconception(
            "k = 1 gate renormalised",
            _moe(renormalise_one=True),
            "with k = 1 the gate is the raw router probability, not 1 (check your top_k_gates): the "
            "output is that probability times the expert's output",
        ),
        Misconception(
            "gates ignored",
            _moe(gated=False),
            "weight each chosen expert's output by the token's gate for it (its renormalised router "
            "probability), then add them up",
        ),
        Misconception(
            "every expert, weighted by probs",
            _moe(dense=True),
            "only the k chosen experts contribute to a token (the point of a sparse layer): the others have gate 0",
        ),
        Misconception(
            "only the first choice",
            _moe(first_only=True),
            "each token goes through all k of its chosen experts, not only the best one",
        ),
        Misconception(
            "gate applied to the input",
            _moe(gate_inside=True),
            "the gate weights the expert's output, gate * expert(x), not its input: the expert is not linear",
        ),
        Misconception(
            "residual added",
            _moe(residual=True),
            "return the layer's output alone: the block adds the residual stream around it",
        ),
    ),
)

SPECS = (TOP_K_GATES, LOAD_BALANCING_LOSS, MOE_FORWARD)
