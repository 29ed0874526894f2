"""Muon: momentum orthogonalised by Newton–Schulz, for the hidden matrices of a GPT (Chapter 17).

Muon (Keller Jordan, 2024, "Muon: An optimizer for hidden layers in neural networks";
https://kellerjordan.github.io/posts/muon/, used by the modded-nanogpt speedrun and nanochat)
keeps SGD's momentum buffer ``M`` of each weight matrix, and replaces the step ``M`` by the
nearest semi-orthogonal matrix ``U Vᵀ`` (where ``M = U S Vᵀ`` is its SVD): every direction the
momentum points along moves by the same amount, instead of the few directions with large
singular values dominating the step. The orthogonalisation is approximated by a few matrix
products (:func:`newton_schulz`), cheap on a GPU and stable in bfloat16.

Muon is meant for the hidden 2-D matrices only (the blocks' linear layers). The token and
position embeddings, the output head and every gain or bias are trained by AdamW:
:func:`configure_muon` splits a model's parameters that way, and :class:`MuonAdamW` steps,
zeroes and checkpoints the two optimisers as one.

* :func:`newton_schulz` — the quintic iteration, ``(rows, cols) -> (rows, cols)``;
* :class:`Muon` — the optimiser (2-D parameters only);
* :func:`configure_muon` — ``[Muon, AdamW]`` over a GPT, every parameter in exactly one group;
* :func:`step_all`, :func:`zero_all`, :class:`MuonAdamW` — several optimisers driven as one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "NS_COEFFICIENTS",
    "Muon",
    "MuonAdamW",
    "OptimizerLike",
    "configure_muon",
    "newton_schulz",
    "step_all",
    "zero_all",
]

# (a, b, c) of the quintic p(s) = a s + b s^3 + c s^5 applied to the singular values (Keller Jordan).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None) -> Tensor:
    r"""Approximately orthogonalise the 2-D matrix ``G`` ``(rows, cols)``: about ``U Vᵀ`` where ``G = U S Vᵀ``.

    ``G`` is first divided by its Frobenius norm (``+ eps``), which bounds every singular value by 1.
    Then ``steps`` times, with :math:`A = X X^\top`,

    $$X \leftarrow a X + (b A + c A^2) X = a X + b (X X^\top) X + c (X X^\top)^2 X,$$

    with :math:`(a, b, c) = (3.4445, -4.7750, 2.0315)`. Each step keeps the singular vectors and
    maps each singular value :math:`s` to :math:`p(s) = a s + b s^3 + c s^5` (odd powers of ``X``
    act on the singular values only). The classic cubic Newton–Schulz iteration converges to
    exactly 1 but slowly for small :math:`s`; these coefficients instead make the slope at zero
    large (:math:`p'(0) = a = 3.4445`) so that tiny singular values grow by 3.4× a step, at the price
    of not converging to 1: after 5 steps every singular value above about 1% of G's Frobenius norm lies
    in a band around 1, about 0.68 to 1.13 (the interval that ``p`` maps into itself; measured in
    ``tests/test_muon.py``), not at 1. That is ``U S' Vᵀ`` with ``S'`` near the identity, which
    trains as well as the exact ``U Vᵀ`` and costs 15 matrix products.

    When ``rows > cols`` the iteration runs on ``Gᵀ`` (so ``A`` is the smaller ``cols × cols``
    Gram matrix) and the result is transposed back. ``dtype`` is the precision of the products:
    by default bfloat16 on CUDA (the iteration is stable in it, and Muon runs it that way) and
    float32 elsewhere (bfloat16 matrix products are slow on most CPUs). The result has ``G``'s dtype.
    """
    if G.ndim != 2:
        raise ValueError(f"newton_schulz expects a 2-D matrix, got shape {tuple(G.shape)}")
    if dtype is None:
        dtype = torch.bfloat16 if G.is_cuda else torch.float32
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    X = X / (X.norm() + eps)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * (A @ A)) @ X
    if transposed:
        X = X.T
    return X.to(G.dtype)


class Muon(torch.optim.Optimizer):
    r"""Muon for 2-D weight matrices: SGD momentum whose step is orthogonalised by :func:`newton_schulz`.

    For each parameter ``W`` ``(rows, cols)`` with gradient ``g``, a step is

    $$M \leftarrow \mu M + (1 - \mu) g, \qquad
      u = \begin{cases} (1 - \mu) g + \mu M & \text{nesterov} \\ M & \text{otherwise} \end{cases}$$
    $$W \leftarrow (1 - \eta \lambda) W - \eta \sqrt{\max(1, \text{rows}/\text{cols})}\; \mathrm{NS}(u)$$

    (``μ = momentum``, ``η = lr``, ``λ = weight_decay``, decoupled as in AdamW). The momentum is an
    exponential average (``lerp``) as in Keller Jordan's reference implementation; since ``NS``
    normalises its input, the average's scale does not change the step. Scaling convention: the
    factor ``max(1, rows/cols) ** 0.5`` of that reference (github.com/KellerJordan/Muon,
    ``muon_update``): an orthogonalised ``rows × cols`` matrix with ``rows ≤ cols`` has entries of
    RMS ``1/sqrt(cols)``, a tall one ``1/sqrt(rows)``, and the factor raises the tall ones (e.g.
    the MLP's ``c_proj`` weights stored as ``(C, 4C)`` are wide, ``c_fc``'s ``(4C, C)`` tall) so
    that every matrix's update has RMS about ``1/sqrt(cols)`` — ``lr`` is then in units of
    spectral norm per step, typically 0.02. (Other conventions exist: Moonlight's
    ``0.2 * sqrt(max(rows, cols))`` matches AdamW's update RMS so AdamW's ``lr`` can be reused.)

    Only 2-D parameters are accepted (:class:`ValueError` otherwise): Muon is for the hidden
    matrices; embeddings, the output head and gains/biases belong to AdamW (:func:`configure_muon`).
    The state of each parameter is its ``momentum_buffer``; ``state_dict`` round-trips as any
    PyTorch optimiser's.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
    ):
        if lr < 0.0:
            raise ValueError(f"Muon: lr must be >= 0, got {lr!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum!r}")
        if not isinstance(ns_steps, int) or ns_steps < 1:
            raise ValueError(f"Muon: ns_steps must be a positive integer, got {ns_steps!r}")
        if weight_decay < 0.0:
            raise ValueError(f"Muon: weight_decay must be >= 0, got {weight_decay!r}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon only optimises 2-D weight matrices, got a parameter of shape {tuple(p.shape)}: "
                        "train embeddings, the output head, gains and biases with AdamW (see configure_muon)"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Muon step on every parameter that has a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            mu, lr = group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(g, 1.0 - mu)
                update = g.lerp(buf, mu) if group["nesterov"] else buf
                update = newton_schulz(update, steps=group["ns_steps"])
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1.0 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * scale)
        return loss


def _hidden_matrices(model: torch.nn.Module) -> set[int]:
    """The ids of the parameters Muon should train: the 2-D weights inside ``model.transformer.h``."""
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    if blocks is None:
        raise ValueError("configure_muon expects a GPT-like model with its blocks in model.transformer.h")
    return {id(p) for p in blocks.parameters() if p.ndim == 2}


def configure_muon(
    model: torch.nn.Module,
    lr_muon: float,
    lr_adamw: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    momentum: float = 0.95,
    device: str = "cpu",
) -> list[torch.optim.Optimizer]:
    """``[Muon, AdamW]`` over ``model``'s trainable parameters, each parameter in exactly one group.

    * Muon (``lr_muon``, ``weight_decay``): the hidden 2-D matrices, every 2-D weight inside the
      blocks ``model.transformer.h`` (attention and MLP projections);
    * AdamW (``lr_adamw``, ``betas``): the token (and learned position) embeddings and the output
      head when it is untied (a tied head *is* the token embedding, listed once) with
      ``weight_decay``; every gain and bias (1-D) with no decay, as :func:`gptcourse.train.configure_optimizer`.

    Each group also records its ``base_lr`` (the learning rate given here), so a schedule can
    scale both optimisers together: ``group["lr"] = group["base_lr"] * factor``. On CUDA AdamW is
    the fused implementation. Step, zero and checkpoint them with :class:`MuonAdamW` (or
    :func:`step_all` / :func:`zero_all`).
    """
    hidden = _hidden_matrices(model)
    # named_parameters lists a shared (tied) tensor once, so every parameter is seen exactly once.
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    muon_params = [p for p in params if id(p) in hidden]
    rest = [p for p in params if id(p) not in hidden]
    decay = [p for p in rest if p.ndim >= 2]
    no_decay = [p for p in rest if p.ndim < 2]
    optimizers: list[torch.optim.Optimizer] = []
    if muon_params:
        muon = Muon(muon_params, lr=lr_muon, momentum=momentum, weight_decay=weight_decay)
        muon.param_groups[0]["base_lr"] = lr_muon
        optimizers.append(muon)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "base_lr": lr_adamw},
        {"params": no_decay, "weight_decay": 0.0, "base_lr": lr_adamw},
    ]
    groups = [g for g in groups if g["params"]]
    if groups:
        fused = torch.device(device).type == "cuda"
        optimizers.append(torch.optim.AdamW(groups, lr=lr_adamw, betas=betas, fused=fused))
    return optimizers


def step_all(optimizers: Iterable[torch.optim.Optimizer]) -> None:
    """``step()`` every optimiser in ``optimizers``."""
    for optimizer in optimizers:
        optimizer.step()


def zero_all(optimizers: Iterable[torch.optim.Optimizer], set_to_none: bool = True) -> None:
    """``zero_grad()`` every optimiser in ``optimizers``."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=set_to_none)


class MuonAdamW:
    """Several optimisers (``configure_muon``'s ``[Muon, AdamW]``) driven as one.

    It has what the training loops use of an optimiser: ``step()``, ``zero_grad()``,
    ``param_groups`` (every optimiser's groups, the same dicts, so setting ``group["lr"]``
    changes the optimiser's), ``state_dict()`` / ``load_state_dict()`` (a dict with one entry per
    optimiser, in order; loading it resumes bit-exactly) — so a checkpoint stores it as it stores AdamW.
    ``MuonAdamW(model, lr_muon, lr_adamw, weight_decay, ...)`` builds it with :func:`configure_muon`;
    ``MuonAdamW.of(optimizers)`` wraps optimisers already built.
    """

    def __init__(self, model: torch.nn.Module, lr_muon: float, lr_adamw: float, weight_decay: float, **kwargs: Any):
        self.optimizers = configure_muon(model, lr_muon, lr_adamw, weight_decay, **kwargs)

    @classmethod
    def of(cls, optimizers: Sequence[torch.optim.Optimizer]) -> MuonAdamW:
        """Wrap already-built ``optimizers``."""
        self = cls.__new__(cls)
        self.optimizers = list(optimizers)
        return self

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self) -> dict[Any, Any]:
        return {p: s for optimizer in self.optimizers for p, s in optimizer.state.items()}

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        step_all(self.optimizers)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        zero_all(self.optimizers, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict["optimizers"]
        if len(states) != len(self.optimizers):
            raise ValueError(f"MuonAdamW: the state has {len(states)} optimisers, this one {len(self.optimizers)}")
        for optimizer, state in zip(self.optimizers, states, strict=True):
            optimizer.load_state_dict(state)


# what a training loop steps: a torch optimiser, or Muon and AdamW driven as one
OptimizerLike = torch.optim.Optimizer | MuonAdamW
