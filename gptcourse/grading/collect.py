"""The kernel's half of grading: run the learner's answer, hand back its outputs, decide nothing.

``python -m gptcourse.grade`` puts this cell where each graded cell was::

    from gptcourse.grading.collect import collect
    collect("lab04.scores", seed=1234567)

:func:`collect` finds the learner's answer by the name the spec gives, runs it on the cases of the
seed the grader chose (fresh copies, the spec's forbidden references made to raise) and displays
the outcomes as one JSON output of type :data:`MIME`. The grader reads that output and judges it
in its own process; anything else the kernel prints, or any change it makes to this module, can at
most change the outputs it reports, which a wrong answer could report anyway.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

from gptcourse.grading import harness

MIME = "application/vnd.gptcourse.outcomes+json"


class ForbiddenReference(RuntimeError):
    """The answer called the course's own implementation of the exercise."""


def _resolve(dotted: str) -> tuple[Any, str, Any]:
    """``(owner, attribute, value)`` for a dotted path such as ``gptcourse.attention.attention``."""
    module_name, _, attribute = dotted.rpartition(".")
    owner: Any = importlib.import_module(module_name.split(".")[0])
    for part in module_name.split(".")[1:]:
        owner = getattr(owner, part, None) or importlib.import_module(f"{owner.__name__}.{part}")
    return owner, attribute, getattr(owner, attribute)


def _raiser(dotted: str) -> Any:
    """A function whose code raises :class:`ForbiddenReference`; it looks nothing up in its globals,
    since its code runs with the globals of the function it replaces."""
    source = (
        f"def forbidden(*args, **kwargs):\n"
        f"    raise __import__('gptcourse.grading.collect', fromlist=['_']).ForbiddenReference("
        f"{dotted + ' is the course reference; this exercise asks for your own code'!r})"
    )
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    return namespace["forbidden"]


@contextlib.contextmanager
def forbid(references: tuple[str, ...]) -> Iterator[None]:
    """While the block runs, calling any of ``references`` raises :class:`ForbiddenReference`:
    a Python function's code is swapped (so names bound to it elsewhere raise too), anything else
    is replaced on its module."""
    undo = []
    try:
        for dotted in references:
            owner, attribute, value = _resolve(dotted)
            raiser = _raiser(dotted)
            code = getattr(value, "__code__", None)
            if code is not None and not code.co_freevars and hasattr(value, "__globals__"):
                value.__code__ = raiser.__code__
                undo.append(lambda value=value, code=code: setattr(value, "__code__", code))
            else:
                setattr(owner, attribute, raiser)
                undo.append(lambda owner=owner, attribute=attribute, value=value: setattr(owner, attribute, value))
        yield
    finally:
        for restore in reversed(undo):
            restore()


def collect(exercise_id: str, seed: int) -> None:
    """Run the learner's answer to ``exercise_id`` on the cases of ``seed`` and display the outcomes."""
    from IPython import get_ipython
    from IPython.display import display

    spec = harness.get(exercise_id)
    namespace = get_ipython().user_ns
    if spec.name not in namespace:
        outcomes = [{"error": f"NameError: {spec.name} is not defined (run the cell that defines it)"}]
    else:
        outcomes = harness.attempt(spec, namespace[spec.name], seed, guard=lambda: forbid(spec.forbidden))
    print(f"collected {len(outcomes)} outcome(s) of {spec.name} for {exercise_id}")
    display({MIME: {"exercise": exercise_id, "seed": seed, "outcomes": outcomes}}, raw=True)
