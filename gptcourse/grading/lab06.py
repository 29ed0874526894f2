"""Checks for Lab 6 (grouped-query attention), against :class:`gptcourse.attention.MultiHeadAttention`:
``repeat_kv(x, n_rep)``, a ``GroupedQueryAttention(n_embd, n_head, n_kv_head)`` module with the
package's parameter layout (a fused ``c_attn`` of ``[q | k | v]`` and ``c_proj``), and
``kv_cache_bytes(n_layer, n_kv_head, head_dim, seq_len, batch_size, bytes_per_value)``."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from gptcourse import attention as ref
from gptcourse.grading import exercise, expect_close, expect_equal, expect_shape, fail
from gptcourse.grading import call_learner


@exercise("lab06.repeat_kv")
def check_repeat_kv(repeat_kv: Callable[..., Any], trials: int = 10) -> None:
    """``repeat_kv(x, n_rep)``: ``(B, nkv, T, hd) -> (B, nkv * n_rep, T, hd)``, kv head ``i`` serving
    query heads ``i * n_rep .. (i + 1) * n_rep - 1``."""
    for trial in range(trials):
        B, nkv, T, hd = torch.randint(1, 5, (4,)).tolist()
        n_rep = 1 if trial == 0 else torch.randint(2, 5, ()).item()
        nkv = max(nkv, 2) if trial == 1 else nkv
        x = torch.randn(B, nkv, T, hd)
        what = f"repeat_kv(x {tuple(x.shape)}, n_rep={n_rep})"
        got = call_learner(what, repeat_kv, x, n_rep)
        expected = x.repeat_interleave(n_rep, dim=1)
        expect_shape(what, got, tuple(expected.shape))
        if nkv > 1 and n_rep > 1 and torch.equal(got, x.repeat(1, n_rep, 1, 1)):
            fail(f"{what} tiles the heads (0, 1, 0, 1, ...) instead of grouping them (0, 0, 1, 1, ...)",
                 "query heads of one group sit next to each other: use repeat_interleave")
        expect_close(what, got, expected)


@exercise("lab06.gqa")
def check_gqa(GroupedQueryAttention: Callable[..., Any], trials: int = 6) -> None:
    """The learner's module equals the package's with the same weights, for MHA, GQA and MQA."""
    rng = random.Random()
    for trial in range(trials):
        n_head = rng.choice([2, 4, 6, 8])
        n_kv_head = [n_head, 1][trial] if trial < 2 else rng.choice([d for d in range(1, n_head + 1) if n_head % d == 0])
        n_embd = n_head * rng.choice([2, 4, 8])
        name = f"GroupedQueryAttention(n_embd={n_embd}, n_head={n_head}, n_kv_head={n_kv_head})"
        mine = call_learner(name, GroupedQueryAttention, n_embd, n_head, n_kv_head)
        theirs = ref.MultiHeadAttention(n_embd, n_head, n_kv_head)
        for pname, p in theirs.named_parameters():
            got = dict(mine.named_parameters()).get(pname)
            if got is None:
                fail(f"{name} has no parameter {pname}", "keep the names c_attn and c_proj (nn.Linear with bias)")
            expect_equal(f"{name}.{pname}.shape", tuple(got.shape), tuple(p.shape),
                         "c_attn maps n_embd to (n_head + 2 * n_kv_head) * head_dim: keys and values are smaller")
        theirs.load_state_dict(mine.state_dict())
        B, T = rng.randint(1, 3), rng.randint(2, 10)
        x = torch.randn(B, T, n_embd)
        out = call_learner(f"{name}(x {tuple(x.shape)})", mine, x)
        expect_shape(f"{name}(x)", out, (B, T, n_embd))
        t = rng.randint(1, T - 1)
        x2 = x.clone()
        x2[:, t:] = torch.randn(B, T - t, n_embd)
        out2 = call_learner(f"{name}(x)", mine, x2)
        if not torch.allclose(out2[:, :t], out[:, :t], atol=1e-5):
            fail(f"leak: {name} changed its output before position {t} when only positions >= {t} changed",
                 "use the causal mask (is_causal=True or a lower-triangular boolean mask)")
        with torch.no_grad():
            expect_close(f"{name}(x)", out, theirs(x),
                         hint="split c_attn(x) into q (n_head heads), k and v (n_kv_head heads each); "
                              "repeat k and v with repeat_kv; then causal attention and c_proj")


@exercise("lab06.cache_bytes")
def check_cache_bytes(kv_cache_bytes: Callable[..., Any], trials: int = 10) -> None:
    """``kv_cache_bytes(...)`` equals the bytes a real :class:`gptcourse.attention.KVCache` holds."""
    for _ in range(trials):
        n_layer, n_kv_head, head_dim, seq_len, batch_size = torch.randint(1, 6, (5,)).tolist()
        dtype = random.choice([torch.float32, torch.float16])
        bpv = torch.tensor([], dtype=dtype).element_size()
        cache = ref.KVCache(n_layer)
        for layer in range(n_layer):
            kv = torch.zeros(batch_size, n_kv_head, seq_len, head_dim, dtype=dtype)
            cache.layer(layer).update(kv, kv.clone())
        what = (f"kv_cache_bytes(n_layer={n_layer}, n_kv_head={n_kv_head}, head_dim={head_dim}, "
                f"seq_len={seq_len}, batch_size={batch_size}, bytes_per_value={bpv})")
        got = call_learner(what, kv_cache_bytes, n_layer, n_kv_head, head_dim, seq_len, batch_size, bpv)
        if got == cache.nbytes() // 2:
            fail(f"{what} is {got}, half the real size", "the cache holds keys AND values")
        expect_equal(what, got, cache.nbytes())
