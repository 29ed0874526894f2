"""Mixture of Experts: a router sends each token to ``k`` of ``n_expert`` MLPs.

The pieces, in the order a token meets them:

* :class:`Router` scores every expert for every token (a linear layer, ``C -> n_expert``);
* :func:`top_k_gates` keeps the ``k`` best experts and renormalises their probabilities into gates
  that sum to 1 (with ``k = 1`` the gate stays the raw probability, as in the Switch Transformer,
  otherwise it would always be 1 and the router would get no gradient from the language-model loss);
* :func:`capacity_keep` drops the assignments that overflow an expert's capacity
  ``ceil(capacity_factor * k * N / n_expert)`` (first choices before second choices, then token
  order); a dropped token skips the layer and is carried by the residual stream alone;
* :func:`load_balancing_loss` is the Switch Transformer's auxiliary loss ``alpha * E * sum_i f_i P_i``
  (``f_i`` the fraction of assignments routed to expert ``i``, ``P_i`` its mean router
  probability); it equals ``alpha`` when routing is perfectly uniform and grows when it is not.

:class:`MoE` puts them together, runs each expert only on its own tokens, and returns the layer's
output together with its balancing loss (the model adds the losses of its layers). How the tokens
reach their experts is chosen once, at construction:

* without a capacity (``capacity_factor=None``, nothing dropped) the assignments are sorted by
  expert, so each expert's tokens are one contiguous slice: one sort and one read of the ``E``
  batch sizes per layer (the only host-device sync), whatever the number of experts;
* with a capacity every expert has a fixed number of slots, so the inputs form one ``(E, capacity,
  C)`` grid and all the experts run together, one batched matrix product per linear map of the MLP
  (:func:`batched_experts`): every shape is known before the data is seen, which is what
  ``torch.compile`` (and accelerators; GShard, Switch) need. This is the path an MoE GPT compiles
  through with no graph break, and the one whose cost grows least with the number of experts
  (``benchmarks/moe_dispatch.py``: one small product per expert uses a CPU worse than one batched one).
:func:`moe_dense_reference` runs every token through every expert and weights the outputs by the
gates (zero for unselected experts): the two agree (tested), the first does ``k / n_expert`` of
the work. Shapes: ``N`` tokens (``B * T`` flattened), ``C`` model width, ``E`` experts.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcourse.layers import MLP

if TYPE_CHECKING:
    from gptcourse.model import GPTConfig


class Router(nn.Module):
    """Scores each expert for each token: ``(N, C) -> (N, E)`` logits, a linear map without bias."""

    def __init__(self, n_embd: int, n_expert: int):
        super().__init__()
        self.w_g = nn.Linear(n_embd, n_expert, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_g(x)


def top_k_gates(
    logits: torch.Tensor, k: int, renormalize: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Route each token to its ``k`` highest-scoring experts.

    ``logits`` is ``(N, E)``. Returns ``gates (N, k)``, ``experts (N, k)`` (indices, best first)
    and ``probs (N, E)`` (the softmax over all experts, which the balancing loss needs).
    ``renormalize`` (default: ``k > 1``) divides the kept probabilities by their sum.
    """
    if not 1 <= k <= logits.size(-1):
        raise ValueError(f"k must be in [1, {logits.size(-1)}] (the number of experts), got {k}")
    renormalize = k > 1 if renormalize is None else renormalize
    probs = torch.softmax(logits, dim=-1)
    gates, experts = probs.topk(k, dim=-1)
    if renormalize:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return gates, experts, probs


def expert_capacity(n_tokens: int, n_expert: int, k: int, capacity_factor: float) -> int:
    """How many assignments one expert accepts: ``ceil(capacity_factor * k * n_tokens / n_expert)``."""
    return math.ceil(capacity_factor * k * n_tokens / n_expert)


def expert_slots(experts: torch.Tensor, n_expert: int) -> torch.Tensor:
    """``(N, k)``: each assignment's place in its expert's queue (0 = served first).

    Assignments queue by priority: every token's first choice (in token order), then every second
    choice, and so on. ``experts`` is the ``(N, k)`` choice of :func:`top_k_gates`.
    """
    N, k = experts.shape
    order = experts.t().reshape(-1)  # (k * N,) first choices of all tokens, then second choices, ...
    onehot = (order[:, None] == torch.arange(n_expert, device=experts.device)).long()  # (k * N, E)
    # how many earlier assignments went to the same expert
    rank = (onehot.cumsum(dim=0) - 1).gather(1, order[:, None]).squeeze(1)
    return rank.view(k, N).t()


def capacity_keep(experts: torch.Tensor, n_expert: int, capacity: int) -> torch.Tensor:
    """Boolean ``(N, k)``: which assignments fit in their expert's ``capacity`` (the first
    ``capacity`` of its queue, :func:`expert_slots`); an expert that is full drops the rest."""
    return expert_slots(experts, n_expert) < capacity


def assignment_counts(experts: torch.Tensor, n_expert: int) -> torch.Tensor:
    """``(E,)``: how many of the ``(N, k)`` assignments each expert received. A scatter, not
    ``bincount``, so the result's shape is known in advance (no host-device sync, no graph break)."""
    flat = experts.reshape(-1)
    return torch.zeros(n_expert, dtype=torch.long, device=experts.device).scatter_add_(0, flat, torch.ones_like(flat))


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor, alpha: float = 0.01) -> torch.Tensor:
    """The Switch Transformer's auxiliary loss ``alpha * E * sum_i f_i * P_i``.

    ``probs`` is ``(N, E)`` router probabilities, ``experts`` the ``(N, k)`` chosen experts.
    ``f_i`` is the fraction of the ``N * k`` assignments that went to expert ``i`` (counted before
    capacity drops; not differentiable), ``P_i = mean_n probs[n, i]`` (differentiable: the gradient
    pushes probability away from overloaded experts). Uniform routing gives exactly ``alpha``.
    """
    n_expert = probs.size(-1)
    f = assignment_counts(experts, n_expert).to(probs.dtype) / experts.numel()
    P = probs.mean(dim=0)
    return (f * P).sum() * n_expert * alpha


class MoE(nn.Module):
    """A mixture-of-experts feed-forward layer: ``(B, T, C) -> ((B, T, C), aux_loss)``.

    The experts are the block's MLP (``C -> 4C -> GELU -> C``, or ``C -> config.expert_hidden -> C``
    for finer experts), ``config.n_expert`` of them; each token goes to ``config.expert_top_k`` of
    them. The forward returns the output and the load-balancing loss of this pass. For looking at
    routing, the layer also keeps two detached statistics of its last pass (tensors, so reading
    them is the only moment a GPU waits): ``tokens_per_expert`` (``(E,)`` assignments before drops)
    and ``dropped`` (assignments over capacity).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_expert, self.top_k = config.n_expert, config.expert_top_k
        self.capacity_factor, self.alpha = config.capacity_factor, config.moe_aux_weight
        self.router = Router(config.n_embd, config.n_expert)
        self.experts = nn.ModuleList([MLP(config, config.expert_hidden) for _ in range(config.n_expert)])
        # how the tokens reach their experts, chosen once (see the module docstring)
        self.dispatch = self.dispatch_sorted if config.capacity_factor is None else self.dispatch_padded
        self.tokens_per_expert: torch.Tensor | None = None
        self.dropped: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` is ``(N, C)``; returns ``gates (N, k)``, ``experts (N, k)``, ``keep (N, k)``, ``probs (N, E)``."""
        gates, experts, probs = top_k_gates(self.router(x), self.top_k)
        if self.capacity_factor is None:
            keep = torch.ones_like(experts, dtype=torch.bool)
        else:
            capacity = expert_capacity(x.size(0), self.n_expert, self.top_k, self.capacity_factor)
            keep = capacity_keep(experts, self.n_expert, capacity)
        return gates, experts, keep, probs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, T, C)`` -> ``(output (B, T, C), load-balancing loss (a scalar))``."""
        B, T, C = x.shape
        flat = x.reshape(B * T, C)
        gates, experts, probs = top_k_gates(self.router(flat), self.top_k)
        self.tokens_per_expert = assignment_counts(experts, self.n_expert).detach()
        out, dropped = self.dispatch(flat, gates, experts)
        self.dropped = dropped.detach()
        return out.view(B, T, C), load_balancing_loss(probs, experts, self.alpha)

    def dispatch_sorted(
        self, flat: torch.Tensor, gates: torch.Tensor, experts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """No capacity: ``flat (N, C)`` -> ``(output (N, C), 0 dropped)``. The ``N * k`` assignments
        sorted by expert make each expert's tokens one slice of a single gathered batch."""
        k = experts.size(1)
        order = experts.reshape(-1).argsort(stable=True)  # assignment indices, grouped by expert
        token = order // k  # the token of each sorted assignment
        sizes = assignment_counts(experts, self.n_expert).tolist()  # the layer's one host-device sync
        chunks = flat[token].split(sizes)
        y = torch.cat([expert(chunk) for expert, chunk in zip(self.experts, chunks, strict=True)])
        y = y * gates.reshape(-1)[order, None]
        return torch.zeros_like(flat).index_add_(0, token, y), torch.zeros((), dtype=torch.long, device=flat.device)

    def dispatch_padded(
        self, flat: torch.Tensor, gates: torch.Tensor, experts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """With a capacity: ``flat (N, C)`` -> ``(output (N, C), assignments dropped)``. Every kept
        assignment gets a row of an ``(E, capacity + 1, C)`` grid (its expert, its place in the
        queue); the extra row of each expert collects the dropped ones and its output is never used."""
        (N, C), k = flat.shape, experts.size(1)
        assert self.capacity_factor is not None  # __init__ chooses this dispatch only with a capacity
        capacity = expert_capacity(N, self.n_expert, k, self.capacity_factor)
        slot = expert_slots(experts, self.n_expert)
        keep = slot < capacity
        row = (experts * (capacity + 1) + slot.clamp(max=capacity)).reshape(-1)  # (N * k,) rows of the grid
        grid = flat.new_zeros(self.n_expert * (capacity + 1), C).index_copy(0, row, flat.repeat_interleave(k, 0))
        out = batched_experts(self.experts, grid.view(self.n_expert, capacity + 1, C)).reshape(-1, C)
        y = out[row].view(N, k, C) * (gates * keep)[..., None]  # a dropped assignment weighs 0
        return y.sum(dim=1), (~keep).sum()


def batched_experts(experts: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Run expert ``e`` on ``x[e]`` for every ``e`` at once: ``(E, R, C) -> (E, R, C)``.

    The experts are :class:`~gptcourse.layers.MLP` s; their weights are stacked into ``(E, out, in)``
    tensors and each of the MLP's two linear maps becomes one batched product over the experts
    (what :meth:`MLP.forward <gptcourse.layers.MLP.forward>` does to one expert's rows, tested
    equal). Written as ``y^T = W x^T`` so that each weight's gradient comes out in the weight's own
    layout: the experts' gradients are then slices of it, not copies.
    """

    mlps = cast("list[MLP]", list(experts))

    def linear(layers: list[nn.Linear], rows: torch.Tensor) -> torch.Tensor:  # (E, R, in) -> (E, R, out)
        weight = torch.stack([layer.weight for layer in layers])  # (E, out, in)
        out = torch.bmm(weight, rows.transpose(1, 2)).transpose(1, 2)
        if layers[0].bias is not None:
            out = out + torch.stack([layer.bias for layer in layers])[:, None]
        return out

    hidden = F.gelu(linear([mlp.c_fc for mlp in mlps], x), approximate="tanh")
    return mlps[0].dropout(linear([mlp.c_proj for mlp in mlps], hidden))  # one mask over all the experts' outputs


def moe_dense_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """What :class:`MoE` computes, the slow obvious way: every token through every expert, the
    outputs weighted by a ``(N, E)`` gate matrix that is zero for unselected (or dropped) experts."""
    B, T, C = x.shape
    flat = x.reshape(B * T, C)
    gates, experts, keep, _ = moe.route(flat)
    weights = torch.zeros(B * T, moe.n_expert, dtype=x.dtype, device=x.device)
    weights.scatter_add_(1, experts, gates * keep)
    outputs = torch.stack([expert(flat) for expert in moe.experts], dim=1)  # (N, E, C)
    return (weights[:, :, None] * outputs).sum(dim=1).view(B, T, C)


def active_params(model: nn.Module) -> int:
    """Parameters one token uses: all of them, minus the experts a token does not visit
    (``n_expert - top_k`` experts in every MoE layer). Equals ``num_params`` for a dense model."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, MoE):
            per_expert = sum(p.numel() for p in module.experts[0].parameters())
            total -= (module.n_expert - module.top_k) * per_expert
    return total
