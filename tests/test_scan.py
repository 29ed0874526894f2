"""The grader's static scan reads a learner-module cell (``%%writefile "{LEARNER}/NAME.py"``) as the
Python it saves: its definitions count, its references are checked, its one magic line is the lab's own."""

import nbformat

from gptcourse.grading import scan

MODULE_CELL = '%%writefile "{LEARNER}/block.py"\nimport torch\n\n\ndef gelu(x):\n    return torch.tanh(x)\n'


def _notebook(*sources: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])


def test_python_of_drops_only_the_learner_writefile_line():
    assert scan.python_of(MODULE_CELL) == MODULE_CELL.partition("\n")[2]
    other = "%%writefile /tmp/elsewhere.py\nx = 1\n"
    assert scan.python_of(other) == other  # a file outside the learner folder stays a magic
    assert scan.python_of("x = 1") == "x = 1"


def test_a_module_cell_defines_its_functions():
    assert "gelu" in scan.defines(MODULE_CELL)


def test_the_lab_writefile_line_is_not_flagged_but_other_magics_are():
    assert scan.suspicious(scan.parse_cells(_notebook(MODULE_CELL)), set()) == []
    flagged = scan.suspicious(scan.parse_cells(_notebook(MODULE_CELL + "!ls\n")), set())
    assert flagged == ["runs magics or shell commands"]
    assert "runs magics or shell commands" in scan.suspicious(scan.parse_cells(_notebook("%run other.py")), set())


def test_a_module_cell_is_scanned_for_what_it_touches():
    cell = '%%writefile "{LEARNER}/gpt.py"\nimport subprocess\nsubprocess.run(["ls"])\n'
    assert scan.suspicious(scan.parse_cells(_notebook(cell)), set()) == ["touches a subprocess (subprocess)"]
