"""The layers a block is made of, beneath attention and the model: the MLP and the position codes.

Nothing here imports the rest of the package, so :mod:`gptcourse.moe` (experts are MLPs) and
:mod:`gptcourse.model` both build on this module without importing each other.

A position module maps ``(T,)`` absolute positions to ``(T, C)`` vectors that the model adds to
the token embeddings. The model picks one at construction (``GPTConfig.pos``):

* :class:`torch.nn.Embedding` — GPT's learned positions, one trained vector per position;
* :class:`SinusoidalPositions` — the original Transformer's fixed codes (no parameters);
* :class:`NoPositions` — nothing added: the model is blind to order except through the mask.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from gptcourse.model import GPTConfig


class MLP(nn.Module):
    """The position-wise feed-forward network: ``C -> 4C -> GELU (tanh approximation) -> C``.

    ``hidden`` overrides the inner width ``4C`` (mixture-of-experts layers use it for narrower experts).
    """

    def __init__(self, config: GPTConfig, hidden: int | None = None):
        super().__init__()
        hidden = 4 * config.n_embd if hidden is None else hidden
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C) -> (..., C)``."""
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


def sinusoidal_positions(T: int, C: int) -> torch.Tensor:
    """``(T, C)`` fixed position codes of the original Transformer:
    ``PE[t, 2i] = sin(t / 10000^(2i/C))`` and ``PE[t, 2i+1] = cos(t / 10000^(2i/C))``."""
    t = torch.arange(T, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, C, 2, dtype=torch.float32) / C)
    pe = torch.zeros(T, C)
    pe[:, 0::2] = torch.sin(t * freq)
    pe[:, 1::2] = torch.cos(t * freq)[:, : C // 2]
    return pe


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal codes for positions ``0 .. block_size - 1``: ``(T,)`` positions -> ``(T, C)``.

    The table is a buffer that is not saved in the ``state_dict`` (it is computed, not learned).
    """

    def __init__(self, block_size: int, n_embd: int):
        super().__init__()
        self.register_buffer("code", sinusoidal_positions(block_size, n_embd), persistent=False)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.code[pos]


class NoPositions(nn.Module):
    """No position information: a zero that broadcasts against ``(B, T, C)`` token embeddings."""

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), device=pos.device)
