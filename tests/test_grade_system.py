"""Grading: what a notebook can do to the machine, to other notebooks and to the grader's run.

The kernel runs in a sandbox (gptcourse.grading.sandbox): in CI (root, bubblewrap) a read-only file
system except its own folder, an unprivileged user, its own PID namespace. Kernels that die, loop
or flood their output cost only their own rows."""

from __future__ import annotations

import os
import secrets
import site
import subprocess
from pathlib import Path

import pytest
from grading_cases import (
    SOLVED,
    TIMEOUT,
    UNSOLVED,
    grade_all,
    insert_after,
    read,
    replace,
)

from gptcourse import grade
from gptcourse.grading import sandbox

TOKEN = secrets.token_hex(8)  # names the detached processes a notebook starts
SITE = Path(site.getsitepackages()[0])


def variants(tmp: Path):
    v = {}
    # the kernel dies inside the first exercise: later cells are not run, later notebooks are graded
    v["os_exit"] = replace(read(SOLVED), "def scaled_scores", "import os\n\ndef scaled_scores(q, k):\n    os._exit(0)")
    v["solved"] = read(SOLVED)
    # sys.exit and an endless loop between the exercises, then sys.exit inside the second one: the loop
    # is interrupted at the timeout, the first exercise graded, the second fails alone
    loop = replace(read(SOLVED), "def attention", "import sys\n\ndef attention(q, k, v, mask=None):\n    sys.exit(0)")
    insert_after(loop, "def scaled_scores", "while True:\n    pass")
    v["loop"] = insert_after(loop, "def scaled_scores", "import sys\nsys.exit('bye')")
    # a loop that ignores interrupts inside the exercise: the kernel is stopped, the next notebook graded
    v["stubborn"] = replace(
        read(SOLVED),
        "def scaled_scores",
        (
            "import time\n\ndef scaled_scores(q, k):\n    while True:\n        try:\n            time.sleep(0.05)\n"
            "        except KeyboardInterrupt:\n            pass"
        ),
    )
    # a cell that prints 60 MB: the grader keeps a bounded amount of it, and grades the rest
    v["flood"] = insert_after(read(SOLVED), "def scaled_scores", "for _ in range(600):\n    print('x' * 100_000)")
    # code meant to outlive the notebook: start-up files for the next kernel, rewritten course files, a
    # stale .pyc, rewritten solutions, and detached processes that would rewrite results after the grader exits
    v["outlive"] = insert_after(
        read(SOLVED),
        "def attention",
        (
            "import os, subprocess, sys, pathlib, gptcourse.grading.lab04 as spec\n"
            "def attempt(write):\n    try:\n        write()\n"
            "    except OSError as err:\n        print('blocked:', err)\n"
            f"attempt(lambda: pathlib.Path({str(SITE / 'sitecustomize.py')!r}).write_text('import os'))\n"
            f"attempt(lambda: pathlib.Path({str(SITE / f'evil-{TOKEN}.pth')!r}).write_text('import os'))\n"
            "attempt(lambda: pathlib.Path(spec.__file__).write_text('SPECS = ()'))\n"
            "attempt(lambda: (pathlib.Path(spec.__file__).parent / '__pycache__' / 'harness.cpython-311.pyc')"
            ".write_bytes(b'stale'))\n"
            f"attempt(lambda: pathlib.Path({str(SOLVED)!r}).write_text('{{}}'))\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', 'orphan-{TOKEN}'], "
            "start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "if os.fork() == 0:\n    os.setsid()\n"
            f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)', 'orphan-{TOKEN}'])"
        ),
    )
    v["after"] = read(SOLVED)  # graded after all of the above, in a clean kernel
    return v


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("system")
    before = SOLVED.read_bytes()
    result = grade_all(tmp, variants(tmp))
    result.solution_unchanged = SOLVED.read_bytes() == before
    return result


def test_a_kernel_that_dies_is_reported_and_grading_goes_on(graded):
    assert graded.score("os_exit") == {"scores": (0, "kernel died"), "attention": (0, "not run")}
    assert graded.score("solved") == {"scores": (2, "passed"), "attention": (3, "passed")}


def test_sys_exit_fails_only_its_exercise_and_loops_time_out(graded):
    assert graded.score("loop")["scores"] == (2, "passed")  # after `sys.exit('bye')` and `while True: pass`
    assert graded.score("loop")["attention"][0] == 0 and "SystemExit" in graded.rows["loop", "attention"].message


def test_a_loop_that_ignores_interrupts_ends_the_notebooks_run(graded):
    assert graded.score("stubborn") == {"scores": (0, "timeout"), "attention": (0, "not run")}
    assert f"{TIMEOUT} s" in graded.rows["stubborn", "scores"].message


def test_a_flood_of_output_is_bounded_and_the_rest_graded(graded):
    assert graded.score("flood") == {"scores": (2, "passed"), "attention": (3, "passed")}


def _isolated() -> None:
    box = sandbox.choose()
    if box.mode != "isolated":
        if os.environ.get("GPTCOURSE_REQUIRE_DATA") == "1":  # CI: root and bubblewrap must be there
            pytest.fail(f"grading is not isolated here: {box.why}")
        pytest.skip(f"needs isolated grading (root and bubblewrap): {box.why}")


def test_nothing_outlives_the_notebook(graded):
    _isolated()
    assert not (SITE / "sitecustomize.py").exists() and not (SITE / f"evil-{TOKEN}.pth").exists()
    assert graded.solution_unchanged
    assert graded.error is None  # no start-up file changed, so grading did not have to stop
    alive = subprocess.run(["pgrep", "-f", f"orphan-{TOKEN}"], capture_output=True, text=True, check=False).stdout
    assert alive == "", "a process the notebook detached survived its kernel"
    assert graded.score("outlive") == {"scores": (2, "passed"), "attention": (3, "passed")}
    assert graded.score("after") == {"scores": (2, "passed"), "attention": (3, "passed")}


def test_in_basic_mode_a_startup_file_scores_zero_and_stops_the_run(tmp_path):
    """Without isolation a kernel can write files that every later kernel would run: that notebook
    scores 0, grading stops, and the grader says which files to remove (it deletes nothing)."""
    startup = tmp_path / "site"
    startup.mkdir()
    box = sandbox.Sandbox("basic", "forced by the test")
    evil = f"open({str(startup / 'evil.pth')!r}, 'w').write('import os')"
    pth = insert_after(read(SOLVED), "def scaled_scores", evil)
    graded = grade_all(tmp_path / "nb", {"pth": pth, "next": read(UNSOLVED)}, box=box, startup=[startup / "*.pth"])
    assert graded.score("pth") == {"scores": (0, "tampered"), "attention": (0, "tampered")}
    assert isinstance(graded.error, grade.TamperError) and "evil.pth" in str(graded.error)
    assert "lab04_next.ipynb" in str(graded.error)  # named as left to grade
    assert (startup / "evil.pth").exists()
