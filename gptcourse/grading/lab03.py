"""Checks for Lab 3 (a neural language model): the MLP forward pass, cross-entropy from logits,
and one training step, each compared with :mod:`gptcourse.neural_lm` or torch on fresh inputs."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gptcourse.grading import exercise, expect_close, expect_shape, expect_type, fail
from gptcourse.neural_lm import MLPLM, train_step


@exercise("lab03.mlp_forward")
def check_mlp_forward(mlp_forward: Callable) -> None:
    rng = random.Random()
    for _ in range(5):
        V, context, n_embd, n_hidden, B = (rng.randint(3, 40), rng.randint(1, 6), rng.randint(2, 12),
                                           rng.randint(4, 32), rng.randint(1, 16))
        model = MLPLM(V, context, n_embd, n_hidden)
        torch.nn.init.normal_(model.out.weight)  # the default small init would hide a missing tanh
        idx = torch.randint(V, (B, context))
        with torch.no_grad():
            expected, _ = model(idx)
            got = mlp_forward(idx, model.wte.weight, model.hidden.weight, model.hidden.bias,
                              model.out.weight, model.out.bias)
        expect_shape(f"the logits for idx of shape {(B, context)} (V={V})", got, (B, V))
        expect_close("the logits", got, expected, atol=1e-4,
                     hint="embed every token (wte[idx]), flatten to (B, context * n_embd), then "
                          "tanh(x @ w1.T + b1), then h @ w2.T + b2 (nn.Linear stores weights as (out, in))")


@exercise("lab03.cross_entropy")
def check_cross_entropy(cross_entropy: Callable) -> None:
    for scale in (1.0, 10.0, 1e3, 1e4):
        N, V = random.randint(1, 64), random.randint(2, 100)
        logits = torch.randn(N, V) * scale
        targets = torch.randint(V, (N,))
        got = cross_entropy(logits, targets)
        expect_type("cross_entropy(logits, targets)", got, torch.Tensor)
        expect_shape("cross_entropy(logits, targets)", got, ())
        if not torch.isfinite(got):
            fail(f"with logits as large as {logits.abs().max().item():.3g} your cross-entropy is {got.item()}",
                 "exp() of a large logit overflows: subtract each row's max before exp (softmax does not change)")
        expect_close(f"cross_entropy for logits of scale {scale:g}", got, F.cross_entropy(logits, targets),
                     atol=1e-4, rtol=1e-4,
                     hint="the mean over rows of -log softmax(logits)[target]; log softmax(z) = z - log(sum(exp(z)))")
    # uniform logits: the loss is log V
    V = random.randint(2, 100)
    got = cross_entropy(torch.zeros(5, V), torch.randint(V, (5,)))
    expect_close("cross_entropy of all-zero logits (should be log V)", got, torch.tensor(math.log(V)))


@exercise("lab03.train_step")
def check_train_step(train_step_fn: Callable) -> None:
    V, context = random.randint(5, 30), random.randint(1, 4)
    mine = MLPLM(V, context, 8, 16)
    ref = copy.deepcopy(mine)
    opt_mine = torch.optim.SGD(mine.parameters(), lr=0.5, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5, momentum=0.9)
    for step in range(3):  # several steps: gradients left over from a step would accumulate
        x, y = torch.randint(V, (16, context)), torch.randint(V, (16,))
        got = train_step_fn(mine, opt_mine, x, y)
        expected = train_step(ref, opt_ref, x, y)
        if isinstance(got, torch.Tensor):
            fail("train_step returned a tensor; return the loss as a Python float", "use loss.item()")
        expect_type("the loss train_step returns", got, float)
        if abs(got - expected) > 1e-4:
            fail(f"at step {step} train_step returned loss {got:.5f}, expected {expected:.5f}",
                 "return the loss of the forward pass on (x, y), computed BEFORE the update")
        for (name, p), q in zip(mine.named_parameters(), ref.parameters()):
            if not torch.allclose(p, q, atol=1e-5):
                hint = ("call optimizer.zero_grad() before loss.backward(): gradients add up across steps"
                        if step > 0 else "compute the loss, call loss.backward(), then optimizer.step()")
                fail(f"after step {step} parameter {name} differs from a correct update", hint)
