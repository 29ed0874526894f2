"""Exercise specs for Lab 3 (a neural language model), against :mod:`gptcourse.neural_lm` and torch:
``mlp_forward(idx, wte, w1, b1, w2, b2)``, ``cross_entropy(logits, targets)`` and
``train_step(model, optimizer, x, y)``."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from gptcourse import neural_lm
from gptcourse.grading.spec import Case, Misconception, Spec, close, randomize_


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """A random integer in ``[lo, hi]``, both included."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


@functools.lru_cache(maxsize=64)
def _mlplm(V: int, context: int, n_embd: int, n_hidden: int) -> neural_lm.MLPLM:
    """An MLPLM of these sizes with a fixed init, made once: seeding torch costs more than a case."""
    with torch.random.fork_rng(devices=[]):  # the learner's random numbers stay where they were
        torch.manual_seed(0)
        return neural_lm.MLPLM(V, context, n_embd, n_hidden)


# --- Exercise 1: the forward pass ------------------------------------------------------------------------


def _forward_args(g: torch.Generator, B: int, context: int, V: int, n_embd: int, n_hidden: int) -> tuple:
    """``(idx, wte, w1, b1, w2, b2)``: ids ``(B, context)`` and weights stored as nn.Linear stores them."""
    idx = torch.randint(V, (B, context), generator=g)
    wte = torch.randn(V, n_embd, generator=g)
    w1 = torch.randn(n_hidden, context * n_embd, generator=g) / math.sqrt(context * n_embd)
    b1 = 0.5 * torch.randn(n_hidden, generator=g)
    w2 = torch.randn(V, n_hidden, generator=g)  # unit scale, not MLPLM's small init: a missing tanh shows
    b2 = 0.5 * torch.randn(V, generator=g)
    return idx, wte, w1, b1, w2, b2


def forward_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("a batch of 4, context 3", _forward_args(g, 4, 3, 11, 5, 16)),
        Case("context 1", _forward_args(g, 6, 1, 9, 4, 8)),
        Case("a single example (B = 1)", _forward_args(g, 1, 4, 7, 3, 12)),
    ]
    for i in range(3):
        sizes = (_randint(g, 1, 16), _randint(g, 1, 6), _randint(g, 3, 40), _randint(g, 2, 12), _randint(g, 4, 32))
        cases.append(Case(f"random sizes {i + 1}", _forward_args(g, *sizes)))
    return cases


def reference_forward(
    idx: torch.Tensor, wte: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    """:class:`gptcourse.neural_lm.MLPLM`'s logits ``(B, V)`` with these weights."""
    model = _mlplm(wte.size(0), idx.size(1), wte.size(1), w1.size(0))
    weights = {"wte.weight": wte, "hidden.weight": w1, "hidden.bias": b1, "out.weight": w2, "out.bias": b2}
    with torch.no_grad():
        return torch.func.functional_call(model, weights, (idx,))[0]


def _forward(
    act: Callable[[torch.Tensor], torch.Tensor] = torch.tanh,
    hidden_bias: bool = True,
    out_bias: bool = True,
    interleaved: bool = False,
    softmax: bool = False,
) -> Callable[..., torch.Tensor]:
    """A forward pass with ``act`` for the hidden layer, biases left out, the embeddings flattened
    dimension-major (``interleaved``) or a softmax at the end."""

    def mlp_forward(
        idx: torch.Tensor, wte: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
    ) -> torch.Tensor:
        emb = wte[idx]  # (B, context, n_embd)
        x = (emb.transpose(1, 2) if interleaved else emb).flatten(1)
        h = act(x @ w1.T + (b1 if hidden_bias else 0))
        logits = h @ w2.T + (b2 if out_bias else 0)
        return torch.softmax(logits, dim=-1) if softmax else logits

    return mlp_forward


FORWARD = Spec(
    id="lab03.mlp_forward",
    points=3,
    name="mlp_forward",
    reference=reference_forward,
    cases=forward_cases,
    compare=close(atol=1e-4, rtol=1e-4),
    forbidden=("gptcourse.neural_lm.MLPLM.forward",),
    hint="embed every id (a row of wte), concatenate each example's context embeddings into one vector of "
    "context * n_embd, then the tanh hidden layer and the output layer; the weights are (out, in), as nn.Linear's",
    misconceptions=(
        Misconception(
            "no tanh",
            _forward(act=lambda z: z),
            "the hidden layer is h = tanh(x W1^T + b1): without the nonlinearity the two layers collapse "
            "into one linear map",
        ),
        Misconception(
            "ReLU instead of tanh",
            _forward(act=torch.relu),
            "Bengio et al.'s hidden layer (and MLPLM's) uses tanh, not ReLU (Chapter 3)",
        ),
        Misconception(
            "hidden bias missing",
            _forward(hidden_bias=False),
            "the hidden layer adds its bias b1 before the tanh: x W1^T + b1",
        ),
        Misconception(
            "output bias missing", _forward(out_bias=False), "the output layer adds its bias b2: logits = h W2^T + b2"
        ),
        Misconception(
            "embeddings interleaved",
            _forward(interleaved=True),
            "concatenate the context embeddings one after the other: the row of example b is the embedding "
            "of idx[b, 0], then that of idx[b, 1], ... (flatten the (context, n_embd) block as it is)",
        ),
        Misconception(
            "softmax applied",
            _forward(softmax=True),
            "return the logits, before any softmax: the cross-entropy takes logits",
        ),
    ),
)


# --- Exercise 2: cross-entropy from logits ----------------------------------------------------------------------


def _logits(g: torch.Generator, N: int, V: int, scale: float = 1.0, shift: float = 0.0) -> tuple[torch.Tensor, ...]:
    return torch.randn(N, V, generator=g) * scale + shift, torch.randint(V, (N,), generator=g)


def cross_entropy_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("small logits", _logits(g, 8, 10)),
        Case("logits shifted by 100 (the softmax is unchanged)", _logits(g, 6, 12, shift=100.0)),
        Case("logits of scale 10", _logits(g, 16, 30, scale=10.0)),
        Case("logits of scale 1000", _logits(g, 8, 20, scale=1e3)),
        Case("logits of scale 10000", _logits(g, 5, 50, scale=1e4)),
        Case("all-zero logits: the loss is log V", (torch.zeros(5, 17), torch.randint(17, (5,), generator=g))),
        Case("a single row (N = 1)", _logits(g, 1, 9, scale=3.0)),
        Case("two classes (V = 2)", _logits(g, 12, 2, scale=3.0)),
    ]
    for i in range(2):
        scale = (1.0, 10.0, 100.0)[_randint(g, 0, 2)]
        cases.append(Case(f"random sizes {i + 1}", _logits(g, _randint(g, 1, 64), _randint(g, 2, 100), scale=scale)))
    return cases


def compare_loss(got: Any, expected: Any, case: Case) -> str | None:
    """Close; an infinite or NaN loss for finite logits is named as an overflow."""
    wrong = close(atol=1e-4, rtol=1e-4)(got, expected, case)
    if (
        wrong
        and isinstance(got, torch.Tensor)
        and isinstance(expected, torch.Tensor)
        and got.shape == expected.shape
        and not torch.isfinite(got).all()
        and torch.isfinite(expected).all()
    ):
        return (
            f"is {got.double().sum().item()} for logits as large as {case.args[0].abs().max().item():.3g}; the "
            "loss of finite logits is finite"
        )
    return wrong


def _log_softmax(logits: torch.Tensor, dim: int = 1, stable: bool = True) -> torch.Tensor:
    z = logits - logits.max(dim=dim, keepdim=True).values if stable else logits
    return z - z.exp().sum(dim=dim, keepdim=True).log()


def _picked(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return log_probs[torch.arange(len(targets)), targets]


CROSS_ENTROPY = Spec(
    id="lab03.cross_entropy",
    points=3,
    name="cross_entropy",
    reference=F.cross_entropy,
    cases=cross_entropy_cases,
    compare=compare_loss,
    forbidden=(
        "torch.nn.functional.cross_entropy",
        "torch.nn.functional.log_softmax",
        "torch.nn.functional.nll_loss",
        "torch.log_softmax",
        "torch.Tensor.log_softmax",
        "gptcourse.neural_lm.cross_entropy",
    ),
    hint="the mean over the rows of -log softmax(logits)[target], with log softmax(z) = z - log sum exp(z) computed "
    "after subtracting each row's maximum; return a 0-dimensional tensor",
    misconceptions=(
        Misconception(
            "log of the softmax",
            lambda z, t: -_picked(torch.softmax(z, dim=1).log(), t).mean(),
            "the softmax of large logits rounds the small probabilities to 0, whose log is -inf: compute "
            "the log-probabilities directly as z - log sum exp(z), with each row's maximum subtracted",
        ),
        Misconception(
            "maximum not subtracted",
            lambda z, t: -_picked(_log_softmax(z, stable=False), t).mean(),
            "exp() of a large logit overflows float32 (beyond about 88): subtract each row's maximum "
            "before exp; it leaves the softmax unchanged",
        ),
        Misconception(
            "summed over the rows",
            lambda z, t: -_picked(_log_softmax(z), t).sum(),
            "the loss is the mean over the N rows, not their sum",
        ),
        Misconception(
            "the target's logit, unnormalised",
            lambda z, t: -_picked(z, t).mean(),
            "the log-probability of the target is its logit minus log sum exp of the row's logits: without "
            "that normaliser it is not a probability at all",
        ),
        Misconception(
            "normalised over the batch",
            lambda z, t: -_picked(_log_softmax(z, dim=0), t).mean(),
            "each row is one example's V logits: the softmax normalises along the vocabulary (dim 1), not "
            "over the examples of the batch",
        ),
        Misconception(
            "a Python float",
            lambda z, t: -_picked(_log_softmax(z), t).mean().item(),
            "return the loss as a 0-dimensional tensor: training backpropagates through it",
        ),
    ),
)


# --- Exercise 3: one training step ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class Steps:
    """The steps of a case: an optimizer (a ``torch.optim`` class name and its settings) over the
    model's parameters, then one ``train_step`` per batch ``(x, y)``."""

    optimizer: str
    settings: dict
    batches: tuple

    def make(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return getattr(torch.optim, self.optimizer)(model.parameters(), **self.settings)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{self.optimizer}({settings}), {len(self.batches)} batches of {tuple(self.batches[0][0].shape)}"


def _steps_case(
    g: torch.Generator, label: str, V: int, context: int, B: int, optimizer: str, settings: dict, steps: int = 3
) -> Case:
    model = randomize_(copy.deepcopy(_mlplm(V, context, 8, 16)), g)
    batches = tuple(
        (torch.randint(V, (B, context), generator=g), torch.randint(V, (B,), generator=g)) for _ in range(steps)
    )
    return Case(label, (model, Steps(optimizer, settings, batches)))


def step_cases(g: torch.Generator) -> list[Case]:
    sgd = {"lr": 0.5, "momentum": 0.9}
    cases = [
        _steps_case(g, "three SGD steps with momentum", 12, 3, 16, "SGD", sgd),
        _steps_case(g, "AdamW, context 1", 8, 1, 8, "AdamW", {"lr": 0.01}),
        _steps_case(g, "a batch of one", 6, 2, 1, "SGD", sgd),
    ]
    cases.append(_steps_case(g, "random sizes", _randint(g, 5, 30), _randint(g, 1, 4), _randint(g, 1, 16), "SGD", sgd))
    return cases


def run_steps(answer: Callable[..., Any], case: Case) -> dict:
    """The loss the answer returned at each step, and every parameter after the last step."""
    model, steps = case.args
    optimizer = steps.make(model)
    losses = [answer(model, optimizer, x, y) for x, y in steps.batches]
    return {"losses": losses, "parameters": {k: p.detach().clone() for k, p in model.named_parameters()}}


def compare_steps(got: Any, expected: Any, case: Case) -> str | None:
    """The loss of every step (a float, within 1e-4), then every parameter after the steps (within 1e-5)."""
    if not (
        isinstance(got, dict)
        and set(got) == set(expected)
        and isinstance(got["losses"], list)
        and len(got["losses"]) == len(expected["losses"])
        and isinstance(got["parameters"], dict)
        and set(got["parameters"]) == set(expected["parameters"])
    ):
        return close()(got, expected, case)
    for step, (mine, theirs) in enumerate(zip(got["losses"], expected["losses"])):
        if isinstance(mine, torch.Tensor) and not isinstance(theirs, torch.Tensor):
            return f"returned the loss as a tensor at step {step}, expected a Python float"
        wrong = close(atol=1e-4, rtol=1e-4)(mine, theirs, case)
        if wrong and isinstance(mine, float) and isinstance(theirs, float):
            return f"returned the loss {mine:.6g} at step {step}, expected {theirs:.6g}"
        if wrong:
            return f"at step {step} {wrong}"
    for name, value in expected["parameters"].items():
        wrong = close(atol=1e-5, rtol=1e-4)(got["parameters"][name], value, case)
        if wrong:
            return f"left the parameter {name} different from correct updates: after the last step it {wrong}"
    return None


def _step(
    clear: bool = True, update: bool = True, loss_after: bool = False, as_float: bool = True
) -> Callable[..., Any]:
    """A training step that clears the gradients or not, updates or not, returns the loss after the
    update (``loss_after``) and as a float or a tensor."""

    def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> Any:
        _, loss = model(x, y)
        if clear:
            optimizer.zero_grad()
        loss.backward()
        if update:
            optimizer.step()
        if loss_after:
            with torch.no_grad():
                loss = model(x, y)[1]
        return loss.item() if as_float else loss

    return train_step


TRAIN_STEP = Spec(
    id="lab03.train_step",
    points=2,
    name="train_step",
    reference=neural_lm.train_step,
    cases=step_cases,
    run=run_steps,
    compare=compare_steps,
    forbidden=("gptcourse.neural_lm.train_step", "gptcourse.neural_lm.fit"),
    hint="one step: the forward pass gives the loss, the old gradients are cleared, the loss is backpropagated, "
    "the optimizer updates the parameters, and the loss of that forward pass comes back as a float",
    misconceptions=(
        Misconception(
            "gradients not cleared",
            _step(clear=False),
            "clear the old gradients before backpropagating: backward() adds to .grad, so without it the "
            "second step uses the sum of two steps' gradients",
        ),
        Misconception(
            "no update",
            _step(update=False),
            "the parameters did not move: after backward() the optimizer has to apply the update, with the "
            "gradients still in place (clearing them belongs before backward)",
        ),
        Misconception(
            "loss after the update",
            _step(loss_after=True),
            "return the loss of the forward pass on (x, y) that the step learned from, computed before the update",
        ),
        Misconception(
            "loss returned as a tensor",
            _step(as_float=False),
            "return the loss as a Python float: the tensor keeps the whole computation graph alive",
        ),
    ),
)

SPECS = (FORWARD, CROSS_ENTROPY, TRAIN_STEP)
