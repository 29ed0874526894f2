"""The neural language model of Chapter 3: training pairs, cross-entropy against torch's, the
bigram network against the bigram counts it should learn, and the MLP learning a pattern."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gptcourse.neural_lm import MLPLM, BigramLM, context_windows, cross_entropy, evaluate, fit, perplexity, train_step


def test_context_windows_each_position_predicts_the_next():
    ids = torch.arange(10, 20)
    x, y = context_windows(ids, 3)
    assert x.shape == (7, 3) and y.shape == (7,) and x.dtype == y.dtype == torch.long
    for i in range(7):
        assert x[i].tolist() == list(range(10 + i, 13 + i)) and y[i].item() == 13 + i


@pytest.mark.parametrize("args", [(torch.arange(3), 3), (torch.arange(5), 0), (torch.zeros(2, 5), 1)])
def test_context_windows_bad_input(args):
    with pytest.raises(ValueError):
        context_windows(*args)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_cross_entropy_matches_torch_even_for_large_logits(scale):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g, dtype=torch.float64) * scale
    targets = torch.randint(50, (64,), generator=g)
    ours = cross_entropy(logits, targets)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, F.cross_entropy(logits, targets))


def test_cross_entropy_of_uniform_logits_is_log_v():
    assert cross_entropy(torch.zeros(4, 65), torch.tensor([0, 1, 2, 64])).item() == pytest.approx(math.log(65))
    assert perplexity(math.log(65)) == pytest.approx(65)


def test_bigram_network_learns_the_bigram_counts():
    """Minimising cross-entropy drives softmax(table[a]) to the maximum-likelihood counts."""
    g = torch.Generator().manual_seed(0)
    # a Markov chain over 5 tokens with a known transition matrix
    transition = torch.softmax(torch.randn(5, 5, generator=g) * 2, dim=1)
    ids = [0]
    for _ in range(5000):
        ids.append(torch.multinomial(transition[ids[-1]], 1, generator=g).item())
    x, y = context_windows(torch.tensor(ids), 1)
    counts = torch.zeros(5, 5).index_put_((x[:, 0], y), torch.ones(len(y)), accumulate=True)
    mle = counts / counts.sum(1, keepdim=True)
    model = BigramLM(5)
    assert evaluate(model, x, y) == pytest.approx(math.log(5))  # zero table: uniform
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(300):
        train_step(model, optimizer, x, y)  # full batch
    torch.testing.assert_close(torch.softmax(model.table.detach(), 1), mle, atol=0.01, rtol=0)


def test_mlp_shapes_initial_loss_and_bad_input():
    torch.manual_seed(0)
    model = MLPLM(vocab_size=30, context=4, n_embd=8, n_hidden=32)
    idx = torch.randint(30, (16, 4))
    logits, loss = model(idx, torch.randint(30, (16,)))
    assert logits.shape == (16, 30)
    assert loss.item() == pytest.approx(math.log(30), abs=0.05)  # small output weights: near uniform
    assert model(idx)[1] is None
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        model(torch.randint(30, (16, 3)))
    with pytest.raises(ValueError, match="n_embd"):
        MLPLM(30, 4, 0, 32)


def test_mlp_learns_a_pattern_a_bigram_cannot():
    # "abcb abcb ...": after 'b' comes 'c' or 'a' depending on the token before it
    ids = torch.tensor([0, 1, 2, 1] * 200)
    x, y = context_windows(ids, 2)
    torch.manual_seed(0)
    mlp = MLPLM(3, context=2, n_embd=4, n_hidden=16)
    history = fit(mlp, x, y, steps=300, batch_size=32, lr=3e-2, x_val=x, y_val=y, eval_interval=100)
    assert history["val"][-1] < 0.05 and len(history["train"]) == 300 and history["val_steps"] == [100, 200, 300]
    xb, yb = context_windows(ids, 1)
    bigram = BigramLM(3)
    fit(bigram, xb, yb, steps=300, batch_size=32, lr=0.1)
    assert evaluate(bigram, xb, yb) > 0.3  # log 2 / 2 ≈ 0.35 is the best a bigram can do here


def test_train_step_updates_and_lowers_the_loss():
    torch.manual_seed(0)
    model = MLPLM(10, context=2, n_embd=4, n_hidden=8)
    x, y = torch.randint(10, (32, 2)), torch.randint(10, (32,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model.hidden.weight.detach().clone()
    losses = [train_step(model, optimizer, x, y) for _ in range(20)]
    assert not torch.equal(before, model.hidden.weight) and losses[-1] < losses[0]
