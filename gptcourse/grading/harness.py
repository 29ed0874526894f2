"""Run an answer on a spec's cases, and judge the outputs: the two halves of grading.

:func:`attempt` runs the learner's answer on every case and returns *outcomes* as plain data
(:mod:`gptcourse.grading.values`): an output, an error message, or "not implemented". It is the
only half that touches the learner's code. :func:`judge` compares outcomes with the reference's
outputs on the same cases, names the first case that differs and, when the output equals one of
the spec's misconceptions, gives that misconception's hint.

In a notebook both halves run in the kernel (:func:`gptcourse.grading.check`). When grading,
the kernel runs :func:`attempt` (through :func:`gptcourse.grading.collect.collect`) and the grader
runs :func:`judge` in its own process on cases it builds itself from the seed it chose.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from collections.abc import Callable
from typing import Any

from gptcourse import grading
from gptcourse.grading import values
from gptcourse.grading.spec import AnswerError, Case, Spec, copy_case, describe

# every module gptcourse.grading.labNN is a lab's table of exercises
LABS = tuple(sorted(m.name for m in pkgutil.iter_modules(grading.__path__) if re.fullmatch(r"lab\d\d", m.name)))
Outcome = dict  # {"ok": encoded value} | {"error": message} | {"not_implemented": True} | {"answer_error": message}


def lab_specs(lab: str) -> list[Spec]:
    """The specs of one lab (``"lab04"``), in the order the lab asks for them."""
    if not re.fullmatch(r"lab\d\d", lab):
        raise KeyError(f"not a lab name: {lab!r}")
    try:
        module = importlib.import_module(f"gptcourse.grading.{lab}")
    except ModuleNotFoundError:
        raise KeyError(f"no exercise specs for {lab}") from None
    return list(module.SPECS)


def lab_outcome(lab: str) -> Any:
    """The :class:`gptcourse.grading.outcome.Outcome` of a lab graded by its trained model, or None."""
    lab_specs(lab)  # the same checks of the name
    return getattr(importlib.import_module(f"gptcourse.grading.{lab}"), "OUTCOME", None)


def all_specs() -> dict[str, Spec]:
    """Every exercise of every lab, by id."""
    return {s.id: s for lab in LABS for s in lab_specs(lab)}


def get(exercise_id: str) -> Spec:
    """The spec of ``exercise_id`` (e.g. ``"lab04.scores"``)."""
    lab = exercise_id.partition(".")[0]
    for spec in lab_specs(lab):
        if spec.id == exercise_id:
            return spec
    raise KeyError(f"no exercise {exercise_id!r} in {lab}")


def attempt(spec: Spec, answer: Any, seed: int, guard: Callable[[], Any] | None = None) -> list[Outcome]:
    """Run ``answer`` on the cases of ``spec`` for ``seed``; one outcome per case, stopping at the
    first ``NotImplementedError``. Each case is a fresh copy. ``guard()``, if given, is a context
    manager held while the answer runs (the grader's: forbidden references raise)."""
    outcomes: list[Outcome] = []
    for case in spec.make_cases(seed):
        case = copy_case(case)
        try:
            if guard is None:
                output = spec.run(answer, case)
            else:
                with guard():
                    output = spec.run(answer, case)
            outcomes.append({"ok": values.encode(output)})
        except NotImplementedError:
            outcomes.append({"not_implemented": True})
            break
        except (AnswerError, values.ValueFormatError) as err:
            outcomes.append({"answer_error": str(err)})
        except (Exception, SystemExit) as err:  # the learner's code raised (or called sys.exit)
            outcomes.append({"error": f"{type(err).__name__}: {err}"})
    return outcomes


@dataclasses.dataclass
class Verdict:
    """How an answer did: ``status`` is passed | failed | error | not implemented | no result."""

    exercise: str
    status: str
    message: str = ""
    hint: str = ""
    seed: int | None = None
    misconception: str | None = None

    def report(self, name: str) -> str:
        """The lines a learner sees."""
        if self.status == "passed":
            return f"PASSED {self.exercise}"
        if self.status == "not implemented":
            return (
                f"NOT DONE {self.exercise}: {name} still raises NotImplementedError.\n"
                "Hint: replace `raise NotImplementedError()` with your code, run that cell, then this one."
            )
        lines = [f"FAILED {self.exercise}: {self.message}"]
        if self.hint:
            lines.append(f"Hint: {self.hint}")
        if self.seed is not None:
            lines.append(f'Reproduce: check("{self.exercise}", {name}, seed={self.seed})')
        return "\n".join(lines)


def call_text(spec: Spec, case: Case) -> str:
    args = [describe(a) for a in case.args] + [f"{k}={describe(v)}" for k, v in case.kwargs.items()]
    return f"{spec.name}({', '.join(args)})"


def judge(spec: Spec, seed: int, outcomes: list[Any]) -> Verdict:
    """Compare ``outcomes`` (from :func:`attempt`, possibly from another process: untrusted) with
    the reference's outputs on the cases of ``seed``."""
    cases = spec.make_cases(seed)
    if not isinstance(outcomes, list) or len(outcomes) > len(cases):
        return Verdict(spec.id, "no result", "the reply does not match the exercise's cases", seed=seed)
    for i, case in enumerate(cases):
        where = f'case "{case.label}": {call_text(spec, case)}'
        if i >= len(outcomes):
            return Verdict(spec.id, "no result", f"no output for {where}", seed=seed)
        outcome = outcomes[i]
        if not isinstance(outcome, dict) or len(outcome) != 1:
            return Verdict(spec.id, "no result", f"a malformed reply for {where}", seed=seed)
        ((kind, payload),) = outcome.items()
        if kind == "not_implemented":
            return Verdict(spec.id, "not implemented", f"{spec.name} raises NotImplementedError (not written yet)")
        if kind in ("error", "answer_error"):
            status = "error" if kind == "error" else "failed"
            message = f"{where} raised {payload}" if kind == "error" else f"{where}: {payload}"
            return Verdict(
                spec.id,
                status,
                message,
                "the message names what went wrong; the traceback is "
                f"easiest to read by calling {spec.name} yourself on such an input."
                if kind == "error"
                else spec.hint,
                seed,
            )
        if kind != "ok":
            return Verdict(spec.id, "no result", f"a malformed reply for {where}", seed=seed)
        try:
            got = values.decode(payload)
        except values.ValueFormatError as err:
            return Verdict(spec.id, "no result", f"an unreadable output for {where} ({err})", seed=seed)
        expected = spec.run(spec.reference, copy_case(case))
        wrong = spec.compare(got, expected, case)
        if wrong is None:
            continue
        for m in spec.misconceptions:
            try:
                theirs = spec.run(m.answer, copy_case(case))
            except Exception:  # a misconception that crashes on this case cannot be the one written
                continue
            if spec.compare(got, theirs, case) is None:
                return Verdict(spec.id, "failed", f"{where} {wrong}", m.hint, seed, m.name)
        return Verdict(spec.id, "failed", f"{where} {wrong}", spec.hint, seed)
    return Verdict(spec.id, "passed", seed=seed)


AUDIT_SEEDS = (0, 1, 2, 3, 4)
MIN_MISCONCEPTIONS = 3


def audit(spec: Spec, seeds: tuple[int, ...] = AUDIT_SEEDS) -> list[str]:
    """What is wrong with a spec, if anything: the reference must pass on every seed, and every
    misconception must fail on every seed with its own hint (an ambiguous or a never-caught
    misconception is a defect of the table, not of the learner)."""
    problems = []
    if len(spec.misconceptions) < MIN_MISCONCEPTIONS:
        problems.append(f"{spec.id}: {len(spec.misconceptions)} misconceptions, at least {MIN_MISCONCEPTIONS} needed")
    names = [m.name for m in spec.misconceptions]
    if len(set(names)) != len(names):
        problems.append(f"{spec.id}: two misconceptions share a name")
    for seed in seeds:
        verdict = judge(spec, seed, attempt(spec, spec.reference, seed))
        if verdict.status != "passed":
            problems.append(f"{spec.id} seed {seed}: the reference does not pass: {verdict.message}")
        for m in spec.misconceptions:
            verdict = judge(spec, seed, attempt(spec, m.answer, seed))
            if verdict.status == "passed":
                problems.append(f"{spec.id} seed {seed}: misconception {m.name!r} passes")
            elif verdict.misconception != m.name:
                problems.append(
                    f"{spec.id} seed {seed}: misconception {m.name!r} is reported as "
                    f"{verdict.misconception or verdict.status!r} ({verdict.message})"
                )
    return problems
