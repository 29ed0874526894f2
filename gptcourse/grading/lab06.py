"""Exercise specs for Lab 6 (grouped-query attention), against :mod:`gptcourse.attention`:
``repeat_kv(x, n_rep)``, a ``GroupedQueryAttention(n_embd, n_head, n_kv_head)`` module with the
package's parameter layout (a fused ``c_attn`` of ``[q | k | v]`` and ``c_proj``), graded with the
weights of a random :class:`~gptcourse.attention.MultiHeadAttention` loaded into it, and
``kv_cache_bytes(n_layer, n_kv_head, head_dim, seq_len, batch_size, bytes_per_value=4)``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gptcourse import attention as ref
from gptcourse.grading.lab05 import causal_compare, with_leaks
from gptcourse.grading.spec import Case, Misconception, Spec, exact, load_reference_weights, randomize_, seeded

# --- Exercise 1: repeat the key/value heads -----------------------------------------------------------


def repeat_cases(g: torch.Generator) -> list[Case]:
    def x(B: int, nkv: int, T: int, hd: int) -> torch.Tensor:
        return torch.randn(B, nkv, T, hd, generator=g)

    # T != hd throughout, so repeating along the wrong one of them shows in the shape
    cases = [
        Case("grouped: 2 kv heads, n_rep = 3", (x(2, 2, 5, 4), 3)),
        Case("multi-query: 1 kv head, n_rep = 4", (x(1, 1, 3, 2), 4)),
        Case("multi-head: n_rep = 1", (x(2, 3, 4, 5), 1)),
        Case("grouped: 4 kv heads, n_rep = 2", (x(1, 4, 2, 3), 2)),
    ]
    for i in range(3):
        B, T, hd = (int(v) for v in torch.randint(1, 5, (3,), generator=g))
        nkv, n_rep = (int(v) for v in torch.randint(2, 5, (2,), generator=g))  # a true GQA every time
        cases.append(Case(f"random grouped sizes {i + 1}", (x(B, nkv, T, hd + T), n_rep)))
    return cases


def reference_repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x.repeat_interleave(n_rep, dim=1)


def _unmerged(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    B, nkv, T, hd = x.shape
    return x[:, :, None].expand(B, nkv, n_rep, T, hd)


REPEAT_KV = Spec(
    id="lab06.repeat_kv",
    points=1,
    name="repeat_kv",
    reference=reference_repeat_kv,
    cases=repeat_cases,
    compare=exact(),
    hint="(B, nkv, T, hd) -> (B, nkv * n_rep, T, hd): kv head i is copied n_rep times in a row, so that "
    "query heads i * n_rep .. (i + 1) * n_rep - 1 read it (Chapter 6)",
    misconceptions=(
        Misconception(
            "tiled",
            lambda x, n_rep: x.repeat(1, n_rep, 1, 1),
            "the heads are tiled (0, 1, 0, 1, ...) instead of grouped (0, 0, 1, 1, ...): the query "
            "heads of one group sit next to each other, so each kv head's copies must be adjacent",
        ),
        Misconception(
            "repeated along the positions",
            lambda x, n_rep: x.repeat_interleave(n_rep, dim=2),
            "repeat along dimension 1, the heads: dimension 2 holds the positions",
        ),
        Misconception(
            "repeated along the head width",
            lambda x, n_rep: x.repeat_interleave(n_rep, dim=-1),
            "repeat along dimension 1, the heads: the last dimension is each head's width hd",
        ),
        Misconception(
            "group dimension not merged",
            _unmerged,
            "the result has 4 dimensions: merge the copies into the head dimension, nkv * n_rep heads",
        ),
        Misconception(
            "n_rep ignored",
            lambda x, n_rep: x,
            "each kv head must appear n_rep times: the result has nkv * n_rep heads",
        ),
    ),
)


# --- Exercise 2: the module -----------------------------------------------------------------------------


class _Weights(dict):
    """A state dict that prints as a name in messages (its tensors would say nothing)."""

    def __repr__(self) -> str:
        return "<random reference weights>"


def gqa_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, n_embd: int, n_head: int, n_kv_head: int, B: int, T: int) -> Case:
        with seeded(g):
            module = ref.MultiHeadAttention(n_embd, n_head, n_kv_head)
        weights = _Weights(randomize_(module, g).state_dict())
        return Case(
            label, (n_embd, n_head, n_kv_head), {"x": torch.randn(B, T, n_embd, generator=g), "weights": weights}
        )

    # a true GQA (1 < n_kv_head < n_head) always: tiling the kv heads is right for MHA and MQA
    cases = [
        case("grouped-query: 4 heads share 2 kv heads", 16, 4, 2, 2, 6),
        case("multi-head (n_kv_head = n_head)", 12, 3, 3, 2, 5),
        case("multi-query (one kv head)", 16, 4, 1, 1, 6),
        case("grouped-query: 6 heads share 3 kv heads", 12, 6, 3, 2, 4),
        case("a single position (T = 1)", 16, 4, 2, 3, 1),
        Case("n_kv_head does not divide n_head", (12, 4, 3)),
    ]
    for i in range(2):
        n_head = (2, 4, 6, 8)[int(torch.randint(4, (1,), generator=g))]
        divisors = [d for d in range(1, n_head + 1) if n_head % d == 0]
        n_kv_head = divisors[int(torch.randint(len(divisors), (1,), generator=g))]
        head_dim, B, T = (int(v) for v in torch.randint(1, 5, (3,), generator=g))
        cases.append(case(f"random sizes {i + 1}", n_head * head_dim, n_head, n_kv_head, B, T + 1))
    return cases


def run_gqa(answer: Callable[..., Any], case: Case) -> Any:
    """Build the module; a case without inputs asks only whether building it raised. Otherwise load
    the case's weights, and return its output on ``x`` and the leak map (:func:`with_leaks`)."""
    n_embd, n_head, n_kv_head = case.args
    what = f"GroupedQueryAttention({n_embd}, {n_head}, {n_kv_head})"
    try:
        with torch.random.fork_rng(devices=[]):  # its init draws from torch's generator: leave the learner's alone
            module = answer(n_embd, n_head, n_kv_head)
    except NotImplementedError:
        raise
    except Exception as err:
        if "x" in case.kwargs:
            raise
        return f"raised {type(err).__name__}"
    if "x" not in case.kwargs:
        return "built a module"
    load_reference_weights(module, case.kwargs["weights"], what)
    module.eval()  # no dropout
    with torch.no_grad():
        return with_leaks(module, case.kwargs["x"])


def compare_gqa(got: Any, expected: Any, case: Case) -> str | None:
    return exact()(got, expected, case) if isinstance(expected, str) else causal_compare()(got, expected, case)


class _WrongGQA(nn.Module):
    """The package's layout with one known mistake (``mistake`` names it; "" makes none)."""

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int, mistake: str):
        super().__init__()
        if n_head % n_kv_head and mistake != "n_kv_head not checked":
            raise ValueError(f"n_head={n_head} is not a multiple of n_kv_head={n_kv_head}")
        self.n_head, self.n_kv_head, self.head_dim, self.mistake = n_head, n_kv_head, n_embd // n_head, mistake
        self.c_attn = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        nh, nkv, hd, mistake = self.n_head, self.n_kv_head, self.head_dim, self.mistake
        q, k, v = self.c_attn(x).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        if mistake == "heads split without a transpose":
            q, k, v = q.reshape(B, nh, T, hd), k.reshape(B, nkv, T, hd), v.reshape(B, nkv, T, hd)
        else:
            q, k, v = (t.view(B, T, -1, hd).transpose(1, 2) for t in (q, k, v))
        if mistake == "kv heads tiled":
            k, v = k.repeat(1, nh // nkv, 1, 1), v.repeat(1, nh // nkv, 1, 1)
        else:
            k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(C if mistake == "scaled by the model width" else hd)
        if mistake != "no causal mask":
            scores = scores.masked_fill(~ref.causal_mask(T), float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v
        y = y.reshape(B, T, C) if mistake == "heads merged without a transpose" else y.transpose(1, 2).reshape(B, T, C)
        return y if mistake == "no output projection" else self.c_proj(y)


def _gqa(mistake: str) -> Callable[[int, int, int], nn.Module]:
    return lambda n_embd, n_head, n_kv_head: _WrongGQA(n_embd, n_head, n_kv_head, mistake)


GQA_HINTS = {
    "kv heads tiled": "with n_head // n_kv_head query heads per group, query head h reads kv head "
    "h // (n_head // n_kv_head): the copies of one kv head must be adjacent, as in repeat_kv "
    "(tiling them is only right for MHA and MQA)",
    "no causal mask": "a position must not see later positions: use the causal mask in the attention",
    "heads split without a transpose": "c_attn gives (B, T, heads * head_dim): view it as (B, T, heads, head_dim), "
    "then swap the T and head dimensions; reshaping straight to "
    "(B, heads, T, head_dim) mixes positions and heads",
    "heads merged without a transpose": "attention gives (B, heads, T, head_dim): bring T back next to B before "
    "merging the heads into (B, T, n_embd)",
    "scaled by the model width": "each head's scores are scaled by 1/sqrt(head_dim), the width of one head, "
    "not of the whole model",
    "no output projection": "the merged heads go through the output projection c_proj",
    "n_kv_head not checked": "when n_head is not a multiple of n_kv_head the heads cannot be grouped: "
    "the constructor must raise a ValueError",
}

GQA = Spec(
    id="lab06.gqa",
    points=3,
    name="GroupedQueryAttention",
    reference=ref.MultiHeadAttention,
    cases=gqa_cases,
    run=run_gqa,
    compare=compare_gqa,
    forbidden=("gptcourse.attention.MultiHeadAttention",),
    hint="keep the package's layout: c_attn (an nn.Linear with bias) maps n_embd to (n_head + 2 * n_kv_head) * "
    "head_dim features, [q | k | v], and c_proj maps n_embd to n_embd; in forward split q (n_head heads), "
    "k and v (n_kv_head heads each), repeat k and v for the groups, causal attention, merge, c_proj",
    misconceptions=tuple(Misconception(name, _gqa(name), hint) for name, hint in GQA_HINTS.items()),
)


# --- Exercise 3: the size of the KV cache ----------------------------------------------------------------

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


def cache_cases(g: torch.Generator) -> list[Case]:
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
    cases=cache_cases,
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

SPECS = (REPEAT_KV, GQA, CACHE_BYTES)
