"""The layers a block is made of, beneath attention and the model: the MLP, the position codes, the norms.

Nothing here imports the rest of the package, so :mod:`gptcourse.moe` (experts are MLPs) and
:mod:`gptcourse.model` both build on this module without importing each other.

A position module maps ``(T,)`` absolute positions to ``(T, C)`` vectors that the model adds to
the token embeddings. The model picks one at construction (``GPTConfig.pos``):

* :class:`torch.nn.Embedding` — GPT's learned positions, one trained vector per position;
* :class:`SinusoidalPositions` — the original Transformer's fixed codes (no parameters);
* :class:`NoPositions` — nothing added: the model is blind to order except through the mask
  (also the choice for ``pos="rope"``, where :class:`Rotary` rotates queries and keys inside attention).

The modern recipe's pieces (Part VII) live here too: :class:`RMSNorm` and :func:`make_norm`
(``GPTConfig.norm_type``), rotary position embeddings (:func:`rope_angles`, :func:`apply_rope`,
:class:`Rotary`, with :class:`NoRotary` for the other position schemes), the feed-forward variants
:class:`SwiGLU` and :class:`ReLU2MLP` (``GPTConfig.mlp``, :func:`make_mlp`) and :class:`SoftCap`
(``GPTConfig.logit_softcap``).
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


class ReLU2MLP(MLP):
    """Primer's feed-forward (So et al., 2021): ``C -> 4C -> ReLU(x)^2 -> C``, the squared ReLU in
    place of the GELU. The same layers, parameter names and count as :class:`MLP`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C) -> (..., C)``."""
        return self.dropout(self.c_proj(F.relu(self.c_fc(x)).square()))


def swiglu_hidden(gelu_hidden: int, multiple: int = 8) -> int:
    """The inner width of a :class:`SwiGLU` with the parameters of a GELU :class:`MLP` of inner
    width ``gelu_hidden``: ``2/3 * gelu_hidden`` rounded to the nearest multiple of ``multiple``.

    A GELU MLP holds ``2 C h`` weights, a SwiGLU ``3 C h'``, so ``h' = 2h/3`` equalises them; the
    rounding moves ``h'`` by at most ``multiple / 2``, so the weights differ by at most
    ``3 C multiple / 2`` (``12 C`` for 8; none when ``2h/3`` is already a multiple, e.g.
    ``C = 768``: ``h' = 2048``). The result is at least one ``multiple`` (the one case where it is
    not the nearest: ``2h/3 < multiple / 2``). With biases the SwiGLU has ``2h' + C`` against the
    MLP's ``h + C``: about ``4C / 3`` more at ``h = 4C``.
    """
    return multiple * max(1, round(2 * gelu_hidden / (3 * multiple)))


class SwiGLU(nn.Module):
    """The gated feed-forward of Shazeer (2020), "GLU Variants Improve Transformer" (Llama's):
    ``c_proj(SiLU(c_gate(x)) * c_fc(x))``, ``C -> h' -> C`` with ``h' = swiglu_hidden(hidden)``.

    ``hidden`` is the inner width a GELU :class:`MLP` would have (``4C`` by default); the SwiGLU's
    three matrices are narrowed to about ``2/3`` of it so that it holds (about) the same parameters
    (:func:`swiglu_hidden`). ``c_fc`` and ``c_proj`` keep the MLP's names (the residual projection
    ``c_proj`` gets GPT-2's scaled init); ``c_gate`` is the gate.
    """

    def __init__(self, config: GPTConfig, hidden: int | None = None):
        super().__init__()
        inner = swiglu_hidden(4 * config.n_embd if hidden is None else hidden)
        self.c_fc = nn.Linear(config.n_embd, inner, bias=config.bias)
        self.c_gate = nn.Linear(config.n_embd, inner, bias=config.bias)
        self.c_proj = nn.Linear(inner, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C) -> (..., C)``."""
        return self.dropout(self.c_proj(F.silu(self.c_gate(x)) * self.c_fc(x)))


MLPS = {"gelu": MLP, "swiglu": SwiGLU, "relu2": ReLU2MLP}
"""``GPTConfig.mlp`` -> the feed-forward class (each built as ``cls(config, hidden=None)``)."""


def make_mlp(config: GPTConfig, hidden: int | None = None) -> nn.Module:
    """The feed-forward ``config.mlp`` asks for (:data:`MLPS`); ``hidden`` is a GELU MLP's inner
    width (``4C`` by default; a SwiGLU narrows it to about 2/3, :func:`swiglu_hidden`)."""
    return MLPS[config.mlp](config, hidden)


class SoftCap(nn.Module):
    """Logit soft-capping (Gemma 2): ``cap * tanh(x / cap)``, smooth, close to ``x`` for
    ``|x| << cap`` and never past ``cap`` in size. No parameters."""

    def __init__(self, cap: float):
        super().__init__()
        self.cap = float(cap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cap * torch.tanh(x / self.cap)

    def extra_repr(self) -> str:
        return f"cap={self.cap}"


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


# --- Part VII: the modern recipe's normalisation and rotary positions ------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang & Sennrich, 2019): ``x / sqrt(mean(x^2) + eps) * g``.

    LayerNorm without the mean subtraction and without the bias: one gain ``weight`` per feature
    (initialised to 1), over the last dimension ``dim``. Computed in float32, returned in ``x``'s dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim) -> (..., dim)``."""
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).type_as(x)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    """The normalisation layer ``config.norm_type`` asks for, over ``dim`` features:
    ``nn.LayerNorm`` (with a bias when ``config.bias``) for ``"layernorm"``, :class:`RMSNorm` for ``"rmsnorm"``."""
    if config.norm_type == "rmsnorm":
        return RMSNorm(dim)
    return nn.LayerNorm(dim, bias=config.bias)


def rope_angles(
    T: int, head_dim: int, base: float = 10000.0, start: int = 0, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``(T, head_dim // 2)``, of the rotary angles ``t * base^(-2i/head_dim)``
    for positions ``t = start .. start + T - 1`` and frequency index ``i = 0 .. head_dim/2 - 1`` (float32)."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    t = torch.arange(start, start + T, dtype=torch.float32, device=device)
    angles = torch.outer(t, inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(..., T, hd)`` by the angles of ``cos``/``sin`` ``(T, hd/2)`` (Su et al., 2021, RoFormer).

    Feature ``i`` and feature ``i + hd/2`` form a pair (the "half-split" layout of GPT-NeoX and
    Llama), rotated by angle ``t * theta_i`` at position ``t``. A rotation keeps each vector's norm,
    and ``q_m . k_n`` after rotation depends on the positions only through ``m - n``.
    """
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Rotary(nn.Module):
    """Rotary position embeddings for attention: ``(q, k, start) -> (q, k)`` rotated for positions
    ``start .. start + T - 1`` (``start`` is the length of the KV cache, so decoding continues).

    The angles of the first ``max_len`` positions are a table kept as a buffer that is not saved
    in the ``state_dict``; positions past it are computed on the fly.
    """

    def __init__(self, head_dim: int, max_len: int = 1024, base: float = 10000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        cos, sin = rope_angles(max_len, head_dim, base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``q`` ``(B, nh, T, hd)`` and ``k`` ``(B, nkv, T, hd)``, both at positions ``start .. start + T - 1``."""
        T = q.size(-2)
        if start + T <= self.cos.size(0):
            cos, sin = self.cos[start : start + T], self.sin[start : start + T]
        else:
            cos, sin = rope_angles(T, self.head_dim, self.base, start, device=q.device)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


class NoRotary(nn.Module):
    """No rotation: queries and keys pass through (positions, if any, were added to the input)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k
