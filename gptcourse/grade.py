"""Grade students' lab notebooks: ``python -m gptcourse.grade NOTEBOOK... [--csv FILE]``.

The trust boundary is the process boundary. A student's kernel runs the student's code and the
course's code; whatever it does, it can only send back outputs. Every score is decided here, in
the grader's own process, on inputs the grader chose:

1. The grader reads the solutions and the exercise specs (:mod:`gptcourse.grading.spec`) before
   any student code runs, and identifies each notebook's lab from its cells (not only its name).
2. It runs the student's cells in a fresh kernel inside a sandbox (:mod:`gptcourse.grading.sandbox`),
   but not the student's graded cells: each is replaced by a cell that calls
   :func:`gptcourse.grading.collect.collect` with a secret seed drawn for this run, which runs the
   answer on that seed's cases and displays the outputs as plain data (never pickled objects).
3. Here, it builds the same cases from the same seed, runs the reference on fresh copies, and
   compares (:func:`gptcourse.grading.harness.judge`). Nothing the notebook prints, writes or
   patches enters that comparison except the outputs it reports for its own answer.
4. It flags, in a ``flags`` column, exercise code that uses a reference the spec forbids (those
   references also raise while the answer runs) and exercise code that is a near-verbatim copy of
   the solution. Solutions and the package are public: grading measures correct work, not
   authorship; the flags are for the instructor to look at.

A batch never aborts: an unreadable, empty or foreign notebook, a notebook for another lab, a
kernel that dies, loops or floods its output all become rows with a status and a message. The CSV
is written atomically. The console shows only the grader's own lines.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import re
import secrets
import shutil
import signal
import site
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import nbformat
import torch
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from gptcourse import labs
from gptcourse.grading import harness, outcome, sandbox, scan, values
from gptcourse.grading.collect import MIME
from gptcourse.grading.spec import Spec

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_TIMEOUT = 120  # seconds per cell; smoke-size lab cells take a few
PROBE_TIMEOUT = 15  # after an interrupt, how long the kernel gets to answer again
OUTPUT_BUDGET = 16 * 2**20  # bytes of a notebook's ordinary output the grader keeps
_TIMED_OUT = "GradingTimeout"  # the ename of the reply nbclient makes up when a cell runs too long
KERNEL_NAME = "gptcourse-grade"
CSV_COLUMNS = ["notebook", "exercise", "points", "max_points", "status", "message", "flags"]
RESTORE_CELL = (
    "# Graded by `python -m gptcourse.grade`: your modules, from the checkpoint you submitted\n"
    "from gptcourse.grading.outcome import restore_modules\n"
    "restore_modules({checkpoint!r})"
)
OUTCOME_CELL = (
    "# Graded by `python -m gptcourse.grade`: your model's logits on the held-out windows\n"
    "from gptcourse.grading.outcome import collect_outcome\n"
    "collect_outcome({inputs!r}, {checkpoint!r}, {builder!r}, nonce={nonce})"
)
HELDOUT_INPUTS = "heldout-inputs.pt"
COLLECT_CELL = (
    "# Graded by `python -m gptcourse.grade`: the outputs of {name} for exercise {exercise}\n"
    "from gptcourse.grading.collect import collect\n"
    "collect({exercise!r}, seed={seed})"
)


@dataclasses.dataclass
class Result:
    """The outcome of one exercise of one notebook: a row of the score table."""

    notebook: str
    exercise: str
    points: float
    max_points: float
    status: str  # passed | failed | error | not implemented | no result | timeout | kernel died | not run
    message: str = ""
    flags: str = ""


@dataclasses.dataclass
class Exercise:
    spec: Spec
    cell_id: str  # the solution's graded cell
    anchor: str | None  # id of the non-graded solution cell it follows


def _meta(cell: Any) -> dict:
    meta = cell.get("metadata", {}).get("gptcourse", {}) if isinstance(cell, dict) else {}
    return meta if isinstance(meta, dict) else {}


def _is_graded(cell: Any) -> bool:
    return labs.GRADE_TAG in cell.get("metadata", {}).get("tags", []) or "exercise" in _meta(cell)


class Solution:
    """One lab: its solution's graded cells, exercise cells and specs, read before any student code runs."""

    def __init__(self, path: Path):
        self.path = path
        self.lab = path.stem.split("_")[0]
        nb = nbformat.read(path, as_version=4)
        specs = {s.id: s for s in harness.lab_specs(self.lab)}
        self.outcome: outcome.Outcome | None = harness.lab_outcome(self.lab)
        self.train_ids = {c.get("id") for c in nb.cells if labs.TRAIN_TAG in c.metadata.get("tags", [])}
        self.exercises: list[Exercise] = []
        self.blocks: dict[str, tuple[str, str]] = {}  # exercise cell id -> (its exercise, the solution cell)
        self.cell_ids = {c.get("id") for c in nb.cells} - set(labs.HEADER_TAGS)  # header ids are in every notebook
        self.sources = {c.source.strip() for c in nb.cells if c.cell_type == "code"}  # what is not the student's
        anchor, pending = None, []
        for cell in nb.cells:
            if cell.cell_type == "code" and labs.GRADE_TAG in cell.metadata.get("tags", []):
                exercise = _meta(cell).get("exercise")
                if exercise not in specs:
                    raise ValueError(f"{path}: graded cell {exercise!r} has no spec in gptcourse.grading.{self.lab}")
                if float(_meta(cell).get("points", -1)) != specs[exercise].points:
                    raise ValueError(f"{path}: {exercise} is worth {specs[exercise].points:g} points in its spec")
                self.exercises.append(Exercise(specs[exercise], cell.get("id"), anchor))
                self.blocks.update({cell_id: (exercise, source) for cell_id, source in pending})
                pending = []
            else:
                anchor = cell.get("id")
                if cell.cell_type == "code" and labs.BEGIN in cell.source:
                    pending.append((cell.get("id"), cell.source))
        missing = set(specs) - {e.spec.id for e in self.exercises}
        if missing:
            raise ValueError(f"{path}: no graded cell for {sorted(missing)}")


def load_solutions(solutions_dir: Path) -> dict[str, Solution]:
    """Every ``labNN_*.ipynb`` of ``solutions_dir``, by lab (``"lab04"``)."""
    return {s.lab: s for s in map(Solution, sorted(Path(solutions_dir).glob("lab[0-9][0-9]_*.ipynb")))}


class NotGradable(Exception):
    """A notebook the grader cannot grade as the lab it is for; the message says why."""

    def __init__(self, message: str, solution: Solution | None = None):
        super().__init__(message)
        self.solution = solution


def identify(path: Path, nb: nbformat.NotebookNode | None, solutions: dict[str, Solution]) -> Solution:
    """The lab of a student's notebook, from its content (graded-cell exercise ids and the cell ids
    the lab was generated with), checked against the ``labNN`` in its file name."""
    number = re.search(r"lab(\d+)", path.stem)
    named = solutions.get(f"lab{int(number.group(1)):02d}") if number else None
    if nb is None:
        raise NotGradable("the file is not a readable notebook", named)
    code = [c for c in nb.cells if c.get("cell_type") == "code" and c.get("source", "").strip()]
    if not code:
        raise NotGradable("the notebook has no code", named)
    ids = {_meta(c).get("exercise") for c in nb.cells} - {None}
    cell_ids = {c.get("id") for c in nb.cells} - set(labs.HEADER_TAGS)

    def likeness(s: Solution) -> float:
        return len(ids & {e.spec.id for e in s.exercises}) + len(cell_ids & s.cell_ids) / max(len(s.cell_ids), 1)

    ranked = sorted(solutions.values(), key=likeness, reverse=True)
    best = ranked[0] if ranked and likeness(ranked[0]) >= 0.3 else None
    if best is None:
        defined = set().union(*(scan.defines(c.get("source", "")) for c in code))
        if named is not None and {e.spec.name for e in named.exercises} <= defined:
            return named  # rebuilt by hand from the lab's text, every answer defined: grade it by its name
        raise NotGradable("none of its cells comes from a lab of this course", named)
    if named is not None and named is not best and likeness(named) < likeness(best):
        raise NotGradable(f"its cells are {best.lab}'s, but its name says {named.lab}: submit the right file", named)
    return best


def assemble(
    student: nbformat.NotebookNode, solution: Solution, seeds: dict[str, int], outcome_nonce: int | None = None
) -> tuple[nbformat.NotebookNode, dict[int, Exercise]]:
    """The notebook to run: the student's cells, with a collecting cell where each graded cell is.

    Returns it and, for each collecting cell, its index. A student's graded cell (matched by
    exercise id or cell id) is replaced; a deleted one is put back after the cell it follows in
    the solution, or at the end; any other graded cell is dropped. Training cells (tagged, or the
    solution's) are dropped. With ``outcome_nonce``, for a lab graded by its trained model, a first
    cell restores the learner's modules from the submitted checkpoint and a last cell reports the
    model's held-out logits."""
    by_exercise = {e.spec.id: e for e in solution.exercises}
    by_cell_id = {e.cell_id: e for e in solution.exercises}
    placed: set[str] = set()
    cells: list[Any] = []
    for cell in student.cells:
        if labs.TRAIN_TAG in cell.get("metadata", {}).get("tags", []) or cell.get("id") in solution.train_ids:
            continue
        if _is_graded(cell) or cell.get("id") in by_cell_id:
            ex = by_exercise.get(_meta(cell).get("exercise")) or by_cell_id.get(cell.get("id"))
            if ex is not None and ex.spec.id not in placed:
                cells.append(ex)
                placed.add(ex.spec.id)
            continue
        cell = nbformat.from_dict(dict(cell))
        if cell.get("cell_type") == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata = {}  # no tags: nothing a student sets changes how a cell runs
        cells.append(cell)
    for ex in solution.exercises:  # deleted ones, in order, after their anchor
        if ex.spec.id in placed:
            continue
        at = next((i for i, c in enumerate(cells) if not isinstance(c, Exercise) and c.get("id") == ex.anchor), None)
        at = len(cells) - 1 if at is None else at
        while at + 1 < len(cells) and isinstance(cells[at + 1], Exercise):  # keep the solution's order
            at += 1
        cells.insert(at + 1, ex)
        placed.add(ex.spec.id)
    if solution.outcome is not None and outcome_nonce is not None:
        checkpoint = solution.outcome.checkpoint
        cells.insert(0, nbformat.v4.new_code_cell(RESTORE_CELL.format(checkpoint=checkpoint)))
        cells.append(
            nbformat.v4.new_code_cell(
                OUTCOME_CELL.format(
                    inputs=HELDOUT_INPUTS, checkpoint=checkpoint, builder=solution.outcome.builder, nonce=outcome_nonce
                )
            )
        )
    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}}
    )
    graded: dict[int, Exercise] = {}
    for index, cell in enumerate(cells):
        if isinstance(cell, Exercise):
            graded[index] = cell
            cell = nbformat.v4.new_code_cell(
                COLLECT_CELL.format(name=cell.spec.name, exercise=cell.spec.id, seed=seeds[cell.spec.id])
            )
        cell.id = f"cell-{index}"  # ids were only for matching; a student's may repeat
        nb.cells.append(cell)
    return nb, graded


def read_package(package_dir: Path = PACKAGE_DIR) -> dict[str, bytes]:
    """The course package's source files (path relative to its parent -> bytes), read once."""
    return {
        p.relative_to(package_dir.parent).as_posix(): p.read_bytes()
        for p in sorted(package_dir.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def startup_files(patterns: Iterable[Path] | None = None) -> dict[Path, bytes]:
    """Files that Python runs in every later kernel: ``*.pth``, ``sitecustomize.py`` and
    ``usercustomize.py`` of site-packages (by default)."""
    if patterns is None:
        dirs = {Path(p) for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()}
        patterns = [d / name for d in sorted(dirs) for name in ("*.pth", "sitecustomize.py", "usercustomize.py")]
    files: dict[Path, bytes] = {}
    for pattern in map(Path, patterns):
        for path in sorted(pattern.parent.glob(pattern.name)):
            if path.is_file():
                files[path] = path.read_bytes()
    return files


class _SandboxedKernel(AsyncKernelManager):
    """A kernel manager whose connection file the sandbox's unprivileged user can read."""

    owner: int | None = None

    def write_connection_file(self, **kwargs: Any) -> None:
        super().write_connection_file(**kwargs)
        if self.owner is not None:
            os.chown(self.connection_file, self.owner, self.owner)


class _BoundedClient(NotebookClient):
    """Keeps at most :data:`OUTPUT_BUDGET` bytes of ordinary output per notebook (a cell that
    prints forever cannot fill the grader's memory), and every collected result of at most
    ``values.MAX_BYTES`` (a larger one is dropped, so its exercise has no result)."""

    budget = OUTPUT_BUDGET

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        data = content.get("data")
        size = len(repr(content))
        if isinstance(data, dict) and MIME in data:
            if size > values.MAX_BYTES:
                return None
        elif size > self.budget:
            self.budget = 0
            return None
        else:
            self.budget -= size
        return super().output(outs, msg, display_id, cell_index)


def _kernel_spec(folder: Path, box: sandbox.Sandbox, workdir: Path, course: Path) -> KernelSpecManager:
    kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    argv = box.command(kernel, workdir, course)
    spec_dir = folder / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    # interrupts go over the control channel: the kernel signals itself inside its namespace
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {"argv": argv, "display_name": "gptcourse grading", "language": "python", "interrupt_mode": "message"}
        )
    )
    return KernelSpecManager(kernel_dirs=[str(folder / "kernels")], ensure_native_kernel=False)


def _kernel_env(workdir: Path, size: str, course: Path) -> dict[str, str]:
    keep = (
        "PATH",
        "LANG",
        "LC_ALL",
        "TZ",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "TIKTOKEN_CACHE_DIR",
        "GPTCOURSE_DATA_DIR",
        "GPTCOURSE_REQUIRE_DATA",
        "VIRTUAL_ENV",
    )
    env = {k: os.environ[k] for k in keep if k in os.environ}
    ipython = workdir / ".ipython"
    (ipython / "profile_default").mkdir(parents=True)
    # plain tracebacks: the messages end up in a CSV
    (ipython / "profile_default" / "ipython_kernel_config.py").write_text("c.InteractiveShell.colors = 'nocolor'\n")
    env.update(
        HOME=str(workdir),
        IPYTHONDIR=str(ipython),
        MPLCONFIGDIR=str(workdir / ".mpl"),
        XDG_CACHE_HOME=str(workdir / ".cache"),
        PYTHONPATH=str(course),
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
        GPTCOURSE_SIZE=size,
        MPLBACKEND="agg",
    )
    return env


def _reply(cell: nbformat.NotebookNode, mime: str) -> dict | None:
    """The one ``mime`` dict a grader's cell displayed, or None unless there is exactly one."""
    found = [
        o.get("data", {}).get(mime)
        for o in cell.outputs
        if o.get("output_type") == "display_data" and mime in o.get("data", {})
    ]
    return found[0] if len(found) == 1 and isinstance(found[0], dict) else None


def _outcomes(cell: nbformat.NotebookNode, exercise: str, seed: int) -> Any:
    """The outcomes a collecting cell displayed, or None unless there is exactly one well-formed result."""
    reply = _reply(cell, MIME)
    if reply is None:
        return None
    if reply.get("exercise") != exercise or reply.get("seed") != seed:
        return None
    return reply.get("outcomes")


def run_notebook(
    path: Path,
    student: nbformat.NotebookNode,
    solution: Solution,
    box: sandbox.Sandbox,
    timeout: float = DEFAULT_TIMEOUT,
    size: str = "smoke",
    keep: Path | None = None,
    package: dict[str, bytes] | None = None,
    heldout: torch.Tensor | None = None,
) -> tuple[list[Result], list[str]]:
    """Grade one student notebook against ``solution``: ``(results, notes)``.

    For a lab graded by its trained model, ``heldout`` holds the held-out ids and the checkpoint is
    the file beside the notebook with its name and ``.pt`` (``alice_lab16.pt``)."""
    name = str(path)
    package = read_package() if package is None else package
    seeds = {e.spec.id: secrets.randbelow(2**31) for e in solution.exercises}
    task, checkpoint, nonce = solution.outcome, path.with_suffix(".pt"), None
    targets = torch.empty(0, dtype=torch.long)  # the held-out targets: here only, never in the kernel
    outcome_rows: list[Result] = []
    if task is not None:
        if heldout is None:
            outcome_rows = _outcome_rows(name, solution, "not run", "the trained model is graded with --heldout FILE")
        elif not checkpoint.is_file():
            outcome_rows = _outcome_rows(
                name, solution, "no result", f"no checkpoint {checkpoint.name} beside the notebook"
            )
        else:
            nonce = secrets.randbelow(2**31)
    nb, graded = assemble(student, solution, seeds, nonce)
    parsed = scan.parse_cells(student)
    flags = scan.flags(parsed, solution)
    everywhere = scan.suspicious(parsed, solution.sources)
    notes: list[str] = []
    reached: dict[int, str] = {}  # graded cells that never ran normally: index -> status
    with tempfile.TemporaryDirectory(prefix="gptcourse-grade-") as tmp:
        root = Path(tmp).resolve()
        workdir, course = root / "work", root / "course"
        for rel, data in package.items():  # a private copy: a notebook that edits it spoils only its own run
            (course / rel).parent.mkdir(parents=True, exist_ok=True)
            (course / rel).write_bytes(data)
        workdir.mkdir()
        if task is not None and nonce is not None and heldout is not None:  # the kernel gets inputs, never targets
            inputs, targets = outcome.heldout_windows(heldout, task.context, task.max_windows)
            torch.save(inputs, workdir / HELDOUT_INPUTS)
            shutil.copyfile(checkpoint, workdir / task.checkpoint)
        env = _kernel_env(workdir, size, course)
        if box.uid is not None:  # the kernel's user may pass through the grader's folder, and owns its own
            os.chmod(root, 0o711)
            for folder, _, files in os.walk(workdir):
                os.chown(folder, box.uid, box.uid)
                for f in files:
                    os.chown(os.path.join(folder, f), box.uid, box.uid)
        km = _SandboxedKernel(kernel_spec_manager=_kernel_spec(root, box, workdir, course), kernel_name=KERNEL_NAME)
        km.owner = box.uid
        km.connection_file = str(workdir / ".kernel.json")
        timed_out: set[int] = set()

        def on_executed(cell, cell_index, execute_reply):
            if execute_reply.get("content", {}).get("ename") == _TIMED_OUT:
                timed_out.add(cell_index)

        client = _BoundedClient(
            nb,
            km=km,
            timeout=timeout,
            allow_errors=True,
            interrupt_on_timeout=True,
            error_on_timeout={"ename": _TIMED_OUT, "evalue": f"ran past {timeout:g} s", "traceback": []},
            on_cell_executed=on_executed,
            skip_cells_with_tag=f"skip-{secrets.token_hex(8)}",
        )
        with open(root / "kernel.log", "wb") as log:  # the kernel's own stdout/stderr never reach the console
            process = None
            try:
                with client.setup_kernel(env=env, cwd=str(workdir), stdout=log, stderr=log):
                    process = km.provisioner.process
                    for index, cell in enumerate(nb.cells):
                        if cell.cell_type != "code":
                            continue
                        label = graded[index].spec.id if index in graded else f"cell {index}"
                        try:
                            client.execute_cell(cell, index)
                        except DeadKernelError:
                            notes.append(f"{name}: the kernel died in {label}; later cells not run")
                            reached[index] = "kernel died"
                            _mark_rest(reached, graded, index, "not run")
                            break
                        if index in timed_out:
                            notes.append(f"{name}: {label} ran past {timeout:g} s and was interrupted")
                            reached[index] = "timeout"
                            if not _responds(client, timed_out):
                                notes.append(
                                    f"{name}: the kernel did not stop after the interrupt; later cells not run"
                                )
                                _mark_rest(reached, graded, index, "not run")
                                break
            except RuntimeError as err:  # the kernel did not start (or died while starting)
                notes.append(f"{name}: the kernel did not start ({err})")
                _mark_rest(reached, graded, -1, "not run")
            finally:
                _stop(process)
        if keep is not None:  # the executed notebook and what the kernel process printed, for review
            keep.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, keep / path.name)
            (keep / f"{path.stem}.kernel.log").write_bytes((root / "kernel.log").read_bytes())
    results = []
    for index, ex in graded.items():
        spec = ex.spec
        if index in reached:
            status = reached[index]
            message = {
                "timeout": f"the cell ran past {timeout:g} s",
                "kernel died": "the kernel died in this cell",
                "not run": "the kernel stopped before this cell",
            }[status]
        else:
            outcomes = _outcomes(nb.cells[index], spec.id, seeds[spec.id])
            if outcomes is None:
                errors = [o for o in nb.cells[index].outputs if o.get("output_type") == "error"]
                raised = f" (the cell raised {errors[0].get('ename')}: {errors[0].get('evalue')})" if errors else ""
                status, message = "no result", f"the notebook reported no outputs for {spec.name}{raised}"
            else:
                verdict = harness.judge(spec, seeds[spec.id], outcomes)
                status = verdict.status
                message = verdict.message + (f" Hint: {verdict.hint}" if verdict.hint and status == "failed" else "")
        points = spec.points if status == "passed" else 0.0
        results.append(
            Result(name, spec.id, points, spec.points, status, message, "; ".join(flags.get(spec.id, []) + everywhere))
        )
    if task is not None and nonce is not None:
        last = len(nb.cells) - 1
        outcome_rows = _score_outcome(name, solution, nb.cells[last], nonce, targets, reached.get(last))
    return results + outcome_rows, notes


def _outcome_rows(name: str, solution: Solution, status: str, message: str, loss: float | None = None) -> list[Result]:
    """One row per target of ``solution``'s outcome; points only for a measured ``loss`` that meets it."""
    assert solution.outcome is not None
    rows = []
    for target, points in outcome.award(math.inf if loss is None else loss, solution.outcome.targets):
        exercise = f"{solution.lab}.heldout<={target.max_loss:g}"
        row_status = status if loss is None else ("passed" if points else "failed")
        rows.append(Result(name, exercise, points, target.points, row_status, f"{message} ({target.name})"))
    return rows


def _score_outcome(
    name: str, solution: Solution, cell: nbformat.NotebookNode, nonce: int, targets: torch.Tensor, stopped: str | None
) -> list[Result]:
    """Score the held-out logits the outcome cell displayed, here, against the targets kept back."""
    if stopped is not None:
        return _outcome_rows(name, solution, stopped, "the kernel stopped before the held-out logits were collected")
    reply = _reply(cell, outcome.MIME)
    if reply is None or reply.get("nonce") != nonce:
        return _outcome_rows(name, solution, "no result", "the notebook reported no held-out logits")
    if "error" in reply:
        return _outcome_rows(name, solution, "error", f"building or running your model failed: {reply['error']}")
    try:
        loss, stderr = outcome.heldout_loss(reply.get("logits"), targets)
    except (ValueError, TypeError, RuntimeError) as err:
        return _outcome_rows(name, solution, "error", f"the held-out logits cannot be scored: {err}")
    message = f"held-out loss {loss:.4f} ± {stderr:.4f} nats/char on {targets.numel()} windows"
    return _outcome_rows(name, solution, "measured", message, loss)


def _stop(process: Any) -> None:
    """End whatever the kernel left behind: its process group and, in isolated mode, its PID
    namespace (the sandbox dies with it, and every process inside with the sandbox)."""
    if process is None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


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


def _not_run(name: str, solution: Solution | None, message: str) -> list[Result]:
    if solution is None:
        return [Result(name, "-", 0.0, 0.0, "not run", message)]
    return [Result(name, e.spec.id, 0.0, e.spec.points, "not run", message) for e in solution.exercises]


def grade(
    notebooks: Sequence[Path],
    solutions_dir: Path = labs.ROOT / "solutions",
    timeout: float = DEFAULT_TIMEOUT,
    size: str = "smoke",
    keep: Path | None = None,
    startup: Sequence[Path] | None = None,
    box: sandbox.Sandbox | None = None,
    log: Callable[[str], None] = print,
    heldout: Path | None = None,
) -> list[Result]:
    """Grade ``notebooks``; every row of the score table, in order.

    ``heldout``: a text file new to the learners, on which a lab graded by its trained model (the
    capstone) is scored; see :mod:`gptcourse.grading.outcome`.

    ``startup``: glob patterns of files that run in every later kernel (default: start-up files of
    site-packages). A notebook that adds or changes one scores 0 and grading stops, since later
    kernels would run its code; the grader never deletes or rewrites files itself."""
    solutions = load_solutions(solutions_dir)
    if not solutions:
        raise ValueError(f"no solution notebooks (labNN_*.ipynb) in {solutions_dir}")
    box = sandbox.choose() if box is None else box
    log(f"sandbox: {box.mode} ({box.why})")
    package = read_package()
    heldout_ids = (
        None if heldout is None else outcome.encode_heldout(heldout.read_text(encoding="utf-8"), outcome.vocabulary())
    )
    before = startup_files(startup)
    rows: list[Result] = []
    for number, path in enumerate(map(Path, notebooks)):
        try:
            student = nbformat.read(path, as_version=4)
        except Exception:
            student = None
        try:
            solution = identify(path, student, solutions)
        except NotGradable as err:
            log(f"note: {path}: not graded: {err}")
            rows += _not_run(str(path), err.solution, str(err))
            continue
        results, notes = run_notebook(
            path, student, solution, box, timeout=timeout, size=size, keep=keep, package=package, heldout=heldout_ids
        )
        after = startup_files(startup)
        changed = sorted(str(p) for p in before.keys() | after.keys() if before.get(p) != after.get(p))
        if changed:
            for r in results:
                r.points, r.status = 0.0, "tampered"
                r.message = f"the notebook wrote start-up files: {', '.join(changed)}"
        for note in notes:
            log(f"note: {note}")
        rows += results
        if changed:
            left = [str(p) for p in notebooks[number + 1 :]]
            raise TamperError(
                f"{path} wrote files that every later kernel would run ({', '.join(changed)}); "
                f"remove them and grade again: {', '.join(left) or 'nothing'} left",
                rows,
            )
    return rows


class TamperError(RuntimeError):
    """Grading stopped: a notebook changed the machine for the notebooks after it."""

    def __init__(self, message: str, rows: list[Result]):
        super().__init__(message)
        self.rows = rows


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(text: str, width: int | None = None) -> str:
    """One line of ``text`` with control characters (newlines, ANSI escapes) made visible, so no
    message from a notebook can forge or erase a line of the grader's output."""
    text = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if width is None or len(text) <= width else text[: width - 3] + "..."


def table(rows: Sequence[Result]) -> str:
    """The score table as text: one line per exercise, a total per notebook."""
    head = ("notebook", "exercise", "points", "status", "message", "flags")
    lines = [
        (
            clean(r.notebook),
            clean(r.exercise),
            f"{r.points:g}/{r.max_points:g}",
            r.status,
            clean(r.message, 70),
            clean(r.flags, 40),
        )
        for r in rows
    ]
    totals: dict[str, list[float]] = {}
    for r in rows:
        total = totals.setdefault(clean(r.notebook), [0.0, 0.0])
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
    """Write the score table atomically: a new file renamed over ``path`` (a symlink there is
    replaced, never followed)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for r in rows:
                writer.writerow(
                    {k: (f"{v:g}" if isinstance(v, float) else clean(str(v))) for k, v in dataclasses.asdict(r).items()}
                )
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptcourse.grade", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="students' lab notebooks")
    parser.add_argument("--csv", type=Path, help="also write the score table here (one row per notebook and exercise)")
    parser.add_argument(
        "--solutions", type=Path, default=labs.ROOT / "solutions", help="where the solution notebooks are"
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per cell (default %(default)s)")
    parser.add_argument("--size", default="smoke", choices=["smoke", "cpu", "gpu"], help="GPTCOURSE_SIZE for the labs")
    parser.add_argument("--keep", type=Path, help="save the executed notebooks here, for review")
    parser.add_argument(
        "--heldout",
        type=Path,
        help="a text new to the learners on which the capstone's trained models are scored "
        "(each notebook's checkpoint is NAME.pt beside NAME.ipynb)",
    )
    parser.add_argument(
        "--require-isolation",
        action="store_true",
        help="refuse to grade unless kernels can be isolated (root, bubblewrap, util-linux)",
    )
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.notebooks if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    if args.heldout is not None and not args.heldout.is_file():
        parser.error(f"no such held-out text: {args.heldout}")
    status = 0
    try:
        box = sandbox.choose(require_isolation=args.require_isolation)
    except RuntimeError as err:
        parser.error(str(err))
    try:
        rows = grade(
            args.notebooks,
            args.solutions,
            timeout=args.timeout,
            size=args.size,
            keep=args.keep,
            box=box,
            log=lambda line: print(clean(line), file=sys.stderr),
            heldout=args.heldout,
        )
    except TamperError as err:
        print(f"error: {clean(str(err))}", file=sys.stderr)
        rows, status = err.rows, 2
    print(table(rows))
    if args.csv:
        write_csv(rows, args.csv)
    return status


if __name__ == "__main__":
    sys.exit(main())
