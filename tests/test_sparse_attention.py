"""Sparse attention: the masks against their definitions, the blocked local kernel against the
masked reference, and GPT with sparse layers (trains, stays causal, decodes with a KV cache)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gptcourse.attention import (
    KVCache,
    attended_pairs,
    attention,
    causal_mask,
    fixed_mask,
    local_attention,
    local_mask,
    sparse_mask,
    strided_mask,
)
from gptcourse.model import GPT, GPTConfig


def brute_force(T: int, S: int, allowed) -> torch.Tensor:
    return torch.tensor([[allowed(S - T + i, j) for j in range(S)] for i in range(T)])


@pytest.mark.parametrize("T,S,window", [(1, 1, 1), (7, 7, 1), (10, 10, 3), (4, 12, 5), (9, 9, 20)])
def test_local_mask_is_a_causal_band(T, S, window):
    expected = brute_force(T, S, lambda i, j: 0 <= i - j < window)
    assert torch.equal(local_mask(T, window, S), expected)


@pytest.mark.parametrize("T,S,stride", [(1, 1, 1), (12, 12, 3), (5, 17, 4), (16, 16, 16)])
def test_strided_mask_is_band_plus_every_stride_back(T, S, stride):
    expected = brute_force(T, S, lambda i, j: i >= j and (i - j < stride or (i - j) % stride == 0))
    assert torch.equal(strided_mask(T, stride, S), expected)


@pytest.mark.parametrize("T,S,stride,summary", [(1, 1, 1, 1), (12, 12, 3, 1), (5, 17, 4, 2), (16, 16, 16, 1)])
def test_fixed_mask_is_own_block_plus_the_summary_positions_of_earlier_blocks(T, S, stride, summary):
    expected = brute_force(T, S, lambda i, j: i >= j and (i // stride == j // stride or j % stride >= stride - summary))
    assert torch.equal(fixed_mask(T, stride, S, summary=summary), expected)
    assert torch.equal(fixed_mask(9, 9, summary=9), causal_mask(9))  # one block, or all summaries: dense


@pytest.mark.parametrize("pattern", ["dense", "local", "strided", "fixed"])
def test_masks_for_cached_queries_are_the_last_rows(pattern):
    S = 20
    full = sparse_mask(pattern, S, window=4, stride=5)
    for T in (1, 3, S):
        assert torch.equal(sparse_mask(pattern, T, S, window=4, stride=5), full[S - T :])


def test_wide_patterns_are_the_causal_mask():
    assert torch.equal(local_mask(9, 9), causal_mask(9))
    assert torch.equal(strided_mask(9, 9), causal_mask(9))
    assert torch.equal(strided_mask(9, 1), causal_mask(9))


def test_attended_pairs_grow_as_n_sqrt_n():
    for n in (256, 1024, 4096):
        stride = int(math.isqrt(n))
        dense = attended_pairs(causal_mask(n))
        strided = attended_pairs(strided_mask(n, stride))
        assert dense == n * (n + 1) // 2
        # about stride band keys + n / stride strided keys per query: at most 2 n sqrt(n)
        assert n * stride <= strided <= 2 * n * stride
        assert attended_pairs(local_mask(n, stride)) == n * stride - stride * (stride - 1) // 2


def test_bad_pattern_arguments_raise():
    with pytest.raises(ValueError, match="window"):
        local_mask(4, 0)
    with pytest.raises(ValueError, match="stride"):
        strided_mask(4, -1)
    with pytest.raises(ValueError, match="pattern"):
        sparse_mask("bigbird", 4)
    with pytest.raises(ValueError, match="summary"):
        fixed_mask(8, 4, summary=5)
    with pytest.raises(ValueError, match="T <= S"):
        local_mask(5, 2, S=3)


@pytest.mark.parametrize("T,window", [(1, 4), (16, 4), (50, 7), (33, 64), (64, 64)])
def test_blocked_local_attention_equals_masked_attention(T, window):
    torch.manual_seed(T + window)
    q, k, v = torch.randn(3, 2, 3, T, 8).unbind(0)
    mask = local_mask(T, window)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(local_attention(q, k, v, window), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, mask), expected, atol=1e-6, rtol=1e-5)


def config(**kw) -> GPTConfig:
    base = dict(vocab_size=13, block_size=24, n_layer=2, n_head=2, n_embd=16, attn_window=4, attn_stride=4)
    return GPTConfig(**{**base, **kw})


@pytest.mark.parametrize("field,value", [("attention", "sparse"), ("attn_window", 0), ("attn_stride", 2.5)])
def test_config_rejects_bad_sparse_settings(field, value):
    with pytest.raises(ValueError, match=field):
        config(**{"attention": "local", field: value})


def test_alternating_is_dense_then_local():
    cfg = config(attention="alternating", n_layer=4)
    assert [cfg.layer_attention(i) for i in range(4)] == ["dense", "local", "dense", "local"]
    masks = GPT(cfg).attention_masks(5, 5, "cpu")
    assert [m is None for m in masks] == [True, False] * 2
    assert masks[1] is masks[3]  # built once per forward, shared by the layers of one pattern
    torch.testing.assert_close(masks[1], local_mask(5, cfg.attn_window))


@pytest.mark.parametrize("attention_kind", ["local", "strided", "fixed", "alternating"])
def test_sparse_gpt_trains_a_step_and_stays_causal(attention_kind):
    torch.manual_seed(0)
    model = GPT(config(attention=attention_kind))
    idx = torch.randint(0, 13, (2, 24))
    before = [p.detach().clone() for p in model.parameters()]
    _, loss = model(idx, idx)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # changing the last tokens changes no earlier prediction
    model.eval()
    changed = idx.clone()
    changed[:, 15:] = (changed[:, 15:] + 1) % 13
    torch.testing.assert_close(model(idx)[0][:, :15], model(changed)[0][:, :15])


def test_one_local_layer_sees_only_its_window():
    torch.manual_seed(1)
    model = GPT(config(attention="local", n_layer=1, attn_window=3)).eval()
    idx = torch.randint(0, 13, (1, 24))
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 13
    diff = (model(idx)[0] - model(changed)[0]).abs().amax(dim=-1)[0]
    # position 10 reaches positions 10, 11, 12 only
    assert (diff[10:13] > 0).all() and (diff[:10] == 0).all() and (diff[13:] == 0).all()


@pytest.mark.parametrize("n_kv_head", [None, 1])  # MHA, and MQA: one key/value head in the cache
@pytest.mark.parametrize("attention_kind", ["local", "strided", "fixed", "alternating"])
def test_sparse_gpt_decodes_with_a_cache_as_without(attention_kind, n_kv_head):
    torch.manual_seed(2)
    model = GPT(config(attention=attention_kind, n_kv_head=n_kv_head)).eval()
    idx = torch.randint(0, 13, (2, 20))
    full, _ = model(idx)
    cache = KVCache(model.config.n_layer)
    pieces = [model(idx[:, :7], cache=cache)[0]] + [model(idx[:, t : t + 1], cache=cache)[0] for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)
