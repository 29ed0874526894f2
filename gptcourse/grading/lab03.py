"""Exercise specs for Lab 3 (a neural language model, saved as ``learner/neural_lm.py``), against
:mod:`gptcourse.neural_lm` and torch: ``context_windows(ids, context)``, ``mlp_forward(idx, wte, w1,
b1, w2, b2)``, ``cross_entropy(logits, targets)``, the module ``MLPLM(vocab_size, context, n_embd,
n_hidden)``, ``train_step(model, optimizer, x, y)``, ``evaluate(model, x, y, batch_size)`` and
``fit(model, x, y, steps, ...)``.

``MLPLM`` is built from the same arguments as the package's, gets the package's weights
(:func:`load_reference_weights`: the parameter names must be the package's) and is compared on its
initialisation, its logits, its loss and the gradients. ``evaluate`` and ``fit`` change state (the
model's mode, its weights), so their drivers return what changed as plain data."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

from gptcourse import neural_lm
from gptcourse.grading.spec import (
    AnswerError,
    Case,
    Misconception,
    Spec,
    close,
    global_seed,
    load_reference_weights,
    number,
    randint,
    randomize_,
)

PACKAGE = (  # the package's pieces that an exercise of this lab asks for: none of them may be called
    "gptcourse.neural_lm.context_windows",
    "gptcourse.neural_lm.cross_entropy",
    "gptcourse.neural_lm.MLPLM",
    "gptcourse.neural_lm.train_step",
    "gptcourse.neural_lm.evaluate",
    "gptcourse.neural_lm.fit",
    "gptcourse.loops.evaluating",
)


@functools.lru_cache(maxsize=64)
def _mlplm(V: int, context: int, n_embd: int, n_hidden: int) -> neural_lm.MLPLM:
    """An MLPLM of these sizes with a fixed init, made once: seeding torch costs more than a case."""
    with torch.random.fork_rng(devices=[]):  # the learner's random numbers stay where they were
        torch.manual_seed(0)
        return neural_lm.MLPLM(V, context, n_embd, n_hidden)


# --- Exercise 1: training pairs from a sliding window ------------------------------------------------------


def windows_cases(g: torch.Generator) -> list[Case]:
    """``(ids, context)``: 1-D tensors of ids, long ones and an int32 one, and ones too short for a pair."""

    def ids(n: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
        return torch.randint(50, (n,), generator=g).to(dtype)

    cases = [
        Case("12 ids, context 3", (ids(12), 3)),
        Case("context 1 (the bigram's pairs)", (ids(9), 1)),
        Case("exactly one pair (len(ids) = context + 1)", (ids(5), 4)),
        Case("int32 ids: the pairs are int64, as nn.Embedding and the loss want", (ids(10, torch.int32), 2)),
        Case("as many ids as context: no pair, a ValueError", (ids(4), 4)),
        Case("fewer ids than context: a ValueError", (ids(2), 5)),
    ]
    for i in range(2):
        context = randint(g, 1, 8)
        cases.append(Case(f"random length and context {i + 1}", (ids(randint(g, context + 1, 60)), context)))
    return cases


def run_windows(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """The pairs and their dtypes, or that a ValueError was raised."""
    try:
        out = answer(*case.args)
    except ValueError:
        return {"ValueError": True}
    if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        raise AnswerError(f"context_windows returned a {type(out).__name__}; return the pair of tensors (x, y)")
    x, y = out
    return {"x": x, "y": y, "dtypes": f"x {x.dtype}, y {y.dtype}"}


def compare_windows(got: Any, expected: Any, case: Case) -> str | None:
    if "ValueError" in expected and "ValueError" not in got:
        ids, context = case.args
        return f"returned pairs for {len(ids)} ids and context {context}, expected a ValueError (no pair can be made)"
    if "ValueError" in got and "ValueError" not in expected:
        return "raised a ValueError, expected the pairs"
    return close(atol=0, rtol=0)(got, expected, case)


def _windows(
    stride: bool = False,
    last: bool = False,
    inside: bool = False,
    pad: bool = False,
    cast: bool = True,
    checks: bool = True,
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The package's windows with one piece changed (a misconception)."""

    def context_windows(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        if checks and len(ids) <= context:
            raise ValueError("too few ids")
        if pad:
            ids = torch.cat([ids.new_zeros(context), ids])
        if stride:
            n = (len(ids) - 1) // context
            x, y = ids[: n * context].view(n, context), ids[context::context][:n]
        else:
            x = ids.unfold(0, context, 1)
            x = x if last else x[:-1]
            y = ids[context - 1 : -1] if inside else ids[context:]
        return (x.long(), y.long()) if cast else (x, y)

    return context_windows


CONTEXT_WINDOWS = Spec(
    id="lab03.context_windows",
    points=2,
    name="context_windows",
    reference=neural_lm.context_windows,
    cases=windows_cases,
    run=run_windows,
    compare=compare_windows,
    forbidden=PACKAGE,
    hint="(Chapter 3, Training pairs from a sliding window) slide a window one position at a time: "
    "x[i] = ids[i : i + context] and y[i] = ids[i + context], N = len(ids) - context pairs, as int64; "
    "a ValueError when no pair can be made",
    misconceptions=(
        Misconception(
            "the last window kept",
            _windows(last=True),
            "the last window of the text has no token after it, so it is no training pair: there are "
            "len(ids) - context pairs, as many as targets",
        ),
        Misconception(
            "windows side by side",
            _windows(stride=True),
            "the window slides by one position, so windows overlap and every token after the first "
            "context is the target of one pair",
        ),
        Misconception(
            "target inside the window",
            _windows(inside=True),
            "the target is the token that follows the window, the one the model has not seen yet, not "
            "the window's last token",
        ),
        Misconception(
            "the start padded",
            _windows(pad=True),
            "there is no padding: the first context tokens have no full window before them, so they are "
            "never targets (Chapter 3 counts N - context pairs)",
        ),
        Misconception(
            "dtype kept",
            _windows(cast=False),
            "return the pairs as int64 (long) tensors whatever the ids' integer type: that is what "
            "nn.Embedding and the cross-entropy's targets take",
        ),
        Misconception(
            "no pair, no error",
            _windows(checks=False),
            "when the text is not longer than the context no pair can be made: raise a ValueError that "
            "says so, rather than return empty (or failing with another error)",
        ),
    ),
)


# --- Exercise 2: the forward pass ------------------------------------------------------------------------


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
        sizes = (randint(g, 1, 16), randint(g, 1, 6), randint(g, 3, 40), randint(g, 2, 12), randint(g, 4, 32))
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


# --- Exercise 3: cross-entropy from logits ----------------------------------------------------------------------


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
        scale = (1.0, 10.0, 100.0)[randint(g, 0, 2)]
        cases.append(Case(f"random sizes {i + 1}", _logits(g, randint(g, 1, 64), randint(g, 2, 100), scale=scale)))
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


# --- Exercise 4: the MLPLM module ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class Sizes:
    """The constructor arguments of a case (``None``: left at the default)."""

    vocab_size: int
    context: int | None = None
    n_embd: int | None = None
    n_hidden: int | None = None

    def kwargs(self) -> dict[str, int]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "vocab_size"}

    def __repr__(self) -> str:
        return f"MLPLM({', '.join([str(self.vocab_size)] + [f'{k}={v}' for k, v in self.kwargs().items()])})"


def mlplm_cases(g: torch.Generator) -> list[Case]:
    """``(sizes, state, idx, targets, proj, how)``: the package's weights (randomised), a batch, and
    the weights of a sum of the logits whose gradients are compared."""

    def case(label: str, sizes: Sizes, B: int, how: str = "plain", targets: bool = True) -> Case:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            reference = neural_lm.MLPLM(sizes.vocab_size, **sizes.kwargs())
        randomize_(reference, g)
        with torch.no_grad():  # output weights of unit scale: a missing tanh or softmax shows in the logits
            reference.out.weight.normal_(generator=g)
        state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
        V, context = sizes.vocab_size, reference.context
        idx = torch.randint(V, (B, context + (1 if how == "wrong width" else 0)), generator=g)
        y = torch.randint(V, (B,), generator=g) if targets else None
        return Case(label, (sizes, state, idx, y, torch.randn(B, V, generator=g), how))

    cases = [
        case("a batch of 4, context 3, n_embd 5, n_hidden 16", Sizes(11, 3, 5, 16), 4),
        case("the default sizes (context 3, n_embd 16, n_hidden 128)", Sizes(20), 6),
        case("context 1, no targets: the loss is None", Sizes(9, 1, 4, 8), 5, targets=False),
        case("a single example (B = 1)", Sizes(7, 4, 3, 12), 1),
        case("idx one column wider than context: a ValueError", Sizes(8, 2, 3, 8), 3, how="wrong width"),
    ]
    for i in range(2):
        sizes = Sizes(randint(g, 5, 40), randint(g, 1, 6), randint(g, 2, 12), randint(g, 8, 32))
        cases.append(case(f"random sizes {i + 1}", sizes, randint(g, 1, 16)))
    return cases


def run_mlplm(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """Build the answer from the case's sizes; report its initialisation, load the package's weights,
    and return the logits, the loss and the gradients of ``loss + (logits * proj).sum()``."""
    sizes, state, idx, y, proj, how = case.args
    with global_seed():
        model = answer(sizes.vocab_size, **sizes.kwargs())
    if not isinstance(model, nn.Module):
        raise AnswerError(f"MLPLM(...) built a {type(model).__name__}, not an nn.Module")
    out = getattr(model, "out", None)
    weight, bias = getattr(out, "weight", None), getattr(out, "bias", None)
    if not (isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)):
        raise AnswerError("your MLPLM has no output layer out (an nn.Linear with a weight and a bias)")
    init = {
        "context attribute": getattr(model, "context", None),
        "out.weight std about 0.01": bool(0.005 < float(weight.detach().std()) < 0.02),
        "out.bias zero": bool((bias.detach() == 0).all()),
    }
    load_reference_weights(model, state, "your MLPLM")
    if how == "wrong width":
        try:
            model(idx, y)
        except ValueError:
            return {"initialisation": init, "ValueError": True}
        return {"initialisation": init, "ValueError": False}
    result = model(idx, y)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise AnswerError(f"MLPLM's forward returned a {type(result).__name__}; return the pair (logits, loss)")
    logits, loss = result
    if not isinstance(logits, torch.Tensor) or logits.shape != proj.shape:
        return {"initialisation": init, "logits": logits}
    total = (logits * proj).sum() + (0 if loss is None else loss)
    total.backward()
    grads = {k: (None if p.grad is None else p.grad.clone()) for k, p in model.named_parameters()}
    return {
        "initialisation": init,
        "logits": logits.detach(),
        "loss": None if loss is None else loss.detach(),
        "grads": grads,
    }


def compare_mlplm(got: Any, expected: Any, case: Case) -> str | None:
    """Close (1e-4); the parts named in words: its initialisation, the ValueError, the loss."""
    if not isinstance(got, dict) or set(got) != set(expected):
        return close(atol=1e-4, rtol=1e-4)(got, expected, case)
    for name, value in expected["initialisation"].items():
        if got["initialisation"][name] != value:
            return (
                f"built a module whose {name} is {got['initialisation'][name]!r} after construction, expected {value!r}"
            )
    if "ValueError" in expected and got["ValueError"] != expected["ValueError"]:
        shape, context = tuple(case.args[2].shape), case.args[2].shape[1] - 1
        return f"took idx of shape {shape} for context {context} without raising a ValueError"
    if expected.get("loss", 0) is None and got["loss"] is not None:
        return "returned a loss without targets, expected None"
    return close(atol=1e-4, rtol=1e-4)(got, expected, case)


def reference_mlplm(vocab_size: int, context: int = 3, n_embd: int = 16, n_hidden: int = 128) -> nn.Module:
    return neural_lm.MLPLM(vocab_size, context, n_embd, n_hidden)


def _mlp_lm(mistake: str) -> type[nn.Module]:
    """An ``MLPLM`` class with one known mistake (``mistake`` names it)."""

    class MLPLM(neural_lm.MLPLM):
        def __init__(self, vocab_size: int, context: int = 3, n_embd: int = 16, n_hidden: int = 128):
            super().__init__(vocab_size, context, n_embd, n_hidden)
            if mistake == "output layer at its default initialisation":
                self.out.reset_parameters()

        def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> Any:
            if mistake != "no ValueError for a wrong width" and idx.shape[1] != self.context:
                raise ValueError("idx must be (B, context)")
            emb = self.wte(idx[:, -self.context :])
            x = (emb.transpose(1, 2) if mistake == "embeddings interleaved" else emb).flatten(1)
            z = self.hidden(x)
            h = z if mistake == "no tanh" else torch.tanh(z)
            logits = self.out(h)
            if mistake == "softmax applied":
                logits = torch.softmax(logits, dim=-1)
            loss = None if targets is None else F.cross_entropy(logits, targets)
            if mistake == "loss summed" and loss is not None:
                loss = loss * len(targets)
            return logits, loss

    return MLPLM


MLPLM_HINTS = {
    "output layer at its default initialisation": "(Chapter 3, The module) start the output layer small, weights "
    "from a normal of std 0.01 and a zero bias, so the untrained model predicts nearly uniformly and its first "
    "loss is about log V",
    "no tanh": "the hidden layer is tanh(W1 x + b1): without the nonlinearity the two layers collapse into one "
    "linear map (Chapter 3, Hidden layer)",
    "embeddings interleaved": "concatenate the context embeddings one after the other: each example's input is "
    "the embedding of its first id, then that of its second, ... (Chapter 3, Concatenation)",
    "softmax applied": "forward returns logits, before any softmax: the cross-entropy normalises them itself",
    "loss summed": "the loss is the mean cross-entropy over the batch, not its sum",
    "no ValueError for a wrong width": "the model reads exactly context ids per example: forward raises a ValueError "
    "for idx whose shape is not (B, context), rather than read part of it",
}

MLP_LM = Spec(
    id="lab03.mlp_lm",
    points=3,
    name="MLPLM",
    reference=reference_mlplm,
    cases=mlplm_cases,
    run=run_mlplm,
    compare=compare_mlplm,
    forbidden=PACKAGE,
    hint="(Chapter 3, The module) sub-modules wte (an nn.Embedding), hidden and out (nn.Linear), the output layer "
    "started small; forward embeds, concatenates, tanh hidden layer, logits, and returns (logits, mean "
    "cross-entropy or None)",
    misconceptions=tuple(Misconception(n, _mlp_lm(n), h) for n, h in MLPLM_HINTS.items()),
)


# --- Exercise 5: one training step ----------------------------------------------------------------------------


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
    cases.append(_steps_case(g, "random sizes", randint(g, 5, 30), randint(g, 1, 4), randint(g, 1, 16), "SGD", sgd))
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


# --- Exercise 6: the evaluation -------------------------------------------------------------------------------


class DropoutLM(neural_lm.MLPLM):
    """An MLPLM with dropout on its hidden layer: a model whose evaluation differs in training mode."""

    def __init__(self, vocab_size: int, context: int, n_embd: int, n_hidden: int, dropout: float = 0.3):
        super().__init__(vocab_size, context, n_embd, n_hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> Any:
        h = self.drop(torch.tanh(self.hidden(self.wte(idx).flatten(1))))
        logits = self.out(h)
        return logits, None if targets is None else F.cross_entropy(logits, targets)


def _pairs(g: torch.Generator, V: int, context: int, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(V, (N, context), generator=g), torch.randint(V, (N,), generator=g)


def evaluate_cases(g: torch.Generator) -> list[Case]:
    """``(model, x, y[, batch_size])`` with a model that has dropout, in training or eval mode."""

    def model(training: bool, V: int = 12, context: int = 3) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            m = DropoutLM(V, context, 4, 16)
        randomize_(m, g)
        with torch.no_grad():
            m.out.weight.normal_(generator=g)
        return m.train(training)

    cases = [
        Case("10 pairs in batches of 4 (a smaller last batch), training mode", (model(True), *_pairs(g, 12, 3, 10), 4)),
        Case("a model in eval mode (it must stay so)", (model(False), *_pairs(g, 12, 3, 9), 2)),
        Case("the default batch_size (4096): 50 pairs in one batch", (model(True), *_pairs(g, 12, 3, 50))),
        Case("a batch_size that divides the pairs", (model(True), *_pairs(g, 12, 3, 12), 3)),
    ]
    N = randint(g, 5, 60)
    return cases + [
        Case(f"random: {N} pairs", (model(bool(randint(g, 0, 1))), *_pairs(g, 12, 3, N), randint(g, 1, 16)))
    ]


def run_evaluate(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """The mean it returned, the mode it left the model in, and how its forward passes ran."""
    model = case.args[0]
    calls: list[tuple[bool, bool, int]] = []

    def record(module: nn.Module, args: Any, output: Any) -> None:
        calls.append((module.training, torch.is_grad_enabled(), len(args[0])))

    model.register_forward_hook(record)
    with global_seed():
        loss = number(answer(*case.args), "evaluate")
    return {
        "mean loss": loss,
        "mode afterwards": "training" if model.training else "eval",
        "forward passes in training mode": sum(training for training, _, _ in calls),
        "forward passes recording gradients": sum(grad for _, grad, _ in calls),
        "batch sizes": [n for _, _, n in calls],
    }


def _evaluate(
    eval_mode: bool = True, restore: bool = True, no_grad: bool = True, weighted: bool = True, batched: bool = True
) -> Callable[..., float]:
    """The package's evaluation with one piece changed (a misconception)."""

    def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
        was_training = model.training
        if eval_mode:
            model.eval()
        size = batch_size if batched else len(y)
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            losses = [
                (model(x[i : i + size], y[i : i + size])[1].item(), len(y[i : i + size]))
                for i in range(0, len(y), size)
            ]
        model.train(was_training if restore else True)
        if weighted:
            return sum(loss * n for loss, n in losses) / len(y)
        return sum(loss for loss, _ in losses) / len(losses)

    return evaluate


EVALUATE = Spec(
    id="lab03.evaluate",
    points=2,
    name="evaluate",
    reference=neural_lm.evaluate,
    cases=evaluate_cases,
    run=run_evaluate,
    compare=close(atol=1e-5, rtol=1e-5),
    forbidden=PACKAGE,
    hint="(Chapter 3, The loop) in eval mode and without gradients, the mean loss over every pair, computed in "
    "batches of batch_size pairs in order; then put the model back in the mode it was in",
    misconceptions=(
        Misconception(
            "mean of the batch means",
            _evaluate(weighted=False),
            "the result is the mean over every pair: weight each batch's mean loss by its number of pairs, "
            "since the last batch can be smaller",
        ),
        Misconception(
            "dropout left on",
            _evaluate(eval_mode=False),
            "evaluate in eval mode: dropout is for training, and left on it makes the measurement noisy and too high",
        ),
        Misconception(
            "always back to training mode",
            _evaluate(restore=False),
            "put the model back in the mode it had when evaluate was called: a model given in eval mode stays in it",
        ),
        Misconception(
            "gradients recorded",
            _evaluate(no_grad=False),
            "a measurement needs no gradients: run the forward passes without recording the graph, which "
            "would hold the memory of every batch for nothing",
        ),
        Misconception(
            "all pairs in one batch",
            _evaluate(batched=False),
            "go through the pairs in batches of batch_size: a held-out set of a million pairs does not fit "
            "through the model at once",
        ),
    ),
)


# --- Exercise 7: the training loop ----------------------------------------------------------------------------


def fit_cases(g: torch.Generator) -> list[Case]:
    """``(model, x, y, steps)`` and keyword settings: a few AdamW steps of a small MLPLM."""

    def case(label: str, steps: int, V: int = 10, context: int = 2, **kwargs: Any) -> Case:
        model = randomize_(copy.deepcopy(_mlplm(V, context, 6, 12)), g)
        x, y = _pairs(g, V, context, 80)
        if kwargs.pop("val", True):
            kwargs["x_val"], kwargs["y_val"] = _pairs(g, V, context, 30)
        return Case(label, (model, x, y, steps), kwargs)

    cases = [
        case(
            "7 steps, an evaluation every 3 and at the end, seed 5", 7, batch_size=8, lr=0.05, eval_interval=3, seed=5
        ),
        case("no held-out data: no evaluation", 4, batch_size=16, lr=0.02, val=False),
        case("the defaults (batch_size 64, lr 1e-2, eval_interval 100, seed 0)", 5),
    ]
    steps, interval = randint(g, 2, 8), randint(g, 1, 4)
    label = f"random: {steps} steps, an evaluation every {interval}"
    batch, seed = randint(g, 1, 32), randint(g, 0, 1000)
    return cases + [case(label, steps, batch_size=batch, lr=0.03, eval_interval=interval, seed=seed)]


def run_fit(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """The history it returned and the weights it left."""
    model = case.args[0]
    with global_seed():
        history = answer(*case.args, **case.kwargs)
    keys = ("train", "val_steps", "val")
    if not (isinstance(history, dict) and all(isinstance(history.get(k), list) for k in keys)):
        raise AnswerError(
            f"fit returned a {type(history).__name__}; return the dict {{'train': [...], 'val_steps': [...], "
            "'val': [...]}}"
        )
    out: dict[str, Any] = {k: [number(v, f"fit's history[{k!r}]") for v in history[k]] for k in keys}
    out["val_steps"] = [int(v) if isinstance(v, float) and v.is_integer() else v for v in out["val_steps"]]
    out["weights"] = {name: p.detach().clone() for name, p in model.named_parameters()}
    return out


def reference_fit(*args: Any, **kwargs: Any) -> dict[str, list[float]]:
    """The package's fit, without its progress bar."""
    with mock.patch.object(neural_lm, "tqdm", lambda steps, **_: steps):
        return neural_lm.fit(*args, **kwargs)


def _fit(
    own_batches: bool = True,
    use_seed: bool = True,
    decay: bool = False,
    adamw: bool = True,
    last_eval: bool = True,
    from_zero: bool = False,
) -> Callable[..., dict[str, list[float]]]:
    """The package's loop with one piece changed (a misconception)."""

    def fit(
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        steps: int,
        batch_size: int = 64,
        lr: float = 1e-2,
        x_val: torch.Tensor | None = None,
        y_val: torch.Tensor | None = None,
        eval_interval: int = 100,
        seed: int = 0,
    ) -> dict[str, list[float]]:
        if adamw:
            optimizer = torch.optim.AdamW(model.parameters(), lr=lr, **({} if decay else {"weight_decay": 0.0}))
        else:
            optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed if use_seed else 0)
        history: dict[str, list[float]] = {"train": [], "val_steps": [], "val": []}
        for step in range(0 if from_zero else 1, steps + (0 if from_zero else 1)):
            rows = torch.randint(len(y), (batch_size,), generator=generator if own_batches else None)
            history["train"].append(neural_lm.train_step(model, optimizer, x[rows], y[rows]))
            if x_val is not None and (step % eval_interval == 0 or (last_eval and step == steps)):
                history["val_steps"].append(step)
                history["val"].append(neural_lm.evaluate(model, x_val, y_val))
        return history

    return fit


FIT = Spec(
    id="lab03.fit",
    points=3,
    name="fit",
    reference=reference_fit,
    cases=fit_cases,
    run=run_fit,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=PACKAGE,
    hint="(Chapter 3, Why an optimiser such as AdamW) AdamW with weight decay 0; rows drawn with torch.randint from "
    "a torch.Generator seeded with seed; one train_step per step 1..steps; with held-out pairs, evaluate every "
    "eval_interval steps and after the last one",
    misconceptions=(
        Misconception(
            "batches from the global generator",
            _fit(own_batches=False),
            "draw the rows from a torch.Generator of your own seeded with seed: the same seed then gives the "
            "same run, whatever else drew random numbers before",
        ),
        Misconception(
            "seed ignored",
            _fit(use_seed=False),
            "seed the generator with the seed argument: another seed draws other minibatches",
        ),
        Misconception(
            "weight decay at AdamW's default",
            _fit(decay=True),
            "AdamW decays the weights by 0.01 unless told otherwise; fit trains without weight decay "
            "(weight_decay=0), as Chapter 3's runs of the bigram do",
        ),
        Misconception(
            "SGD instead of AdamW",
            _fit(adamw=False),
            "fit trains with AdamW, whose step is about lr whatever the scale of the gradients, not plain SGD",
        ),
        Misconception(
            "no evaluation after the last step",
            _fit(last_eval=False),
            "evaluate every eval_interval steps and also after the last step, so that the run ends with a measurement",
        ),
        Misconception(
            "steps counted from 0",
            _fit(from_zero=True),
            "count the steps from 1: val_steps holds the number of steps done when each evaluation ran, so the "
            "first evaluation is after eval_interval steps, not after the first",
        ),
    ),
)

SPECS = (CONTEXT_WINDOWS, FORWARD, CROSS_ENTROPY, MLP_LM, TRAIN_STEP, EVALUATE, FIT)
