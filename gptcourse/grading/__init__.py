"""Feedback in the notebook, from the same exercise specs the grader uses.

A lab's graded cell imports what it calls and names its exercise::

    from gptcourse.grading import check
    check("lab04.scores", scaled_scores)

:func:`check` runs the learner's answer on the cases of the exercise's spec
(:mod:`gptcourse.grading.spec`; the tables are ``gptcourse.grading.lab01`` ...) for a fresh seed,
compares with the reference, prints ``PASSED``, or ``FAILED`` with what was wrong, a hint and the
seed that reproduces it, and raises :class:`GradingError` so the cell shows the failure. A
``NotImplementedError`` (an unsolved exercise) passes through untouched.

This is feedback, and trusts the kernel it runs in. Grading (``python -m gptcourse.grade``) does not
run these cells: it asks the kernel only for the answer's outputs and judges them in its own
process (:mod:`gptcourse.grading.collect`).
"""

from __future__ import annotations

from typing import Any

RESULTS: dict[str, str] = {}  # exercise id -> "passed" | "failed: ..." | "not implemented"


class GradingError(AssertionError):
    """A learner's answer is wrong; the message says how."""


def check(exercise_id: str, answer: Any, seed: int | None = None) -> None:
    """Check the learner's ``answer`` (a function or class) for ``exercise_id`` on fresh cases.

    ``seed`` replays the cases of an earlier failure (its message prints the seed)."""
    import secrets

    from gptcourse.grading import harness

    spec = harness.get(exercise_id)
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    verdict = harness.judge(spec, seed, harness.attempt(spec, answer, seed))
    print(verdict.report(spec.name))
    RESULTS[exercise_id] = (
        verdict.status if verdict.status in ("passed", "not implemented") else f"failed: {verdict.message}"
    )
    if verdict.status == "not implemented":
        raise NotImplementedError(f"{spec.name} is not written yet")
    if verdict.status != "passed":
        raise GradingError(verdict.message + (f"\nHint: {verdict.hint}" if verdict.hint else ""))


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
    print(
        f"{passed} of {len(RESULTS)} exercises passed"
        + (
            " -- well done!"
            if passed == len(RESULTS)
            else ". Scroll up to a FAILED cell: its message says what was wrong."
        )
    )
