"""Labs are generated from solutions; every notebook gets the same Colab header.

``python -m gptcourse.labs build`` writes ``labs/labNN_*.ipynb`` from ``solutions/labNN_*.ipynb``:

* in code cells, the lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` become
  ``raise NotImplementedError()`` (at the marker's indentation); the lines around them stay;
* outputs and execution counts are cleared;
* graded cells (cell tag ``grade``; metadata ``gptcourse: {exercise, points}``) are kept as they are.

``python -m gptcourse.labs count`` prints the lines of code each lab asks the learner to write (non-blank,
non-comment lines inside the solution blocks).

It also rewrites the header of every notebook in ``chapters/``, ``solutions/`` and ``labs/``, built
from ``repository.url`` and ``repository.branch`` in ``_config.yml`` (one place to change on a fork):

* an "Open in Colab" badge, first;
* the notebook's title cell (its own, kept where it is);
* in a lab (and its solution), a cell with the expected time (the notebook's metadata
  ``gptcourse.minutes``), where the learner's modules are saved, and the request to AI assistants to
  explain and review rather than write the exercise code (``AGENTS.md``);
* an install cell that pip-installs this package when running in Colab. It carries the cell tag
  ``remove-cell``, which Jupyter Book honours: on the website the lesson opens with its prose;
* the setup cell, ``setup()``, which prints the device and size line the outputs came from. It is
  a cell of its own so that a change to the install cell (a new release to install) never costs
  a notebook its committed outputs.

``python -m gptcourse.labs check`` exits 1, listing the files, when anything on disk differs from
what ``build`` would write.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat
import yaml

from gptcourse import __version__

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
GRADE_TAG = "grade"
TRAIN_TAG = "train"  # a cell that trains: the grader skips it and grades the checkpoint it saved
BADGE_TAG, INSTALL_TAG, SETUP_TAG, INTRO_TAG = "colab-badge", "colab-install", "colab-setup", "lab-intro"
HEADER_TAGS = (BADGE_TAG, INSTALL_TAG, SETUP_TAG, INTRO_TAG)
# Jupyter Book leaves a cell with this tag off the page (the cell still runs in Colab and in tests)
BOOK_REMOVE_TAG = "remove-cell"
NOTEBOOK_DIRS = ("chapters", "solutions", "labs")
ROOT = Path(__file__).resolve().parent.parent


def repository(root: Path = ROOT) -> tuple[str, str]:
    """``(url, branch)`` of the course repository, read from ``_config.yml``."""
    config = yaml.safe_load((root / "_config.yml").read_text())
    repo = config["repository"]
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def colab_url(relpath: str, root: Path = ROOT) -> str:
    """The Colab address that opens notebook ``relpath`` (relative to the repository root)."""
    url, branch = repository(root)
    github = url.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{github}/blob/{branch}/{relpath}"


def release_ref(version: str = __version__, root: Path = ROOT) -> str:
    """The git ref whose package a notebook of this course ``version`` installs: the release tag
    ``v{version}``, or the development branch (``main``) for a development version (``0.3.0.dev0``),
    so that a semester pinned to a tag keeps its package while ``main`` moves on."""
    if re.search(r"\.dev\d*$", version):  # PEP 440's development releases
        return repository(root)[1]
    return f"v{version}"


def install_spec(root: Path = ROOT, ref: str | None = None) -> str:
    """The pip requirement that installs this package from the repository at ``ref`` (default: the
    course version's :func:`release_ref`)."""
    url, _ = repository(root)
    return f"gptcourse @ git+{url}@{release_ref(root=root) if ref is None else ref}"


def header_cells(relpath: str, root: Path = ROOT) -> list[nbformat.NotebookNode]:
    """The badge cell, the install cell and the setup cell for notebook ``relpath``."""
    badge = nbformat.v4.new_markdown_cell(
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(relpath, root)})",
        metadata={"tags": [BADGE_TAG]},
    )
    install = nbformat.v4.new_code_cell(
        "# In Colab, install the course package (Colab's own torch is kept); elsewhere see the setup page.\n"
        f'REF = "{release_ref(root=root)}"  # the course release this notebook belongs to (authors may use "main")\n'
        "import subprocess, sys\n"
        'if "google.colab" in sys.modules:\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", '
        f'f"{install_spec(root, ref="{REF}")}"], check=True)',  # REF is filled in when the cell runs
        metadata={"tags": [INSTALL_TAG, BOOK_REMOVE_TAG]},
    )
    setup = nbformat.v4.new_code_cell(
        "from gptcourse.hardware import setup\ndevice, size = setup()",
        metadata={"tags": [SETUP_TAG]},
    )
    badge.id, install.id, setup.id = BADGE_TAG, INSTALL_TAG, SETUP_TAG
    return [badge, install, setup]


def lab_intro_cell(minutes: int, root: Path = ROOT) -> nbformat.NotebookNode:
    """The cell under a lab's title: how long it takes, how it gives feedback, and the request to AI
    assistants (the convention Stanford's CS336 asks of them)."""
    url, branch = repository(root)
    cell = nbformat.v4.new_markdown_cell(
        f"**About {minutes} minutes.** You write each exercise yourself from its specification (the "
        "docstring, the shapes, the equation); its graded cell runs your code on fresh inputs and says "
        "what is wrong, with a hint that points to the idea. Pieces you will reuse are saved as files "
        "(`%%writefile`) in your work folder, so later labs run on your own modules (in Colab, the folder "
        "is in your Google Drive).\n\n"
        "**Using an AI assistant?** Ask it to explain and to review what you wrote, not to write the "
        f"exercise code for you: see the course's [notes for AI assistants]({url}/blob/{branch}/AGENTS.md).",
        metadata={"tags": [INTRO_TAG]},
    )
    cell.id = INTRO_TAG
    return cell


def _tags(cell: nbformat.NotebookNode) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def with_header(nb: nbformat.NotebookNode, relpath: str, root: Path = ROOT) -> nbformat.NotebookNode:
    """``nb`` with its header cells made current: the badge first, then the notebook's title cell
    (if its first cell is markdown), the install cell and the setup cell. A header cell whose source
    is unchanged keeps its outputs; one whose source changes loses its stale outputs."""
    nb = copy.deepcopy(nb)
    fresh = header_cells(relpath, root)
    old = {t: c for c in nb.cells for t in _tags(c) if t in HEADER_TAGS}
    badge, install, setup = (
        old[tag] if tag in old and (old[tag].source, _tags(old[tag])) == (cell.source, _tags(cell)) else cell
        for tag, cell in zip(HEADER_TAGS, fresh)
    )
    body = [c for c in nb.cells if not set(HEADER_TAGS) & set(_tags(c))]
    title = [body.pop(0)] if body and body[0].cell_type == "markdown" else []
    minutes = nb.metadata.get("gptcourse", {}).get("minutes")
    intro = [lab_intro_cell(int(minutes), root)] if minutes else []
    nb.cells = [badge] + title + intro + [install, setup] + body
    return nb


def strip_solutions(source: str) -> str:
    """Replace every ``BEGIN SOLUTION .. END SOLUTION`` block of ``source`` by ``raise NotImplementedError()``."""
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"nested {BEGIN!r}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}raise NotImplementedError()")
        elif stripped == END:
            if not inside:
                raise ValueError(f"{END!r} without {BEGIN!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} without {END!r}")
    return "\n".join(out)


def learner_lines(source: str) -> int:
    """Lines a learner writes in ``source``: the non-blank lines inside its ``BEGIN SOLUTION .. END
    SOLUTION`` blocks that are not comments (the measure the labs issue sets: at least 800 in all)."""
    count, inside = 0, False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped in (BEGIN, END):
            inside = stripped == BEGIN
        elif inside and stripped and not stripped.startswith("#"):
            count += 1
    return count


def learner_line_counts(root: Path = ROOT) -> dict[str, int]:
    """``{solution notebook name: learner lines}`` for every notebook in ``solutions/``."""
    return {
        path.name: sum(
            learner_lines(c.source) for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"
        )
        for path in sorted((root / "solutions").glob("*.ipynb"))
    }


def make_lab(solution: nbformat.NotebookNode, relpath: str, root: Path = ROOT) -> nbformat.NotebookNode:
    """The student notebook for a solution notebook (``relpath`` is the lab's own path)."""
    lab = with_header(solution, relpath, root)
    lab.metadata.pop("widgets", None)  # the solution run's progress-bar state: an output, which a lab has none of
    for cell in lab.cells:
        if cell.cell_type != "code":
            continue
        if BEGIN in cell.source:
            cell.source = strip_solutions(cell.source)
        cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    return lab


def graded_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The graded test cells of a notebook, in order."""
    return [c for c in nb.cells if c.cell_type == "code" and GRADE_TAG in _tags(c)]


def _dump(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def expected_files(root: Path = ROOT) -> dict[Path, str]:
    """Every file ``build`` writes, with the text it writes."""
    files: dict[Path, str] = {}
    for folder in ("chapters", "solutions"):
        for path in sorted((root / folder).glob("*.ipynb")):
            rel = path.relative_to(root).as_posix()
            files[path] = _dump(with_header(nbformat.read(path, as_version=4), rel, root))
    for path in sorted((root / "solutions").glob("lab*.ipynb")):
        lab_path = root / "labs" / path.name
        solution = nbformat.reads(files[path], as_version=4)
        files[lab_path] = _dump(make_lab(solution, lab_path.relative_to(root).as_posix(), root))
    return files


def build(root: Path = ROOT) -> list[Path]:
    """Write every generated file that differs from its expected text; return those written."""
    written = []
    expected = expected_files(root)
    for path, text in expected.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    for stale in sorted((root / "labs").glob("*.ipynb")):
        if stale not in expected:
            stale.unlink()
            written.append(stale)
    return written


def check(root: Path = ROOT) -> list[str]:
    """Problems: files that differ from what ``build`` would write, or labs with no solution."""
    expected = expected_files(root)
    problems = [
        f"{p.relative_to(root)} is out of date"
        for p, text in expected.items()
        if not p.exists() or p.read_text(encoding="utf-8") != text
    ]
    problems += [
        f"{p.relative_to(root)} has no solution in solutions/"
        for p in sorted((root / "labs").glob("*.ipynb"))
        if p not in expected
    ]
    for path in sorted((root / "solutions").glob("lab*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if not graded_cells(nb):
            problems.append(f"{path.relative_to(root)} has no graded cell (tag {GRADE_TAG!r})")
        if not nb.metadata.get("gptcourse", {}).get("minutes"):
            problems.append(f"{path.relative_to(root)} does not say its expected time (metadata gptcourse.minutes)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptcourse.labs", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "check", "count"])
    args = parser.parse_args(argv)
    if args.command == "build":
        for path in build():
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    if args.command == "count":
        counts = learner_line_counts()
        for name, lines in counts.items():
            print(f"{name:<32}{lines:>5}")
        print(f"{'learner lines in all':<32}{sum(counts.values()):>5}")
        return 0
    problems = check()
    for problem in problems:
        print(problem)
    if problems:
        print("run `python -m gptcourse.labs build` (or `make labs`) to regenerate", file=sys.stderr)
        return 1
    print("labs and notebook headers are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
