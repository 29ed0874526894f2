"""Instruction tuning and RLHF in miniature: data, SFT masking, the reward model's loss, PPO, DPO."""

from __future__ import annotations

import copy
import math
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from gptcourse import rlhf
from gptcourse.model import GPT, GPTConfig
from gptcourse.train import configure_optimizer


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=rlhf.tokenizer().vocab_size, block_size=40, n_layer=1, n_head=2, n_embd=32))


def test_instruction_set_and_labeller():
    pairs = rlhf.instruction_set(["kbd"])
    assert ("reverse kbd=", "dbk.") in pairs and ("upper kbd=", "KBD.") in pairs
    assert ("double kbd=", "kbd kbd.") in pairs and ("length kbd=", "3.") in pairs
    assert len(pairs) == len(rlhf.INSTRUCTIONS)
    assert rlhf.labeller_score("reverse kbd=", "dbk.") == 1.0 and rlhf.exact_match("reverse kbd=", "dbk.")
    assert 0 < rlhf.labeller_score("reverse kbd=", "dbx.") < 1.0 and not rlhf.exact_match("reverse kbd=", "dbx.")
    assert rlhf.labeller_score("reverse kbd=", "dbx.") > rlhf.labeller_score("reverse kbd=", "xyz.")
    assert rlhf.random_words(5, seed=3) == rlhf.random_words(5, seed=3)
    assert max(len(r) for _, r in rlhf.instruction_set(rlhf.random_words(50, 0))) <= rlhf.MAX_RESPONSE


def test_encode_pairs_puts_targets_on_the_response_only():
    tok = rlhf.tokenizer()
    idx, targets, last = rlhf.encode_pairs([("first ab=", "a."), ("upper abcde=", "ABCDE.")], tok)
    assert idx.shape == targets.shape == (2, 18) and last.tolist() == [10, 17]
    assert tok.decode(targets[0][targets[0] >= 0].tolist()) == "a."
    assert (targets[0][:8] == -1).all() and targets[0][8] == tok.stoi["a"]  # predicted from the "=" position
    assert tok.decode(targets[1][targets[1] >= 0].tolist()) == "ABCDE."


def test_response_logprobs_match_cross_entropy():
    model = tiny_gpt()
    idx, targets, _ = rlhf.encode_pairs([("first ab=", "a."), ("upper abc=", "ABC.")], rlhf.tokenizer())
    logp = rlhf.response_logprobs(model, idx, targets)
    _, loss = model(idx, targets)  # mean cross-entropy over the response tokens
    torch.testing.assert_close(-logp.sum() / (targets >= 0).sum(), loss)


def test_sft_lowers_the_response_loss_and_sampling_stops_at_the_end_mark():
    model = tiny_gpt()
    pairs = rlhf.instruction_set(rlhf.random_words(10, seed=0))
    losses = rlhf.sft(model, pairs, steps=60, batch_size=16, lr=3e-3, progress=False)
    assert losses[-1] < 0.7 * losses[0]
    responses = rlhf.sample_responses(model, [p for p, _ in pairs[:12]], temperature=0)
    assert all(len(r) <= rlhf.MAX_RESPONSE and (r.count(".") == 0 or r.endswith(".")) for r in responses)


def test_preference_loss_is_bradley_terry():
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    expected = -(math.log(1 / (1 + math.exp(-2.0))) + math.log(1 / (1 + math.exp(1.0)))) / 2
    assert rlhf.preference_loss(rc, rr).item() == pytest.approx(expected)


def test_reward_model_learns_the_labellers_preferences():
    policy = tiny_gpt()
    prompts = [p for p, _ in rlhf.instruction_set(rlhf.random_words(8, seed=0))]
    comparisons = rlhf.collect_comparisons(policy, prompts, k=4)
    assert comparisons and all(
        rlhf.labeller_score(c.prompt, c.chosen) > rlhf.labeller_score(c.prompt, c.rejected) for c in comparisons
    )
    rm = rlhf.RewardModel(tiny_gpt(1))
    assert rlhf.preference_accuracy(rm, comparisons) == 0.0  # zero-initialised head: every reward ties
    rlhf.train_reward_model(rm, comparisons, steps=40, lr=3e-3, progress=False)
    assert rlhf.preference_accuracy(rm, comparisons) > 0.75


_COMPARISONS = """
import torch
from gptcourse import rlhf
from gptcourse.model import GPT, GPTConfig
from gptcourse.train import configure_optimizer
torch.manual_seed(0)
policy = GPT(GPTConfig(vocab_size=rlhf.tokenizer().vocab_size, block_size=40, n_layer=1, n_head=2, n_embd=32))
prompts = [p for p, _ in rlhf.instruction_set(rlhf.random_words(8, seed=0))]
print([(c.chosen, c.rejected) for c in rlhf.collect_comparisons(policy, prompts, k=4)])
"""


def test_collected_comparisons_do_not_depend_on_pythons_hash_seed():
    # string hashing changes with PYTHONHASHSEED from one process to the next: the pairs (and so
    # the reward model and Chapter 16's outputs) must not follow a set's iteration order
    outputs = set()
    for hash_seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", _COMPARISONS], capture_output=True, text=True, env=env, check=True)
        outputs.add(done.stdout)
    assert len(outputs) == 1 and "[]" not in outputs


def test_ppo_loss_clips_the_ratio():
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    a = torch.tensor([1.0])
    # ratio e^1 > 1 + 0.2 with a positive advantage: the objective stops at 1.2
    assert rlhf.ppo_loss(torch.ones(1, 2), old, a, mask).item() == pytest.approx(-1.2)
    # a negative advantage keeps the unclipped (more pessimistic) value
    assert rlhf.ppo_loss(torch.ones(1, 2), old, -a, mask).item() == pytest.approx(math.e)
    # masked tokens do not count
    assert rlhf.ppo_loss(torch.tensor([[0.0, 5.0]]), old, a, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(-1.0)


def test_ppo_raises_a_reward_that_prefers_short_answers():
    # a stand-in reward model that pays for ending early: PPO must raise its mean reward
    class ShortIsGood(torch.nn.Module):
        def forward(self, idx, last):
            return -last.float()

    policy = tiny_gpt()
    prompts = [p for p, _ in rlhf.instruction_set(rlhf.random_words(10, seed=0))]
    rlhf.sft(policy, rlhf.instruction_set(rlhf.random_words(10, seed=0)), steps=20, lr=3e-3, progress=False)
    history = rlhf.ppo(
        policy,
        copy.deepcopy(policy),
        ShortIsGood(),
        prompts,
        iterations=15,
        batch_size=16,
        lr=3e-3,
        beta=0.0,
        progress=False,
    )
    assert len(history.reward) == len(history.kl) == len(history.true_score) == 15
    assert sum(history.reward[-5:]) / 5 > sum(history.reward[:5]) / 5


def test_dpo_loss_formula():
    pc, pr, rc, rr = (torch.randn(5) for _ in range(4))
    expected = -F.logsigmoid(0.1 * ((pc - rc) - (pr - rr))).mean()
    torch.testing.assert_close(rlhf.dpo_loss(pc, pr, rc, rr, beta=0.1), expected)
    # at the reference policy the loss is log 2 whatever the data
    assert rlhf.dpo_loss(rc, rr, rc, rr).item() == pytest.approx(math.log(2))


def test_sloppy_demonstrations_add_filler_that_the_labeller_dislikes():
    words = rlhf.random_words(100, seed=0)
    clean, demos = rlhf.instruction_set(words), rlhf.demonstrations(words, sloppy=0.3, seed=0)
    assert [p for p, _ in demos] == [p for p, _ in clean]
    sloppy = [(p, r) for p, r in demos if not rlhf.exact_match(p, r)]
    assert 0.2 < len(sloppy) / len(demos) < 0.4
    for p, r in sloppy:
        assert r.startswith(rlhf.correct_response(p) + " ") and r.endswith(".")
        assert len(r) <= rlhf.MAX_RESPONSE and rlhf.labeller_score(p, r) < 1.0
    assert rlhf.demonstrations(words, sloppy=0.0) == clean
    with pytest.raises(ValueError, match="sloppy"):
        rlhf.demonstrations(words, sloppy=2.0)


def _toy_comparisons() -> list[rlhf.Comparison]:
    """The right answer preferred over the same answer padded with filler, on 8 words."""
    return [rlhf.Comparison(p, r, r.rstrip(".") + " um ok.") for p, r in rlhf.instruction_set(rlhf.random_words(8, 0))]


def test_comparison_logprobs_are_sums_of_response_logprobs():
    model, comparisons = tiny_gpt(), _toy_comparisons()[:3]
    chosen, rejected = rlhf.comparison_logprobs(model, comparisons)
    for c, lc, lr in zip(comparisons, chosen, rejected):
        for response, value in ((c.chosen, lc), (c.rejected, lr)):
            idx, targets, _ = rlhf.encode_pairs([(c.prompt, response)], rlhf.tokenizer())
            torch.testing.assert_close(rlhf.response_logprobs(model, idx, targets).sum(), value)


def test_dpo_lowers_its_loss_and_raises_the_margin():
    policy = tiny_gpt()
    rlhf.sft(
        policy,
        [(c.prompt, r) for c in _toy_comparisons() for r in (c.chosen, c.rejected)],
        steps=30,
        batch_size=16,
        lr=3e-3,
        progress=False,
    )
    reference = copy.deepcopy(policy)
    history = rlhf.dpo(
        policy, reference, _toy_comparisons(), steps=30, batch_size=16, lr=3e-3, beta=0.1, progress=False
    )
    assert len(history.loss) == len(history.margin) == len(history.accuracy) == 30
    assert history.loss[0] == pytest.approx(math.log(2), abs=1e-5)  # the first step starts at the reference
    assert sum(history.loss[-5:]) / 5 < 0.5 * history.loss[0]
    assert sum(history.margin[-5:]) / 5 > 1.0 and history.accuracy[-1] == 1.0
    chosen, rejected = rlhf.comparison_logprobs(policy, _toy_comparisons())
    ref_chosen, ref_rejected = rlhf.comparison_logprobs(reference, _toy_comparisons())
    assert ((chosen - ref_chosen) - (rejected - ref_rejected)).mean() > 0  # the policy moved towards the chosen
    for p in reference.parameters():  # the reference stays frozen
        assert p.grad is None


def test_ppo_iteration_is_the_step_that_ppo_repeats():
    class ShortIsGood(torch.nn.Module):
        def forward(self, idx, last):
            return -last.float()

    prompts = [p for p, _ in rlhf.instruction_set(rlhf.random_words(6, seed=0))]
    policy = tiny_gpt()
    reference = copy.deepcopy(policy)
    by_hand = copy.deepcopy(policy)
    history = rlhf.ppo(policy, reference, ShortIsGood(), prompts, iterations=2, batch_size=8, lr=3e-3, progress=False)
    rng, generator = random.Random(0), torch.Generator().manual_seed(0)
    optimizer = configure_optimizer(by_hand, 3e-3, 0.0)
    for _ in range(2):
        batch = rlhf.ppo_iteration(by_hand, reference, ShortIsGood(), rng.sample(prompts, 8), optimizer, generator)
    assert len(batch.losses) == 4 and batch.advantages.shape == (8,)
    torch.testing.assert_close(batch.reward.mean().item(), history.reward[-1])
    for a, b in zip(policy.parameters(), by_hand.parameters()):
        torch.testing.assert_close(a, b)


def test_has_filler():
    assert rlhf.has_filler("reverse kbd=", "dbk um.") and not rlhf.has_filler("reverse kbd=", "dbk.")
    assert not rlhf.has_filler("reverse kbd=", "dbx um.")
