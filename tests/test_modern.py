"""The modern recipe's switches (Part VII): rotary positions (``pos="rope"``), RMSNorm
(``norm_type="rmsnorm"``) and QK-norm (``qk_norm``), each against its definition, the KV cache and
the parameter formula; and the default configuration, whose parameters and outputs must not move."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcourse.attention import KVCache, MultiHeadAttention
from gptcourse.generate import generate
from gptcourse.layers import NoPositions, RMSNorm, Rotary, apply_rope, make_norm, rope_angles
from gptcourse.model import GPT, GPTConfig, count_params

TINY = dict(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)
MODERN = dict(vocab_size=23, block_size=12, n_layer=2, n_head=4, n_embd=32, pos="rope", norm_type="rmsnorm")


# --- RoPE --------------------------------------------------------------------------------------


def _rotate(x: torch.Tensor, positions: list[int], base: float = 10000.0) -> torch.Tensor:
    """Rotate row ``i`` of ``x`` ``(N, d)`` to position ``positions[i]``."""
    rows = []
    for row, p in zip(x, positions):
        cos, sin = rope_angles(1, x.size(-1), base, start=p)
        rows.append(apply_rope(row[None], cos, sin)[0])
    return torch.stack(rows)


@pytest.mark.parametrize("d", [2, 8, 64])
def test_rope_dot_product_depends_only_on_the_relative_position(d):
    g = torch.Generator().manual_seed(d)
    q, k = torch.randn(1, d, generator=g, dtype=torch.float64), torch.randn(1, d, generator=g, dtype=torch.float64)
    for m, n in [(0, 0), (3, 1), (1, 3), (7, 7), (20, 5)]:
        ref = (_rotate(q, [m]) @ _rotate(k, [n]).T).item()
        for s in (1, 5, 100, 1000):
            shifted = (_rotate(q, [m + s]) @ _rotate(k, [n + s]).T).item()
            assert shifted == pytest.approx(ref, rel=1e-4, abs=1e-4), (m, n, s)
    # ... and it does depend on it: the rotation is not the identity
    assert (_rotate(q, [0]) @ _rotate(k, [3]).T).item() != pytest.approx((q @ k.T).item(), abs=1e-3)


def test_rope_preserves_norms_and_position_zero_is_the_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 10, 16, generator=g)
    cos, sin = rope_angles(10, 16)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])  # angle 0 at position 0
    assert not torch.allclose(y[..., 1:, :], x[..., 1:, :])


def test_rope_angles_follow_the_formula_and_need_an_even_head_size():
    cos, sin = rope_angles(5, 8, base=100.0, start=3)
    t = torch.arange(3, 8, dtype=torch.float32)[:, None]
    theta = 100.0 ** (-torch.arange(0, 8, 2, dtype=torch.float32) / 8)
    torch.testing.assert_close(cos, torch.cos(t * theta))
    torch.testing.assert_close(sin, torch.sin(t * theta))
    with pytest.raises(ValueError, match="even"):
        rope_angles(4, 7)


def test_rotary_table_and_positions_past_it_agree():
    rotary = Rotary(8, max_len=4)
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 1, 3, 8)
    for start in (0, 1, 2, 6):  # within the table, crossing its end, past it
        cos, sin = rope_angles(3, 8, start=start)
        rq, rk = rotary(q, k, start)
        torch.testing.assert_close(rq, apply_rope(q, cos, sin))
        torch.testing.assert_close(rk, apply_rope(k, cos, sin))


def test_rope_gpt_has_no_position_parameters():
    model = GPT(GPTConfig(**MODERN))
    assert isinstance(model.transformer.wpe, NoPositions)
    assert not any("wpe" in name for name in model.state_dict())
    assert not any(name.startswith("transformer.wpe") for name, _ in model.named_parameters())
    assert all(isinstance(b.attn.rotary, Rotary) for b in model.transformer.h)
    assert not any("rotary" in name for name in model.state_dict())  # the angle table is not saved


@pytest.mark.parametrize("n_kv_head, qk_norm", [(None, False), (2, True), (1, False)])
def test_rope_gpt_cached_decoding_equals_the_full_forward(n_kv_head, qk_norm):
    torch.manual_seed(0)
    config = GPTConfig(**MODERN, n_kv_head=n_kv_head, qk_norm=qk_norm)
    model = GPT(config).eval()
    idx = torch.randint(config.vocab_size, (2, config.block_size))
    full, _ = model(idx)
    # one token at a time, to the last position of the block
    cache = KVCache(config.n_layer)
    steps = [model(idx[:, t : t + 1], cache=cache)[0] for t in range(config.block_size)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    # a prompt, a chunk after the cache (offset positions and the offset mask), then single tokens
    cache = KVCache(config.n_layer)
    parts = [model(idx[:, :3], cache=cache)[0], model(idx[:, 3:8], cache=cache)[0]]
    parts += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(8, config.block_size)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)
    # a wrong offset (positions restarting at 0 for the chunk) gives different logits: the test can fail
    restarted, _ = model(idx[:, 3:8])
    assert not torch.allclose(restarted, full[:, 3:8], atol=1e-3)


def test_rope_attention_with_a_cache_past_its_angle_table():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 2, rope_base=10000.0, max_len=4).eval()
    x = torch.randn(1, 10, 16)
    full = attn(x)
    cache = KVCache(1).layer(0)
    parts = [attn(x[:, :3], cache), attn(x[:, 3:6], cache)] + [attn(x[:, t : t + 1], cache) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)


def test_rope_gpt_generates_the_same_with_and_without_the_cache_past_block_size():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODERN)).eval()
    prompt = torch.randint(23, (1, 3))
    kwargs = dict(max_new_tokens=20, temperature=0.0)
    torch.testing.assert_close(generate(model, prompt, **kwargs), generate(model, prompt, use_cache=False, **kwargs))


def test_rope_gpt_is_causal():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODERN)).eval()
    idx = torch.randint(23, (2, 12))
    logits, _ = model(idx)
    idx2 = idx.clone()
    idx2[:, 7:] = (idx2[:, 7:] + 1) % 23
    torch.testing.assert_close(model(idx2)[0][:, :7], logits[:, :7])


# --- RMSNorm -----------------------------------------------------------------------------------


def test_rmsnorm_equals_the_hand_calculation_and_torch():
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(6, eps=1e-5)  # the default is 1e-6
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6, generator=g))
    x = 3 * torch.randn(4, 5, 6, generator=g) + 1
    by_hand = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), by_hand)
    if hasattr(F, "rms_norm"):
        torch.testing.assert_close(norm(x), F.rms_norm(x, (6,), norm.weight, eps=1e-5))
    # no mean subtraction (unlike LayerNorm), and a gain but no bias
    assert [name for name, _ in norm.named_parameters()] == ["weight"]
    torch.testing.assert_close(RMSNorm(6)(x).pow(2).mean(-1), torch.ones(4, 5), atol=1e-4, rtol=0)
    assert norm(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_make_norm_chooses_the_class_at_construction():
    assert isinstance(make_norm(GPTConfig(**TINY), 16), nn.LayerNorm)
    assert make_norm(GPTConfig(**TINY, bias=False), 16).bias is None
    assert isinstance(make_norm(GPTConfig(**TINY, norm_type="rmsnorm"), 16), RMSNorm)
    model = GPT(GPTConfig(**TINY, norm_type="rmsnorm"))
    for block in model.transformer.h:
        assert isinstance(block.ln_1, RMSNorm) and isinstance(block.ln_2, RMSNorm)
    assert isinstance(model.transformer.ln_f, RMSNorm)
    assert not any(name.endswith("ln_1.bias") for name in model.state_dict())


# --- QK-norm -----------------------------------------------------------------------------------


def test_qk_norm_gives_each_head_unit_rms_before_the_gains():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODERN, qk_norm=True, n_kv_head=2)).eval()
    attn = model.transformer.h[1].attn
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (attn.head_dim,)
    with torch.no_grad():
        for p in (attn.q_norm.weight, attn.k_norm.weight):
            p.copy_(torch.rand(attn.head_dim) + 0.5)
    seen = {}
    hooks = [
        m.register_forward_hook(lambda m, args, out, key=key: seen.__setitem__(key, (args[0], out / m.weight)))
        for key, m in (("q", attn.q_norm), ("k", attn.k_norm))
    ]
    model(torch.randint(23, (2, 12)))
    for h in hooks:
        h.remove()
    assert seen["q"][1].shape == (2, 4, 12, 8) and seen["k"][1].shape == (2, 2, 12, 8)
    for key in "qk":
        x, normed = seen[key]
        assert x.pow(2).mean(-1).sqrt().max() < 0.5  # the projections' output is far from unit RMS
        rms = normed.pow(2).mean(-1).sqrt()
        torch.testing.assert_close(rms, torch.ones_like(rms), atol=2e-3, rtol=0)  # eps keeps it a hair under 1


def test_a_gpt_with_qk_norm_trains():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODERN, qk_norm=True))
    data = torch.randint(23, (4, 13))
    x, y = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert model.transformer.h[0].attn.q_norm.weight.grad is not None


# --- configuration, parameter count, the default unchanged -----------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pos="rotary"), "pos"),
        (dict(norm_type="batchnorm"), "norm_type"),
        (dict(norm_type="RMSNorm"), "norm_type"),
        (dict(qk_norm=1), "qk_norm"),
        (dict(pos="rope", n_embd=15, n_head=3), "even head size"),
        (dict(pos="rope", rope_base=0.5), "rope_base"),
        (dict(pos="rope", rope_base=True), "rope_base"),
    ],
)
def test_config_rejects_bad_modern_values_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**TINY, **kwargs})


def test_count_params_equals_num_params_for_the_modern_options():
    rng = random.Random(0)
    seen = set()
    for i in range(40):
        pos, norm_type, qk_norm = ("learned", "rope")[i % 2], ("layernorm", "rmsnorm")[i // 2 % 2], i // 4 % 2 == 1
        n_head = rng.choice([1, 2, 4])
        config = GPTConfig(
            vocab_size=rng.randint(2, 100),
            block_size=rng.randint(1, 32),
            n_layer=rng.randint(1, 3),
            n_head=n_head,
            n_embd=n_head * 2 * rng.randint(1, 6),
            n_kv_head=rng.choice([None, 1]),
            bias=rng.random() < 0.5,
            norm=rng.choice(["pre", "post"]),
            pos=pos,
            norm_type=norm_type,
            qk_norm=qk_norm,
            final_norm=rng.random() < 0.5,
        )
        seen.add((config.pos, config.norm_type, config.qk_norm))
        assert count_params(config) == GPT(config).num_params(), config
    assert len(seen) == 8


def test_to_dict_leaves_out_the_modern_fields_at_their_defaults():
    default = GPTConfig(**TINY)
    assert not {"rope_base", "norm_type", "qk_norm"} & set(default.to_dict())
    assert GPTConfig(**default.to_dict()) == default
    modern = GPTConfig(**MODERN, qk_norm=True, rope_base=500.0)
    d = modern.to_dict()
    assert (d["pos"], d["norm_type"], d["qk_norm"], d["rope_base"]) == ("rope", "rmsnorm", True, 500.0)
    assert GPTConfig(**d) == modern


# listed from the code before the modern switches existed
DEFAULT_KEYS = (
    ["transformer.wte.weight"]
    + [
        f"transformer.h.{i}.{name}"
        for i in range(2)
        for name in (
            "ln_1.weight",
            "ln_1.bias",
            "attn.c_attn.weight",
            "attn.c_attn.bias",
            "attn.c_proj.weight",
            "attn.c_proj.bias",
            "ln_2.weight",
            "ln_2.bias",
            "mlp.c_fc.weight",
            "mlp.c_fc.bias",
            "mlp.c_proj.weight",
            "mlp.c_proj.bias",
        )
    ]
    + ["transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"]
)


def test_the_default_config_keeps_its_state_dict_and_seeded_outputs():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    assert list(model.state_dict()) == DEFAULT_KEYS
    torch.manual_seed(1)
    idx = torch.randint(17, (2, 8))
    _, train_loss = model(idx, idx)
    logits, _ = model.eval()(idx)
    # values printed by the code before the modern switches existed (same seeds)
    expected = torch.tensor(
        [
            [0.06319869, 0.12802885, 0.15362269, -0.08743378],
            [0.02538298, 0.01174904, 0.08506676, -0.04769312],
            [-0.03690433, -0.14638591, -0.09977888, -0.08431158],
        ]
    )
    torch.testing.assert_close(logits[0, :3, :4], expected, atol=1e-7, rtol=1e-6)
    assert logits.sum().item() == pytest.approx(0.532072126865387, abs=1e-6)
    assert train_loss.item() == pytest.approx(2.6567673683166504, abs=1e-6)
    for block in model.transformer.h:  # no norm, no rotation inside attention
        assert isinstance(block.attn.q_norm, nn.Identity) and isinstance(block.attn.k_norm, nn.Identity)
        assert not isinstance(block.attn.rotary, Rotary)
