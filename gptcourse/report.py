"""Sentences computed from a run, so that the prose around a result never hard-codes its numbers.

A chapter's numbers change with the size it runs at (smoke, cpu, gpu) and with the code. A
sentence that quotes them is therefore written as an f-string in a code cell and shown with
:func:`say`, which renders it as Markdown in Jupyter, Colab and on the website (tag the cell
``remove-input`` so the book shows the sentence and not the code)::

    say(f"At the {size} size the 5-gram scores **{loss:.3f} nats** per character.")

Outside IPython (a script, a test) the sentence is printed instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import mean, stdev, variance
from typing import NamedTuple


def say(markdown: str) -> None:
    """Show ``markdown`` as rendered Markdown in a notebook, or print it elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # no IPython at all: a plain script
        print(markdown)
        return
    if get_ipython() is None:
        print(markdown)
    else:
        display(Markdown(markdown))


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``"1.234 ± 0.005 (n=3: 1.230, 1.232, 1.240)"``: mean, sample standard deviation and every value.

    The form in which the course reports a result over seeds; one value reads ``"1.234 (one seed)"``.
    """
    if not values:
        raise ValueError("mean_std needs at least one value")
    listed = ", ".join(f"{v:.{digits}f}" for v in values)
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (one seed)"
    return f"{mean(values):.{digits}f} ± {stdev(values):.{digits}f} (n={len(values)}: {listed})"


class Difference(NamedTuple):
    """The gap between the means of two sets of results and its standard error (see :func:`difference`)."""

    gap: float  # mean(b) - mean(a)
    se: float  # the standard error of that gap

    @property
    def beyond_noise(self) -> bool:
        """True when the gap is more than two standard errors: the course's test for "A beats B"."""
        return abs(self.gap) > 2 * self.se


def difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """``mean(b) - mean(a)`` and its standard error ``sqrt(var(a)/n_a + var(b)/n_b)`` (sample
    variances: Welch's form, for two independent sets of seeds). Each set needs two values or more."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(
            f"difference needs at least 2 values on each side to estimate the spread, got {len(a)} and {len(b)}"
        )
    return Difference(mean(b) - mean(a), math.sqrt(variance(a) / len(a) + variance(b) / len(b)))
