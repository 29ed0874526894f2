"""The two pieces every loop in the package shares: running a model for evaluation, and the optimiser step.

* :func:`evaluating` is how every evaluation, measurement and sampling function runs a model: in
  eval mode (dropout off), without gradients, and back in its previous mode afterwards;
* :func:`optimizer_step` is how every training loop ends a step, once ``backward`` has filled the
  gradients: unscale them (fp16), clip their global norm, step.

This module imports only torch, so that any module of the package can use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


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


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float = 0.0,
                   scaler: torch.amp.GradScaler | None = None) -> None:
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
