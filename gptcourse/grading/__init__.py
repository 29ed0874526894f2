"""The checks that lab test cells call.

Each lab has a module here (``gptcourse.grading.lab01`` ...) whose check functions take the
learner's function, run it next to the package's reference on fresh random inputs, and either
print a pass or raise :class:`GradingError` with a message a learner can act on (which shape,
which position, which value). A ``NotImplementedError`` from an unsolved exercise passes through
untouched, so an unsolved lab fails with exactly that error.

Helpers here are the vocabulary of those messages; :func:`exercise` records every result so that
:func:`check_all` can summarise a lab.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

RESULTS: dict[str, str] = {}  # exercise id -> "passed" | "failed: ..." | "not implemented"


class GradingError(AssertionError):
    """A learner's answer is wrong; the message says how."""


def exercise(exercise_id: str) -> Callable[[Callable[..., Any]], Callable[..., None]]:
    """Decorate a check: record its outcome under ``exercise_id`` and print a clear verdict.

    A pass prints ``PASSED <id>``. A failure prints ``FAILED <id>: <what was wrong>`` with a hint,
    then re-raises, so the cell shows an error (which is how graders and tests see it)."""

    def decorate(check: Callable[..., Any]) -> Callable[..., None]:
        @functools.wraps(check)
        def run(*args: Any, **kwargs: Any) -> None:
            try:
                check(*args, **kwargs)
            except NotImplementedError:
                RESULTS[exercise_id] = "not implemented"
                print(f"NOT DONE {exercise_id}: the function still raises NotImplementedError.\n"
                      f"Hint: replace `raise NotImplementedError()` with your code, run that cell, then this one.")
                raise
            except GradingError as err:
                RESULTS[exercise_id] = f"failed: {err}"
                hint = "" if "Hint:" in str(err) else "\nHint: re-read the exercise's description; the message says which value is wrong."
                print(f"FAILED {exercise_id}: {err}{hint}")
                raise
            except Exception as err:  # the learner's code crashed inside the check
                RESULTS[exercise_id] = f"error: {type(err).__name__}: {err}"
                print(f"FAILED {exercise_id}: your code raised {type(err).__name__}: {err}\n"
                      f"Hint: the traceback below ends at the line that raised it.")
                raise
            RESULTS[exercise_id] = "passed"
            print(f"PASSED {exercise_id}")

        run.exercise_id = exercise_id
        return run

    return decorate


def check_all() -> None:
    """Summarise this session's graded cells: which passed, failed or are not done yet."""
    if not RESULTS:
        print("No graded cell has run yet: run the notebook from the top (Run all).")
        return
    width = max(map(len, RESULTS))
    marks = {"passed": "PASSED", "not implemented": "NOT DONE"}
    for exercise_id, outcome in RESULTS.items():
        mark = marks.get(outcome, "FAILED")
        detail = "" if outcome in marks else "  " + outcome.split(": ", 1)[-1].splitlines()[0]
        print(f"{mark:<8}  {exercise_id:<{width}}{detail}")
    passed = sum(outcome == "passed" for outcome in RESULTS.values())
    print(f"{passed} of {len(RESULTS)} exercises passed" + (" -- well done!" if passed == len(RESULTS) else
          ". Scroll up to a FAILED cell: its message says what was wrong."))


def fail(message: str, hint: str | None = None) -> None:
    """Raise a :class:`GradingError` with ``message`` and an optional hint."""
    raise GradingError(message + (f"\nHint: {hint}" if hint else ""))


def call_learner(what: str, fn: Callable[..., Any], *args: Any, hint: str | None = None, **kwargs: Any) -> Any:
    """Call the learner's function ``fn``: a ``NotImplementedError`` (an unsolved exercise) passes
    through untouched; any other exception becomes a :class:`GradingError` that names ``what`` was
    called, instead of a traceback into the grader."""
    try:
        return fn(*args, **kwargs)
    except (NotImplementedError, GradingError):
        raise
    except Exception as err:
        fail(f"{what} raised {type(err).__name__}: {err}", hint)


def expect_type(name: str, value: Any, expected: type | tuple[type, ...]) -> None:
    if not isinstance(value, expected):
        names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
        fail(f"{name} should be a {names}, but it is a {type(value).__name__}")


def expect_shape(name: str, tensor: Any, shape: tuple[int, ...]) -> None:
    expect_type(name, tensor, torch.Tensor)
    if tuple(tensor.shape) != tuple(shape):
        fail(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")


def expect_close(name: str, got: Any, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4,
                 hint: str | None = None) -> None:
    """``got`` equals ``expected`` within tolerance; otherwise name the worst position."""
    expect_shape(name, got, tuple(expected.shape))
    got, expected = got.detach().double().cpu(), expected.detach().double().cpu()
    if torch.isnan(got).any() and not torch.isnan(expected).any():
        where = tuple(torch.nonzero(torch.isnan(got))[0].tolist())
        fail(f"{name} contains NaN (first at index {where})", hint)
    bad = ~torch.isclose(got, expected, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        err = (got - expected).abs().nan_to_num(posinf=float("inf")).masked_fill(~bad, -1)
        where = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
        fail(f"{name} is wrong at index {where}: got {got[where].item():.6g}, expected "
             f"{expected[where].item():.6g} ({int(bad.sum())} of {bad.numel()} values differ)", hint)


def expect_equal(name: str, got: Any, expected: Any, hint: str | None = None) -> None:
    if got != expected:
        fail(f"{name} is {got!r}, expected {expected!r}", hint)


def expect_probabilities(name: str, probs: Any, dim: int = -1) -> None:
    """Non-negative values that sum to 1 along ``dim``."""
    expect_type(name, probs, torch.Tensor)
    if (probs < 0).any():
        fail(f"{name} has negative probabilities (min {probs.min().item():.4g})")
    sums = probs.sum(dim=dim)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        fail(f"{name} does not sum to 1 along dim {dim} (sums range from {sums.min().item():.4f} "
             f"to {sums.max().item():.4f})", "did you normalise (divide by the total / use softmax)?")
