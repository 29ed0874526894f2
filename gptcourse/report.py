"""Sentences computed from a run, so that the prose around a result never hard-codes its numbers.

A chapter's numbers change with the size it runs at (smoke, cpu, gpu) and with the code. A
sentence that quotes them is therefore written as an f-string in a code cell and shown with
:func:`say`, which renders it as Markdown in Jupyter, Colab and on the website (tag the cell
``remove-input`` so the book shows the sentence and not the code)::

    say(f"At the {size} size the 5-gram scores **{loss:.3f} nats** per character.")

Outside IPython (a script, a test) the sentence is printed instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import mean, stdev


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
