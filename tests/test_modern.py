"""The modern recipe's switches (Part VII): rotary positions (``pos="rope"``), RMSNorm
(``norm_type="rmsnorm"``) and QK-norm (``qk_norm``), each against its definition, the KV cache and
the parameter formula; and the default configuration, whose parameters and outputs must not move."""

from __future__ import annotations

import itertools
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


# --- the feed-forward variants: SwiGLU and ReLU² (mlp) ---------------------------------------


def test_make_mlp_chooses_the_class_and_keeps_the_names():
    from gptcourse.layers import MLP, ReLU2MLP, SwiGLU, make_mlp

    assert type(make_mlp(GPTConfig(**TINY))) is MLP
    assert type(make_mlp(GPTConfig(**TINY, mlp="relu2"))) is ReLU2MLP
    swiglu = make_mlp(GPTConfig(**TINY, mlp="swiglu"))
    assert isinstance(swiglu, SwiGLU)
    assert [n for n, _ in swiglu.named_parameters()] == [
        "c_fc.weight",
        "c_fc.bias",
        "c_gate.weight",
        "c_gate.bias",
        "c_proj.weight",
        "c_proj.bias",
    ]
    model = GPT(GPTConfig(**TINY, mlp="swiglu"))
    assert all(isinstance(b.mlp, SwiGLU) for b in model.transformer.h)
    # the residual projection gets GPT-2's scaled init, the gate the plain one
    assert model.transformer.h[0].mlp.c_proj.weight.std() < 0.75 * model.transformer.h[0].mlp.c_gate.weight.std()


def test_swiglu_hidden_is_two_thirds_of_the_gelu_width_rounded_to_8():
    from gptcourse.layers import swiglu_hidden

    assert swiglu_hidden(4 * 768) == 2048  # 8C/3 exactly, a multiple of 8
    assert swiglu_hidden(4 * 16) == 40  # 42.67 -> 40
    assert swiglu_hidden(4 * 32) == 88  # 85.33 -> 88
    assert swiglu_hidden(4) == 8  # at least one multiple
    for C in range(2, 200):  # from C = 2 on (8C/3 >= 4), the nearest multiple of 8
        h = swiglu_hidden(4 * C)
        assert h % 8 == 0 and abs(h - 8 * C / 3) <= 4


@pytest.mark.parametrize("C", [16, 32, 48, 64, 96, 384, 768])
@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_has_the_parameters_of_the_gelu_mlp_within_one_rounding_step(C, bias):
    from gptcourse.layers import MLP, SwiGLU

    config = GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=4, n_embd=C, bias=bias)
    gelu = sum(p.numel() for p in MLP(config).parameters())
    swiglu = sum(p.numel() for p in SwiGLU(config).parameters())
    # weights 3 C h' against 8 C^2 with |h' - 8C/3| <= 4 (half a step of 8); the SwiGLU's biases
    # (2h' + C against 4C + C) add about 4C/3
    bound = 12 * C + (4 * C // 3 + 8 if bias else 0)
    assert abs(swiglu - gelu) <= bound, (swiglu, gelu)
    assert abs(swiglu - gelu) / gelu < (0.03 if C >= 64 else 0.2)
    if C % 3 == 0 and (8 * C // 3) % 8 == 0 and not bias:
        assert swiglu == gelu  # e.g. C = 384, 768: exactly equal
    d = dict(vocab_size=5, block_size=4, n_layer=2, n_head=4, n_embd=C, bias=bias)
    assert count_params(GPTConfig(**d, mlp="swiglu")) == GPT(GPTConfig(**d, mlp="swiglu")).num_params()


def test_swiglu_equals_its_formula():
    from gptcourse.layers import SwiGLU

    torch.manual_seed(0)
    mlp = SwiGLU(GPTConfig(**TINY)).eval()
    x = torch.randn(2, 3, 16)
    a, b = x @ mlp.c_gate.weight.T + mlp.c_gate.bias, x @ mlp.c_fc.weight.T + mlp.c_fc.bias
    by_hand = (a * torch.sigmoid(a) * b) @ mlp.c_proj.weight.T + mlp.c_proj.bias
    torch.testing.assert_close(mlp(x), by_hand)


def test_relu2_mlp_by_hand_and_same_shape_as_gelu():
    from gptcourse.layers import MLP, ReLU2MLP

    config = GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=2)
    mlp = ReLU2MLP(config).eval()
    with torch.no_grad():
        mlp.c_fc.weight.copy_(
            torch.tensor(
                [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 2.0], [0.5, -1.0], [0.0, 0.0], [2.0, 0.0], [0.0, -3.0]]
            )
        )
        mlp.c_fc.bias.zero_()
        mlp.c_proj.weight.copy_(torch.tensor([[1.0] * 8, [1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]))
        mlp.c_proj.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[3.0, -2.0]])
    # hidden before the square: 3, -2, 1, -7, 3.5, 0, 6, 6 -> ReLU² 9, 0, 1, 0, 12.25, 0, 36, 36
    assert mlp(x).tolist() == [[9 + 1 + 12.25 + 36 + 36 + 0.5, 9.0]]
    gelu = MLP(config)
    assert {n: p.shape for n, p in mlp.named_parameters()} == {n: p.shape for n, p in gelu.named_parameters()}
    for kw in (dict(), dict(bias=False), dict(n_kv_head=1)):
        d = {**TINY, **kw}
        assert count_params(GPTConfig(**d, mlp="relu2")) == count_params(GPTConfig(**d))


def test_a_gpt_trains_with_each_mlp():
    for mlp in ("swiglu", "relu2"):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**MODERN, mlp=mlp))
        data = torch.randint(23, (4, 13))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(25):
            _, loss = model(data[:, :-1], data[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.7 * losses[0], (mlp, losses)


# --- untied embeddings (tie_embeddings=False) ---------------------------------------------------


def test_untied_head_has_its_own_parameter_and_state_dict_tensor():
    torch.manual_seed(0)
    tied, untied = GPT(GPTConfig(**TINY)), GPT(GPTConfig(**TINY, tie_embeddings=False))
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert "lm_head.weight" not in dict(tied.named_parameters())  # listed once, as transformer.wte.weight
    assert "lm_head.weight" in dict(untied.named_parameters())
    sd = untied.state_dict()
    assert list(sd) == DEFAULT_KEYS  # the same keys: a tied checkpoint loads into an untied model
    assert sd["lm_head.weight"].data_ptr() != sd["transformer.wte.weight"].data_ptr()
    assert not torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"])
    assert untied.num_params() == tied.num_params() + 17 * 16
    # GPT-2's init for matrices: N(0, 0.02)
    w = GPT(
        GPTConfig(vocab_size=500, block_size=4, n_layer=1, n_head=2, n_embd=64, tie_embeddings=False)
    ).lm_head.weight
    assert w.mean().abs() < 2e-3 and abs(w.std().item() - 0.02) < 1e-3
    # training moves the two matrices apart; the gradient of the head no longer reaches wte
    idx = torch.randint(17, (2, 8))
    untied(idx, idx)[1].backward()
    assert untied.lm_head.weight.grad is not None and untied.transformer.wte.weight.grad is not None
    untied.load_state_dict(tied.state_dict())
    torch.testing.assert_close(untied.eval()(idx)[0], tied.eval()(idx)[0])


# --- logit soft-capping (logit_softcap) --------------------------------------------------------


def test_softcap_bounds_the_logits_and_equals_the_tanh_formula():
    from gptcourse.layers import SoftCap

    torch.manual_seed(0)
    plain = GPT(GPTConfig(**TINY)).eval()
    torch.manual_seed(0)
    capped = GPT(GPTConfig(**TINY, logit_softcap=0.05)).eval()
    assert isinstance(capped.softcap, SoftCap) and isinstance(plain.softcap, nn.Identity)
    assert list(capped.state_dict()) == DEFAULT_KEYS  # no parameters, the same seeded weights
    idx = torch.randint(17, (2, 8))
    raw, _ = plain(idx)
    logits, loss = capped(idx, idx)
    assert raw.abs().max() > 0.05  # the cap is active
    assert logits.abs().max() <= 0.05
    torch.testing.assert_close(logits, 0.05 * torch.tanh(raw / 0.05))
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, 17), idx.view(-1)))  # before the loss
    last, _ = capped(idx, last_only=True)  # and for sampling
    torch.testing.assert_close(last, logits[:, -1:])
    # a large cap changes almost nothing: tanh(x) ~ x for small x
    big = SoftCap(1e4)
    torch.testing.assert_close(big(raw), raw, atol=1e-6, rtol=1e-5)


def test_softcap_applies_when_sampling():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, logit_softcap=0.01)).eval()
    seen = []
    model.softcap.register_forward_hook(lambda m, args, out: seen.append(out))
    out = generate(model, torch.zeros(1, 1, dtype=torch.long), max_new_tokens=3, temperature=0.0)
    assert out.shape == (1, 4) and len(seen) == 3
    assert all(t.abs().max() <= 0.01 for t in seen)


# --- sliding-window layers mixed with global ones (window_pattern) ------------------------------


def test_window_pattern_repeats_over_the_layers():
    config = GPTConfig(**{**TINY, "n_layer": 6}, window_pattern="SSL", attn_window=3)
    assert [config.layer_attention(i) for i in range(6)] == ["local", "local", "dense"] * 2
    # "LS" is GPT-3's alternation
    a = GPTConfig(**{**TINY, "n_layer": 5}, window_pattern="LS")
    b = GPTConfig(**{**TINY, "n_layer": 5}, attention="alternating")
    assert [a.layer_attention(i) for i in range(5)] == [b.layer_attention(i) for i in range(5)]


def test_window_pattern_masks_per_layer():
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=17, block_size=10, n_layer=4, n_head=2, n_embd=16, window_pattern="SSSL", attn_window=3
    )
    model = GPT(config).eval()
    masks = model.attention_masks(10, 10, torch.device("cpu"))
    assert masks[3] is None  # the global layer: causal, left to the fused kernel
    assert masks[0] is masks[1] is masks[2]  # one local mask, shared
    i, j = torch.arange(10)[:, None], torch.arange(10)[None, :]
    assert torch.equal(masks[0], (j <= i) & (i - j < 3))
    # a query cannot see past the window in S layers ...
    x = torch.randn(1, 10, 16)
    attn = model.transformer.h[0].attn
    w = attn.attention_weights(x, masks[0])
    assert (w[0, :, 9, :7] == 0).all() and (w[0, :, 9, 7:] > 0).all()
    # ... and sees everything before it in L layers
    w = model.transformer.h[3].attn.attention_weights(x)
    assert (w[0, :, 9, :] > 0).all() and (w[0, :, 0, 1:] == 0).all()
    # the whole model: the last logits depend on token 0 only through the global layer
    idx = torch.randint(17, (1, 10))
    idx2 = idx.clone()
    idx2[0, 0] = (idx2[0, 0] + 1) % 17
    all_local = GPT(GPTConfig(**{**config.to_dict(), "window_pattern": "S", "n_layer": 2, "attn_window": 2})).eval()
    assert torch.equal(all_local(idx)[0][:, -1], all_local(idx2)[0][:, -1])  # 2 local layers reach back 2
    assert not torch.allclose(model(idx)[0][:, -1], model(idx2)[0][:, -1])


@pytest.mark.parametrize("pattern, pos", [("SSSL", "learned"), ("SL", "rope"), ("S", "rope")])
def test_window_pattern_cached_decoding_equals_the_full_forward(pattern, pos):
    torch.manual_seed(0)
    config = GPTConfig(**{**MODERN, "n_layer": 4, "pos": pos}, window_pattern=pattern, attn_window=3)
    model = GPT(config).eval()
    idx = torch.randint(config.vocab_size, (2, config.block_size))
    full, _ = model(idx)
    cache = KVCache(config.n_layer)
    parts = [model(idx[:, :4], cache=cache)[0], model(idx[:, 4:9], cache=cache)[0]]
    parts += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(9, config.block_size)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)
    # the window matters: a dense model with the same weights gives other logits
    dense = GPT(GPTConfig(**{**MODERN, "n_layer": 4, "pos": pos})).eval()
    dense.load_state_dict(model.state_dict())
    assert not torch.allclose(dense(idx)[0][:, 6:], full[:, 6:], atol=1e-4)


def test_kv_cache_bytes_counts_only_the_window_in_sliding_layers():
    from gptcourse.model import kv_cache_bytes

    base = dict(vocab_size=17, block_size=1024, n_layer=4, n_head=4, n_embd=64, n_kv_head=2)
    dense = GPTConfig(**base)
    per_position = 2 * 2 * 16 * 2  # keys and values, 2 kv heads, hd 16, bf16
    assert kv_cache_bytes(dense, 1000) == 4 * 1000 * per_position
    sssl = GPTConfig(**base, window_pattern="SSSL", attn_window=128)
    assert kv_cache_bytes(sssl, 1000) == (3 * 128 + 1000) * per_position
    assert kv_cache_bytes(sssl, 100) == kv_cache_bytes(dense, 100)  # shorter than the window: no saving
    assert kv_cache_bytes(sssl, 1000, dtype_bytes=4, batch_size=3) == 6 * kv_cache_bytes(sssl, 1000)
    # the dense figure is what KVCache actually holds (it keeps every position in every layer)
    model = GPT(dense).eval()
    cache = KVCache(4)
    model(torch.randint(17, (1, 10)), cache=cache)
    assert cache.nbytes() == kv_cache_bytes(dense, 10, dtype_bytes=4)
    with pytest.raises(ValueError, match="T must be"):
        kv_cache_bytes(dense, -1)


# --- the new fields: validation, to_dict, count_params ------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mlp="geglu"), "mlp"),
        (dict(mlp="SwiGLU"), "mlp"),
        (dict(mlp="swiglu", ffn="moe"), "mlp"),
        (dict(tie_embeddings=0), "tie_embeddings"),
        (dict(logit_softcap=0.0), "logit_softcap"),
        (dict(logit_softcap=-30.0), "logit_softcap"),
        (dict(logit_softcap=True), "logit_softcap"),
        (dict(logit_softcap="30"), "logit_softcap"),
        (dict(window_pattern=""), "window_pattern"),
        (dict(window_pattern="SSxL"), "window_pattern"),
        (dict(window_pattern="ssl"), "window_pattern"),
        (dict(window_pattern=["S", "L"]), "window_pattern"),
        (dict(window_pattern="SL", attention="local"), "attention='dense'"),
        (dict(window_pattern="SL", attn_window=0), "attn_window"),
    ],
)
def test_config_rejects_bad_values_of_the_new_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**TINY, **kwargs})


def test_moe_with_the_default_mlp_still_builds():
    model = GPT(GPTConfig(**TINY, ffn="moe", n_expert=2, expert_top_k=1))
    assert model(torch.randint(17, (1, 4)))[0].shape == (1, 4, 17)


def test_count_params_equals_num_params_for_every_modern_option():
    """Every combination of the switches that change parameters, each at random sizes and with the
    switches that do not (soft-cap, window pattern, final norm) drawn at random."""
    rng = random.Random(1)
    combinations = itertools.product(
        ("learned", "rope"), ("layernorm", "rmsnorm"), (False, True), ("gelu", "swiglu", "relu2"), (True, False)
    )
    for pos, norm_type, qk_norm, mlp, tie in combinations:
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
            final_norm=rng.random() < 0.5,
            pos=pos,
            norm_type=norm_type,
            qk_norm=qk_norm,
            mlp=mlp,
            tie_embeddings=tie,
            logit_softcap=rng.choice([None, 15.0]),
            window_pattern=rng.choice([None, "SL", "SSSL"]),
            attn_window=rng.randint(1, 8),
        )
        assert count_params(config) == GPT(config).num_params(), config


def test_to_dict_leaves_out_the_new_fields_at_their_defaults():
    new = {"mlp", "tie_embeddings", "logit_softcap", "window_pattern"}
    default = GPTConfig(**TINY)
    assert not new & set(default.to_dict())
    changed = GPTConfig(**TINY, mlp="relu2", tie_embeddings=False, logit_softcap=30.0, window_pattern="SSSL")
    d = changed.to_dict()
    assert {k: d[k] for k in new} == dict(mlp="relu2", tie_embeddings=False, logit_softcap=30.0, window_pattern="SSSL")
    assert GPTConfig(**d) == changed
