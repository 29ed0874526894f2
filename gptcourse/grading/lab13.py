"""Checks for Lab 13 (GPT-1 fine-tuning): the classification head and the combined loss L3 = L2 + λ·L1."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from gptcourse.finetune import classifier_logits, combined_loss
from gptcourse.grading import expect_close, expect_type, exercise, fail


@exercise("lab13.classifier_logits")
def check_classifier_logits(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(hidden, extract_pos, head) -> (B, K)`` must equal :func:`gptcourse.finetune.classifier_logits`."""
    rng = random.Random()
    for trial in range(8):
        B, T, C, K = rng.randint(1, 6), rng.randint(2, 12), rng.choice([4, 8, 16]), rng.randint(2, 5)
        hidden = torch.randn(B, T, C)
        if trial == 0:
            extract_pos = torch.full((B,), T - 1)  # no padding: the last position
        elif trial == 1:
            extract_pos = torch.zeros(B, dtype=torch.long)  # a one-token input
        else:
            extract_pos = torch.randint(0, T - 1, (B,))  # padded rows: NOT the last position
        head = torch.nn.Linear(C, K, bias=trial % 2 == 0)
        got = fn(hidden.clone(), extract_pos.clone(), head)
        expect_type("classifier_logits(...)", got, torch.Tensor)
        expected = classifier_logits(hidden, extract_pos, head)
        hint = None
        if got.shape == expected.shape and trial > 0:
            if torch.allclose(got, head(hidden[:, -1]), atol=1e-5):
                hint = ("you read the LAST position of every row; rows are right-padded, so read each row "
                        "at its own extract_pos: hidden[torch.arange(B), extract_pos]")
        expect_close(f"class logits (B={B}, T={T}, C={C}, K={K}, extract_pos={extract_pos.tolist()})",
                     got, expected, hint=hint or "pick hidden[b, extract_pos[b]] for each row b, then apply head")
    hidden = torch.randn(2, 5, 4, requires_grad=True)
    fn(hidden, torch.tensor([1, 4]), torch.nn.Linear(4, 3)).sum().backward()
    if hidden.grad is None or hidden.grad.abs().sum() == 0:
        fail("no gradient reaches the hidden states: the head must stay differentiable (no .detach(), no .item())")
    if hidden.grad[0, 0].abs().sum() != 0 or hidden.grad[0, 1].abs().sum() == 0:
        fail("the gradient for row 0 should reach only position extract_pos[0] = 1")


@exercise("lab13.combined_loss")
def check_combined_loss(fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """``fn(class_logits, labels, lm_logits, targets, lam) -> (L3, L2, L1)`` must equal the package's."""
    rng = random.Random()
    for trial in range(8):
        B, T, V, K = rng.randint(1, 6), rng.randint(2, 10), rng.randint(3, 20), rng.randint(2, 5)
        lam = [0.0, 0.5, rng.choice([0.1, 1.0, 2.0])][min(trial, 2)]
        class_logits = torch.randn(B, K, requires_grad=True)
        lm_logits = torch.randn(B, T, V, requires_grad=True)
        labels = torch.randint(0, K, (B,))
        targets = torch.randint(0, V, (B, T))
        targets[:, -1] = -1  # nothing follows the extract token
        targets[torch.rand(B, T) < 0.3] = -1  # padding
        targets[:, 0] = torch.randint(0, V, (B,))  # at least one real target per row
        result = fn(class_logits, labels, lm_logits, targets, lam)
        expect_type("combined_loss(...)", result, tuple)
        if len(result) != 3:
            fail(f"combined_loss should return (L3, L2, L1), it returned {len(result)} values")
        l3, l2, l1 = result
        ref3, ref2, ref1 = combined_loss(class_logits, labels, lm_logits, targets, lam)
        expect_close(f"L2 (B={B}, K={K})", l2.reshape(()), ref2,
                     hint="L2 is F.cross_entropy(class_logits, labels)")
        expect_close(f"L1 (B={B}, T={T}, V={V})", l1.reshape(()), ref1,
                     hint="flatten to (B*T, V) and (B*T,), and pass ignore_index=-1 so that padding does not count")
        expect_close(f"L3 with lam={lam}", l3.reshape(()), ref3, hint="L3 = L2 + lam * L1")
        if not l3.requires_grad:
            fail("L3 has no gradient: build it from tensors (no .item(), no torch.tensor(...) around the losses)")
