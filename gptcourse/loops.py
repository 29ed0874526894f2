"""The two pieces every loop in the package shares: running a model for evaluation, and the optimiser step.

* :func:`evaluating` is how every evaluation, measurement and sampling function runs a model: in
  eval mode (dropout off), without gradients, and back in its previous mode afterwards;
* :func:`optimizer_step` is how every training loop ends a step, once ``backward`` has filled the
  gradients: unscale them (fp16), clip their global norm, step.

This module imports only torch (and, for type hints, :mod:`gptcourse.muon`, which imports only
torch), so that any module of the package can use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from gptcourse.muon import OptimizerLike


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Run the body with ``model`` in eval mode and gradients off, then restore its previous mode.

    Gradients are off because every caller in the package evaluates or samples: a graph recorded
    there would only hold memory. It is ``torch.no_grad`` rather than ``torch.inference_mode``
    because tensors made in inference mode cannot take part in autograd later, and some results
    made here do (PPO's old log-probabilities enter its loss). The mode is restored in a
    ``finally``, so an exception (a notebook's KeyboardInterrupt) does not leave dropout off.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def optimizer_step(
    model: torch.nn.Module,
    optimizer: OptimizerLike,
    grad_clip: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Update ``model`` from the gradients that ``backward`` left on its parameters.

    With a ``scaler`` (fp16 training) the gradients are first unscaled, so that clipping sees the
    true ones; the global norm over ``model.parameters()`` is then clipped to ``grad_clip`` (0: no
    clipping); the optimiser steps (through the scaler, which skips a step whose gradients
    overflowed, then adjusts its scale). The gradients are left in place: each loop zeroes them
    before its next ``backward``, so the last step's gradients can still be read (Chapter 10 and
    the tests do), and leftovers from code that ran before a loop never leak into its first step.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def heldout_loss(model: torch.nn.Module, ids: torch.Tensor, block_size: int, batch_size: int = 64) -> float:
    """Mean cross-entropy (nats per token) of ``model`` on every token of ``ids`` after the first.

    The way to compare a model with a counting model that scores a whole held-out text (Chapter 1's
    n-grams): every token is scored exactly once, not a random sample of batches. Windows of
    ``block_size`` tokens overlap by half, and each window after the first scores only its second
    half, so every token but the first ``block_size // 2`` is predicted from at least
    ``block_size // 2`` tokens of context (non-overlapping windows would predict one token in
    ``block_size`` from no context at all). ``model(x, y)`` must return ``(logits, loss)`` for
    ``x, y`` of shape ``(B, T)``, as :class:`gptcourse.model.GPT` does.
    """
    if ids.dim() != 1 or len(ids) < 2:
        raise ValueError("ids must be a 1-D tensor of at least 2 token ids")
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    T = min(block_size, len(ids) - 1)
    half = T // 2
    starts = list(range(0, len(ids) - 1 - T + 1, T - half))
    if starts[-1] + T < len(ids) - 1:  # the last window ends on the last token
        starts.append(len(ids) - 1 - T)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    scored_to = 0  # targets ids[1 : scored_to + 1] have been scored
    with evaluating(model):
        for i in range(0, len(starts), batch_size):
            chunk = starts[i : i + batch_size]
            x = torch.stack([ids[s : s + T] for s in chunk]).to(device)
            y = torch.stack([ids[s + 1 : s + T + 1] for s in chunk]).to(device)
            logits, _ = model(x, y)
            nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none")
            nll = nll.view(len(chunk), T)
            for row, s in zip(nll, chunk, strict=True):
                first = scored_to - s  # positions before this were scored by an earlier window
                total += row[first:].sum().item()
                count += T - first
                scored_to = s + T
    return total / count
