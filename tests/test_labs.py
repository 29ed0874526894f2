"""The lab pipeline: the generator's rules, labs in sync with solutions, and unsolved labs failing
every graded cell with NotImplementedError and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from gptcourse import labs

ROOT = Path(__file__).resolve().parent.parent
LABS = sorted((ROOT / "labs").glob("lab*.ipynb"))


def test_strip_solutions_keeps_the_lines_around_the_block():
    source = (
        "def f(x):\n    '''doc'''\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n\nz = 1"
    )
    assert labs.strip_solutions(source) == "def f(x):\n    '''doc'''\n    raise NotImplementedError()\n\nz = 1"


@pytest.mark.parametrize(
    "source",
    [
        "### BEGIN SOLUTION\nx = 1",
        "x = 1\n### END SOLUTION",
        "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION",
    ],
)
def test_strip_solutions_rejects_unbalanced_markers(source):
    with pytest.raises(ValueError):
        labs.strip_solutions(source)


def test_learner_lines_count_the_code_inside_solution_blocks_only():
    source = "\n".join(
        [
            "def f(x):",
            "    ### BEGIN SOLUTION",
            "    # a comment",
            "",
            "    y = x + 1",
            "    return y",
            "    ### END SOLUTION",
            "print(f(1))",
        ]
    )
    assert labs.learner_lines(source) == 2
    counts = labs.learner_line_counts()
    assert set(counts) == {p.name for p in (labs.ROOT / "solutions").glob("*.ipynb")}
    assert all(n > 0 for n in counts.values())  # every lab asks for some code


def test_make_lab_clears_outputs_and_keeps_graded_cells():
    solution = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# Lab"),
            nbformat.v4.new_code_cell(
                "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION",
                execution_count=3,
                outputs=[nbformat.v4.new_output("stream", text="1")],
            ),
            nbformat.v4.new_code_cell(
                "assert f() == 1", metadata={"tags": ["grade"], "gptcourse": {"exercise": "f", "points": 1}}
            ),
        ]
    )
    solution.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}  # a progress bar's
    lab = labs.make_lab(solution, "labs/lab99_x.ipynb")
    code = [c for c in lab.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code) and "widgets" not in lab.metadata
    assert "raise NotImplementedError()" in code[2].source and "return 1" not in code[2].source
    assert labs.graded_cells(lab)[0].source == "assert f() == 1"
    # the header: a Colab badge pointing at the lab's own path, the title, the install cell, the setup cell
    assert "labs/lab99_x.ipynb" in lab.cells[0].source and lab.cells[1].source == "# Lab"
    assert f'REF = "{labs.release_ref()}"' in lab.cells[2].source and "setup()" in lab.cells[3].source


def test_a_new_install_cell_keeps_the_setup_cells_outputs():
    """A new release changes the install cell; the device line the setup cell printed in a real run stays."""
    nb = labs.with_header(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Chapter")]), "chapters/99_x.ipynb"
    )
    install, setup = nb.cells[2], nb.cells[3]
    install.source = install.source.replace("@", "@v0.0.1-", 1)
    setup.outputs = [nbformat.v4.new_output("stream", text="device: cpu | size: cpu\n")]
    setup.execution_count = 1
    again = labs.with_header(nb, "chapters/99_x.ipynb")
    assert again.cells[2].source == labs.header_cells("chapters/99_x.ipynb")[1].source  # the install cell is current
    assert again.cells[3].outputs == setup.outputs and again.cells[3].execution_count == 1


def test_labs_are_generated_from_solutions():
    problems = labs.check()
    assert not problems, "\n".join(problems) + "\nrun `python -m gptcourse.labs build`"


def test_every_solution_has_a_lab():
    solutions = sorted(p.name for p in (ROOT / "solutions").glob("lab*.ipynb"))
    assert solutions, "no solution notebooks found"
    assert solutions == [p.name for p in LABS]


@pytest.mark.parametrize("path", LABS, ids=[p.stem for p in LABS])
def test_unsolved_lab_fails_graded_cells_with_not_implemented_only(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(path.parent)}}
    )
    # its own work folder: the unfinished modules it saves are not those the solutions run on
    client.execute(env=dict(os.environ, GPTCOURSE_SIZE="smoke", GPTCOURSE_WORK=str(tmp_path)))
    graded = labs.graded_cells(nb)
    assert graded, f"{path.name} has no graded cells"
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        label = cell.metadata.get("gptcourse", {}).get("exercise", f"cell {index}")
        if cell in graded and not errors:
            problems.append(f"graded cell {label} passes without a solution")
        for err in errors:
            if err.ename != "NotImplementedError":
                problems.append(f"{label} fails with {err.ename}: {err.evalue}")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)
