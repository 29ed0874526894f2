"""``python -m gptcourse.outputs`` (``make outputs``): a real run at the cpu or gpu size, stamped with
the version and commit; never at the smoke size; gpu-size outputs are never replaced by cpu-size ones."""

from __future__ import annotations

import nbformat
import pytest

from gptcourse import __version__, labs, outputs


def _notebook(tmp_path, printed: str | None = None):
    nb = labs.with_header(
        nbformat.v4.new_notebook(
            cells=[
                nbformat.v4.new_markdown_cell("# A chapter\n\nSome prose."),
                nbformat.v4.new_code_cell("print(size)"),
            ]
        ),
        "chapters/99_x.ipynb",
    )
    if printed is not None:
        setup = next(c for c in nb.cells if labs.SETUP_TAG in c.metadata.get("tags", []))
        setup.outputs = [nbformat.v4.new_output("stream", text=printed)]
    path = tmp_path / "99_x.ipynb"
    nbformat.write(nb, path)
    return path


def test_committed_size_reads_the_setup_cells_device_line(tmp_path):
    line = "device: cpu | size: {} | torch 2.13.0+cpu | 2 CPU threads | gptcourse 0.1.0 @ abc1234\n"
    for size in ("smoke", "cpu", "gpu"):
        assert outputs.committed_size(nbformat.read(_notebook(tmp_path, line.format(size)), as_version=4)) == size
    assert outputs.committed_size(nbformat.read(_notebook(tmp_path), as_version=4)) is None


def test_the_smoke_size_never_writes_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPTCOURSE_SIZE", "smoke")
    path = _notebook(tmp_path)
    before = path.read_text()
    assert outputs.main([str(path)]) == 2
    assert "smoke" in capsys.readouterr().err and path.read_text() == before


def test_gpu_outputs_are_kept_on_a_cpu_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPTCOURSE_SIZE", "cpu")
    path = _notebook(tmp_path, "device: NVIDIA H100 80GB HBM3 | size: gpu | torch 2.11.0 | 16 CPU threads\n")
    before = path.read_text()
    assert outputs.main([str(path)]) == 0
    assert "kept" in capsys.readouterr().out and path.read_text() == before


def test_a_run_executes_the_notebook_and_stamps_version_and_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCOURSE_SIZE", "cpu")
    path = _notebook(tmp_path)
    assert outputs.main([str(path)]) == 0
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))  # every cell, in order
    setup = next(c for c in code if labs.SETUP_TAG in c.metadata.get("tags", []))
    line = setup.outputs[0]["text"]
    assert "size: cpu" in line and f"gptcourse {__version__} @ {outputs.commit_stamp()}" in line
    assert code[-1].outputs[0]["text"] == "cpu\n"


def test_a_missing_notebook_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPTCOURSE_SIZE", "cpu")
    assert outputs.main([str(tmp_path / "nope.ipynb")]) == 2
    assert "no such notebook" in capsys.readouterr().err


@pytest.mark.parametrize("commit", ["", "abc1234"])
def test_the_device_line_names_the_course_version(monkeypatch, commit):
    from gptcourse.hardware import COMMIT_ENV, describe

    monkeypatch.setenv(COMMIT_ENV, commit)
    assert describe().endswith(f"| gptcourse {__version__}" + (f" @ {commit}" if commit else ""))


COMMITTED = sorted([*(labs.ROOT / "chapters").glob("*.ipynb"), *(labs.ROOT / "solutions").glob("*.ipynb")])


@pytest.mark.parametrize("path", COMMITTED, ids=[p.relative_to(labs.ROOT).as_posix() for p in COMMITTED])
def test_committed_outputs_come_from_one_real_run_in_order(path):
    """Every code cell ran, top to bottom, in one kernel, at the cpu or gpu size (never smoke).

    The Colab install cell may be unexecuted (it does nothing outside Colab; a release rewrites it,
    and a rewritten cell has not run); if it ran, it ran first."""
    nb = nbformat.read(path, as_version=4)
    install = [c.execution_count for c in nb.cells if labs.INSTALL_TAG in c.metadata.get("tags", [])]
    counts = [
        c.execution_count
        for c in nb.cells
        if c.cell_type == "code" and labs.INSTALL_TAG not in c.metadata.get("tags", [])
    ]
    assert install in ([], [None], [1]), f"{path.name}: the install cell ran as cell {install}, not first"
    # cell 1 is the install cell when it ran; after a rewrite of it, the run's other cells keep 2, 3, ...
    firsts = (1, 2) if install in ([], [None]) else (2,)
    assert any(counts == list(range(first, first + len(counts))) for first in firsts), (
        f"{path.name}: execution counts {counts} are not in order; run `python -m gptcourse.outputs {path}`"
    )
    assert outputs.committed_size(nb) in ("cpu", "gpu"), f"{path.name}: its device line is not a cpu or gpu run"
