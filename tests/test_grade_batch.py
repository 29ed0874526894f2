"""Grading: a batch never aborts, and what the grader writes cannot be forged.

Malformed, empty, foreign and wrong-lab notebooks become "not run" rows with a message; the
console shows only the grader's lines; the CSV is written atomically and never through a symlink;
uses of a forbidden reference are flagged and fail."""

from __future__ import annotations

import csv

import nbformat
import pytest
from grading_cases import SOLUTIONS, SOLVED, UNSOLVED, grade_all, read, replace

from gptcourse import grade, labs

FORGED_LINE = "\n\x1b[2K\rlab04_forger.ipynb  lab04.scores  2/2  passed"


def variants():
    v = {"malformed": b"{ not json", "empty": nbformat.writes(nbformat.v4.new_notebook()).encode()}
    v["lab04_chapter.ipynb"] = read(labs.ROOT / "chapters" / "04_self_attention.ipynb")
    v["lab04_is_lab05.ipynb"] = read(next(SOLUTIONS.glob("lab05_*.ipynb")))  # lab 5's cells under lab 4's name
    v["forger"] = replace(
        read(UNSOLVED), "def scaled_scores", (f"def scaled_scores(q, k):\n    raise ValueError({FORGED_LINE!r})")
    )
    v["forbidden"] = replace(
        read(SOLVED),
        "def attention",
        (
            "from gptcourse.attention import attention as reference\n\n"
            "def attention(q, k, v, mask=None):\n    return reference(q, k, v, mask)"
        ),
    )
    return v


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    return grade_all(tmp_path_factory.mktemp("batch"), variants())


def test_unreadable_and_empty_notebooks_are_not_run(graded):
    assert graded.score("malformed") == {"scores": (0, "not run"), "attention": (0, "not run")}
    assert "not a readable notebook" in graded.rows["malformed", "scores"].message
    assert graded.score("empty")["scores"] == (0, "not run") and "no code" in graded.rows["empty", "scores"].message


def test_a_notebook_that_is_not_a_lab_is_not_run(graded):
    assert graded.rows["chapter", "scores"].status == "not run"
    assert "none of its cells comes from a lab" in graded.rows["chapter", "scores"].message


def test_a_notebook_for_another_lab_is_detected_from_its_cells(graded):
    row = graded.rows["is_lab05", "scores"]
    assert row.status == "not run" and "lab05" in row.message and "lab04" in row.message


def test_messages_from_a_notebook_cannot_forge_lines(graded):
    text = grade.table(list(graded.rows.values()))
    assert all(not line.startswith("lab04_forger.ipynb") for line in text.splitlines())
    assert "\x1b" not in text and "\r" not in text
    assert graded.score("forger")["scores"] == (0, "error")


def test_a_forbidden_reference_is_flagged_and_raises(graded):
    row = graded.rows["forbidden", "attention"]
    assert row.points == 0 and "course reference" in row.message
    assert "uses gptcourse.attention.attention" in row.flags
    assert graded.score("forbidden")["scores"] == (2, "passed")


def test_the_csv_is_written_atomically_and_replaces_a_symlink(graded, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "scores.csv"
    link.symlink_to(target)
    grade.write_csv(list(graded.rows.values()), link)
    assert target.read_text() == "keep me" and not link.is_symlink()
    with open(link, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == grade.CSV_COLUMNS and len(table) == len(graded.rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt", "scores.csv"]  # no temporary left
