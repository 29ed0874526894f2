"""The baby GPT: its configuration and size, the dataset of windows, the chain's probabilities,
training on 111101111011110, and the drawing."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from gptcourse.babygpt import (
    SEQUENCE,
    all_states,
    baby_config,
    draw_chain,
    make_dataset,
    next_state,
    state_counts,
    train_baby_gpt,
    transition_matrix,
    transition_probs,
)
from gptcourse.model import GPT, count_params


def test_config_and_parameter_count():
    config = baby_config()
    assert (config.vocab_size, config.block_size, config.n_layer, config.n_head, config.n_embd) == (2, 3, 4, 4, 16)
    assert not config.bias
    assert GPT(config).num_params() == count_params(config) == 12_512
    # the original notebook's 12,656 is 144 = 9 LayerNorms x 16 more: LayerNorm biases
    assert 12_656 - 12_512 == (2 * config.n_layer + 1) * config.n_embd


def test_states_and_transitions():
    states = all_states()
    assert states.shape == (8, 3)
    assert states[5].tolist() == [1, 0, 1] and states[0].tolist() == [0, 0, 0]
    assert next_state(0b101, 1) == 0b011 and next_state(0b111, 0) == 0b110 and next_state(0, 0) == 0


def test_dataset_windows_and_counts():
    X, Y = make_dataset()
    assert X.shape == (12, 3) and Y.shape == (12,)
    assert X[0].tolist() == [1, 1, 1] and Y[0].item() == 1 and X[-1].tolist() == [1, 1, 1] and Y[-1].item() == 0
    counts = state_counts(X, Y)
    assert counts[0b111].tolist() == [3, 3]  # the split at 111
    assert counts[0b101].tolist() == [0, 2]  # 101 is always followed by 1
    assert counts[[0b000, 0b001, 0b010, 0b100]].sum() == 0  # never seen
    assert counts.sum() == 12
    with pytest.raises(ValueError, match="0/1"):
        make_dataset("1021")


def test_transition_matrix_is_stochastic():
    probs = torch.softmax(torch.randn(8, 2), -1)
    M = transition_matrix(probs)
    torch.testing.assert_close(M.sum(1), torch.ones(8))
    assert M[0b101, 0b011] == probs[0b101, 1] and M[0b101, 0b010] == probs[0b101, 0]
    assert (M > 0).sum(1).tolist() == [2] * 8


def test_training_moves_the_chain_towards_the_data():
    torch.manual_seed(1337)
    model = GPT(baby_config())
    X, Y = make_dataset(SEQUENCE)
    losses = []
    snapshots = train_baby_gpt(model, X, Y, steps=50, callback=lambda step, loss, probs: losses.append(loss))
    assert len(snapshots) == 51 and len(losses) == 50
    before, after = snapshots[0], snapshots[-1]
    torch.testing.assert_close(before.sum(1), torch.ones(8))
    assert (before - 0.5).abs().max() < 0.1  # near 50% at initialisation
    assert after[0b101, 1] > 0.7 and after[0b011, 1] > 0.7  # deterministic transitions learned
    assert abs(after[0b111, 1] - 0.5) < 0.15  # the split at 111 stays near 50/50
    assert losses[-1] < losses[0]
    torch.testing.assert_close(transition_probs(model), after)


def test_draw_chain_draws_every_arrow():
    ax = draw_chain(torch.full((8, 2), 0.5), seen=torch.ones(8, dtype=torch.bool))
    assert len(ax.patches) == 16 + 8  # 16 arrows, 8 states
    with pytest.raises(ValueError, match=r"\(8, 2\)"):
        draw_chain(torch.zeros(4, 2))
