"""GPTConfig validation, the model's shapes and causality, parameter counting against the formula,
and equivalence with Hugging Face's GPT-2 (a tiny randomly initialised one, built offline)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from gptcourse.attention import KVCache
from gptcourse.generate import generate
from gptcourse.model import (
    GPT,
    PRESETS,
    Block,
    GPTConfig,
    PostNormBlock,
    config_of,
    count_params,
    make_block,
    preset_config,
)

TINY = dict(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("block_size", -1),
        ("n_layer", 1.5),
        ("n_head", True),
        ("n_kv_head", 3),
        ("dropout", 1.0),
        ("norm", "middle"),
        ("pos", "rotary"),
        ("attention", "banana"),
        ("ffn", "conv"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GPTConfig(**{**TINY, field: value})


def test_config_rejects_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="n_embd"):
        GPTConfig(**{**TINY, "n_head": 3})


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_block_keeps_shape_and_is_causal(norm):
    torch.manual_seed(0)
    block = make_block(GPTConfig(**TINY, norm=norm)).eval()
    x = torch.randn(3, 8, 16)
    y, aux = block(x)
    assert y.shape == x.shape and aux is None  # a dense MLP has no auxiliary loss
    x2 = x.clone()
    x2[:, 5:] = torch.randn(3, 3, 16)  # changing the future must not change the past
    torch.testing.assert_close(block(x2)[0][:, :5], y[:, :5])
    assert not torch.allclose(block(x2)[0][:, 5:], y[:, 5:])


def test_block_classes_are_chosen_by_config_norm():
    assert type(make_block(GPTConfig(**TINY, norm="pre"))) is Block
    assert type(make_block(GPTConfig(**TINY, norm="post"))) is PostNormBlock
    with pytest.raises(ValueError, match="make_block"):
        Block(GPTConfig(**TINY, norm="post"))
    with pytest.raises(ValueError, match="make_block"):
        PostNormBlock(GPTConfig(**TINY, norm="pre"))
    # both placements hold the same parameters, so one's weights load into the other
    pre, post = make_block(GPTConfig(**TINY, norm="pre")), make_block(GPTConfig(**TINY, norm="post"))
    post.load_state_dict(pre.state_dict(), strict=True)


def test_post_ln_block_output_is_normalised_and_pre_ln_is_not():
    torch.manual_seed(0)
    x = 3 * torch.randn(2, 8, 16) + 1
    post, _ = make_block(GPTConfig(**TINY, norm="post")).eval()(x)
    pre, _ = make_block(GPTConfig(**TINY, norm="pre")).eval()(x)
    torch.testing.assert_close(post.mean(-1), torch.zeros(2, 8), atol=1e-5, rtol=0)
    assert pre.std(-1).mean() > 2  # the residual stream passes through un-normalised


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_gpt_shapes_loss_and_causality(norm):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, norm=norm)).eval()
    idx = torch.randint(17, (4, 8))
    logits, loss = model(idx, idx)
    assert logits.shape == (4, 8, 17)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.reshape(-1, 17), idx.reshape(-1)))
    assert model(idx)[1] is None
    idx2 = idx.clone()
    idx2[:, 6:] = (idx2[:, 6:] + 1) % 17
    torch.testing.assert_close(model(idx2)[0][:, :6], logits[:, :6])
    assert not torch.allclose(model(idx2)[0][:, 6:], logits[:, 6:])


def test_idx_longer_than_block_size_is_a_clear_error():
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(ValueError, match="block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_output_layer_is_tied_to_the_token_embedding():
    model = GPT(GPTConfig(**TINY))
    assert model.lm_head.weight is model.transformer.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names  # counted once


def test_residual_projections_are_scaled_by_depth():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=17, block_size=8, n_layer=8, n_head=4, n_embd=256)
    std = GPT(config).transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(std - 0.02 / (2 * 8) ** 0.5) < 5e-4
    plain = GPT(GPTConfig(**{**config.to_dict(), "scale_residual_init": False}))
    assert abs(plain.transformer.h[0].mlp.c_proj.weight.std().item() - 0.02) < 5e-4


def _random_config(rng: random.Random) -> GPTConfig:
    n_head = rng.choice([1, 2, 3, 4, 6])
    return GPTConfig(
        vocab_size=rng.randint(2, 300),
        block_size=rng.randint(1, 64),
        n_layer=rng.randint(1, 4),
        n_head=n_head,
        n_embd=n_head * rng.randint(1, 12),
        n_kv_head=rng.choice([None] + [d for d in range(1, n_head + 1) if n_head % d == 0]),
        bias=rng.random() < 0.5,
        norm=rng.choice(["pre", "post"]),
        pos=rng.choice(["learned", "sinusoidal", "none"]),
        final_norm=rng.random() < 0.5,
    )


def test_count_params_equals_num_params_for_random_configs():
    rng = random.Random(0)
    seen = set()
    for _ in range(60):
        config = _random_config(rng)
        seen.add((config.kv_heads < config.n_head, config.bias, config.final_norm, config.pos))
        assert count_params(config) == GPT(config).num_params(), config
    assert len(seen) >= 12  # the variants were really exercised


def test_count_params_of_published_models():
    assert count_params(preset_config("gpt2")) == 124_439_808
    with torch.device("meta"):  # no memory is allocated on the meta device
        for name in PRESETS:
            config = preset_config(name)
            assert GPT(config).num_params() == count_params(config), name
    assert round(count_params(preset_config("gpt1")) / 1e6) == 117
    assert round(count_params(preset_config("gpt2-medium")) / 1e6) == 355
    assert round(count_params(preset_config("gpt2-large")) / 1e6) == 774
    assert round(count_params(preset_config("gpt2-xl")) / 1e8) == 16  # "1.5B" is 1.56B
    assert round(count_params(preset_config("gpt3")) / 1e9) == 175


def test_config_of_reads_a_gpt_and_names_a_module_without_one():
    model = GPT(GPTConfig(**TINY))
    assert config_of(model) is model.config
    with pytest.raises(TypeError, match="Linear has no GPTConfig"):
        config_of(torch.nn.Linear(2, 2))


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("gpt5")


# --- Hugging Face GPT-2 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_pair(transformers):
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(
        vocab_size=97, n_positions=32, n_embd=32, n_layer=3, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():  # HF zero-initialises biases and sets LayerNorms to 1/0: randomise them all
        for p in hf_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return hf_model, GPT.from_hf(hf_model)


def test_from_hf_gives_the_same_logits(hf_pair):
    hf_model, model = hf_pair
    idx = torch.randint(97, (3, 32))
    with torch.no_grad():
        expected = hf_model(idx).logits
        got, _ = model(idx)
    assert (got - expected).abs().max().item() <= 1e-5
    assert model.config.block_size == 32 and model.config.n_layer == 3


@pytest.mark.parametrize("use_cache", [True, False])
def test_from_hf_gives_the_same_greedy_continuation(hf_pair, use_cache):
    hf_model, model = hf_pair
    idx = torch.randint(97, (2, 5))
    ours = generate(model, idx, 20, temperature=0, use_cache=use_cache)
    theirs = hf_model.generate(
        idx, attention_mask=torch.ones_like(idx), max_new_tokens=20, do_sample=False, pad_token_id=0
    )
    assert torch.equal(ours, theirs)


def test_from_hf_rejects_other_models_and_unsupported_configs(transformers):
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        GPT.from_hf(torch.nn.Linear(2, 2))
    hf_config = transformers.GPT2Config(
        vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2, activation_function="relu"
    )
    with pytest.raises(ValueError, match="activation_function"):
        GPT.from_hf(transformers.GPT2LMHeadModel(hf_config))


def test_from_pretrained_rejects_unknown_names():
    with pytest.raises(ValueError, match="gpt2-medium"):
        GPT.from_pretrained("gpt-17")


def test_kv_cache_matches_full_forward_after_from_hf(hf_pair):
    _, model = hf_pair
    idx = torch.randint(97, (2, 12))
    full, _ = model(idx)
    cache = KVCache(model.config.n_layer)
    first, _ = model(idx[:, :7], cache=cache)
    rest, _ = model(idx[:, 7:], cache=cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("C", [8, 7])  # an odd width keeps the sine of its last even index
def test_sinusoidal_codes_are_the_transformers_sines_and_cosines(C):
    from gptcourse.layers import sinusoidal_positions

    def code(t: int, j: int) -> float:  # Vaswani et al. (2017), section 3.5, one value at a time
        angle = t / 10000 ** ((j - j % 2) / C)
        return math.sin(angle) if j % 2 == 0 else math.cos(angle)

    expected = torch.tensor([[code(t, j) for j in range(C)] for t in range(50)])
    torch.testing.assert_close(sinusoidal_positions(50, C), expected, atol=1e-5, rtol=1e-5)
    model = GPT(GPTConfig(vocab_size=11, block_size=50, n_layer=1, n_head=1, n_embd=C, pos="sinusoidal"))
    assert not any("wpe" in k for k in model.state_dict())  # computed, not learned: not saved
    torch.testing.assert_close(model.transformer.wpe(torch.arange(50)), expected, atol=1e-5, rtol=1e-5)
