"""Checks for Lab 12 (Mixture of Experts): the top-k router, the load-balancing loss, the sparse layer."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from gptcourse.grading import expect_close, expect_shape, expect_type, exercise, fail
from gptcourse.model import GPTConfig
from gptcourse.moe import MoE, load_balancing_loss, moe_dense_reference, top_k_gates


@exercise("lab12.top_k_gates")
def check_top_k_gates(fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """``fn(logits, k) -> (gates, experts, probs)`` must equal :func:`gptcourse.moe.top_k_gates`."""
    rng = random.Random()
    for trial in range(10):
        N, E = rng.randint(1, 30), rng.randint(2, 10)
        k = 1 if trial == 0 else E if trial == 1 else rng.randint(1, E)
        logits = torch.randn(N, E) * rng.choice([0.5, 1.0, 4.0])
        result = fn(logits.clone(), k)
        expect_type(f"top_k_gates(logits, k={k})", result, tuple)
        if len(result) != 3:
            fail(f"top_k_gates should return 3 tensors (gates, experts, probs), it returned {len(result)} values")
        gates, experts, probs = result
        ref_gates, ref_experts, ref_probs = top_k_gates(logits, k)
        expect_close(f"probs (N={N}, E={E})", probs, ref_probs, hint="probs is the softmax over ALL experts")
        expect_shape(f"experts (N={N}, E={E}, k={k})", experts, tuple(ref_experts.shape))
        if not torch.equal(experts.long(), ref_experts):
            fail(f"experts differ for N={N}, E={E}, k={k}: token 0 got {experts[0].tolist()}, "
                 f"expected {ref_experts[0].tolist()}", "the k highest probabilities, best first (torch.topk)")
        hint = ("with k = 1 keep the raw probability as the gate" if k == 1 else
                "divide the k kept probabilities by their sum so that each token's gates sum to 1")
        expect_close(f"gates (N={N}, E={E}, k={k})", gates, ref_gates, hint=hint)


@exercise("lab12.load_balancing_loss")
def check_load_balancing_loss(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(probs, experts, alpha)`` must equal :func:`gptcourse.moe.load_balancing_loss`."""
    rng = random.Random()
    E = rng.choice([4, 8])
    uniform = fn(torch.full((4 * E, E), 1.0 / E), (torch.arange(4 * E) % E)[:, None], 0.01)
    expect_type("the loss", uniform, torch.Tensor)
    if uniform.numel() != 1:
        fail(f"the loss should be a single number (a scalar tensor), got shape {tuple(uniform.shape)}")
    if abs(uniform.item() - 0.01) > 1e-7:
        fail(f"perfectly uniform routing over {E} experts should cost exactly alpha = 0.01, got {uniform.item():.6g}",
             "alpha * N * sum_i f_i * P_i, with f_i the FRACTION of assignments to expert i and P_i the MEAN probability")
    for _ in range(8):
        N, E = rng.randint(1, 40), rng.randint(2, 10)
        k = rng.randint(1, E)
        alpha = rng.choice([0.01, 0.1, 1.0])
        logits = (torch.randn(N, E) * 3).requires_grad_()
        _, experts, probs = top_k_gates(logits, k)
        got = fn(probs, experts, alpha)
        expect_close(f"loss (N={N}, E={E}, k={k}, alpha={alpha})", got.reshape(()), load_balancing_loss(probs, experts, alpha),
                     hint="f_i counts all N*k assignments (divide by N*k); P_i averages probs over the N tokens")
        if not got.requires_grad:
            fail("the loss has no gradient: P_i must be computed from probs (differentiable), only f_i is counted")


@exercise("lab12.moe_forward")
def check_moe_forward(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(x, router, experts, k)`` on ``(N, C)`` tokens must equal the dense reference of the same layer."""
    rng = random.Random()
    for _ in range(5):
        C = rng.choice([8, 16])
        E = rng.randint(2, 6)
        k = rng.randint(1, E)
        config = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=C, ffn="moe",
                           n_expert=E, expert_top_k=k)
        layer = MoE(config).eval()
        N = rng.randint(1, 30)
        x = torch.randn(1, N, C)
        with torch.no_grad():
            got = fn(x[0].clone(), layer.router, layer.experts, k)
            expected = moe_dense_reference(layer, x)[0]
        expect_close(f"moe_forward output (N={N}, E={E}, k={k})", got, expected, atol=1e-5,
                     hint="each token's output is sum over its k experts of gate * expert(token); "
                          "unselected experts contribute nothing")
