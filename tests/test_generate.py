"""Sampling: greedy with and without the KV cache, temperature 0, top-k / top-p masks checked
against a brute-force definition, the repetition penalty, and the errors."""

from __future__ import annotations

import pytest
import torch

from gptcourse.generate import apply_repetition_penalty, context_start, filter_logits, generate
from gptcourse.model import GPT, GPTConfig


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=31, block_size=16, n_layer=2, n_head=4, n_embd=32, n_kv_head=2))


def test_greedy_is_identical_with_and_without_the_cache_even_past_block_size(model):
    idx = torch.randint(0, 31, (3, 5), generator=torch.Generator().manual_seed(1))
    cached = generate(model, idx, 30, temperature=0, use_cache=True)  # 35 > block_size: cropping
    plain = generate(model, idx, 30, temperature=0, use_cache=False)
    assert cached.shape == (3, 35) and torch.equal(cached, plain) and torch.equal(cached[:, :5], idx)
    # greedy really is the arg-max of a full forward pass over the context at every step: the whole
    # sequence while it fits, then (past block_size = 16) the window that context_start keeps
    start = 0
    for t in range(5, 35):
        start = context_start(start, t, 16)
        logits, _ = model(cached[:, start:t])
        assert torch.equal(logits[:, -1].argmax(-1), cached[:, t])


def test_the_context_keeps_its_last_half_when_it_fills_up():
    starts, start = [], 0
    for length in range(1, 41):
        start = context_start(start, length, 16)
        starts.append(start)
    assert starts[:16] == [0] * 16  # the first 16 tokens fit
    assert starts[16] == 17 - 8 and starts[16:25] == [9] * 9  # token 17 overflows: keep the last 8, then grow
    assert starts[25] == 26 - 8  # full again at 16 + 9 = 25 tokens
    assert all(length - s <= 16 for length, s in zip(range(1, 41), starts))
    assert context_start(0, 2, 1) == 1  # a one-token window keeps one token


def test_temperature_zero_is_deterministic_and_sampling_follows_the_generator(model):
    idx = torch.zeros((2, 1), dtype=torch.long)
    a = generate(model, idx, 12, temperature=0, generator=torch.Generator().manual_seed(1))
    b = generate(model, idx, 12, temperature=0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    s1 = generate(model, idx, 12, temperature=1.0, generator=torch.Generator().manual_seed(3))
    s2 = generate(model, idx, 12, temperature=1.0, generator=torch.Generator().manual_seed(3), use_cache=False)
    s3 = generate(model, idx, 12, temperature=1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    assert model.training  # generate restores the mode it found


def test_temperature_scales_the_logits():
    logits = torch.randn(4, 50)
    torch.testing.assert_close(filter_logits(logits, temperature=0.5), logits / 0.5)
    p_hot = torch.softmax(filter_logits(logits, temperature=5.0), -1)
    p_cold = torch.softmax(filter_logits(logits, temperature=0.2), -1)
    entropy = lambda p: -(p * p.clamp_min(1e-30).log()).sum(-1)  # noqa: E731
    assert (entropy(p_hot) > entropy(torch.softmax(logits, -1))).all()
    assert (entropy(p_cold) < entropy(torch.softmax(logits, -1))).all()


@pytest.mark.parametrize("k", [1, 3, 10, 50, 80])
def test_top_k_keeps_exactly_the_k_largest(k):
    logits = torch.randn(6, 50)
    kept = filter_logits(logits, top_k=k).isfinite()
    expected = torch.zeros_like(kept).scatter(-1, logits.topk(min(k, 50), -1).indices, True)
    assert torch.equal(kept, expected)
    torch.testing.assert_close(filter_logits(logits, top_k=k)[kept], logits[kept])


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 1.0])
def test_top_p_keeps_the_smallest_prefix_reaching_p(p):
    logits = torch.randn(6, 40) * 2
    kept = filter_logits(logits, top_p=p).isfinite()
    probs = torch.softmax(logits, -1)
    for row in range(6):
        order = probs[row].argsort(descending=True)
        cumulative = probs[row][order].cumsum(0)
        n = int((cumulative < p).sum()) + 1  # brute force: first prefix whose mass reaches p
        n = min(n, 40)
        assert set(order[:n].tolist()) == set(kept[row].nonzero().flatten().tolist())


def test_repetition_penalty_lowers_seen_tokens_only():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
    assert apply_repetition_penalty(logits, torch.tensor([[0]]), 1.0) is logits


def test_repetition_penalty_breaks_greedy_loops(model):
    idx = torch.zeros((1, 1), dtype=torch.long)
    plain = generate(model, idx, 15, temperature=0)[0].tolist()
    penalised = generate(model, idx, 15, temperature=0, repetition_penalty=50.0)[0].tolist()
    assert len(set(penalised)) > len(set(plain))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=0, temperature=1.0), "top_k"),
        (dict(top_p=0.0, temperature=1.0), "top_p"),
        (dict(top_p=1.5, temperature=1.0), "top_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
    ],
)
def test_bad_arguments_raise_value_errors(model, kwargs, match):
    args = dict(max_new_tokens=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate(model, torch.zeros((1, 1), dtype=torch.long), **args)


def test_bad_context_raises(model):
    with pytest.raises(ValueError, match="idx"):
        generate(model, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="temperature"):
        filter_logits(torch.randn(1, 5), temperature=0)


def test_generate_restores_training_mode_when_the_model_raises(model):
    model.train()
    with pytest.raises(IndexError):
        generate(model, torch.full((1, 3), 99), 2)  # 99 is outside the vocabulary of 31
    assert model.training
