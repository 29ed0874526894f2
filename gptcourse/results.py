"""The committed output of the course's experiment scripts (``experiments/results/``), for the
chapters that plot it.

A sweep over seeds takes hours, so a chapter does not run it: it reads what the script printed
(committed, never edited) and draws the figure from that. From a checkout of the repository the
file is found in ``experiments/results/`` above the working folder (a chapter runs in
``chapters/``). In Colab only the package is installed, so the file is downloaded from the
repository at the ref the notebook's install cell installs (the release tag of the course version,
:func:`gptcourse.labs.release_ref`): the results of the same code the learner runs. Anything else
is an error that says what to do, never an empty result.
"""

from __future__ import annotations

import importlib.metadata
import urllib.error
import urllib.request
from pathlib import Path

from gptcourse.labs import release_ref

RESULTS_DIR = Path("experiments") / "results"


def repository_url() -> str:
    """The course repository, ``https://github.com/OWNER/NAME``, from the installed package's metadata."""
    for entry in importlib.metadata.metadata("gptcourse").get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip() == "Repository":
            return url.strip().rstrip("/")
    raise RuntimeError("the installed gptcourse names no Repository URL (pyproject.toml [project.urls]): reinstall it")


def local_results(name: str, start: Path | None = None) -> Path | None:
    """``experiments/results/NAME`` in ``start`` (default: the working folder) or the nearest
    folder above it that has one; ``None`` when none does."""
    start = Path.cwd() if start is None else start
    return next((d / RESULTS_DIR / name for d in (start, *start.parents) if (d / RESULTS_DIR / name).is_file()), None)


def results_url(name: str, ref: str | None = None) -> str:
    """Where the committed ``experiments/results/NAME`` of ``ref`` (default: the course version's
    release tag) is served as plain text on GitHub."""
    owner_and_name = repository_url().removeprefix("https://github.com/")
    return f"https://raw.githubusercontent.com/{owner_and_name}/{ref or release_ref()}/{RESULTS_DIR.as_posix()}/{name}"


def read_results(name: str, start: Path | None = None, timeout: float = 30) -> str:
    """The text of the committed results file ``name`` (e.g. ``"ch13_moe_vs_dense.txt"``): the
    repository's copy when running inside a checkout (:func:`local_results`), else downloaded
    (:func:`results_url`). Raises ``FileNotFoundError`` naming both places when neither has it."""
    path = local_results(name, start)
    if path is not None:
        return path.read_text()
    try:
        url = results_url(name)
    except FileNotFoundError as error:  # a development version outside a checkout has no _config.yml for its branch
        raise FileNotFoundError(
            f"{RESULTS_DIR / name} is not in this folder or above it, and a development version of gptcourse "
            f"outside the repository cannot tell which branch to download it from ({error}); run the notebook "
            "from a checkout of the course repository"
        ) from None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()
    except (urllib.error.URLError, TimeoutError) as error:
        raise FileNotFoundError(
            f"{RESULTS_DIR / name} is not in this folder or above it, and downloading it from {url} failed "
            f"({error}); run the notebook from a checkout of the course repository, or connect to the internet"
        ) from None
