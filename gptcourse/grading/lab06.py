"""Exercise specs for Lab 6 (the whole attention module, saved as ``learner/attention.py``), against
:mod:`gptcourse.attention`:

* ``lab06.layer_cache``: ``LayerCache`` (:class:`gptcourse.attention.LayerCache`): keys and values
  appended along the time axis, all of them returned, ``len`` the number of positions;
* ``lab06.qkv``: ``MultiHeadAttention(n_embd, n_head, n_kv_head=None, dropout=0.0, bias=True)``'s
  parameters (``c_attn``, ``c_proj``), its ValueErrors and ``qkv(x)``, the fused projection split into
  ``n_head`` query heads and ``n_kv_head`` key/value heads;
* ``lab06.gqa``: ``forward(x)`` without a cache: causal by default, an explicit mask replacing the
  causal one, each group of adjacent query heads sharing one key/value head, dropout only in training;
* ``lab06.cache_decode``: ``forward(x, cache)`` fed a prefix then more positions (one at a time or a
  chunk): the queries are the last ``T`` of ``S`` positions, and the cache holds ``n_kv_head`` heads;
* ``lab06.cache_bytes``: ``kv_cache_bytes(...)``, what a real :class:`~gptcourse.attention.KVCache` holds.

Each module answer is built with the reference's arguments, gets a random reference's weights
(:func:`load_reference_weights`: the parameter names must be the package's), and is compared on
outputs and gradients; dropout is checked in training mode with the same random seed."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptcourse import attention as ref
from gptcourse.grading.spec import (
    Case,
    Misconception,
    Spec,
    close,
    exact,
    load_reference_weights,
    parameter_grads,
    randomize_,
    seeded,
)

# the package's module may not stand in for the learner's (the learner may use F.scaled_dot_product_attention)
MHA_FORBIDDEN = (
    "gptcourse.attention.MultiHeadAttention.__init__",
    "gptcourse.attention.MultiHeadAttention.qkv",
    "gptcourse.attention.MultiHeadAttention.forward",
)


def _seed(g: torch.Generator) -> int:
    return int(torch.randint(2**31, (1,), generator=g))


def _int(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (1,), generator=g))


class _Weights(dict):
    """A state dict that prints as a name in messages (its tensors would say nothing)."""

    def __repr__(self) -> str:
        return "<random reference weights>"


class _Inputs(dict):
    """What a case feeds the module (weights, x, chunks, mode, seed), printed short in messages."""

    def __repr__(self) -> str:
        parts = [f"x of shape {tuple(self['x'].shape)}"]
        if "chunks" in self:
            parts.append(f"fed in chunks of {', '.join(map(str, self['chunks']))} positions")
        if self.get("how") == "mask":
            parts.append("an explicit mask")
        if "how" in self:
            parts.append("training mode" if self["how"] == "train" else "eval mode")
        return "<" + ", ".join(parts) + ">"


# --- Step 1: the layer cache ------------------------------------------------------------------------------


def layer_cache_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, B: int, nkv: int, hd: int, chunks: tuple[int, ...]) -> Case:
        kvs = [(torch.randn(B, nkv, t, hd, generator=g), torch.randn(B, nkv, t, hd, generator=g)) for t in chunks]
        return Case(label, (kvs,))

    cases = [
        case("a prefix of 3 positions, then 1, then 2", 2, 2, 5, (3, 1, 2)),
        case("one position at a time", 1, 3, 4, (1, 1, 1, 1)),
        case("one kv head (multi-query), chunks of 4 and 2", 2, 1, 3, (4, 2)),
        case("a single update", 3, 2, 6, (5,)),
    ]
    for i in range(2):
        chunks = tuple(_int(g, 1, 5) for _ in range(_int(g, 2, 5)))
        cases.append(case(f"random chunks {i + 1}", _int(g, 1, 4), _int(g, 1, 4), _int(g, 2, 7), chunks))
    return cases


def run_layer_cache(answer: Callable[..., Any], case: Case) -> Any:
    """Make an empty cache, feed it the case's chunks; return what each update returned, the length
    before and after each, and the stored keys and values at the end."""
    (kvs,) = case.args
    cache = answer()
    lengths, returned = [len(cache)], []
    for k, v in kvs:
        out = cache.update(k, v)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            return {"update returned": f"a {type(out).__name__}, not a pair (keys, values)"}
        returned.append((out[0].clone(), out[1].clone()))
        lengths.append(len(cache))
    return {"update returned": returned, "len": lengths, "keys": cache.keys, "values": cache.values}


def _layer_cache(mistake: str) -> type:
    """A ``LayerCache`` class with one known mistake."""

    class LayerCache:
        def __init__(self) -> None:
            self.keys: torch.Tensor | None = None
            self.values: torch.Tensor | None = None
            self.updates = 0

        def __len__(self) -> int:
            if mistake == "len counts the updates":
                return self.updates
            return 0 if self.keys is None else self.keys.size(2)

        def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            self.updates += 1
            new_k, new_v = k, v
            if self.keys is not None and mistake != "only the last chunk kept":
                if mistake == "new positions put first":
                    k, v = torch.cat([k, self.keys], dim=2), torch.cat([v, self.values], dim=2)
                else:
                    k, v = torch.cat([self.keys, k], dim=2), torch.cat([self.values, v], dim=2)
            self.keys, self.values = k, v
            return (new_k, new_v) if mistake == "only the new positions returned" else (k, v)

    return LayerCache


LAYER_CACHE_HINTS = {
    "new positions put first": "the cache keeps the positions in order: the new ones go AFTER those already "
    "stored (position S - 1 is the last), so that the causal mask lines up (Chapter 6, The KV cache)",
    "only the last chunk kept": "the cache accumulates: each update appends the new positions to those already "
    "stored, so a later query still sees the whole prefix",
    "only the new positions returned": "update returns ALL the keys and values stored so far (B, nkv, S, hd), "
    "the old positions and the new: attention reads every one of them",
    "len counts the updates": "len(cache) is the number of positions stored (S), not the number of update calls: "
    "one update can add several positions",
}

LAYER_CACHE = Spec(
    id="lab06.layer_cache",
    points=1,
    name="LayerCache",
    reference=ref.LayerCache,
    cases=layer_cache_cases,
    run=run_layer_cache,
    compare=exact(),
    forbidden=("gptcourse.attention.LayerCache.update", "gptcourse.attention.LayerCache.__len__"),
    hint="keys and values start as None; update(k, v) appends along the positions (dimension 2) and returns "
    "(keys, values) so far; len is the number of positions stored",
    misconceptions=tuple(Misconception(n, _layer_cache(n), h) for n, h in LAYER_CACHE_HINTS.items()),
)


# --- The module, step by step: one wrong module class for every step's misconceptions ----------------------


class _Wrong(ref.MultiHeadAttention):
    """The package's parameters, attention written out, with one known mistake (``mistake``; "" is none)."""

    mistake = ""

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int | None = None, dropout: float = 0.0, bias=True):
        nkv = n_head if n_kv_head is None else n_kv_head
        if self.mistake == "n_embd % n_head not checked" and n_embd % n_head and not n_head % nkv:
            n_embd = n_embd // n_head * n_head  # builds, silently dropping the leftover width
        if self.mistake == "n_head % n_kv_head not checked" and n_head % nkv:
            nkv = 1  # builds, as if it were multi-query
        super().__init__(n_embd, n_head, nkv, dropout, bias)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        hd, nh, nkv = self.head_dim, self.n_head, self.n_kv_head
        q, k, v = self.c_attn(x).split([nh * hd, nkv * hd, nkv * hd], dim=2)
        if self.mistake == "keys and values swapped":
            k, v = v, k
        if self.mistake == "heads split without a transpose":
            return q.reshape(B, nh, T, hd), k.reshape(B, nkv, T, hd), v.reshape(B, nkv, T, hd)
        return tuple(t.view(B, T, -1, hd).transpose(1, 2) for t in (q, k, v))

    def forward(self, x: torch.Tensor, cache: Any = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        mistake, nh, nkv, hd = self.mistake, self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x)
        if mistake == "kv heads tiled":
            k, v = k.repeat(1, nh // nkv, 1, 1), v.repeat(1, nh // nkv, 1, 1)
        elif mistake == "the cache holds the repeated kv heads":
            k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        if cache is not None:
            full_k, full_v = cache.update(k, v)
            if mistake != "cached keys and values not used":
                k, v = full_k, full_v
        if mistake not in ("kv heads tiled", "the cache holds the repeated kv heads"):
            k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        S = k.size(2)
        causal = ref.causal_mask(T, S, device=x.device)
        if mistake == "causal mask not offset for the cache":
            causal = torch.ones(T, S, dtype=torch.bool).tril()  # what is_causal=True means when T < S
        if mistake == "no mask for a chunk after the cache" and T != S:
            causal = torch.ones(T, S, dtype=torch.bool)
        if mask is None or mistake == "explicit mask ignored":
            mask = causal
        elif mistake == "causal mask kept with an explicit mask":
            mask = mask & causal
        if mistake == "no causal mask":
            mask = torch.ones(T, S, dtype=torch.bool)
        scale = {"scores not scaled": 1.0, "scaled by the model width": math.sqrt(C)}.get(mistake, math.sqrt(hd))
        scores = (q @ k.transpose(-2, -1) / scale).masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        if mistake == "attention dropout also in eval mode":
            weights = F.dropout(weights, self.dropout)  # F.dropout's training defaults to True
        elif mistake != "no dropout on the attention weights":
            weights = F.dropout(weights, self.dropout, training=self.training)
        y = weights @ v
        y = y.reshape(B, T, C) if mistake == "heads merged without a transpose" else y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


def _mha(mistake: str) -> type[nn.Module]:
    return type("MultiHeadAttention", (_Wrong,), {"mistake": mistake})


def _build(answer: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    with torch.random.fork_rng(devices=[]):  # its init draws from torch's generator: leave the learner's alone
        return answer(*args, **kwargs)


def _reference_weights(g: torch.Generator, args: tuple, kwargs: dict) -> _Weights:
    with seeded(g):
        module = ref.MultiHeadAttention(*args, **kwargs)
    return _Weights(randomize_(module, g).state_dict())


def _what(args: tuple, kwargs: dict) -> str:
    return (
        "your MultiHeadAttention("
        + ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
        + ")"
    )


# --- Step 2: the constructor and qkv ---------------------------------------------------------------------


def qkv_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, args: tuple, B: int, T: int, **kwargs: Any) -> Case:
        x = torch.randn(B, T, args[0], generator=g)
        return Case(label, args, dict(kwargs, inputs=_Inputs(x=x, weights=_reference_weights(g, args, kwargs))))

    # a true GQA first (1 < n_kv_head < n_head) with T != heads != head width, so a wrong axis shows
    cases = [
        case("grouped-query: 4 query heads, 2 kv heads", (12, 4, 2), 2, 5),
        case("multi-head: n_kv_head left at None (= n_head)", (12, 3), 2, 4),
        case("multi-query: one kv head", (16, 4, 1), 1, 3),
        case("bias=False", (12, 6, 3), 2, 2, bias=False),
        case("a single position (T = 1)", (8, 4, 2), 3, 1),
        Case("n_embd not a multiple of n_head: a ValueError", (10, 4, 2)),
        Case("n_head not a multiple of n_kv_head: a ValueError", (12, 4, 3)),
    ]
    for i in range(2):
        n_head = (2, 4, 6)[_int(g, 0, 3)]
        n_kv_head = [d for d in range(1, n_head + 1) if n_head % d == 0][_int(g, 0, 2)]
        cases.append(
            case(f"random sizes {i + 1}", (n_head * _int(g, 1, 5), n_head, n_kv_head), _int(g, 1, 4), _int(g, 1, 6))
        )
    return cases


def run_qkv(answer: Callable[..., Any], case: Case) -> Any:
    """A case without inputs asks whether building raised a ValueError; otherwise load the case's
    weights and return ``qkv(x)`` and the gradient of a weighted sum of it."""
    kwargs = dict(case.kwargs)
    inputs = kwargs.pop("inputs", None)
    if inputs is None:
        try:
            _build(answer, case.args, kwargs)
        except ValueError:
            return {"ValueError": True}
        return {"ValueError": False}
    module = _build(answer, case.args, kwargs)
    load_reference_weights(module, inputs["weights"], _what(case.args, kwargs))
    x = inputs["x"].clone().requires_grad_(True)
    out = module.qkv(x)
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        return {"qkv returned": f"a {type(out).__name__}, not a triple (q, k, v)"}
    q, k, v = out
    gen = torch.Generator().manual_seed(0)
    loss = sum((t * torch.randn(t.shape, generator=gen)).sum() for t in (q, k, v))
    loss.backward()
    return {"qkv returned": tuple(t.detach() for t in (q, k, v)), "grad of x": x.grad}


QKV_HINTS = {
    "heads split without a transpose": "c_attn gives (B, T, heads * hd): view it as (B, T, heads, hd), then swap "
    "the T and head dimensions; reshaping straight to (B, heads, T, hd) mixes positions and heads (Chapter 6, "
    "Cutting the width into heads)",
    "keys and values swapped": "c_attn's output is [q | k | v]: the n_head query heads first, then the n_kv_head key "
    "heads, then the value heads",
    "n_embd % n_head not checked": "n_embd must split into n_head heads of equal width: raise a ValueError when "
    "n_embd is not a multiple of n_head",
    "n_head % n_kv_head not checked": "the query heads must split into n_kv_head equal groups: raise a ValueError "
    "when n_head is not a multiple of n_kv_head",
}

QKV = Spec(
    id="lab06.qkv",
    points=1,
    name="MultiHeadAttention",
    reference=ref.MultiHeadAttention,
    cases=qkv_cases,
    run=run_qkv,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=MHA_FORBIDDEN,
    hint="c_attn maps n_embd to (n_head + 2 * n_kv_head) * head_dim features, [q | k | v], and c_proj n_embd to "
    "n_embd, both with bias=bias; n_kv_head=None means n_head; qkv returns q (B, nh, T, hd), k and v (B, nkv, T, hd)",
    misconceptions=tuple(Misconception(n, _mha(n), h) for n, h in QKV_HINTS.items()),
)


# --- Step 3: forward, without a cache ---------------------------------------------------------------------


def _window(T: int) -> torch.Tensor:
    """A non-causal ``(T, T)`` mask: each position sees itself, the one before and the one after."""
    i = torch.arange(T)
    return (i[:, None] - i[None, :]).abs() <= 1


def gqa_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, args: tuple, B: int, T: int, how: str = "eval", **kwargs: Any) -> Case:
        x = torch.randn(B, T, args[0], generator=g)
        extra = {"x": x, "proj": torch.randn(B, T, args[0], generator=g), "how": how, "seed": _seed(g)}
        return Case(label, args, dict(kwargs, inputs=_Inputs(weights=_reference_weights(g, args, kwargs), **extra)))

    cases = [
        case("grouped-query: 4 query heads share 2 kv heads", (16, 4, 2), 2, 6),
        case("multi-head (n_kv_head = n_head)", (12, 3, 3), 2, 5),
        case("multi-query (one kv head)", (16, 4, 1), 1, 6),
        case("grouped-query: 6 heads share 3 kv heads, bias=False", (12, 6, 3), 2, 4, bias=False),
        case("a single position (T = 1)", (16, 4, 2), 3, 1),
        case("an explicit mask that sees one later position: it replaces the causal mask", (16, 4, 2), 2, 5, "mask"),
        case("dropout=0.2 in eval mode (no dropout)", (16, 4, 2), 2, 5, dropout=0.2),
        case("dropout=0.2 in training mode (same seed as the package)", (16, 4, 2), 2, 5, "train", dropout=0.2),
    ]
    for i in range(2):
        n_head = (2, 4, 6, 8)[_int(g, 0, 4)]
        divisors = [d for d in range(1, n_head + 1) if n_head % d == 0]
        n_kv_head = divisors[_int(g, 0, len(divisors))]
        args = (n_head * _int(g, 1, 5), n_head, n_kv_head)
        cases.append(case(f"random sizes {i + 1}", args, _int(g, 1, 4), _int(g, 1, 8)))
    return cases


def _train_mode(module: Any, training: bool) -> None:
    if isinstance(module, nn.Module):
        module.train(training)


def run_gqa(answer: Callable[..., Any], case: Case) -> Any:
    """Build, load the weights, run ``forward(x)`` (or ``forward(x, None, mask)``) in the case's mode
    with a fixed seed; return the output and the gradients of a weighted sum of it."""
    kwargs = dict(case.kwargs)
    inputs = kwargs.pop("inputs")
    x, proj, weights, how, seed = (inputs[k] for k in ("x", "proj", "weights", "how", "seed"))
    module = _build(answer, case.args, kwargs)
    load_reference_weights(module, weights, _what(case.args, kwargs))
    _train_mode(module, how == "train")
    x = x.clone().requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same dropout draws as the reference's
        y = module(x, None, _window(x.size(1))) if how == "mask" else module(x)
    (y * proj).sum().backward()
    return {"output": y.detach(), "grad of x": x.grad, "grads": parameter_grads(module)}


GQA_HINTS = {
    "scores not scaled": "the scores are q k^T divided by sqrt(hd), the width of one head: without it the softmax "
    "saturates as hd grows (Chapter 4, scaled dot-product attention)",
    "scaled by the model width": "each head's scores are scaled by 1/sqrt(head_dim), the width of one head, not of "
    "the whole model",
    "kv heads tiled": "query heads share kv heads in groups of adjacent heads: query head h reads kv head "
    "h // (n_head // n_kv_head), so each kv head's copies sit next to each other (0, 0, 1, 1, not 0, 1, 0, 1); "
    "tiling is only right for MHA and MQA (Chapter 6, Sharing keys and values)",
    "no causal mask": "without a mask a position must not see later positions: the default is the causal mask",
    "heads merged without a transpose": "attention gives (B, nh, T, hd): bring T back next to B before merging the "
    "heads into (B, T, n_embd)",
    "explicit mask ignored": "a mask passed to forward (T, S; True = may attend) is the one to use: it replaces the "
    "causal mask",
    "causal mask kept with an explicit mask": "an explicit mask REPLACES the causal mask (it is not combined with it): "
    "a pattern such as a sparse or bidirectional one decides alone what each query sees",
    "attention dropout also in eval mode": "dropout acts only in training mode (self.training); F.dropout drops in "
    "every mode unless told training=self.training",
    "no dropout on the attention weights": "dropout goes on the attention weights (after the softmax) as well as on "
    "the output after c_proj, both only in training mode",
}

GQA = Spec(
    id="lab06.gqa",
    points=3,
    name="MultiHeadAttention",
    reference=ref.MultiHeadAttention,
    cases=gqa_cases,
    run=run_gqa,
    compare=close(atol=1e-4, rtol=1e-4),
    forbidden=MHA_FORBIDDEN,
    hint="softmax(q k^T / sqrt(hd) masked) v per query head, query head h reading kv head h // (nh // nkv); "
    "the causal mask unless a mask is given; dropout on the weights and after c_proj, in training only",
    misconceptions=tuple(Misconception(n, _mha(n), h) for n, h in GQA_HINTS.items()),
)


# --- Step 4: forward with a cache -------------------------------------------------------------------------


def cache_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, args: tuple, B: int, chunks: tuple[int, ...], how: str = "eval", **kwargs: Any) -> Case:
        T = sum(chunks)
        x = torch.randn(B, T, args[0], generator=g)
        extra = {"x": x, "proj": torch.randn(B, T, args[0], generator=g), "chunks": chunks, "how": how}
        weights = _reference_weights(g, args, kwargs)
        return Case(label, args, dict(kwargs, inputs=_Inputs(weights=weights, seed=_seed(g), **extra)))

    cases = [
        case("grouped-query: a prefix of 3, then one position at a time", (16, 4, 2), 2, (3, 1, 1, 1)),
        case("a prefix of 4, then a chunk of 3 (T > 1 after a prefix)", (16, 4, 2), 2, (4, 3)),
        case("multi-query: one position at a time from the start", (12, 6, 1), 1, (1, 1, 1, 1)),
        case("multi-head, bias=False: a prefix of 2, then chunks of 2 and 1", (12, 3, 3), 2, (2, 2, 1), bias=False),
        case("an explicit (T, S) mask with the cache: it replaces the causal one", (16, 4, 2), 1, (3, 2), "mask"),
        case("dropout=0.2 in training mode, with the cache", (16, 4, 2), 2, (3, 2, 1), "train", dropout=0.2),
    ]
    for i in range(2):
        n_head = (2, 4, 6)[_int(g, 0, 3)]
        n_kv_head = [d for d in range(1, n_head) if n_head % d == 0][-1]  # a true GQA (or MQA for 2 heads)
        chunks = tuple(_int(g, 1, 4) for _ in range(_int(g, 2, 4)))
        cases.append(case(f"random sizes {i + 1}", (n_head * _int(g, 1, 4), n_head, n_kv_head), _int(g, 1, 3), chunks))
    return cases


def _cache_window(T: int, S: int) -> torch.Tensor:
    """A ``(T, S)`` mask for queries at the last T of S positions: each sees every key but the one before it."""
    i, j = torch.arange(S - T, S)[:, None], torch.arange(S)[None, :]
    return i - j != 1


def run_cache(answer: Callable[..., Any], case: Case) -> Any:
    """Feed ``x`` chunk by chunk through one :class:`~gptcourse.attention.LayerCache`; return the outputs
    (concatenated), the cache's length and tensors, and the gradients."""
    kwargs = dict(case.kwargs)
    inputs = kwargs.pop("inputs")
    x, proj, weights, chunks, how, seed = (inputs[k] for k in ("x", "proj", "weights", "chunks", "how", "seed"))
    module = _build(answer, case.args, kwargs)
    load_reference_weights(module, weights, _what(case.args, kwargs))
    _train_mode(module, how == "train")
    x = x.clone().requires_grad_(True)
    cache = ref.LayerCache()
    outputs, start = [], 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for t in chunks:
            end = start + t
            mask = _cache_window(t, end) if how == "mask" and start > 0 else None
            outputs.append(module(x[:, start:end], cache, mask))
            start = end
    y = torch.cat(outputs, dim=1)
    (y * proj).sum().backward()
    stored = {"len": len(cache), "keys": cache.keys.detach(), "values": cache.values.detach()}
    return {"output": y.detach(), "cache": stored, "grad of x": x.grad, "grads": parameter_grads(module)}


CACHE_HINTS = {
    "causal mask not offset for the cache": "with a cache the T new queries are the LAST T of S positions: query i "
    "sits at position S - T + i and sees keys 0 .. S - T + i; a plain (T, T)-style causal mask (or is_causal=True) "
    "lines them up with the first keys instead (Chapter 6, The KV cache)",
    "no mask for a chunk after the cache": "one new position may see every cached key, but a chunk of T > 1 new "
    "positions after a prefix still needs the causal mask, offset so the queries are the last T of S",
    "cached keys and values not used": "attention reads the keys and values that cache.update returns, all S "
    "positions, not only this step's",
    "the cache holds the repeated kv heads": "store only the n_kv_head key/value heads in the cache (that is the "
    "memory GQA saves); share them with the query groups after reading the cache",
}

CACHE_DECODE = Spec(
    id="lab06.cache_decode",
    points=2,
    name="MultiHeadAttention",
    reference=ref.MultiHeadAttention,
    cases=cache_cases,
    run=run_cache,
    compare=close(atol=1e-4, rtol=1e-4),
    forbidden=MHA_FORBIDDEN,
    hint="with a cache: k, v = cache.update(k, v) (nkv heads, S positions), then attention with the queries at "
    "the last T of S positions (the offset causal mask, or the mask given); the outputs equal the full forward's",
    misconceptions=tuple(Misconception(n, _mha(n), h) for n, h in CACHE_HINTS.items()),
)


# --- Step 5: the size of the KV cache ----------------------------------------------------------------

_DTYPES = {1: torch.int8, 2: torch.float16, 4: torch.float32, 8: torch.float64}


def reference_cache_bytes(
    n_layer: int, n_kv_head: int, head_dim: int, seq_len: int, batch_size: int, bytes_per_value: int = 4
) -> int:
    """The bytes a real :class:`~gptcourse.attention.KVCache` holds for these sizes (meta tensors:
    their sizes without the memory)."""
    cache = ref.KVCache(n_layer)
    for layer in range(n_layer):
        kv = torch.empty(batch_size, n_kv_head, seq_len, head_dim, dtype=_DTYPES[bytes_per_value], device="meta")
        cache.layer(layer).update(kv, kv)
    return cache.nbytes()


def cache_bytes_cases(g: torch.Generator) -> list[Case]:
    # the first case's factors all differ, so each forgotten factor gives its own wrong number
    cases = [
        Case("fp16 (2 bytes per value)", (3, 2, 8, 7, 5, 2)),
        Case("bytes_per_value left at its default (fp32)", (2, 4, 16, 10, 3)),
        Case("one layer, one head, one sequence", (1, 1, 4, 6, 1, 4)),
        Case("GPT-2 small: 12 layers, 12 heads of 64, 1024 tokens, fp16", (12, 12, 64, 1024, 1, 2)),
        Case("fp64 (8 bytes per value)", (2, 3, 4, 5, 2, 8)),
        Case("int8 (1 byte per value)", (4, 2, 8, 16, 3, 1)),
    ]
    for i in range(4):
        sizes = tuple(int(v) for v in torch.randint(1, 7, (5,), generator=g))
        bytes_per_value = (1, 2, 4, 8)[int(torch.randint(4, (1,), generator=g))]
        cases.append(Case(f"random sizes {i + 1}", sizes + (bytes_per_value,)))
    return cases


def _cache_formula(
    tensors: int = 2, layers: bool = True, batch: bool = True, width: bool = True, mib: bool = False
) -> Callable[..., int | float]:
    def kv_cache_bytes(
        n_layer: int, n_kv_head: int, head_dim: int, seq_len: int, batch_size: int, bytes_per_value: int = 4
    ) -> int | float:
        n = (
            tensors
            * (n_layer if layers else 1)
            * (batch_size if batch else 1)
            * n_kv_head
            * seq_len
            * head_dim
            * (bytes_per_value if width else 4)
        )
        return n / 2**20 if mib else n

    return kv_cache_bytes


CACHE_BYTES = Spec(
    id="lab06.cache_bytes",
    points=1,
    name="kv_cache_bytes",
    reference=reference_cache_bytes,
    cases=cache_bytes_cases,
    compare=exact(),
    forbidden=("gptcourse.attention.KVCache",),
    hint="every layer keeps a key tensor and a value tensor of (batch_size, n_kv_head, seq_len, head_dim) "
    "values, each value bytes_per_value bytes; return the total as an int",
    misconceptions=(
        Misconception("keys only", _cache_formula(tensors=1), "the cache holds keys AND values: two tensors per layer"),
        Misconception(
            "layers forgotten",
            _cache_formula(layers=False),
            "every layer has its own attention, so its own keys and values: count all n_layer layers",
        ),
        Misconception(
            "batch forgotten",
            _cache_formula(batch=False),
            "each of the batch_size sequences keeps its own keys and values",
        ),
        Misconception(
            "bytes_per_value ignored",
            _cache_formula(width=False),
            "use the bytes_per_value passed in (2 for fp16, 1 for int8), not always 4",
        ),
        Misconception(
            "in MiB",
            _cache_formula(mib=True),
            "return the size in bytes, an int: the conversion to MiB is for printing",
        ),
    ),
)

SPECS = (LAYER_CACHE, QKV, GQA, CACHE_DECODE, CACHE_BYTES)
