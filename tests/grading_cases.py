"""Student notebooks for the grader's tests: Lab 4 (``scaled_scores`` for 2 points, ``attention``
for 3) solved, unsolved, solved another way, and tampered with in one way each.

Each tamper test file grades its notebooks in ONE run (a kernel each), so the files balance across
the parallel runner; helpers here build the notebooks and read the rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nbformat

from gptcourse import grade, labs

SOLUTIONS = labs.ROOT / "solutions"
SOLVED = SOLUTIONS / "lab04_attention.ipynb"
UNSOLVED = labs.ROOT / "labs" / "lab04_attention.ipynb"
FIXTURE = ("scores", "attention")  # the exercises these tests are about; Lab 4's later ones are graded too
TIMEOUT = 20  # per cell: the setup cell imports torch, which takes seconds on a busy machine

WRONG_SCORES = "import torch\n\ndef scaled_scores(q, k):\n    return q @ k.transpose(-2, -1)"
WRONG_ATTENTION = "import torch\n\ndef attention(q, k, v, mask=None):\n    return v[..., : q.size(-2), :] * 0"
# a correct answer written differently from the solution: einsum, an explicit softmax, torch.where
OTHER_SCORES = (
    "import math\nimport torch\n\ndef scaled_scores(q, k):\n"
    "    return torch.einsum('...td,...sd->...ts', q, k) * (1.0 / math.sqrt(q.shape[-1]))"
)
OTHER_ATTENTION = (
    "import torch\n\ndef attention(q, k, v, mask=None):\n    s = scaled_scores(q, k)\n"
    "    if mask is not None:\n        s = torch.where(mask, s, torch.full_like(s, -float('inf')))\n"
    "    w = (s - s.amax(-1, keepdim=True)).exp()\n    return (w / w.sum(-1, keepdim=True)) @ v"
)


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def cell(nb: nbformat.NotebookNode, needle: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if needle in c.source)


def replace(nb: nbformat.NotebookNode, needle: str, source: str) -> nbformat.NotebookNode:
    nb.cells[cell(nb, needle)].source = source
    return nb


def insert_after(nb: nbformat.NotebookNode, needle: str, source: str) -> nbformat.NotebookNode:
    nb.cells.insert(cell(nb, needle) + 1, nbformat.v4.new_code_cell(source))
    return nb


def wrong(nb: nbformat.NotebookNode | None = None) -> nbformat.NotebookNode:
    """The lab with wrong answers to both exercises."""
    nb = nb or read(UNSOLVED)
    replace(nb, "def scaled_scores", WRONG_SCORES)
    return replace(nb, "def attention", WRONG_ATTENTION)


@dataclasses.dataclass
class Graded:
    rows: dict[tuple[str, str], grade.Result]  # (variant, exercise name: "scores", "attention", ...) -> row
    error: Exception | None
    log: list[str]

    def score(self, variant: str) -> dict[str, tuple[float, str]]:
        return {ex: (r.points, r.status) for (name, ex), r in self.rows.items() if name == variant and ex in FIXTURE}

    def flags(self, variant: str) -> str:
        return " ".join(r.flags for (name, _), r in self.rows.items() if name == variant and r.flags)


def grade_all(tmp: Path, variants: dict[str, nbformat.NotebookNode | bytes], box=None, **kwargs) -> Graded:
    """Grade every variant (written as ``lab04_<name>.ipynb``, or raw bytes) in one run."""
    tmp.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, nb in variants.items():
        path = tmp / (name if name.endswith(".ipynb") else f"lab04_{name}.ipynb")
        if isinstance(nb, bytes):
            path.write_bytes(nb)
        else:
            nbformat.write(nb, path)
        paths.append(path)
    log: list[str] = []
    error = None
    original = grade.PROBE_TIMEOUT
    grade.PROBE_TIMEOUT = 5
    try:
        rows = grade.grade(paths, SOLUTIONS, timeout=TIMEOUT, box=box, log=log.append, **kwargs)
    except grade.TamperError as err:
        rows, error = err.rows, err
    finally:
        grade.PROBE_TIMEOUT = original
    by = {}
    for r in rows:
        stem = Path(r.notebook).stem
        by[stem.removeprefix("lab04_"), r.exercise.split(".")[-1]] = r
    return Graded(by, error, log)
