"""gptcourse.attention against torch: SDPA equality, the mask convention, MHA/GQA/MQA, the KV cache,
and the property every language model needs: no position ever sees a later one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcourse.attention import KVCache, MultiHeadAttention, attention, attention_weights, causal_mask
from gptcourse.model import GPT, GPTConfig


def _random_shape(g: torch.Generator) -> tuple[tuple[int, ...], int, int, int, int]:
    """Leading dims (0 to 2 of them), T, S, d, dv."""
    lead = tuple(int(n) for n in torch.randint(1, 4, (int(torch.randint(0, 3, (1,), generator=g)),), generator=g))
    T, S, d, dv = (int(n) for n in torch.randint(1, 17, (4,), generator=g))
    return lead, T, S, d, dv


@pytest.mark.parametrize("seed", range(20))
def test_attention_equals_sdpa_over_random_shapes_and_masks(seed):
    g = torch.Generator().manual_seed(seed)
    lead, T, S, d, dv = _random_shape(g)
    q, k, v = (torch.randn(*lead, n, m, generator=g) for n, m in ((T, d), (S, d), (S, dv)))
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attention(q, k, v), expected, atol=1e-6, rtol=1e-5)
    # a boolean mask, broadcast over every leading dimension (batch, heads)
    bool_mask = torch.rand(T, S, generator=g) < 0.7
    torch.testing.assert_close(
        attention(q, k, v, bool_mask),
        F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask),
        atol=1e-6,
        rtol=1e-5,
    )
    # a full-shape boolean mask and an additive float mask
    full_mask = torch.rand(*lead, T, S, generator=g) < 0.5
    torch.testing.assert_close(
        attention(q, k, v, full_mask),
        F.scaled_dot_product_attention(q, k, v, attn_mask=full_mask),
        atol=1e-6,
        rtol=1e-5,
    )
    add_mask = torch.randn(T, S, generator=g)
    torch.testing.assert_close(
        attention(q, k, v, add_mask), F.scaled_dot_product_attention(q, k, v, attn_mask=add_mask), atol=1e-6, rtol=1e-5
    )


def test_attention_broadcasts_a_mask_per_batch_over_heads():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 6, 8, generator=g) for _ in range(3))
    mask = torch.rand(3, 1, 6, 6, generator=g) < 0.6
    torch.testing.assert_close(
        attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6, rtol=1e-5
    )


def test_mask_polarity_true_means_may_attend():
    q, k = torch.randn(1, 4), torch.randn(3, 4)
    v = torch.eye(3)
    out = attention(q, k, v, torch.tensor([[False, True, False]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0]]))


def test_a_fully_masked_row_gives_zeros_like_sdpa():
    q, k, v = torch.randn(2, 4, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1] = False
    out = attention(q, k, v, mask)
    assert not out.isnan().any()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6, rtol=1e-5)


def test_attention_weights_are_a_distribution_and_causal():
    q, k = torch.randn(2, 7, 5), torch.randn(2, 7, 5)
    w = attention_weights(q, k, causal_mask(7))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 7))
    assert (w.triu(diagonal=1) == 0).all()


def test_attention_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="last dimension"):
        attention(torch.randn(3, 4), torch.randn(3, 5), torch.randn(3, 5))
    with pytest.raises(ValueError, match="positions"):
        attention(torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 4))


def test_causal_mask_with_a_cache_offset():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    # two new queries after three cached keys: they sit at absolute positions 3 and 4
    assert causal_mask(2, 5).tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


class PlainMHA(nn.Module):
    """Multi-head attention written the textbook way: separate W_q, W_k, W_v, one loop over heads."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.q, self.k, self.v, self.o = (nn.Linear(n_embd, n_embd) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, hd = x.size(1), x.size(2) // self.n_head
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        heads = []
        for h in range(self.n_head):
            cols = slice(h * hd, (h + 1) * hd)
            q, k, v = self.q(x)[..., cols], self.k(x)[..., cols], self.v(x)[..., cols]
            scores = (q @ k.transpose(-2, -1) / math.sqrt(hd)).masked_fill(~mask, float("-inf"))
            heads.append(torch.softmax(scores, dim=-1) @ v)
        return self.o(torch.cat(heads, dim=-1))


def test_n_kv_head_equal_to_n_head_is_exactly_multi_head_attention():
    torch.manual_seed(0)
    plain, mha = PlainMHA(32, 4), MultiHeadAttention(32, 4, n_kv_head=4)
    with torch.no_grad():
        mha.c_attn.weight.copy_(torch.cat([plain.q.weight, plain.k.weight, plain.v.weight]))
        mha.c_attn.bias.copy_(torch.cat([plain.q.bias, plain.k.bias, plain.v.bias]))
        mha.c_proj.load_state_dict(plain.o.state_dict())
    x = torch.randn(3, 9, 32)
    torch.testing.assert_close(mha(x), plain(x), atol=1e-5, rtol=1e-4)
    # None means n_head too: the same module, the same parameter count
    assert MultiHeadAttention(32, 4).n_kv_head == 4


def test_gqa_equals_mha_with_each_kv_head_copied_to_its_group():
    torch.manual_seed(1)
    C, nh, nkv = 48, 6, 2
    hd, g = C // nh, nh // nkv
    gqa, mha = MultiHeadAttention(C, nh, nkv), MultiHeadAttention(C, nh, nh)
    wq, wk, wv = gqa.c_attn.weight.split([C, nkv * hd, nkv * hd])
    bq, bk, bv = gqa.c_attn.bias.split([C, nkv * hd, nkv * hd])

    def expand(t):  # (nkv*hd, ...) -> (nh*hd, ...): query head h reads kv head h // g
        return t.view(nkv, hd, *t.shape[1:]).repeat_interleave(g, dim=0).reshape(nh * hd, *t.shape[1:])

    with torch.no_grad():
        mha.c_attn.weight.copy_(torch.cat([wq, expand(wk), expand(wv)]))
        mha.c_attn.bias.copy_(torch.cat([bq, expand(bk), expand(bv)]))
        mha.c_proj.load_state_dict(gqa.c_proj.state_dict())
    x = torch.randn(2, 7, C)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("n_kv_head", [6, 3, 2, 1])
def test_gqa_and_mqa_shapes(n_kv_head):
    C, nh = 48, 6
    hd = C // nh
    m = MultiHeadAttention(C, nh, n_kv_head, bias=False)
    assert m.c_attn.weight.shape == ((nh + 2 * n_kv_head) * hd, C)
    x = torch.randn(2, 5, C)
    q, k, v = m.qkv(x)
    assert q.shape == (2, nh, 5, hd) and k.shape == v.shape == (2, n_kv_head, 5, hd)
    assert m(x).shape == (2, 5, C)
    assert m.attention_weights(x).shape == (2, nh, 5, 5)


def test_multi_head_parameter_count_does_not_depend_on_the_number_of_heads():
    counts = {nh: sum(p.numel() for p in MultiHeadAttention(64, nh).parameters()) for nh in (1, 2, 4, 8, 16)}
    assert len(set(counts.values())) == 1, counts
    assert counts[1] == 4 * 64 * 64 + 4 * 64


def test_bad_head_counts_raise_value_error():
    with pytest.raises(ValueError, match="n_head"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="n_kv_head"):
        MultiHeadAttention(32, 4, n_kv_head=3)


def _model(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=23, block_size=16, n_layer=2, n_head=4, n_embd=32)
    return GPT(GPTConfig(**(config | overrides))).eval()


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_kv_cache_bytes_follow_the_formula_and_mqa_is_one_over_n_head(n_kv_head):
    B, T = 3, 10
    model = _model(n_kv_head=n_kv_head)
    cache = KVCache(model.config.n_layer)
    model(torch.randint(0, 23, (B, T)), cache=cache)
    hd = model.config.n_embd // model.config.n_head
    # 2 (keys and values) x layers x batch x kv heads x positions x head width x 4 bytes (fp32)
    assert cache.nbytes() == 2 * model.config.n_layer * B * n_kv_head * T * hd * 4
    mha = KVCache(2)
    _model(n_kv_head=4)(torch.randint(0, 23, (B, T)), cache=mha)
    assert cache.nbytes() * 4 == mha.nbytes() * n_kv_head  # exact: MQA/MHA = 1/n_head


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "none"])
@pytest.mark.parametrize("n_kv_head", [4, 1])
def test_changing_a_future_token_never_changes_an_earlier_output(norm, pos, n_kv_head):
    model = _model(norm=norm, pos=pos, n_kv_head=n_kv_head)
    idx = torch.randint(0, 23, (2, 16))
    logits, _ = model(idx)
    for t in (0, 5, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1 + torch.randint(0, 22, (2,))) % 23
        new, _ = model(changed)
        torch.testing.assert_close(new[:, :t], logits[:, :t], atol=1e-6, rtol=0)
        assert not torch.allclose(new[:, t], logits[:, t]), "the changed position itself must change"


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_cached_logits_equal_uncached_logits(n_kv_head, pos):
    model = _model(n_kv_head=n_kv_head, pos=pos)
    idx = torch.randint(0, 23, (2, 12))
    full, _ = model(idx)
    cache = KVCache(model.config.n_layer)
    # a prompt of 5 tokens, a chunk of 3 (T > 1 with a cache), then one token at a time
    steps = [model(idx[:, :5], cache=cache)[0], model(idx[:, 5:8], cache=cache)[0]]
    steps += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(8, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    assert len(cache) == 12
