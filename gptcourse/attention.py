"""Attention: the reference function, the causal mask, the multi-head module and its KV cache.

Mask convention (the one of ``torch.nn.functional.scaled_dot_product_attention``): a boolean mask
is **True where a query may attend to a key**. A float mask is added to the scores.

Shapes: ``B`` batch, ``T`` query positions, ``S`` key positions, ``C`` model width, ``nh`` query
heads, ``nkv`` key/value heads, ``hd = C // nh`` the width of one head.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def causal_mask(T: int, S: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(T, S)`` mask, True where query ``i`` may see key ``j``.

    With ``S > T`` the queries are the *last* ``T`` positions of ``S`` (decoding with a KV cache):
    query ``i`` sits at absolute position ``S - T + i`` and sees keys ``0 .. S - T + i``.
    """
    S = T if S is None else S
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Scaled dot-product attention written out: ``softmax(q k^T / sqrt(d) + mask) v``.

    ``q`` is ``(..., T, d)``, ``k`` is ``(..., S, d)``, ``v`` is ``(..., S, dv)``; ``mask``
    broadcasts to ``(..., T, S)`` and is boolean (True = may attend) or additive (float).
    Returns ``(..., T, dv)``. Equals ``F.scaled_dot_product_attention`` (tested).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    return torch.softmax(scores, dim=-1) @ v


class KVCache:
    """Keys and values of the tokens seen so far, one pair per layer, for incremental decoding.

    Each entry is ``(B, nkv, S, hd)``; only ``n_kv_head`` heads are stored, which is why multi-query
    attention needs ``n_head`` times less cache memory than multi-head attention.
    """

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def __len__(self) -> int:
        """The number of positions cached (the same in every layer)."""
        return 0 if self.keys[0] is None else self.keys[0].size(2)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's ``(B, nkv, T, hd)`` keys/values for ``layer``; return all of them."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def nbytes(self) -> int:
        """Bytes held by the cached tensors."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


class MultiHeadAttention(nn.Module):
    """Causal self-attention with ``n_head`` query heads sharing ``n_kv_head`` key/value heads.

    ``n_kv_head == n_head`` is multi-head attention (MHA), ``1`` is multi-query attention (MQA),
    anything in between that divides ``n_head`` is grouped-query attention (GQA). Queries, keys and
    values come from one fused projection ``c_attn`` (as in GPT-2, so its weights load directly).
    """

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int | None = None, dropout: float = 0.0,
                 bias: bool = True, layer: int = 0):
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_embd % n_head or n_head % n_kv_head:
            raise ValueError(f"need n_embd % n_head == 0 and n_head % n_kv_head == 0, got "
                             f"n_embd={n_embd}, n_head={n_head}, n_kv_head={n_kv_head}")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, n_embd // n_head
        self.layer = layer  # index into a KVCache
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` is ``(B, T, C)``; returns ``(B, T, C)``. ``mask`` (``(T, S)``, True = may attend)
        replaces the causal mask, e.g. for sparse attention; with ``cache``, keys and values of
        earlier positions are reused and only the ``T`` new positions are computed."""
        B, T, C = x.shape
        hd, nh, nkv = self.head_dim, self.n_head, self.n_kv_head
        q, k, v = self.c_attn(x).split([nh * hd, nkv * hd, nkv * hd], dim=2)
        q = q.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, nkv, hd).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, nkv, S, hd)
        if nkv != nh:
            # each group of nh // nkv query heads reads the same key/value head
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
        S = k.size(2)
        dropout = self.dropout if self.training else 0.0
        if mask is None and S == T:
            # the fused kernels build the causal mask themselves (no (T, T) tensor in memory)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            if mask is None:
                mask = causal_mask(T, S, device=x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))
