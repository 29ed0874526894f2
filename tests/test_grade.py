"""The grader's parts without a kernel: plain-data replies, comparisons, notebook assembly and
identification, the static scan, and the score table."""

from __future__ import annotations

import json
import math

import nbformat
import pytest
import torch
from grading_cases import SOLUTIONS, SOLVED, UNSOLVED, read

from gptcourse import grade
from gptcourse.grading import harness, scan, values
from gptcourse.grading.spec import AnswerError, Case, close, load_reference_weights


@pytest.fixture(scope="module")
def solutions():
    return grade.load_solutions(SOLUTIONS)


def test_values_round_trip_plain_data_only():
    value = {
        "t": torch.tensor([[1.5, float("nan")], [float("inf"), -0.0]]),
        "ids": torch.tensor([3, 1]),
        "mask": torch.tensor([True, False]),
        "pair": (1, "a"),
        "list": [None, b"\x00\xff"],
        2.5: math.inf,
    }
    back = values.decode(json.loads(json.dumps(values.encode(value), allow_nan=False)))  # JSON, as sent
    assert back.keys() == value.keys() and back["pair"] == (1, "a") and back["list"] == [None, b"\x00\xff"]
    torch.testing.assert_close(back["t"], value["t"], equal_nan=True)
    assert back["ids"].dtype == torch.int64 and back["mask"].dtype == torch.bool and back[2.5] == math.inf
    with pytest.raises(values.ValueFormatError, match="cannot be graded"):
        values.encode(object())
    for bad in (
        {"__tensor__": "torch.float32", "shape": [3], "data": [1.0]},
        {"x": 1},
        {"__float__": "1e400"},
        {"__dict__": [[[1], 2]]},
    ):
        with pytest.raises(values.ValueFormatError):
            values.decode(bad)


def test_close_names_the_first_wrong_place():
    compare = close()
    case = Case("c")
    assert compare(torch.ones(2, 3), torch.ones(2, 3), case) is None
    assert "shape (3, 2)" in compare(torch.ones(3, 2), torch.ones(2, 3), case)
    wrong = torch.ones(2, 3)
    wrong[1, 2] = 5
    assert "index (1, 2)" in compare(wrong, torch.ones(2, 3), case)
    assert "expected the int 3" in compare(3.0, 3, case)
    assert "[1]" in compare((1, 2), (1, 3), case)


def test_reference_weights_load_strictly_but_allow_extra_buffers():
    ref = torch.nn.Linear(3, 2)
    mine = torch.nn.Linear(3, 2)
    mine.register_buffer("mask", torch.ones(2))  # a nanoGPT-style buffer is fine
    load_reference_weights(mine, ref.state_dict(), "Linear")
    torch.testing.assert_close(mine.weight, ref.weight)
    with pytest.raises(AnswerError, match="no parameter named 'bias'"):
        load_reference_weights(torch.nn.Linear(3, 2, bias=False), ref.state_dict(), "Linear")


def test_judge_does_not_trust_malformed_replies():
    spec = harness.get("lab04.scores")
    for reply in ("passed", [{"ok": 1, "error": 2}], [{"passed": True}], [{"ok": {"__tensor__": "x"}}], [{}] * 50):
        assert harness.judge(spec, 0, reply).status in ("no result", "failed"), reply


def test_assemble_puts_a_collecting_cell_in_place_of_every_graded_cell(solutions):
    student = read(UNSOLVED)
    student.cells = [c for c in student.cells if "check(" not in c.source]  # graded cells deleted
    student.cells.append(
        nbformat.v4.new_code_cell(
            "print('bonus')", metadata={"tags": ["grade"], "gptcourse": {"exercise": "lab04.bonus", "points": 50}}
        )
    )
    ids = [e.spec.id for e in solutions["lab04"].exercises]
    nb, graded = grade.assemble(student, solutions["lab04"], {exercise: 7 + i for i, exercise in enumerate(ids)})
    assert [e.spec.id for e in graded.values()] == ids and ids[:2] == ["lab04.scores", "lab04.attention"]
    for index, ex in graded.items():
        assert "collect(" in nb.cells[index].source
        if ex.spec.id in ("lab04.scores", "lab04.attention"):  # each in place, right after its function's cell
            assert "def " in nb.cells[index - 1].source
    assert not any("bonus" in c.source for c in nb.cells)
    assert all(not c.get("metadata") for c in nb.cells if c.cell_type == "code")  # no student tags survive


def test_identify_uses_content_then_name(solutions, tmp_path):
    assert grade.identify(tmp_path / "alice.ipynb", read(UNSOLVED), solutions).lab == "lab04"
    with pytest.raises(grade.NotGradable, match="its name says lab05"):
        grade.identify(tmp_path / "lab05_alice.ipynb", read(UNSOLVED), solutions)
    with pytest.raises(grade.NotGradable, match="no code"):
        grade.identify(tmp_path / "lab04.ipynb", nbformat.v4.new_notebook(), solutions)


def test_scan_finds_forbidden_references_through_aliases(solutions):
    student = read(SOLVED)
    for i, c in enumerate(student.cells):
        if c.source.startswith("def attention"):
            student.cells[i].source = (
                "import gptcourse.attention as A\n\ndef attention(q, k, v, mask=None):\n"
                "    return A.attention(q, k, v, mask)"
            )
    flags = scan.flags(scan.parse_cells(student), solutions["lab04"])
    assert "uses gptcourse.attention.attention" in flags["lab04.attention"]
    assert "uses gptcourse.attention.attention" not in flags.get("lab04.scores", [])


def test_copy_ratio_sees_through_comments_and_spacing_not_through_rewrites():
    solution = read(SOLVED)
    source = next(c.source for c in solution.cells if c.source.startswith("def attention"))
    copied = source.replace("### BEGIN SOLUTION\n", "").replace("### END SOLUTION", "# mine!").replace("    ", "  ")
    assert scan.copy_ratio(copied, source) >= scan.COPY_RATIO
    rewritten = (
        "def attention(q, k, v, mask=None):\n    s = scaled_scores(q, k)\n"
        "    w = torch.where(mask, s, -math.inf) if mask is not None else s\n"
        "    return w.softmax(-1).matmul(v)"
    )
    assert scan.copy_ratio(rewritten, source) < scan.COPY_RATIO


def test_clean_makes_control_characters_visible():
    assert grade.clean("a\nb\x1b[2K") == "a\\x0ab\\x1b[2K"
    assert grade.clean("x" * 100, 10) == "xxxxxxx..."


def test_the_grader_drops_a_reply_over_its_size_bound(monkeypatch):
    """A kernel cannot fill the grader's memory through its collected results either."""
    client = grade._BoundedClient(nbformat.v4.new_notebook())
    client.reset_execution_trackers()  # the state nbclient sets up before running a cell
    client.clear_before_next_output = False

    def reply(size):
        content = {"data": {grade.MIME: {"outcomes": "x" * size}}, "metadata": {}}
        return {
            "msg_type": "display_data",
            "parent_header": {"msg_id": "m"},
            "header": {"msg_type": "display_data"},
            "content": content,
        }

    monkeypatch.setattr(grade.values, "MAX_BYTES", 1000)
    outs: list = []
    assert client.output(outs, reply(10), None, 0) is not None and len(outs) == 1
    assert client.output(outs, reply(2000), None, 0) is None and len(outs) == 1
