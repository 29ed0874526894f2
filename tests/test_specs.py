"""The grading table tests itself: for every exercise of every lab, the reference passes, every
misconception fails with its own hint on every audited seed, each exercise has at least three,
and the solutions' graded cells name exactly the table's exercises, with the table's points."""

from __future__ import annotations

import nbformat
import pytest

from gptcourse import labs
from gptcourse.grading import harness

SPECS = harness.all_specs()


def test_every_lab_has_specs():
    assert sorted({s.id.split(".")[0] for s in SPECS.values()}) == list(harness.LABS)


@pytest.mark.parametrize("exercise", sorted(SPECS))
def test_spec_audits_clean(exercise):
    problems = harness.audit(SPECS[exercise])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("lab", harness.LABS)
def test_graded_cells_match_the_table(lab):
    path, = labs.ROOT.joinpath("solutions").glob(f"{lab}_*.ipynb")
    cells = labs.graded_cells(nbformat.read(path, as_version=4))
    named = [(c.metadata["gptcourse"]["exercise"], float(c.metadata["gptcourse"]["points"])) for c in cells]
    assert named == [(s.id, s.points) for s in harness.lab_specs(lab)]
    for cell, spec in zip(cells, harness.lab_specs(lab)):
        assert "from gptcourse.grading import check" in cell.source
        assert f'check("{spec.id}", {spec.name})' in cell.source


def test_a_spec_without_misconceptions_is_a_defect():
    spec = SPECS["lab04.scores"]
    import dataclasses

    bare = dataclasses.replace(spec, misconceptions=spec.misconceptions[:1])
    assert any("at least 3 needed" in p for p in harness.audit(bare, seeds=(0,)))
    swapped = dataclasses.replace(spec, misconceptions=(spec.misconceptions[0],) * 2 + spec.misconceptions[1:])
    assert any("share a name" in p for p in harness.audit(swapped, seeds=(0,)))
