"""Exercise specs: what a lab's exercise is, how it is run, and how an answer is judged.

A :class:`Spec` is a row of the grading table. It names the learner's function or class, the
course's reference, a seeded generator of :class:`Case` inputs (the edge cases its instructions
name, every time, then random ones), how to run an answer on a case (:attr:`Spec.run`, plain
outputs back), how to compare outputs with the reference's (:attr:`Spec.compare`), and the
*misconceptions*: known wrong answers, each with the hint a learner who wrote it should get.

The same spec runs in two places (see :mod:`gptcourse.grading.harness`): in the learner's kernel
for instant feedback, and split across the process boundary when grading, where the kernel only
runs the answer and the grader judges the outputs in its own process.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

Compare = Callable[[Any, Any, "Case"], "str | None"]  # (got, expected, case) -> what is wrong, or None


class AnswerError(Exception):
    """An answer that cannot be run on a case, found by the spec's driver (a missing parameter, a
    wrong return type). Its message is shown to the learner as the failure."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One input: ``label`` names the edge case; ``args``/``kwargs`` are what the driver passes on."""

    label: str
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Misconception:
    """A known wrong answer (same signature as the learner's) and the hint it earns."""

    name: str
    answer: Callable[..., Any]
    hint: str


def call(answer: Callable[..., Any], case: Case) -> Any:
    """The default driver: ``answer(*case.args, **case.kwargs)``."""
    return answer(*case.args, **case.kwargs)


def describe(value: Any) -> str:
    """A short description of an argument for messages: shapes for tensors, ``repr`` for the rest."""
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}" + ("" if value.dtype == torch.float32 else f" {value.dtype}")
    if isinstance(value, nn.Module):
        return type(value).__name__
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- comparisons: each returns what is wrong (a sentence) or None ------------------------------------


def close(atol: float = 1e-5, rtol: float = 1e-4) -> Compare:
    """Equal within tolerance, element by element, through tuples, lists and dicts; the message
    names the first wrong place (its index, the value got and expected)."""

    def compare(got: Any, expected: Any, case: Case) -> str | None:
        return _difference(got, expected, "", atol, rtol)

    return compare


def exact() -> Compare:
    """Exactly equal (tensors: same shape and values; numbers: ``==``)."""
    return close(atol=0.0, rtol=0.0)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, (int, float)):
        return "a number"
    return f"a {type(value).__name__}"


def _difference(got: Any, expected: Any, where: str, atol: float, rtol: float) -> str | None:
    at = f" {where}" if where else ""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"returned{at} {_kind(got)}, expected a tensor of shape {tuple(expected.shape)}"
        if got.shape != expected.shape:
            return f"returned{at} shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if expected.dtype == torch.bool or not expected.is_floating_point():
            if got.is_floating_point() != expected.is_floating_point():
                return f"returned{at} dtype {got.dtype}, expected {expected.dtype}"
        g, e = got.double(), expected.double()
        bad = ~torch.isclose(g, e, atol=atol, rtol=rtol, equal_nan=True)
        if not bad.any():
            return None
        err = (g - e).abs().nan_to_num(nan=math.inf).masked_fill(~bad, -1)
        index = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
        return (
            f"is wrong{at} at index {index}: got {g[index].item():.6g}, expected {e[index].item():.6g} "
            f"({int(bad.sum())} of {bad.numel()} values differ)"
        )
    if isinstance(expected, bool) or expected is None or isinstance(expected, (str, bytes)):
        if type(got) is type(expected) and got == expected:
            return None
        return f"returned{at} {got!r}, expected {expected!r}"
    if isinstance(expected, (int, float)):
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return f"returned{at} {_kind(got)}, expected a number"
        if isinstance(expected, int) and not isinstance(got, int):
            return f"returned{at} {got!r} (a float), expected the int {expected!r}"
        if math.isclose(got, expected, rel_tol=rtol, abs_tol=atol) or (math.isnan(got) and math.isnan(expected)):
            return None
        return f"returned{at} {got:.6g}, expected {expected:.6g}"
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"returned{at} {_kind(got)}, expected a {type(expected).__name__} of {len(expected)}"
        if len(got) != len(expected):
            return f"returned{at} {len(got)} items, expected {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            wrong = _difference(g, e, f"{where}[{i}]", atol, rtol)
            if wrong:
                return wrong
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"returned{at} {_kind(got)}, expected a dict"
        missing = [k for k in expected if k not in got]
        extra = [k for k in got if k not in expected]
        if missing or extra:
            parts = [f"missing keys {missing[:3]}"] if missing else []
            parts += [f"extra keys {extra[:3]}"] if extra else []
            return f"returned{at} a dict with {' and '.join(parts)}"
        for k in expected:
            wrong = _difference(got[k], expected[k], f"{where}[{k!r}]", atol, rtol)
            if wrong:
                return wrong
        return None
    raise TypeError(f"cannot compare a {type(expected).__name__}")


# --- helpers for drivers -------------------------------------------------------------------------------


def randint(g: torch.Generator, low: int, high: int) -> int:
    """An int in ``[low, high]``, both included, drawn from the case generator ``g``."""
    return int(torch.randint(low, high + 1, (), generator=g))


@contextlib.contextmanager
def global_seed(seed: int = 1234) -> Iterator[None]:
    """Run an answer with torch's global generator seeded (and restored afterwards): an answer that
    draws from it (dropout left on, batches drawn without their own generator, sampling by mistake)
    then gives the same numbers in every process, so that its misconception can be recognised."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def number(value: Any, name: str) -> Any:
    """A returned number as a float; a one-element tensor counts as a number. ``None`` and other
    tensors pass through for the comparison to name; anything else cannot be graded."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if value is None or isinstance(value, torch.Tensor):
        return value
    raise AnswerError(f"{name} returned a {type(value).__name__}; return a number (a float)")


def compare_with_gradients(atol: float = 1e-5, rtol: float = 1e-4) -> Compare:
    """:func:`close`, except that a dict of outputs whose ``gradient...`` entry is ``None`` where
    the reference has one (the answer cut its result off from the graph) is named as such."""
    values_close = close(atol, rtol)

    def compare(got: Any, expected: Any, case: Case) -> str | None:
        if isinstance(got, dict) and isinstance(expected, dict):
            for key, value in expected.items():
                if key.startswith("gradient") and value is not None and key in got and got[key] is None:
                    rest = [k for k in expected if not k.startswith("gradient")]
                    return values_close({k: got.get(k) for k in rest}, {k: expected[k] for k in rest}, case) or (
                        f"has no {key}: the result must stay differentiable (no .detach(), .item() or "
                        "torch.tensor around it)"
                    )
        return values_close(got, expected, case)

    return compare


def update_misconceptions(variant: Callable[..., Callable[..., Any]]) -> tuple[Misconception, ...]:
    """The wrong updates any training step can make, for a step whose reference-like ``variant``
    takes ``zero=False`` (gradients never zeroed), ``clip=False`` (never clipped) and
    ``clip_at_zero=True`` (clipped with ``grad_clip = 0``, which means no clipping)."""
    return (
        Misconception(
            "gradients not zeroed",
            variant(zero=False),
            "backward adds to .grad: zero the gradients in every step, or the previous step's gradients are "
            "added to this one's",
        ),
        Misconception(
            "no clipping",
            variant(clip=False),
            "with grad_clip > 0, clip the global gradient norm to grad_clip before the optimiser steps, as every "
            "loop of the course does",
        ),
        Misconception(
            "clipped with grad_clip = 0",
            variant(clip_at_zero=True),
            "grad_clip = 0 means no clipping: clipping to a norm of 0 would wipe out the gradients",
        ),
    )


def parameter_grads(module: nn.Module) -> dict[str, torch.Tensor | None]:
    """A copy of each named parameter's gradient after a backward (None where it has none): what a
    spec compares between the learner's module and the reference's."""
    return {k: (None if p.grad is None else p.grad.clone()) for k, p in module.named_parameters()}


def load_reference_weights(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load the reference's parameters into the learner's ``module``: every parameter of the
    reference must exist with its name and shape, and the module may have no other parameters;
    extra buffers (a causal-mask buffer, say) are allowed. Raises :class:`AnswerError` otherwise."""
    if not isinstance(module, nn.Module):
        raise AnswerError(f"{what} is a {type(module).__name__}, not an nn.Module")
    own = dict(module.named_parameters())
    missing = [k for k in state if k not in own]
    extra = [k for k in own if k not in state]
    if missing:
        raise AnswerError(f"{what} has no parameter named {missing[0]!r} (it has {sorted(own)[:6]})")
    if extra:
        raise AnswerError(f"{what} has a parameter {extra[0]!r} that the specification does not have")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise AnswerError(f"{what}.{k} has shape {tuple(own[k].shape)}, expected {tuple(v.shape)}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)


@contextlib.contextmanager
def seeded(g: torch.Generator) -> Iterator[None]:
    """Run a block (building an ``nn.Module``, say) with torch's global generator seeded from ``g``,
    and put the global generator back afterwards: case generators must depend on ``g`` alone."""
    seed = int(torch.randint(2**31, (1,), generator=g))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def randomize_(module: nn.Module, g: torch.Generator, scale: float = 0.5) -> nn.Module:
    """Give every parameter of ``module`` random values in place (norm gains near 1, not 1), so an
    answer that skips a gain, a bias or a shift shows; returns ``module``."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            if p.dim() == 1 and name.endswith("weight"):  # a norm's gain
                p.copy_(1.0 + noise)
            elif p.dim() == 1:  # a bias or a norm's shift
                p.copy_(0.2 * noise)
            else:  # a matrix keeps its init's scale, shifted enough to be unlike any other
                p.add_(0.1 * noise)
    return module


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """Case input for an exercise that takes an optimiser: which one the driver builds on the
    case's model (an optimiser holds references to one model's parameters, so a case cannot)."""

    kind: str  # "SGD" or "AdamW"
    lr: float

    def __repr__(self) -> str:
        return f"{self.kind}(lr={self.lr:g})"

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        optimizer = torch.optim.SGD if self.kind == "SGD" else torch.optim.AdamW
        return optimizer(model.parameters(), lr=self.lr)


def copy_case(case: Case) -> Case:
    """A deep copy of ``case``, so that an answer that changes its inputs changes nothing else."""
    return Case(case.label, copy.deepcopy(case.args), copy.deepcopy(case.kwargs))


@dataclasses.dataclass(frozen=True)
class Spec:
    """One exercise of a lab.

    ``id`` is ``labNN.name``; ``name`` is what the learner defines in the notebook; ``cases(g)``
    builds the inputs from a seeded ``torch.Generator`` (the same seed gives the same cases in any
    process); ``run(answer, case)`` returns the plain outputs (tensors, numbers, strings, lists,
    tuples, dicts) that ``compare(got, expected, case)`` judges. ``forbidden`` names course
    functions or classes (dotted paths) the answer must not use: the grader flags them in the code
    and makes them raise while it runs the answer."""

    id: str
    points: float
    name: str
    reference: Callable[..., Any]
    cases: Callable[[torch.Generator], Sequence[Case]]
    misconceptions: Sequence[Misconception]
    run: Callable[[Callable[..., Any], Case], Any] = call
    compare: Compare = dataclasses.field(default_factory=close)
    hint: str = "re-read the exercise's description; the message says which value is wrong."
    forbidden: tuple[str, ...] = ()

    def make_cases(self, seed: int) -> tuple[Case, ...]:
        """The cases of ``seed``, built once: :func:`gptcourse.grading.harness.attempt` and
        :func:`~gptcourse.grading.harness.judge` (and an audit's every misconception) share them,
        and only ever run answers on copies (:func:`copy_case`)."""
        return _cases(self, seed)


@functools.lru_cache(maxsize=32)
def _cases(spec: Spec, seed: int) -> tuple[Case, ...]:
    cases = tuple(spec.cases(torch.Generator().manual_seed(seed)))
    if not cases:
        raise ValueError(f"{spec.id}: its case generator made no case")
    return cases
