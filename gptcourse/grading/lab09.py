"""Checks for Lab 9 (training): the learning-rate schedule, gradient clipping, and one optimisation
step with gradient accumulation, each compared with the course's trainer (``gptcourse.train``)."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable

import torch

from gptcourse.grading import exercise, expect_close, expect_type, fail
from gptcourse.model import GPT, GPTConfig
from gptcourse.train import TrainConfig, lr_at, train_step


@exercise("lab09.lr_schedule")
def check_lr_schedule(lr_schedule: Callable[..., float]) -> None:
    """``lr_schedule(step, max_steps, lr, min_lr, warmup_steps)`` against ``gptcourse.train.lr_at``."""
    for trial in range(20):
        max_steps = random.randint(10, 2000)
        warmup = 0 if trial == 0 else random.randint(1, max_steps // 2)
        lr = 10 ** random.uniform(-4, -2)
        min_lr = lr * random.choice([0.0, 0.1, random.random()])
        config = TrainConfig(max_steps=max_steps, lr=lr, min_lr=min_lr, warmup_steps=warmup)
        steps = {0, max(warmup - 1, 0), warmup, (warmup + max_steps) // 2, max_steps - 1, max_steps,
                 max_steps + 5, random.randrange(max_steps)}
        for step in sorted(steps):
            got = lr_schedule(step, max_steps, lr, min_lr, warmup)
            expect_type("lr_schedule(...)", got, (float, int))
            expected = lr_at(step, config)
            if not math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-12):
                phase = ("warmup" if step < warmup else "after max_steps" if step >= max_steps else "cosine decay")
                fail(f"lr_schedule(step={step}, max_steps={max_steps}, lr={lr:.3g}, min_lr={min_lr:.3g}, "
                     f"warmup_steps={warmup}) returned {got:.6g}, expected {expected:.6g} ({phase})",
                     "warmup is linear from step 0: lr * (step + 1) / warmup_steps; then "
                     "min_lr + 0.5 * (1 + cos(pi * progress)) * (lr - min_lr), progress capped at 1")


@exercise("lab09.clip_gradients")
def check_clip_gradients(clip_gradients: Callable[..., float]) -> None:
    """``clip_gradients(parameters, max_norm)`` against ``torch.nn.utils.clip_grad_norm_``."""
    for trial in range(6):
        shapes = [tuple(random.randint(1, 6) for _ in range(random.randint(1, 3))) for _ in range(random.randint(1, 5))]
        scale = 10 ** random.uniform(-2, 2)
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape) * scale
        reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for r, p in zip(reference, params):
            r.grad = p.grad.clone()
        total = math.sqrt(sum(float((p.grad ** 2).sum()) for p in params))
        max_norm = total * random.choice([0.1, 0.5, 2.0]) if trial else total * 0.5
        expected_norm = torch.nn.utils.clip_grad_norm_(reference, max_norm)
        got_norm = clip_gradients(params, max_norm)
        if got_norm is None or not math.isclose(float(got_norm), float(expected_norm), rel_tol=1e-4):
            fail(f"clip_gradients should return the global norm before clipping, {float(expected_norm):.5g}; "
                 f"got {got_norm!r}", "the global norm is sqrt of the sum of squares of ALL gradients together")
        for i, (p, r) in enumerate(zip(params, reference)):
            expect_close(f"gradient of parameter {i} after clipping (max_norm {max_norm:.3g}, norm {total:.3g})",
                         p.grad, r.grad, atol=1e-6, rtol=1e-4,
                         hint="scale every gradient by max_norm / norm, only when norm > max_norm, in place")


def _tiny_gpt() -> GPT:
    config = GPTConfig(vocab_size=random.randint(10, 30), block_size=8, n_layer=2, n_head=2, n_embd=16)
    return GPT(config)


@exercise("lab09.accumulate_step")
def check_accumulate_step(accumulate_step: Callable[..., float]) -> None:
    """Three steps of ``accumulate_step`` against the trainer's ``train_step`` on copies of one model."""
    for accum in (1, 2, 4):
        ref_model = _tiny_gpt()
        model = copy.deepcopy(ref_model)
        ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        clip = random.choice([0.0, 0.5])
        for step in range(3):
            x = torch.randint(0, ref_model.config.vocab_size, (8, 8))
            y = torch.randint(0, ref_model.config.vocab_size, (8, 8))
            expected = train_step(ref_model, ref_opt, x, y, accum_steps=accum, grad_clip=clip).item()
            got = accumulate_step(model, opt, x, y, accum, clip)
            if got is None or not math.isclose(float(got), expected, rel_tol=1e-4, abs_tol=1e-5):
                fail(f"with accum_steps={accum}, step {step} returned loss {got!r}, expected {expected:.5f}",
                     "return the mean loss of the whole batch: the sum of the (divided) micro-batch losses")
            for (name, p), r in zip(model.named_parameters(), ref_model.parameters()):
                expect_close(f"{name} after step {step} (accum_steps={accum}, grad_clip={clip})", p, r,
                             atol=1e-5, rtol=1e-4,
                             hint="zero the gradients first, divide each micro-batch loss by accum_steps "
                                  "before backward, clip once after all micro-batches, then optimizer.step()")
