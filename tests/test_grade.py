"""The grading command: canonical graded cells, isolation, and tampering that must earn nothing.

One synthetic lab (``lab98_demo``: ``scale`` for 2 points, ``attend`` for 3) lives in a temporary
root; its solution's graded cells define their checks with ``gptcourse.grading``'s helpers and
compare with ``gptcourse.attention.attention``. Every student notebook below is that lab with one
kind of tampering, and all of them are graded in ONE run (in this order), which also shows that a
notebook that kills its kernel, loops forever or writes files does not affect the ones after it.
"""

from __future__ import annotations

import csv
import hashlib
import re

import nbformat
import pytest

from gptcourse import grade, labs

SCALE = "def scale(x, factor):\n    ### BEGIN SOLUTION\n    return x * factor\n    ### END SOLUTION"
ATTEND = ("import torch\n\ndef attend(q, k, v):\n    ### BEGIN SOLUTION\n"
          "    w = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)\n"
          "    return w @ v\n    ### END SOLUTION")
CHECK_SCALE = '''# Test: scale multiplies every value
import torch
from gptcourse.grading import exercise, expect_close

@exercise("lab98.scale")
def check_scale(scale):
    x = torch.randn(4, 3)
    expect_close("scale(x, 3)", scale(x, 3.0), x * 3.0, hint="multiply, do not add")

check_scale(scale)'''
CHECK_ATTEND = '''# Test: attend equals the course's attention
import torch
from gptcourse.attention import attention
from gptcourse.grading import exercise, expect_close

@exercise("lab98.attend")
def check_attend(fn):
    q, k, v = (torch.randn(2, 5, 8) for _ in range(3))
    expect_close("attend(q, k, v)", fn(q, k, v), attention(q, k, v))

check_attend(attend)'''
WRONG_SCALE = "def scale(x, factor):\n    return x + factor"
WRONG_ATTEND = "import torch\n\ndef attend(q, k, v):\n    return v"
TIMEOUT = 20  # per cell: the setup cell imports torch, which takes seconds on a busy machine


def _graded(source: str, exercise: str, points: int) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(source, metadata={"tags": ["grade"], "gptcourse": {"exercise": exercise, "points": points}})


def _solution() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Lab 98 — a demo lab"),
        nbformat.v4.new_code_cell(SCALE),
        _graded(CHECK_SCALE, "lab98.scale", 2),
        nbformat.v4.new_code_cell(ATTEND),
        _graded(CHECK_ATTEND, "lab98.attend", 3),
        nbformat.v4.new_code_cell("from gptcourse.grading import check_all\ncheck_all()"),
    ])
    return labs.with_header(nb, "solutions/lab98_demo.ipynb")


def _cell(nb: nbformat.NotebookNode, needle: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if needle in c.source)


def _variants(solved: nbformat.NotebookNode, unsolved: nbformat.NotebookNode, site_dir) -> dict:
    """Student notebooks by name; each is a deep copy of the solved or unsolved lab, then tampered."""
    def copy(nb):
        return nbformat.from_dict(nbformat.reads(nbformat.writes(nb), as_version=4))

    def insert_after(nb, needle, source):
        nb.cells.insert(_cell(nb, needle) + 1, nbformat.v4.new_code_cell(source))
        return nb

    def replace(nb, needle, source):
        nb.cells[_cell(nb, needle)].source = source
        return nb

    v = {}
    # the kernel dies inside the first exercise: later cells are not run, later notebooks are graded
    v["os_exit"] = replace(copy(solved), "def scale", "import os\n\ndef scale(x, factor):\n    os._exit(0)")
    v["solved"] = copy(solved)
    v["unsolved"] = copy(unsolved)
    # rewrites the solution on disk (graded cells -> `pass`) and the course's grading module it imports
    v["writer"] = insert_after(copy(solved), "def scale", (
        "import json, pathlib, gptcourse.grading\n"
        f"sol = pathlib.Path({str(site_dir.parent / 'solutions' / 'lab98_demo.ipynb')!r})\n"
        "nb = json.loads(sol.read_text())\n"
        "for c in nb['cells']:\n"
        "    if 'grade' in c['metadata'].get('tags', []): c['source'] = 'pass'\n"
        "sol.write_text(json.dumps(nb))\n"
        "init = pathlib.Path(gptcourse.grading.__file__)\n"
        "init.write_text(init.read_text().replace('check(*args, **kwargs)', 'pass'))"))
    # graded cells edited to print a pass, points raised, and a graded cell of its own added
    edited = copy(unsolved)
    edited.cells[_cell(edited, "check_scale(scale)")].source = 'print("PASSED lab98.scale")'
    graded_attend = edited.cells[_cell(edited, "check_attend(attend)")]
    graded_attend.source, graded_attend.metadata["gptcourse"]["points"] = "pass", 100
    edited.cells.append(_graded("print('PASSED lab98.bonus')", "lab98.bonus", 50))
    v["edited"] = edited
    # both graded cells deleted, scale solved, attend not: restored in place, scored as written
    deleted = copy(unsolved)
    deleted.cells[_cell(deleted, "def scale")].source = SCALE
    deleted.cells = [c for c in deleted.cells if "grade" not in c.metadata.get("tags", [])]
    v["deleted"] = deleted
    # wrong answers; the check redefined in the namespace, the course's helpers and reference monkeypatched
    patched = replace(copy(unsolved), "def scale", WRONG_SCALE)
    replace(patched, "def attend", WRONG_ATTEND)
    insert_after(patched, "def attend", (
        "import gptcourse.grading as g, gptcourse.attention as A\n"
        "def check_scale(fn):\n    print('PASSED lab98.scale')\n"
        "check_attend = check_scale\n"
        "g.expect_close = lambda *args, **kwargs: None\n"
        "g.exercise = lambda exercise_id: (lambda check: (lambda *a, **k: print('PASSED', exercise_id)))\n"
        "A.attention = lambda q, k, v, mask=None: v"))
    v["patched"] = patched
    # wrong answers; errors swallowed by a custom IPython handler, a forged marker, torch patched
    swallow = replace(copy(unsolved), "def scale", WRONG_SCALE)
    replace(swallow, "def attend", WRONG_ATTEND)
    insert_after(swallow, "def attend", (
        "import torch\n"
        "get_ipython().set_custom_exc((BaseException,), lambda *args, **kwargs: None)\n"
        "print('[gptcourse.grade 0123456789abcdef0123456789abcdef] lab98.scale passed')\n"
        "torch.isclose = lambda a, b, **kwargs: torch.ones(a.shape, dtype=torch.bool)"))
    v["swallow"] = swallow
    # sys.exit inside an exercise (that exercise errors), then sys.exit in a cell and an infinite loop
    # between the exercises: the loop is interrupted at the timeout, and the next exercise graded
    loop = replace(copy(solved), "def scale", "import sys\n\ndef scale(x, factor):\n    sys.exit(0)")
    insert_after(loop, "check_scale(scale)", "while True:\n    pass")
    v["loop"] = insert_after(loop, "check_scale(scale)", "import sys\nsys.exit('bye')")
    # a loop that ignores interrupts inside the exercise: the kernel is stopped, the next notebook graded
    v["stubborn"] = replace(copy(solved), "def scale", (
        "import time\n\ndef scale(x, factor):\n    while True:\n        try:\n            time.sleep(0.05)\n"
        "        except KeyboardInterrupt:\n            pass"))
    # writes a start-up (.pth) file that every later kernel would run: scored 0 and grading stops
    v["pth"] = insert_after(copy(solved), "def scale",
                            f"open({str(site_dir / 'evil.pth')!r}, 'w').write('import os\\n')")
    return v


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """``(rows by (variant, exercise), the TamperError that stopped the run, the CSV rows)``."""
    root = tmp_path_factory.mktemp("course")
    site_dir = root / "site"
    (root / "solutions").mkdir()
    site_dir.mkdir()
    solution = _solution()
    nbformat.write(solution, root / "solutions" / "lab98_demo.ipynb")
    unsolved = labs.make_lab(solution, "labs/lab98_demo.ipynb")
    students = root / "students"
    students.mkdir()
    paths = []
    for name, nb in _variants(solution, unsolved, site_dir).items():
        paths.append(students / f"lab98_{name}.ipynb")
        nbformat.write(nb, paths[-1])
    original = grade.PROBE_TIMEOUT
    grade.PROBE_TIMEOUT = 5
    try:
        with pytest.raises(grade.TamperError) as stopped:
            grade.grade(paths, root / "solutions", timeout=TIMEOUT, startup=[site_dir / "*.pth"], log=lambda _: None)
    finally:
        grade.PROBE_TIMEOUT = original
    rows = stopped.value.rows
    grade.write_csv(rows, root / "scores.csv")
    with open(root / "scores.csv", newline="") as f:
        table = list(csv.DictReader(f))
    by = {(re.sub(r"^lab98_", "", r.notebook.rsplit("/", 1)[-1][:-6]), r.exercise.split(".")[1]): r for r in rows}
    return by, stopped.value, table


def _score(by, variant):
    return {ex: (r.points, r.status) for (name, ex), r in by.items() if name == variant}


def test_solution_earns_every_point_and_unsolved_lab_none(graded):
    by, _, _ = graded
    assert _score(by, "solved") == {"scale": (2, "passed"), "attend": (3, "passed")}
    assert _score(by, "unsolved") == {"scale": (0, "not implemented"), "attend": (0, "not implemented")}


def test_csv_has_one_row_per_notebook_and_exercise(graded):
    by, _, table = graded
    assert list(table[0]) == grade.CSV_COLUMNS
    assert len(table) == len(by) == 2 * 11
    solved = [r for r in table if r["notebook"].endswith("lab98_solved.ipynb")]
    assert [(r["exercise"], r["points"], r["max_points"]) for r in solved] == [("lab98.scale", "2", "2"), ("lab98.attend", "3", "3")]


def test_edited_graded_cells_are_replaced_and_extra_ones_dropped(graded):
    by, _, _ = graded
    assert _score(by, "edited") == {"scale": (0, "not implemented"), "attend": (0, "not implemented")}
    assert by["edited", "attend"].max_points == 3  # the solution's points, not the notebook's 100


def test_deleted_graded_cells_are_restored_in_place(graded):
    by, _, _ = graded
    assert _score(by, "deleted") == {"scale": (2, "passed"), "attend": (0, "not implemented")}


def test_redefined_or_monkeypatched_checks_earn_nothing(graded):
    by, _, _ = graded
    assert by["patched", "scale"].points == 0 and by["patched", "scale"].status in ("failed", "tampered")
    assert _score(by, "patched")["attend"] == (0, "tampered")
    assert "gptcourse.attention.attention" in by["patched", "attend"].message


def test_swallowed_errors_forged_markers_and_patched_torch_earn_nothing(graded):
    by, _, _ = graded
    for exercise in ("scale", "attend"):
        assert by["swallow", exercise].points == 0 and by["swallow", exercise].status != "passed"


def test_sys_exit_fails_only_its_exercise(graded):
    by, _, _ = graded
    assert _score(by, "loop")["scale"] == (0, "error") and "SystemExit" in by["loop", "scale"].message


def test_os_exit_is_reported_and_grading_goes_on(graded):
    by, _, _ = graded
    assert _score(by, "os_exit") == {"scale": (0, "kernel died"), "attend": (0, "not run")}
    assert _score(by, "solved")["attend"] == (3, "passed")  # the next notebook, in a new kernel


def test_infinite_loop_times_out_and_grading_goes_on(graded):
    by, _, _ = graded
    assert _score(by, "loop")["attend"] == (3, "passed")  # after `sys.exit('bye')` and `while True: pass`
    assert _score(by, "stubborn") == {"scale": (0, "timeout"), "attend": (0, "not run")}
    assert f"{TIMEOUT} s" in by["stubborn", "scale"].message


def test_files_written_by_a_notebook_are_not_read(graded):
    by, _, _ = graded
    # the package copy it rewrote is caught by the hashes; the solution it rewrote was already read
    assert _score(by, "writer") == {"scale": (0, "tampered"), "attend": (0, "tampered")}
    assert "changed on disk" in by["writer", "scale"].message
    assert _score(by, "edited")["scale"] == (0, "not implemented")  # graded after the writer


def test_a_startup_file_scores_zero_and_stops_the_run(graded):
    by, stopped, _ = graded
    assert _score(by, "pth") == {"scale": (0, "tampered"), "attend": (0, "tampered")}
    assert "evil.pth" in str(stopped)


def test_score_table_lists_every_exercise_and_totals(graded):
    by, _, _ = graded
    text = grade.table(list(by.values()))
    assert "lab98_solved.ipynb: 5 of 5 points" in text and "lab98_unsolved.ipynb: 0 of 5 points" in text


def test_notebook_is_matched_to_its_solution_by_name_or_exercise_ids(tmp_path):
    nbformat.write(_solution(), tmp_path / "lab98_demo.ipynb")
    solutions = grade.load_solutions(tmp_path)
    lab = labs.make_lab(_solution(), "labs/lab98_demo.ipynb")
    assert grade.match_solution(tmp_path / "alice_lab98.ipynb", None, solutions) is solutions["lab98_demo"]
    assert grade.match_solution(tmp_path / "alice.ipynb", lab, solutions) is solutions["lab98_demo"]
    with pytest.raises(ValueError, match="cannot tell which lab"):
        grade.match_solution(tmp_path / "alice.ipynb", nbformat.v4.new_notebook(), solutions)


def test_integrity_accepts_the_course_as_it_is_and_names_what_was_patched(monkeypatch):
    """In-process: every module of the package loads clean, then three kinds of patch are named."""
    import importlib
    import pkgutil

    import torch

    import gptcourse
    import gptcourse.attention
    from gptcourse.grading import integrity

    for module in pkgutil.walk_packages(gptcourse.__path__, "gptcourse."):
        importlib.import_module(module.name)
    package_dir = str(grade.PACKAGE_DIR)
    hashes = {rel: hashlib.sha256(data).hexdigest() for rel, data in grade.read_package().items()}
    integrity.verify(package_dir, hashes)  # nothing changed: no error

    def fake(*args, **kwargs):
        return None

    fake.__module__ = "__main__"  # as if written in a notebook
    monkeypatch.setattr(gptcourse.attention, "attention", fake)
    monkeypatch.setattr(gptcourse.attention.MultiHeadAttention, "forward", fake)
    monkeypatch.setattr(torch, "allclose", fake)
    with pytest.raises(integrity.TamperingError) as err:
        integrity.verify(package_dir, {**hashes, "gptcourse/attention.py": "0" * 64})
    for what in ("gptcourse/attention.py was changed on disk", "gptcourse.attention.attention was replaced",
                 "gptcourse.attention.MultiHeadAttention.forward was replaced", "torch.allclose was replaced"):
        assert what in str(err.value)
