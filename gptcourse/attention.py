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

from gptcourse.layers import NoRotary, RMSNorm, Rotary
from gptcourse.loops import evaluating


def causal_mask(T: int, S: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(T, S)`` mask, True where query ``i`` may see key ``j``.

    With ``S > T`` the queries are the *last* ``T`` positions of ``S`` (decoding with a KV cache):
    query ``i`` sits at absolute position ``S - T + i`` and sees keys ``0 .. S - T + i``.
    """
    S = T if S is None else S
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.dim() < 2):
            raise TypeError(f"{name} must be a tensor of shape (..., T, d), got {t!r:.60}")
    if q.size(-1) != k.size(-1):
        raise ValueError(f"q and k must have the same last dimension d, got {q.size(-1)} and {k.size(-1)}")
    if v is not None and v.size(-2) != k.size(-2):
        raise ValueError(f"k and v must have the same number of positions S, got {k.size(-2)} and {v.size(-2)}")


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The attention weights ``softmax(q k^T / sqrt(d) + mask)``: ``(..., T, S)``, each row sums to 1.

    ``mask`` broadcasts to ``(..., T, S)``: boolean (True = may attend) or additive (float). A query
    that may attend to nothing gets a row of zeros (as in ``F.scaled_dot_product_attention``).
    """
    _check_qkv(q, k)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    # a row of -inf scores gives 0/0 = NaN; nothing to attend to means a zero output instead
    return weights.masked_fill(torch.isneginf(scores).all(dim=-1, keepdim=True), 0.0)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention written out: ``softmax(q k^T / sqrt(d) + mask) v``.

    ``q`` is ``(..., T, d)``, ``k`` is ``(..., S, d)``, ``v`` is ``(..., S, dv)``; ``mask``
    broadcasts to ``(..., T, S)`` and is boolean (True = may attend) or additive (float).
    Returns ``(..., T, dv)``. Equals ``F.scaled_dot_product_attention`` (tested).
    """
    _check_qkv(q, k, v)
    return attention_weights(q, k, mask) @ v


class LayerCache:
    """The keys and values one attention layer has seen so far: ``(B, nkv, S, hd)`` each, or None."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def __len__(self) -> int:
        """The number of positions cached."""
        return 0 if self.keys is None else self.keys.size(2)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's ``(B, nkv, T, hd)`` keys and values; return all of them, ``(B, nkv, S, hd)``."""
        if self.keys is not None and self.values is not None:
            k = torch.cat([self.keys, k], dim=2)
            v = torch.cat([self.values, v], dim=2)
        self.keys, self.values = k, v
        return k, v


class KVCache:
    """Keys and values of the tokens seen so far, for incremental decoding: one :class:`LayerCache`
    per layer (``cache.layer(i)``), which layer ``i``'s attention reads and extends.

    Only ``n_kv_head`` heads are stored per layer, which is why multi-query attention needs
    ``n_head`` times less cache memory than multi-head attention.
    """

    def __init__(self, n_layer: int):
        self.layers = [LayerCache() for _ in range(n_layer)]

    def __len__(self) -> int:
        """The number of positions cached (the same in every layer)."""
        return len(self.layers[0])

    def layer(self, i: int) -> LayerCache:
        """The cache of layer ``i``."""
        return self.layers[i]

    def nbytes(self) -> int:
        """Bytes held by the cached tensors."""
        return sum(
            t.numel() * t.element_size() for layer in self.layers for t in (layer.keys, layer.values) if t is not None
        )


class MultiHeadAttention(nn.Module):
    """Causal self-attention with ``n_head`` query heads sharing ``n_kv_head`` key/value heads.

    ``n_kv_head == n_head`` is multi-head attention (MHA), ``1`` is multi-query attention (MQA),
    anything in between that divides ``n_head`` is grouped-query attention (GQA). Queries, keys and
    values come from one fused projection ``c_attn`` (as in GPT-2, so its weights load directly).

    Two options of the modern recipe (Part VII), chosen at construction and off by default:
    ``rope_base`` (a float) rotates queries and keys by their positions (RoPE, :class:`Rotary`,
    its angle table ``max_len`` positions long), continuing past a KV cache; ``qk_norm`` applies an
    :class:`RMSNorm` over each head's queries and keys (gains of size ``hd``, shared by the heads)
    before the rotation and the dot product. Neither adds to the default's parameters.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        n_kv_head: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        *,
        rope_base: float | None = None,
        max_len: int = 1024,
        qk_norm: bool = False,
    ):
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_embd % n_head or n_head % n_kv_head:
            raise ValueError(
                f"need n_embd % n_head == 0 and n_head % n_kv_head == 0, got "
                f"n_embd={n_embd}, n_head={n_head}, n_kv_head={n_kv_head}"
            )
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, n_embd // n_head
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        # registered after the projections (the order of the seeded init) and without random numbers
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.rotary = NoRotary() if rope_base is None else Rotary(self.head_dim, max_len, rope_base)

    def position(self, q: torch.Tensor, k: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys at positions ``start ..`` as the dot product sees them: normalised
        (``qk_norm``) then rotated (RoPE); unchanged by default."""
        return self.rotary(self.q_norm(q), self.k_norm(k), start)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project ``x`` ``(B, T, C)`` to queries ``(B, nh, T, hd)``, keys and values ``(B, nkv, T, hd)``."""
        B, T, C = x.shape
        hd, nh, nkv = self.head_dim, self.n_head, self.n_kv_head
        q, k, v = self.c_attn(x).split([nh * hd, nkv * hd, nkv * hd], dim=2)
        q = q.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, nkv, hd).transpose(1, 2)
        return q, k, v

    @torch.no_grad()
    def attention_weights(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The ``(B, nh, T, T)`` weights each head puts on each earlier position of ``x`` ``(B, T, C)``
        (causal unless ``mask`` is given); for looking at attention, not used by ``forward``."""
        q, k, _ = self.qkv(x)
        q, k = self.position(q, k)
        k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        T = x.size(1)
        return attention_weights(q, k, causal_mask(T, device=x.device) if mask is None else mask)

    def forward(
        self, x: torch.Tensor, cache: LayerCache | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` is ``(B, T, C)``; returns ``(B, T, C)``.

        ``mask`` (``(T, S)``, True = may attend) replaces the causal mask, e.g. for sparse attention.
        With ``cache``, the keys and values of earlier positions are reused and only the ``T`` new
        positions are computed: the queries are then the last ``T`` of ``S`` positions.
        """
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        q, k = self.position(q, k, 0 if cache is None else len(cache))  # the new positions follow the cache
        if cache is not None:
            k, v = cache.update(k, v)  # (B, nkv, S, hd)
        S = k.size(2)
        # no mask means causal: the fused kernels build it themselves when T == S; a single new
        # query may see every cached key; a longer chunk after a cache needs the offset mask
        if mask is None and 1 < T < S:
            mask = causal_mask(T, S, device=x.device)
        # enable_gqa: each group of nh // nkv query heads reads one key/value head, never copied
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and T == S > 1,
            enable_gqa=self.n_kv_head != self.n_head,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hd) -> (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y))


# --- Sparse attention ------------------------------------------------------------------------
# Child et al. (2019), "Generating Long Sequences with Sparse Transformers", let each query see a
# few hundred keys instead of all earlier ones; GPT-3 alternates dense layers with locally banded
# ones. Here a pattern is a boolean mask (True = may attend, always causal), so every pattern runs
# through the same attention code; `local_attention` shows how a band saves time for real.


def _query_key_positions(T: int, S: int | None, device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute positions ``(T, 1)`` of the queries (the last ``T`` of ``S``) and ``(1, S)`` of the keys."""
    S = T if S is None else S
    if T > S:
        raise ValueError(f"a mask needs T <= S (the queries are the last T of S keys), got T={T}, S={S}")
    return (torch.arange(S - T, S, device=device)[:, None], torch.arange(S, device=device)[None, :])


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def local_mask(T: int, window: int, S: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(T, S)`` locally banded causal mask: query ``i`` sees key ``j`` when
    ``0 <= i - j < window`` (itself and the ``window - 1`` positions before it).

    As in :func:`causal_mask`, with ``S > T`` the queries are the last ``T`` of ``S`` positions, so
    the result equals rows ``S-T .. S`` of ``local_mask(S, window)``.
    """
    _check_positive("window", window)
    i, j = _query_key_positions(T, S, device)
    return (i - j >= 0) & (i - j < window)


def strided_mask(T: int, stride: int, S: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(T, S)`` strided causal mask of the Sparse Transformer, its two heads merged:
    query ``i`` sees the last ``stride`` positions (``0 <= i - j < stride``) and every earlier
    position a multiple of ``stride`` back (``(i - j) % stride == 0``).

    Any key is then reachable in two hops; with ``stride ~ sqrt(T)`` query ``i`` attends to about
    ``sqrt(T) + i / sqrt(T)`` keys (``1.5 sqrt(T)`` on average) instead of ``i + 1``. Rows
    ``S-T .. S`` when ``S > T``, as in :func:`local_mask`. Child et al. (2019) use it for data with
    a period (image rows); for text they use :func:`fixed_mask`.
    """
    _check_positive("stride", stride)
    i, j = _query_key_positions(T, S, device)
    d = i - j
    return (d >= 0) & ((d < stride) | (d % stride == 0))


def fixed_mask(
    T: int, stride: int, S: int | None = None, device: torch.device | str | None = None, summary: int = 1
) -> torch.Tensor:
    """Boolean ``(T, S)`` *fixed* causal mask of the Sparse Transformer (Child et al. 2019, Section
    4.2), its two heads merged: the sequence is cut into blocks of ``stride`` positions; query ``i``
    sees every earlier key of its own block (``j // stride == i // stride``) and the last
    ``summary`` positions of every earlier block (``j % stride >= stride - summary``), which act as
    the blocks' summaries. The paper uses it for text, where there is no period to stride along.
    Rows ``S-T .. S`` when ``S > T``, as in :func:`local_mask`.
    """
    _check_positive("stride", stride)
    _check_positive("summary", summary)
    if summary > stride:
        raise ValueError(f"summary must be at most stride={stride}, got {summary}")
    i, j = _query_key_positions(T, S, device)
    return (j <= i) & ((j // stride == i // stride) | (j % stride >= stride - summary))


SPARSE_PATTERNS = {
    "dense": lambda T, S, window, stride, device: causal_mask(T, S, device=device),
    "local": lambda T, S, window, stride, device: local_mask(T, window, S, device=device),
    "strided": lambda T, S, window, stride, device: strided_mask(T, stride, S, device=device),
    "fixed": lambda T, S, window, stride, device: fixed_mask(T, stride, S, device=device),
}
"""Pattern name -> mask builder ``(T, S, window, stride, device) -> (T, S)`` boolean mask."""


def sparse_mask(
    pattern: str,
    T: int,
    S: int | None = None,
    *,
    window: int = 1,
    stride: int = 1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The ``(T, S)`` boolean mask of ``pattern`` (a key of :data:`SPARSE_PATTERNS`); ``window``
    is used by ``"local"``, ``stride`` by ``"strided"`` and ``"fixed"`` (its block length, with one
    summary position per block)."""
    if pattern not in SPARSE_PATTERNS:
        raise ValueError(f"unknown attention pattern {pattern!r}; use one of {tuple(SPARSE_PATTERNS)}")
    return SPARSE_PATTERNS[pattern](T, S, window, stride, device)


def attended_pairs(mask: torch.Tensor) -> int:
    """The number of (query, key) pairs a mask lets attention compute: its cost in dot products."""
    return int(mask.sum())


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Causal attention restricted to a band of ``window`` keys, computed block by block.

    ``q, k, v`` are ``(..., T, d)`` (self-attention, no cache). The sequence is cut into blocks of
    ``window`` positions; each block of queries scores only its own block and the one before it,
    ``2 * window`` keys, so the cost grows as ``T * window`` instead of ``T ** 2``. Equals
    ``attention(q, k, v, local_mask(T, window))`` (tested).
    """
    _check_positive("window", window)
    *batch, T, d = q.shape
    w = window
    nb = -(-T // w)  # number of blocks
    pad = nb * w - T

    def blocks(t: torch.Tensor) -> torch.Tensor:  # (..., T, d) -> (..., nb, w, d)
        return F.pad(t, (0, 0, 0, pad)).view(*batch, nb, w, t.size(-1))

    qb, kb, vb = blocks(q), blocks(k), blocks(v)

    def with_previous(t: torch.Tensor) -> torch.Tensor:  # (..., nb, w, d) -> (..., nb, 2w, d)
        # block 0's "previous block" is zero padding, masked out below
        return torch.cat([F.pad(t, (0, 0, 0, 0, 1, 0))[..., :-1, :, :], t], dim=-2)

    kk, vv = with_previous(kb), with_previous(vb)
    a = torch.arange(w, device=q.device)[:, None]  # query offset within its block
    c = torch.arange(2 * w, device=q.device)[None, :]  # key offset, starting one block earlier
    rel = w + a - c  # i - j
    band = (rel >= 0) & (rel < w)  # (w, 2w), the same for every block
    first = (c >= w).expand(w, 2 * w)  # block 0 has no previous block
    mask = torch.stack([first & band] + [band] * (nb - 1))  # (nb, w, 2w)
    y = attention(qb, kk, vv, mask)  # (..., nb, w, d)
    return y.reshape(*batch, nb * w, v.size(-1))[..., :T, :]


def attention_maps(model: nn.Module, idx: torch.Tensor) -> list[torch.Tensor]:
    """The attention weights of every :class:`MultiHeadAttention` layer of ``model`` on ``idx`` ``(B, T)``.

    Returns one ``(B, nh, T, T)`` tensor per layer, in order: row ``i`` of head ``h`` says how much
    position ``i`` takes from each earlier position. Each layer's input is caught with a hook, so
    this works for any model built from :class:`MultiHeadAttention` (pre- or post-norm).
    """
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if not layers:
        raise ValueError("attention_maps needs a model with MultiHeadAttention layers")
    maps: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, args, out: maps.append(m.attention_weights(args[0]))) for m in layers]
    try:
        with evaluating(model):
            model(idx)
    finally:
        for hook in hooks:
            hook.remove()
    return maps
