"""Exercise specs for Lab 12 (the whole Mixture-of-Experts layer, saved as ``learner/moe.py``), against
:mod:`gptcourse.moe`: ``top_k_gates(logits, k, renormalize=None)``, ``load_balancing_loss(probs,
experts, alpha)``, the class ``MoE(config)``'s ``route`` (the router, the capacity and the queue that
decides which assignments are dropped) and its ``forward`` (outputs, balancing loss, statistics and
gradients, on the package's weights: :func:`load_reference_weights`, so the parameter names must be
the package's). Shapes: ``N`` tokens, ``E`` experts, ``C`` model width."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gptcourse import moe as ref
from gptcourse.grading.spec import (
    AnswerError,
    Case,
    Misconception,
    Spec,
    close,
    load_reference_weights,
    randint,
    randomize_,
    seeded,
)
from gptcourse.model import GPTConfig

_close = close(atol=1e-5, rtol=1e-4)


def _logits(g: torch.Generator, N: int, E: int, scale: float, lead: tuple[int, ...] = ()) -> torch.Tensor:
    """``(*lead, N, E)`` router logits without near ties, so that every correct top-k picks the same experts."""
    while True:
        logits = torch.randn(*lead, N, E, generator=g) * scale
        ordered = logits.sort(dim=-1).values
        if (ordered[..., 1:] - ordered[..., :-1]).min() > 1e-3:
            return logits


# --- Step 1: the router's top-k gates -----------------------------------------------------------------


def gate_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("k = 2 of 4 experts", (_logits(g, 6, 4, 1.0), 2)),
        Case("k = 1: the gate is the raw probability", (_logits(g, 5, 4, 1.0), 1)),
        Case("k = E: every expert", (_logits(g, 4, 3, 1.0), 3)),
        Case("a single token", (_logits(g, 1, 6, 2.0), 3)),
        Case("confident router (large logits)", (_logits(g, 8, 5, 4.0), 2)),
        Case("leading dimensions: logits (2, 3, 5)", (_logits(g, 3, 5, 1.0, lead=(2,)), 2)),
        Case("renormalize=True with k = 1", (_logits(g, 5, 4, 1.0), 1), {"renormalize": True}),
        Case("renormalize=False with k = 3", (_logits(g, 5, 6, 1.0), 3), {"renormalize": False}),
        Case("k larger than E: a ValueError", (_logits(g, 3, 4, 1.0), 5)),
        Case("k = 0: a ValueError", (_logits(g, 3, 4, 1.0), 0)),
    ]
    for i in range(3):
        N, E = randint(g, 1, 30), randint(g, 2, 10)
        cases.append(Case(f"random routing {i + 1}", (_logits(g, N, E, (0.5, 1.0, 4.0)[i]), randint(g, 1, E))))
    return cases


def run_gates(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """The three returned tensors by name, the root of the others first; for a k out of range, the
    name of the exception raised (or None)."""
    logits, k = case.args
    if not 1 <= k <= logits.size(-1):
        try:
            answer(*case.args, **case.kwargs)
        except NotImplementedError:
            raise
        except Exception as err:
            return {"raises": type(err).__name__}
        return {"raises": None}
    result = answer(*case.args, **case.kwargs)
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        what = f"{len(result)} values" if isinstance(result, (tuple, list)) else f"a {type(result).__name__}"
        raise AnswerError(f"top_k_gates should return 3 tensors (gates, experts, probs), it returned {what}")
    gates, experts, probs = result
    return {"probs": probs, "experts": experts, "gates": gates}


def _gates(
    default: str = "k > 1",
    explicit: bool = True,
    checked: bool = True,
    masked_probs: bool = False,
    largest: bool = True,
    softmax: bool = True,
    dim: int = -1,
    order: str = "gep",
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Top-k gating with one piece changed (a misconception): ``default`` is what renormalize=None
    means ("k > 1", "always" or "never"); ``explicit=False`` ignores a given renormalize; ``order`` is
    the order of gates (g), experts (e) and probs (p) in the result."""

    def top_k_gates(logits: torch.Tensor, k: int, renormalize: bool | None = None) -> tuple[torch.Tensor, ...]:
        if checked and not 1 <= k <= logits.size(-1):
            raise ValueError(f"k must be in [1, {logits.size(-1)}]")
        probs = torch.softmax(logits, dim=dim) if softmax else logits
        gates, experts = probs.topk(k, dim=-1, largest=largest)
        if renormalize is None or not explicit:
            renormalize = default == "always" or (default == "k > 1" and k > 1)
        if renormalize:
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
    hint="probs is the softmax over all E experts (the last dimension); experts are the k most probable (best "
    "first); gates are their probabilities, divided by their sum when renormalize says so (by default when k > 1); "
    "a k outside [1, E] raises a ValueError (Chapter 13, Top-k and the gates)",
    misconceptions=(
        Misconception(
            "k = 1 renormalised",
            _gates(default="always"),
            "with k = 1 keep the raw probability as the gate (Switch Transformer, Chapter 13, Top-k and the "
            "gates): a renormalised single gate is always 1, and the router would learn nothing from the loss",
        ),
        Misconception(
            "gates not renormalised",
            _gates(default="never"),
            "with k > 1 divide the k kept probabilities by their sum, so that each token's gates sum to 1",
        ),
        Misconception(
            "renormalize argument ignored",
            _gates(explicit=False),
            "renormalize=True or False overrides the default (k > 1): only renormalize=None means 'when k > 1'",
        ),
        Misconception(
            "k not checked",
            _gates(checked=False),
            "a token cannot choose 0 experts, nor more than there are: raise a ValueError for k outside [1, E], "
            "before any computation",
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
            "dimension (E), whatever the leading dimensions",
        ),
        Misconception(
            "results in another order",
            _gates(order="egp"),
            "return the three tensors in the order (gates, experts, probs)",
        ),
    ),
)


# --- Step 2: the load-balancing loss ------------------------------------------------------------------


def _routing(g: torch.Generator, N: int, E: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probs (N, E), experts (N, k))`` of a random router."""
    _, experts, probs = ref.top_k_gates(_logits(g, N, E, 3.0), k)
    return probs, experts


def balance_cases(g: torch.Generator) -> list[Case]:
    E = 4
    collapsed = torch.zeros(8, 1, dtype=torch.long)
    cases = [
        Case("random routing, k = 2", (*_routing(g, 12, 5, 2), 0.01)),
        Case(
            "perfectly uniform routing: exactly alpha",
            (torch.full((4 * E, E), 1.0 / E), (torch.arange(4 * E) % E)[:, None], 0.01),
        ),
        Case(
            "collapsed routing (every token sure of expert 0): alpha * E",
            (torch.eye(5)[collapsed[:, 0]], collapsed, 0.1),
        ),
        Case("k = 1, alpha = 0.1", (*_routing(g, 10, 4, 1), 0.1)),
        Case(
            "every token on one expert",
            (torch.softmax(torch.randn(6, 3, generator=g), -1), torch.zeros(6, 1, dtype=torch.long), 1.0),
        ),
        Case("a single token", (*_routing(g, 1, 6, 3), 0.01)),
    ]
    for i in range(3):
        N, E = randint(g, 1, 40), randint(g, 2, 10)
        cases.append(Case(f"random routing {i + 1}", (*_routing(g, N, E, randint(g, 1, E)), (0.01, 0.1, 1.0)[i])))
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
    divided by ("N k", "N" or "1"); ``P`` is "mean", "sum", "f" (the counted fractions again) or
    "chosen" (the probabilities of the chosen experts only, averaged over the tokens)."""

    def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor, alpha: float = 0.01) -> torch.Tensor:
        E = probs.size(-1)
        counts = torch.bincount(experts.reshape(-1), minlength=E).to(probs.dtype)
        f = counts / {"N k": experts.numel(), "N": experts.size(0), "1": 1}[fraction_of]
        source = probs.detach() if detach else probs
        if P == "chosen":
            chosen = torch.zeros_like(probs).scatter(-1, experts, 1.0)
            p = (source * chosen).mean(dim=0)
        else:
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
    "mean of probs[:, i] over the N tokens (differentiable); uniform routing gives exactly alpha (Chapter 13, "
    "Keeping the experts busy: the load-balancing loss)",
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
            "P_i from the chosen experts only",
            _balance(P="chosen"),
            "P_i averages the router probability of expert i over ALL N tokens, chosen or not (the "
            "load-balancing loss of Chapter 13): the gradient must also reach the experts a token did not pick",
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


# --- Steps 3 and 4: the layer, MoE(config) ------------------------------------------------------------


def _config(C: int, E: int, k: int, capacity_factor: float | None, hidden: int | None = None, **kw: Any) -> GPTConfig:
    return GPTConfig(
        vocab_size=10,
        block_size=8,
        n_layer=1,
        n_head=2,
        n_embd=C,
        ffn="moe",
        n_expert=E,
        expert_top_k=k,
        capacity_factor=capacity_factor,
        expert_hidden=hidden,
        **kw,
    )


def _inputs_for(logits: torch.Tensor, w: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``x (N, C)`` whose router logits ``x @ w.T`` are ``logits (N, E)`` (``E <= C``), plus random
    components the router does not see (the experts do)."""
    w = w.double()
    gram_inv = torch.linalg.inv(w @ w.T)
    noise = torch.randn(logits.size(0), w.size(1), generator=g, dtype=torch.float64)
    x = logits.double() @ gram_inv @ w + noise - noise @ w.T @ gram_inv @ w
    return x.float()


def _skewed(g: torch.Generator, N: int, E: int, bias: tuple[float, ...]) -> torch.Tensor:
    """Random logits pushed towards the first experts (``bias`` added to them), without near ties."""
    shift = torch.zeros(E)
    shift[: len(bias)] = torch.tensor(bias)
    while True:
        logits = torch.randn(N, E, generator=g) + shift
        ordered = logits.sort(dim=-1).values
        if (ordered[:, 1:] - ordered[:, :-1]).min() > 0.05:
            return logits


def _layer_case(
    g: torch.Generator,
    label: str,
    C: int,
    E: int,
    k: int,
    capacity_factor: float | None,
    shape: tuple[int, ...],
    logits: torch.Tensor | None = None,
    hidden: int | None = None,
    bias: bool = True,
) -> Case:
    """``(config, state, x, proj)``: a randomised package layer's weights, inputs of ``shape``
    (``(..., C)``) whose router logits are ``logits`` when given, and the weights of a test loss."""
    config = _config(C, E, k, capacity_factor, hidden, bias=bias)
    with seeded(g):
        layer = ref.MoE(config)
    randomize_(layer, g)
    state = {name: v.detach().clone() for name, v in layer.state_dict().items()}
    N = 1
    for n in shape[:-1]:
        N *= n
    if logits is None:
        logits = _logits(g, N, E, 2.0)
    x = _inputs_for(logits, state["router.w_g.weight"], g).view(shape)
    return Case(label, (config, state, x, torch.randn(shape, generator=g)))


def _queue_logits() -> torch.Tensor:
    """8 tokens, 4 experts, top-2: tokens 0 and 1 choose expert 1 first and expert 0 second, tokens
    2 to 7 choose expert 0 first (and 2 second). With a capacity of 4, expert 0 keeps tokens 2-5's
    first choices when first choices queue first, and tokens 0 and 1's second choices otherwise."""
    rows = [[2.0, 3.0, 0.5, -1.0]] * 2 + [[3.0, 0.0, 1.5, -1.0 + 0.1 * i] for i in range(6)]
    return torch.tensor(rows)


def route_cases(g: torch.Generator) -> list[Case]:
    cases = [
        _layer_case(g, "no capacity (capacity_factor=None): nothing dropped", 8, 4, 2, None, (10, 8)),
        _layer_case(
            g,
            "top-2, capacity ceil(1.0 * 2 * 8 / 4) = 4: first choices queue before second choices",
            8,
            4,
            2,
            1.0,
            (8, 8),
            _queue_logits(),
        ),
        _layer_case(
            g,
            "top-1, capacity ceil(1.0 * 1 * 10 / 4) = 3, most tokens on expert 0",
            8,
            4,
            1,
            1.0,
            (10, 8),
            _skewed(g, 10, 4, (3.0,)),
        ),
        _layer_case(
            g,
            "top-2, capacity factor 0.5, experts of width 12",
            8,
            4,
            2,
            0.5,
            (12, 8),
            _skewed(g, 12, 4, (3.0, 1.5)),
            hidden=12,
        ),
        _layer_case(g, "k = E with capacity factor 2.0", 8, 3, 3, 2.0, (6, 8)),
    ]
    for i in range(3):
        E = randint(g, 2, 6)
        N = randint(g, 1, 30)
        factor = (0.5, 1.0, 1.25)[i]
        logits = _skewed(g, N, E, (2.0,))
        cases.append(_layer_case(g, f"random layer {i + 1}", 8, E, randint(g, 1, E), factor, (N, 8), logits))
    return cases


def _build(answer: Callable[..., Any], config: GPTConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    layer = answer(config)
    load_reference_weights(layer, state, "your MoE")
    return layer


def run_route(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """``route(x)`` of the layer built from the config, on the reference's weights, in eval mode."""
    config, state, x, _ = case.args
    layer = _build(answer, config, state).eval()
    if not hasattr(layer, "route"):
        raise AnswerError("your MoE has no method route(x)")
    with torch.no_grad():
        result = layer.route(x)
    if not isinstance(result, (tuple, list)) or len(result) != 4:
        what = f"{len(result)} values" if isinstance(result, (tuple, list)) else f"a {type(result).__name__}"
        raise AnswerError(f"route(x) should return 4 tensors (gates, experts, keep, probs), it returned {what}")
    gates, experts, keep, probs = result
    return {"probs": probs, "experts": experts, "gates": gates, "keep": keep}


def _count(value: Any, what: str) -> torch.Tensor:
    if value is None:
        raise AnswerError(f"your MoE's {what} is None after a forward pass: set it in forward")
    return torch.as_tensor(value).detach().long()


def run_forward(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """The layer's forward on the reference's weights (eval mode, gradients on): the output, the
    balancing loss, the two statistics, and the gradients of a loss that uses both outputs (an
    expert that got no token has zero gradients, not None)."""
    config, state, x, proj = case.args
    layer = _build(answer, config, state).eval()
    x = x.clone().requires_grad_(True)
    result = layer(x)
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        what = f"{len(result)} values" if isinstance(result, (tuple, list)) else f"a {type(result).__name__}"
        raise AnswerError(f"MoE.forward should return 2 values (output, load-balancing loss), it returned {what}")
    out, aux = result
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AnswerError(f"the output has shape {shape}, expected the input's {tuple(x.shape)}")
    if not isinstance(aux, torch.Tensor) or aux.numel() != 1:
        raise AnswerError("the load-balancing loss should be a scalar tensor")
    ((out * proj).sum() + 10.0 * aux.sum()).backward()
    grads = {n: (torch.zeros_like(p) if p.grad is None else p.grad.clone()) for n, p in layer.named_parameters()}
    for name in ("tokens_per_expert", "dropped"):
        if not hasattr(layer, name):
            raise AnswerError(f"your MoE has no attribute {name} after a forward pass")
    return {
        "output": out.detach(),
        "aux": float(aux.detach().sum()),
        "tokens_per_expert": _count(layer.tokens_per_expert, "tokens_per_expert"),
        "dropped": int(_count(layer.dropped, "dropped").sum()),
        "grad of x": x.grad,
        "grads": grads,
    }


class ReferenceMoE(ref.MoE):
    """:class:`gptcourse.moe.MoE` on any leading dimensions: ``(..., C) -> ((..., C), aux)``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, aux = super().forward(x.reshape(1, -1, x.size(-1)))
        return out.reshape(x.shape), aux


def _wrong_moe(mistake: str) -> type[nn.Module]:
    """An ``MoE`` class with one known mistake (``mistake`` names it), on the package's parameters;
    its forward dispatches with a plain loop over the experts."""

    class WrongMoE(ref.MoE):
        def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
            gates, experts, probs = ref.top_k_gates(self.router(x), self.top_k)
            N, k = experts.shape
            if self.capacity_factor is None or mistake == "capacity not applied":
                return gates, experts, torch.ones_like(experts, dtype=torch.bool), probs
            if mistake == "capacity without the ceil":
                capacity = int(self.capacity_factor * k * N / self.n_expert)
            elif mistake == "capacity without k":
                capacity = ref.expert_capacity(N, self.n_expert, 1, self.capacity_factor)
            else:
                capacity = ref.expert_capacity(N, self.n_expert, k, self.capacity_factor)
            if mistake == "second choices queued with their token":
                order = experts.reshape(-1)  # token 0's choices, then token 1's, ...
                onehot = (order[:, None] == torch.arange(self.n_expert)).long()
                slot = (onehot.cumsum(dim=0) - 1).gather(1, order[:, None]).view(N, k)
            else:
                slot = ref.expert_slots(experts, self.n_expert)
            if mistake == "queue places counted from 1":
                slot = slot + 1
            return gates, experts, slot < capacity, probs

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            flat = x.reshape(-1, x.size(-1))
            gates, experts, keep, probs = self.route(flat)
            chosen = experts
            weight = gates * keep
            if mistake == "dropped assignments keep their gate":
                weight = gates
            if mistake == "gates renormalised after the drops":
                weight = weight / weight.sum(dim=-1, keepdim=True).clamp_min(1e-12)
            if mistake == "every expert, weighted by probs":
                weight, experts = probs, torch.arange(self.n_expert).expand_as(probs)
            out = torch.zeros_like(flat)
            for e, expert in enumerate(self.experts):
                token, slot = torch.nonzero(experts == e, as_tuple=True)
                w = weight[token, slot, None]
                if mistake == "gate applied to the input":
                    out = out.index_add(0, token, expert(w * flat[token]))
                else:
                    out = out.index_add(0, token, w * expert(flat[token]))
            if mistake == "residual added":
                out = out + flat
            if mistake == "a dropped token copied to the output":
                out = out + flat * (~keep.any(dim=-1, keepdim=True))
            kept = chosen[keep]
            counts = ref.assignment_counts(kept if mistake == "f_i counted after the drops" else chosen, self.n_expert)
            f = counts.to(probs.dtype) / chosen.numel()
            aux = self.alpha * self.n_expert * (f * probs.mean(dim=0)).sum()
            after = mistake == "tokens_per_expert counted after the drops"
            self.tokens_per_expert = ref.assignment_counts(kept if after else chosen, self.n_expert)
            self.dropped = (~keep).sum()
            return out.view(x.shape), aux

    return WrongMoE


ROUTE_HINTS = {
    "capacity not applied": "with a capacity_factor, each expert accepts at most ceil(capacity_factor * k * N / E) "
    "assignments; keep is False for the rest (Chapter 13, Capacity and dropped tokens)",
    "capacity without the ceil": "the capacity rounds UP: ceil(capacity_factor * k * N / E), so that a fractional "
    "uniform share still fits (Chapter 13, Capacity and dropped tokens)",
    "capacity without k": "each token makes k assignments, so the uniform share of an expert is k * N / E: the "
    "capacity is ceil(capacity_factor * k * N / E)",
    "second choices queued with their token": "assignments queue by priority: every token's first choice (in token "
    "order) before any second choice, so a second choice never takes the place of another token's first choice "
    "(Chapter 13, Capacity and dropped tokens)",
    "queue places counted from 1": "an expert keeps exactly `capacity` assignments: the places in its queue are "
    "0, 1, ..., and those at place >= capacity are dropped",
}

ROUTE = Spec(
    id="lab12.route",
    points=3,
    name="MoE",
    reference=ref.MoE,
    cases=route_cases,
    run=run_route,
    forbidden=(
        "gptcourse.moe.MoE.route",
        "gptcourse.moe.top_k_gates",
        "gptcourse.moe.expert_capacity",
        "gptcourse.moe.expert_slots",
        "gptcourse.moe.capacity_keep",
    ),
    hint="route(x) returns (gates, experts, keep, probs): your top_k_gates of the router's logits, and keep True for "
    "the assignments within their expert's capacity ceil(capacity_factor * k * N / E) (all of them without a "
    "capacity), first choices queued before second choices",
    misconceptions=tuple(Misconception(n, _wrong_moe(n), h) for n, h in ROUTE_HINTS.items()),
)


def forward_cases(g: torch.Generator) -> list[Case]:
    cases = [
        _layer_case(g, "(B, T, C) = (2, 5, 8), top-2 of 4, no capacity", 8, 4, 2, None, (2, 5, 8)),
        _layer_case(g, "k = 1 (Switch): the gate is the raw probability", 8, 4, 1, None, (2, 3, 8)),
        _layer_case(
            g,
            "top-2, capacity factor 0.5: tokens dropped, some of them entirely",
            8,
            4,
            2,
            0.5,
            (12, 8),
            _skewed(g, 12, 4, (3.0, 1.5)),
            hidden=12,
        ),
        _layer_case(
            g,
            "top-1, capacity factor 1.0, most tokens on expert 0, (B, T, C) = (2, 5, 8)",
            8,
            4,
            1,
            1.0,
            (2, 5, 8),
            _skewed(g, 10, 4, (3.0,)),
        ),
        _layer_case(g, "(N, C): no batch dimension, bias=False", 8, 3, 2, None, (7, 8), bias=False),
        _layer_case(g, "one vector (C,), no leading dimensions", 8, 4, 2, None, (8,)),
        _layer_case(g, "three leading dimensions (2, 2, 3, 8), k = E", 8, 3, 3, 1.25, (2, 2, 3, 8)),
    ]
    for i in range(2):
        E = randint(g, 2, 6)
        B, T = randint(g, 1, 3), randint(g, 1, 8)
        factor = (None, 1.0)[i]
        cases.append(
            _layer_case(g, f"random layer {i + 1}", (8, 16)[i], E, randint(g, 1, E), factor, (B, T, (8, 16)[i]))
        )
    return cases


FORWARD_HINTS = {
    "residual added": "return the layer's output alone: the block adds the residual stream around it",
    "gate applied to the input": "the gate weights the expert's output, gate * expert(x), not its input: the "
    "expert is not linear (Chapter 13, Dispatch: each expert runs only on its tokens)",
    "every expert, weighted by probs": "only the k chosen experts contribute to a token (the point of a sparse "
    "layer): the others have gate 0",
    "dropped assignments keep their gate": "an assignment over its expert's capacity is dropped: it adds nothing "
    "to the token's output (its weight is 0; Chapter 13, Capacity and dropped tokens)",
    "gates renormalised after the drops": "the gates come from the router before the capacity: a dropped choice "
    "leaves the token's other gates as they were, not renormalised over what was kept",
    "a dropped token copied to the output": "a token whose every choice was dropped gets output 0 from this layer: "
    "the residual stream around the layer carries it, the layer does not copy it",
    "f_i counted after the drops": "the balancing loss counts the router's choices, f_i before the capacity drops "
    "(an overloaded expert must show as overloaded; Chapter 13, the load-balancing loss)",
    "tokens_per_expert counted after the drops": "tokens_per_expert counts the assignments each expert received "
    "before the capacity drops; dropped counts those over capacity",
}

MOE_FORWARD = Spec(
    id="lab12.moe_forward",
    points=3,
    name="MoE",
    reference=ReferenceMoE,
    cases=forward_cases,
    run=run_forward,
    compare=close(atol=1e-4, rtol=1e-4),
    forbidden=(
        "gptcourse.moe.moe_dense_reference",
        "gptcourse.moe.MoE.forward",
        "gptcourse.moe.MoE.route",
        "gptcourse.moe.MoE.dispatch_sorted",
        "gptcourse.moe.MoE.dispatch_padded",
        "gptcourse.moe.batched_experts",
        "gptcourse.moe.top_k_gates",
        "gptcourse.moe.expert_capacity",
        "gptcourse.moe.expert_slots",
        "gptcourse.moe.capacity_keep",
        "gptcourse.moe.load_balancing_loss",
    ),
    hint="forward((..., C)) flattens the tokens, routes them, sums gate * expert(token) over each token's kept "
    "choices (0 for a dropped one), restores the input's shape and returns it with load_balancing_loss(probs, "
    "experts, alpha); it sets tokens_per_expert (before drops) and dropped",
    misconceptions=tuple(Misconception(n, _wrong_moe(n), h) for n, h in FORWARD_HINTS.items()),
)

SPECS = (TOP_K_GATES, LOAD_BALANCING_LOSS, ROUTE, MOE_FORWARD)
