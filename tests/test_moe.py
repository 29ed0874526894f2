"""Mixture of Experts: routing, the load-balancing loss, capacity, the sparse layer against its
dense reference, and GPT with ffn="moe"."""

from __future__ import annotations

import math

import pytest
import torch

from gptcourse.layers import MLP
from gptcourse.model import GPT, GPTConfig
from gptcourse.moe import (
    MoE,
    active_params,
    batched_experts,
    capacity_keep,
    expert_capacity,
    load_balancing_loss,
    moe_dense_reference,
    top_k_gates,
)


def config(**kw) -> GPTConfig:
    base = dict(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16, ffn="moe", n_expert=4, expert_top_k=2)
    return GPTConfig(**{**base, **kw})


@pytest.mark.parametrize("n_expert,k", [(2, 1), (4, 1), (4, 2), (8, 2), (8, 3)])
def test_uniform_routing_gives_exactly_alpha(n_expert, k):
    N = 8 * n_expert
    probs = torch.full((N, n_expert), 1.0 / n_expert)
    experts = (torch.arange(N)[:, None] + torch.arange(k)[None, :]) % n_expert  # every expert equally often
    for alpha in (0.01, 0.5):
        assert load_balancing_loss(probs, experts, alpha).item() == pytest.approx(alpha, abs=0, rel=1e-7)
    assert load_balancing_loss(probs, experts).item() == torch.tensor(0.01).item()


def test_collapsed_routing_costs_n_expert_times_alpha():
    probs = torch.zeros(10, 4)
    probs[:, 0] = 1.0
    experts = torch.zeros(10, 1, dtype=torch.long)
    assert load_balancing_loss(probs, experts, 0.01).item() == pytest.approx(0.04)


def test_balancing_loss_gradient_pushes_probability_off_the_busy_expert():
    logits = torch.zeros(6, 3, requires_grad=True)
    experts = torch.tensor([[0], [0], [0], [0], [1], [2]])
    load_balancing_loss(torch.softmax(logits, -1), experts).backward()
    assert (logits.grad[:, 0] > 0).all() and (logits.grad[:, 1:] < 0).all()


def test_top_k_gates_pick_the_best_and_renormalise():
    torch.manual_seed(0)
    logits = torch.randn(50, 6)
    gates, experts, probs = top_k_gates(logits, 2)
    torch.testing.assert_close(probs, torch.softmax(logits, -1))
    assert torch.equal(experts, logits.argsort(dim=-1, descending=True)[:, :2])
    torch.testing.assert_close(gates.sum(-1), torch.ones(50))
    torch.testing.assert_close(gates, probs.gather(1, experts) / probs.gather(1, experts).sum(-1, keepdim=True))
    # top-1 keeps the raw probability (Switch), so the router still gets a gradient
    g1, e1, _ = top_k_gates(logits, 1)
    torch.testing.assert_close(g1[:, 0], probs.max(-1).values)
    with pytest.raises(ValueError, match="k must be"):
        top_k_gates(logits, 7)


def test_capacity_keeps_first_choices_first_then_token_order():
    experts = torch.tensor([[0, 1], [0, 1], [0, 2], [1, 0]])
    keep = capacity_keep(experts, 3, capacity=2)
    # expert 0: first choices of tokens 0 and 1 fit; token 2's first choice and token 3's second do not.
    # expert 1: token 3's first choice is served before the second choices of tokens 0 and 1
    assert keep.tolist() == [[True, True], [True, False], [False, True], [True, False]]
    assert expert_capacity(n_tokens=10, n_expert=4, k=2, capacity_factor=1.25) == math.ceil(1.25 * 2 * 10 / 4)


def test_dropped_tokens_are_counted_and_skip_the_layer():
    torch.manual_seed(0)
    moe = MoE(config(expert_top_k=1, capacity_factor=1.0)).eval()
    with torch.no_grad():  # every token prefers expert 0
        moe.router.w_g.weight.zero_()
        moe.router.w_g.weight[0, 0] = 10.0
    x = torch.randn(2, 8, 16)
    x[..., 0] = 1.0
    y, _ = moe(x)
    capacity = expert_capacity(16, 4, 1, 1.0)
    assert moe.tokens_per_expert.tolist() == [16, 0, 0, 0]
    assert moe.dropped.item() == 16 - capacity
    flat = y.view(16, 16)
    assert (flat[capacity:] == 0).all() and (flat[:capacity].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("k,capacity_factor", [(1, None), (2, None), (3, None), (2, 1.0), (1, 0.5)])
def test_sparse_moe_equals_dense_reference(k, capacity_factor):
    torch.manual_seed(k)
    moe = MoE(config(n_expert=5, expert_top_k=k, capacity_factor=capacity_factor)).eval()
    x = torch.randn(3, 7, 16)
    y, aux = moe(x)
    expected = moe_dense_reference(moe, x)
    gates, experts, keep, probs = moe.route(x.view(-1, 16))
    torch.testing.assert_close(aux, load_balancing_loss(probs, experts, moe.alpha))  # the loss of this very pass
    assert (y - expected).abs().max().item() <= 1e-6
    # and the reference, written out for one token, is the gate-weighted sum of its experts
    token = x.view(-1, 16)[4]
    by_hand = sum(gates[4, s] * keep[4, s] * moe.experts[experts[4, s]](token) for s in range(k))
    torch.testing.assert_close(expected.view(-1, 16)[4], by_hand, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("capacity_factor", [None, 0.75])  # the sorted and the padded dispatch
def test_sparse_moe_gradients_equal_dense_reference(capacity_factor):
    torch.manual_seed(3)
    moe = MoE(config(n_expert=4, expert_top_k=2, capacity_factor=capacity_factor))
    x = torch.randn(2, 5, 16)
    grads = []
    for forward in (lambda t: moe(t)[0], lambda t: moe_dense_reference(moe, t)):
        moe.zero_grad()
        forward(x).square().sum().backward()
        grads.append([p.grad.clone() for p in moe.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_batched_experts_equal_each_expert_on_its_own_rows(bias):
    torch.manual_seed(5)
    experts = MoE(config(n_expert=3, bias=bias, expert_hidden=24)).experts
    x = torch.randn(3, 6, 16, requires_grad=True)
    inputs = [x, *experts.parameters()]
    y = batched_experts(experts, x)
    expected = torch.stack([expert(rows) for expert, rows in zip(experts, x, strict=True)])
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(y.square().sum(), inputs)
    expected_grads = torch.autograd.grad(expected.square().sum(), inputs)
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    batched_experts(experts, x).square().sum().backward()
    for name, _ in experts[0].named_parameters():  # the experts' gradients: slices of one stacked gradient
        grads = [expert.get_parameter(name).grad for expert in experts]
        assert all(g is not None and g.is_contiguous() for g in grads)
        assert len({g.untyped_storage().data_ptr() for g in grads}) == 1, f"{name}: the gradients were copied"


def test_the_dispatch_is_chosen_at_construction_by_the_capacity():
    assert MoE(config()).dispatch.__func__ is MoE.dispatch_sorted
    assert MoE(config(capacity_factor=1.25)).dispatch.__func__ is MoE.dispatch_padded


def test_a_moe_gpt_with_a_capacity_compiles_without_graph_breaks():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(config(capacity_factor=1.25, n_expert=8))
    idx = torch.randint(0, 17, (2, 16))
    explanation = torch._dynamo.explain(model)(idx, idx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()


def test_routing_statistics_stay_on_the_device_until_read():
    moe = MoE(config(capacity_factor=1.0))
    moe(torch.randn(2, 8, 16))
    assert isinstance(moe.tokens_per_expert, torch.Tensor) and isinstance(moe.dropped, torch.Tensor)
    assert moe.tokens_per_expert.sum().item() == 2 * 8 * 2  # N * k assignments, counted before drops


@pytest.mark.parametrize(
    "field,value",
    [("n_expert", 1), ("expert_top_k", 5), ("capacity_factor", 0.0), ("moe_aux_weight", -1.0), ("expert_hidden", 0)],
)
def test_config_rejects_bad_moe_settings(field, value):
    with pytest.raises(ValueError, match=field):
        config(**{field: value})


def test_moe_gpt_adds_the_aux_loss_in_training_only():
    torch.manual_seed(0)
    model = GPT(config())
    idx = torch.randint(0, 17, (2, 16))
    logits, loss = model(idx, idx)
    ce = torch.nn.functional.cross_entropy(logits.view(-1, 17), idx.view(-1))
    # the mean over layers of each MoE layer's own loss on its own input
    layer_losses = []
    hooks = [b.mlp.register_forward_hook(lambda m, args, out: layer_losses.append(out[1])) for b in model.transformer.h]
    model(idx, idx)
    for hook in hooks:
        hook.remove()
    aux = torch.stack(layer_losses).mean()
    torch.testing.assert_close(model.aux_loss, aux)
    torch.testing.assert_close(loss, ce + aux)
    assert model.aux_loss.item() >= 0.01 - 1e-6  # alpha is the minimum over routings
    model.eval()
    logits, loss = model(idx, idx)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.view(-1, 17), idx.view(-1)))
    assert GPT(config(ffn="mlp"))(idx, idx) and GPT(config(ffn="mlp")).aux_loss is None


def test_moe_gpt_trains_a_step_and_stays_causal():
    torch.manual_seed(1)
    model = GPT(config(attention="local", attn_window=4))
    idx = torch.randint(0, 17, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    router = model.transformer.h[0].mlp.router.w_g.weight
    assert router.grad is not None and router.grad.abs().sum() > 0
    before = router.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, router)
    # without a capacity limit each token's route depends on itself only: the model stays causal
    model.eval()
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 3) % 17
    torch.testing.assert_close(model(idx)[0][:, :9], model(changed)[0][:, :9])


def test_active_params_count_top_k_experts_per_layer():
    dense, moe = GPT(config(ffn="mlp")), GPT(config(n_expert=4, expert_top_k=1))
    mlp = sum(p.numel() for p in MLP(config()).parameters())
    router = 4 * 16
    assert moe.num_params() == dense.num_params() + 2 * (3 * mlp + router)
    assert active_params(moe) == dense.num_params() + 2 * router
    assert active_params(dense) == dense.num_params()


def test_narrow_experts_top_2_match_the_dense_active_count():
    # 8 experts of width 2C, two per token: the same expert parameters per token as one 4C MLP
    dense, moe = GPT(config(ffn="mlp")), GPT(config(n_expert=8, expert_top_k=2, expert_hidden=32))
    assert moe.transformer.h[0].mlp.experts[0].c_fc.weight.shape == (32, 16)
    router = 8 * 16
    # per layer: the router, and one output bias more (two experts each add their c_proj bias of size C)
    assert active_params(moe) == dense.num_params() + 2 * (router + 16)
