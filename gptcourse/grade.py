"""Grade students' lab notebooks: ``python -m gptcourse.grade NOTEBOOK... [--csv FILE]``.

A student's notebook is trusted for its exercise code only. For each notebook the grader

1. finds its solution in ``solutions/`` (by the ``labNN`` in the file name, else by the exercise ids
   of its graded cells) and takes the *canonical* graded cells from there: a graded cell the
   student edited is replaced (matched by exercise id or cell id), a deleted one is put back after
   the cell it follows in the solution, and any other cell tagged ``grade`` is dropped;
2. runs the result in its own kernel, in a fresh temporary folder with its own ``HOME`` and
   ``IPYTHONDIR`` (nothing a notebook writes there reaches the next one), one cell at a time with
   a per-cell timeout: an infinite loop is interrupted and reported (a loop that ignores the
   interrupt ends the notebook's run), ``sys.exit`` fails only its cell, a kernel killed by
   ``os._exit`` is reported, and grading goes on;
3. runs each canonical graded cell through a wrapper that imports ``gptcourse.grading`` afresh from
   disk (a check the notebook redefined or monkeypatched is not the one that runs), verifies that
   the course's code and torch were not patched (:mod:`gptcourse.grading.integrity`), and prints a
   marker carrying a random nonce only when the check returned normally;
4. scores from its own records: an exercise earns its points (``gptcourse: {points}`` in the
   solution's metadata) only when the kernel replied ``ok`` for its cell, the cell has no error
   output, and the cell's last output is that marker. Nothing the notebook writes to disk is read.

Solutions and the ``gptcourse`` package are read into memory before any student code runs. Each
kernel imports ``gptcourse`` from its own copy of that package, whose files every graded cell
checks against the hashes the grader took: a notebook that rewrites the course's code scores 0
(tampered), and one that rewrites the solutions changes nothing. A notebook that adds a ``*.pth`` start-up file (code
that every later kernel would run) scores 0 and stops the run. The grader itself never deletes or
rewrites a file. Code in a kernel can always rewrite the interpreter itself; for submissions you do
not trust, also run the command as a throwaway user or in a container.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import os
import re
import secrets
import site
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from gptcourse import labs

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_TIMEOUT = 120  # seconds per cell; smoke-size lab cells take a few
PROBE_TIMEOUT = 15  # after an interrupt, how long the kernel gets to answer again
MARKER = "[gptcourse.grade {nonce}] {exercise} passed"
_TIMED_OUT = "GradingTimeout"  # the ename of the reply nbclient makes up when a cell runs too long
CSV_COLUMNS = ["notebook", "exercise", "points", "max_points", "status", "message"]

# The wrapper that runs one canonical graded cell inside the student's kernel. It refuses a
# `gptcourse` package that is not the grader's, imports `gptcourse.grading` afresh, checks the
# course's code before and after, and puts the student's modules back so that the notebook's own
# `check_all()` still sees the result.
_WRAPPER = '''\
# Graded by `python -m gptcourse.grade`: exercise {exercise}, the canonical cell from its solution.
def _gptcourse_graded_cell(source, exercise, nonce, package_dir, hashes):
    import builtins, os, sys
    def grading_modules():
        return {{n: m for n, m in sys.modules.items() if n == "gptcourse.grading" or n.startswith("gptcourse.grading.")}}
    package = sys.modules.get("gptcourse")
    if package is not None and [os.path.realpath(p) for p in package.__path__] != [package_dir]:
        raise RuntimeError("gptcourse was replaced by the notebook")
    students = grading_modules()
    for name in students:
        del sys.modules[name]
    try:
        from gptcourse.grading import integrity
        integrity.verify(package_dir, hashes)
        exec(compile(source, "<graded cell " + exercise + ">", "exec"), __import__("IPython").get_ipython().user_ns)
        integrity.verify(package_dir, hashes)
    finally:
        fresh = sys.modules.get("gptcourse.grading")
        for name in grading_modules():
            del sys.modules[name]
        sys.modules.update(students)
        if "gptcourse.grading" in students:
            sys.modules["gptcourse"].grading = students["gptcourse.grading"]
            if fresh is not None:
                students["gptcourse.grading"].RESULTS.update(fresh.RESULTS)
    builtins.print({marker!r}.format(nonce=nonce, exercise=exercise))
_gptcourse_graded_cell({source!r}, {exercise!r}, {nonce!r}, {package_dir!r}, {hashes!r})
'''


@dataclasses.dataclass
class Result:
    """The outcome of one exercise of one notebook: a row of the score table."""

    notebook: str
    exercise: str
    points: float
    max_points: float
    status: str  # passed | failed | not implemented | error | timeout | kernel died | not run | tampered | no result
    message: str = ""


@dataclasses.dataclass
class Exercise:
    exercise: str
    points: float
    cell: nbformat.NotebookNode  # the canonical cell, outputs cleared
    anchor: str | None  # id of the non-graded solution cell it follows


def _meta(cell: nbformat.NotebookNode) -> dict:
    meta = cell.get("metadata", {}).get("gptcourse", {})
    return meta if isinstance(meta, dict) else {}


def _is_graded(cell: nbformat.NotebookNode) -> bool:
    return labs.GRADE_TAG in cell.get("metadata", {}).get("tags", []) or "exercise" in _meta(cell)


class Solution:
    """The canonical graded cells of one solution notebook, read once, before any student code runs."""

    def __init__(self, path: Path):
        self.path = path
        nb = nbformat.read(path, as_version=4)
        self.exercises: list[Exercise] = []
        anchor = None
        for cell in nb.cells:
            if cell.cell_type == "code" and labs.GRADE_TAG in cell.metadata.get("tags", []):
                meta = _meta(cell)
                if "exercise" not in meta or "points" not in meta:
                    raise ValueError(f"{path}: a graded cell lacks gptcourse: {{exercise, points}} metadata")
                canonical = nbformat.v4.new_code_cell(cell.source, metadata={"gptcourse": dict(meta)})
                canonical.id = cell.get("id", canonical.id)
                self.exercises.append(Exercise(meta["exercise"], float(meta["points"]), canonical, anchor))
            else:
                anchor = cell.get("id")
        ids = [e.exercise for e in self.exercises]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{path}: an exercise id appears twice")


def load_solutions(solutions_dir: Path) -> dict[str, Solution]:
    """Every ``lab*.ipynb`` of ``solutions_dir``, by file stem."""
    return {p.stem: Solution(p) for p in sorted(Path(solutions_dir).glob("lab*.ipynb"))}


def match_solution(path: Path, nb: nbformat.NotebookNode | None, solutions: dict[str, Solution]) -> Solution:
    """The solution of a student's notebook: same stem, then same ``labNN``, then shared exercise ids."""
    stem = path.stem
    if stem in solutions:
        return solutions[stem]
    number = re.search(r"lab\d+", stem)
    by_number = [s for name, s in solutions.items() if number and name.startswith(number.group() + "_")]
    if len(by_number) == 1:
        return by_number[0]
    ids = {_meta(c).get("exercise") for c in (nb.cells if nb else [])} - {None}
    overlap = [s for s in solutions.values() if ids & {e.exercise for e in s.exercises}]
    if len(overlap) == 1:
        return overlap[0]
    raise ValueError(f"{path}: cannot tell which lab this is (name it like its lab, e.g. lab01_*.ipynb)")


def assemble(student: nbformat.NotebookNode, solution: Solution) -> tuple[nbformat.NotebookNode, dict[int, Exercise]]:
    """The notebook to run: the student's cells with the canonical graded cells in place.

    Returns it and, for each canonical cell, its index. A canonical cell replaces the student's
    cell with the same exercise id (or cell id); one the student deleted goes after the cell it
    follows in the solution, or at the end when that cell is gone too.
    """
    by_exercise = {e.exercise: e for e in solution.exercises}
    by_cell_id = {e.cell.id: e for e in solution.exercises}
    placed: set[str] = set()
    cells: list[nbformat.NotebookNode] = []
    for cell in student.cells:
        if _is_graded(cell) or cell.get("id") in by_cell_id:
            ex = by_exercise.get(_meta(cell).get("exercise")) or by_cell_id.get(cell.get("id"))
            if ex is not None and ex.exercise not in placed:
                cells.append(ex)
                placed.add(ex.exercise)
            continue  # graded cells that are not the solution's are dropped
        cell = nbformat.from_dict(dict(cell))
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata = {}  # no tags: nothing a student sets changes how a cell runs
        cells.append(cell)
    for ex in solution.exercises:  # deleted ones, in order, after their anchor
        if ex.exercise in placed:
            continue
        at = next((i for i, c in enumerate(cells) if not isinstance(c, Exercise) and c.get("id") == ex.anchor), None)
        at = len(cells) - 1 if at is None else at
        while at + 1 < len(cells) and isinstance(cells[at + 1], Exercise):  # keep the solution's order
            at += 1
        cells.insert(at + 1, ex)
        placed.add(ex.exercise)
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    graded: dict[int, Exercise] = {}
    for index, cell in enumerate(cells):
        if isinstance(cell, Exercise):
            graded[index] = cell
            cell = nbformat.from_dict(dict(cell.cell))
            cell.outputs, cell.execution_count = [], None
        cell.id = f"cell-{index}"  # ids were only for matching; a student's may repeat
        nb.cells.append(cell)
    return nb, graded


def read_package(package_dir: Path = PACKAGE_DIR) -> dict[str, bytes]:
    """The course package's source files (path relative to its parent -> bytes), read once."""
    return {p.relative_to(package_dir.parent).as_posix(): p.read_bytes()
            for p in sorted(package_dir.rglob("*.py")) if "__pycache__" not in p.parts}


def startup_files(patterns: Iterable[Path] | None = None) -> dict[Path, bytes]:
    """Files that Python runs in every later kernel: ``*.pth`` in site-packages (by default)."""
    if patterns is None:
        dirs = {Path(p) for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()}
        patterns = [d / "*.pth" for d in sorted(dirs)]
    files: dict[Path, bytes] = {}
    for pattern in map(Path, patterns):
        for path in sorted(pattern.parent.glob(pattern.name)):
            if path.is_file():
                files[path] = path.read_bytes()
    return files


def _status(cell: nbformat.NotebookNode, reply_ok: bool, marker: str) -> tuple[str, str]:
    errors = [o for o in cell.outputs if o.output_type == "error"]
    if errors:
        err = errors[0]
        message = f"{err.ename}: {err.evalue}".strip()
        if err.ename == "NotImplementedError":
            return "not implemented", "the exercise raises NotImplementedError (not written yet)"
        if err.ename == "GradingError":
            return "failed", err.evalue
        if err.ename == "TamperingError" or "replaced by the notebook" in err.evalue:
            return "tampered", err.evalue
        return "error", message
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream").rstrip()
    last = text.splitlines()[-1] if text else ""
    if reply_ok and last == marker:
        return "passed", ""
    return "no result", "the check did not report a result (its output was suppressed or the cell was changed)"


def _kernel_env(workdir: Path, size: str, course: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JPY_", "JUPYTER_RUNTIME"))}
    ipython = workdir / ".ipython"
    (ipython / "profile_default").mkdir(parents=True)
    # plain tracebacks: the messages end up in a CSV
    (ipython / "profile_default" / "ipython_kernel_config.py").write_text("c.InteractiveShell.colors = 'nocolor'\n")
    # the private copy of the package comes first on the path (before the editable install)
    env["PYTHONPATH"] = os.pathsep.join([str(course)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    # downloads stay cached between notebooks (course data and tiktoken files are verified by sha256)
    env["XDG_CACHE_HOME"] = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    env.update(HOME=str(workdir), IPYTHONDIR=str(ipython), MPLCONFIGDIR=str(workdir / ".mpl"),
               PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1", GPTCOURSE_SIZE=size, MPLBACKEND="agg")
    return env


def run_notebook(path: Path, solution: Solution, timeout: float = DEFAULT_TIMEOUT, size: str = "smoke",
                 keep: Path | None = None, package: dict[str, bytes] | None = None,
                 kernel_name: str = "python3") -> tuple[list[Result], list[str]]:
    """Grade one student notebook against ``solution``: ``(results, notes)``.

    The kernel imports ``gptcourse`` from a private copy of ``package`` (default: read now), and
    every graded cell checks that copy's files against their hashes."""
    name = str(path)
    package = read_package() if package is None else package
    hashes = {rel: hashlib.sha256(data).hexdigest() for rel, data in package.items()}
    try:
        student = nbformat.read(path, as_version=4)
    except Exception as err:  # an unreadable file earns nothing, and grading goes on
        return [Result(name, e.exercise, 0.0, e.points, "not run", f"unreadable notebook: {err}")
                for e in solution.exercises], [f"{name}: unreadable ({err})"]
    nb, graded = assemble(student, solution)
    notes: list[str] = []
    replies: dict[int, bool] = {}
    reached: dict[int, str] = {}  # graded cells that never ran normally: index -> status
    with tempfile.TemporaryDirectory(prefix="gptcourse-grade-") as tmp:
        workdir = Path(tmp).resolve()
        course = workdir / ".course"
        for rel, data in package.items():
            (course / rel).parent.mkdir(parents=True, exist_ok=True)
            (course / rel).write_bytes(data)
        package_dir = str(course / PACKAGE_DIR.name)
        nonces = {i: secrets.token_hex(16) for i in graded}
        for i, ex in graded.items():
            nb.cells[i].source = _WRAPPER.format(source=ex.cell.source, exercise=ex.exercise, nonce=nonces[i],
                                                 marker=MARKER, package_dir=package_dir, hashes=hashes)
        nbformat.write(nb, workdir / path.name)  # the kernel's folder holds only this copy

        timed_out: set[int] = set()

        def on_executed(cell, cell_index, execute_reply):  # noqa: ANN001 (nbclient's hook)
            content = execute_reply.get("content", {})
            replies[cell_index] = content.get("status") == "ok"
            if content.get("ename") == _TIMED_OUT:
                timed_out.add(cell_index)

        # On a timeout nbclient interrupts the kernel and hands back this reply instead of waiting.
        client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
                                interrupt_on_timeout=True, resources={"metadata": {"path": str(workdir)}},
                                error_on_timeout={"ename": _TIMED_OUT, "evalue": f"ran past {timeout:g} s", "traceback": []},
                                on_cell_executed=on_executed, skip_cells_with_tag=f"skip-{secrets.token_hex(8)}")
        with client.setup_kernel(env=_kernel_env(workdir, size, course), cwd=str(workdir)):
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                label = graded[index].exercise if index in graded else f"cell {index}"
                try:
                    client.execute_cell(cell, index)
                except DeadKernelError:
                    notes.append(f"{name}: the kernel died in {label} (sys.exit/os._exit or a crash); later cells not run")
                    reached[index] = "kernel died"
                    _mark_rest(reached, graded, index, "not run")
                    break
                if index in timed_out:
                    notes.append(f"{name}: {label} ran past {timeout:g} s and was interrupted")
                    reached[index] = "timeout"
                    if not _responds(client, timed_out):
                        notes.append(f"{name}: the kernel did not stop after the interrupt; later cells not run")
                        _mark_rest(reached, graded, index, "not run")
                        break
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, keep / path.name)
    results = []
    for index, ex in graded.items():
        if index in reached:
            status = reached[index]
            message = {"timeout": f"the cell ran past {timeout:g} s", "kernel died": "the kernel died in this cell",
                       "not run": "an earlier cell stopped the kernel"}[status]
        else:
            status, message = _status(nb.cells[index], replies.get(index, False),
                                      MARKER.format(nonce=nonces[index], exercise=ex.exercise))
        points = ex.points if status == "passed" else 0.0
        results.append(Result(name, ex.exercise, points, ex.points, status, message.splitlines()[0] if message else ""))
    return results, notes


def _responds(client: NotebookClient, timed_out: set[int]) -> bool:
    """Whether the kernel runs a trivial cell again after an interrupt."""
    probe, index = nbformat.v4.new_code_cell("pass"), -1
    saved = client.timeout
    client.timeout = PROBE_TIMEOUT
    try:
        client.execute_cell(probe, index, store_history=False)
    except DeadKernelError:
        return False
    finally:
        client.timeout = saved
    return index not in timed_out


def _mark_rest(reached: dict[int, str], graded: dict[int, Exercise], after: int, status: str) -> None:
    for index in graded:
        if index > after:
            reached.setdefault(index, status)


def grade(notebooks: Sequence[Path], solutions_dir: Path = labs.ROOT / "solutions", timeout: float = DEFAULT_TIMEOUT,
          size: str = "smoke", keep: Path | None = None, startup: Sequence[Path] | None = None,
          log=print) -> list[Result]:  # noqa: ANN001
    """Grade ``notebooks``; every row of the score table, in order.

    ``startup``: glob patterns of files that run in every later kernel (default: ``*.pth`` of
    site-packages). A notebook that adds or changes one scores 0 and grading stops, since later
    kernels would run its code; the grader never deletes or rewrites files itself."""
    solutions = load_solutions(solutions_dir)
    if not solutions:
        raise ValueError(f"no solution notebooks (lab*.ipynb) in {solutions_dir}")
    package = read_package()
    before = startup_files(startup)
    rows: list[Result] = []
    for number, path in enumerate(map(Path, notebooks)):
        try:
            student = nbformat.read(path, as_version=4)
        except Exception:
            student = None
        solution = match_solution(path, student, solutions)
        results, notes = run_notebook(path, solution, timeout=timeout, size=size, keep=keep, package=package)
        after = startup_files(startup)
        changed = sorted(str(p) for p in before.keys() | after.keys() if before.get(p) != after.get(p))
        if changed:
            for r in results:
                r.points, r.status, r.message = 0.0, "tampered", f"the notebook wrote start-up files: {', '.join(changed)}"
        for note in notes:
            log(f"note: {note}")
        rows += results
        if changed:
            left = [str(p) for p in notebooks[number + 1:]]
            raise TamperError(f"{path} wrote files that every later kernel would run ({', '.join(changed)}); "
                              f"remove them and grade again: {', '.join(left) or 'nothing'} left", rows)
    return rows


class TamperError(RuntimeError):
    """Grading stopped: a notebook changed the machine for the notebooks after it."""

    def __init__(self, message: str, rows: list[Result]):
        super().__init__(message)
        self.rows = rows


def table(rows: Sequence[Result]) -> str:
    """The score table as text: one line per exercise, a total per notebook."""
    head = ("notebook", "exercise", "points", "status", "message")
    lines = [(r.notebook, r.exercise, f"{r.points:g}/{r.max_points:g}", r.status, r.message[:70]) for r in rows]
    totals: dict[str, list[float]] = {}
    for r in rows:
        total = totals.setdefault(r.notebook, [0.0, 0.0])
        total[0] += r.points
        total[1] += r.max_points
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head).rstrip(), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line).rstrip() for line in lines]
    out.append("")
    out += [f"{nb}: {p:g} of {m:g} points" for nb, (p, m) in totals.items()]
    return "\n".join(out)


def write_csv(rows: Sequence[Result], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:g}" if isinstance(v, float) else v) for k, v in dataclasses.asdict(r).items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptcourse.grade", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="students' lab notebooks")
    parser.add_argument("--csv", type=Path, help="also write the score table here (one row per notebook and exercise)")
    parser.add_argument("--solutions", type=Path, default=labs.ROOT / "solutions", help="where the solution notebooks are")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per cell (default %(default)s)")
    parser.add_argument("--size", default="smoke", choices=["smoke", "cpu", "gpu"], help="GPTCOURSE_SIZE for the labs")
    parser.add_argument("--keep", type=Path, help="save the executed notebooks here, for review")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.notebooks if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    status = 0
    try:
        rows = grade(args.notebooks, args.solutions, timeout=args.timeout, size=args.size, keep=args.keep,
                     log=lambda line: print(line, file=sys.stderr))
    except TamperError as err:
        print(f"error: {err}", file=sys.stderr)
        rows, status = err.rows, 2
    print(table(rows))
    if args.csv:
        write_csv(rows, args.csv)
    return status


if __name__ == "__main__":
    sys.exit(main())
