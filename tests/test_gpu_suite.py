"""benchmarks/gpu_suite.py (issue 16) at the smoke size on CPU: the prepared GPU run must not rot.

One run of the whole suite into a temporary folder (parts 1-3 always; part 4 executes Chapter 11,
which loads part 1's checkpoint, and part 5 the capstone solution with a T4's plan, or, where the
Jupyter packages are absent, each must say it skipped), then its files, its archive, and the SMOKE
banner are checked."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import nbformat
import pytest

from gptcourse import estimate

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
PARTS = ("time_to_loss", "ladder", "decoding", "notebooks", "capstone_t4")
NOTEBOOK = "chapters/11_generating.ipynb"


def test_gpu_suite_smoke_run(tmp_path: Path, shakespeare: str) -> None:
    out, ckpt = tmp_path / "out", tmp_path / "checkpoints"
    env = dict(os.environ, GPTCOURSE_SIZE="smoke", GPTCOURSE_CHECKPOINT_DIR=str(ckpt), OMP_NUM_THREADS="1")
    jupyter = all(importlib.util.find_spec(m) for m in ("nbclient", "ipykernel", "jupyter_client"))
    cmd = [sys.executable, str(SUITE), "--out", str(out), "--size", "smoke", "--device", "cpu"]
    cmd += ["--notebooks", NOTEBOOK, "--notebooks-s", "60"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    seconds = time.perf_counter() - t0
    print(f"gpu_suite smoke run: {seconds:.1f} s (budget 40 s on one thread)")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    log = (out / "suite.txt").read_text()
    assert log == proc.stdout, "suite.txt must be the output as printed"
    assert "SMOKE RUN ON CPU (size smoke): these numbers are not GPU measurements" in log
    assert "device: cpu | size: smoke" in log.splitlines()[0]
    titles = ("1. time to loss", "2. speed ladder", "3. decoding", "4. notebooks", "5. the capstone at a T4's steps")
    for title in titles:
        assert f"== {title} ==" in log
    results = {part: json.loads((out / f"{part}.json").read_text()) for part in PARTS}

    loss = results["time_to_loss"]
    assert loss["steps"] == 30 and loss["status"] == "not reached" and loss["target"] == 1.47
    assert loss["history"]["eval_steps"] == [15, 30]
    checkpoint = Path(loss["checkpoint"])
    assert checkpoint.parent == ckpt and checkpoint.is_file()
    assert checkpoint.name.startswith("shakespeare-char-smoke-")  # run.checkpoint_path's name: pretrained finds it

    rows = results["ladder"]["rows"]
    assert results["ladder"]["status"] == "done"
    assert [r["model"].split(" (")[0] for r in rows] == ["char"] * 7 + ["GPT-2 stand-in"] * 7
    assert [r["row"] for r in rows[:7]] == [r["row"] for r in rows[7:]]
    assert rows[0]["row"] == "fp32" and rows[-1]["row"] == "vocab padded to 64"  # GPT-2 rows last
    assert all(r["status"] == "ok" and r["ms_per_step"] > 0 and r["mfu"] is None for r in rows)
    assert rows[-1]["vocab_size"] == 50304 and rows[-2]["vocab_size"] == 50257
    assert all((r["compile_s"] is None) == (i % 7 < 4) for i, r in enumerate(rows))

    decode = results["decoding"]
    assert decode["status"] == "done" and decode["identical"] is True
    by_kind = {(r["attention"], r["cache"]): r for r in decode["rows"]}
    assert set(by_kind) == {("MHA", False), ("MHA", True), ("GQA", True), ("MQA", True)}
    mha = by_kind["MHA", True]["cache_bytes"]
    assert by_kind["GQA", True]["cache_bytes"] == mha // 2 and by_kind["MQA", True]["cache_bytes"] == mha // 4

    names = {m.name for m in tarfile.open(out / "gpu-suite.tar.gz").getmembers()}
    assert {"suite.txt", *(f"{p}.json" for p in PARTS)} <= names
    assert not any(n.endswith(".pt") for n in names)

    notebooks, capstone = results["notebooks"], results["capstone_t4"]
    if not jupyter:  # the GPU machine's case: a skip must say so, in the log and the json
        assert notebooks["status"] == capstone["status"] == "skipped" and "SKIPPED: the Jupyter packages" in log
        return
    assert notebooks["status"] == "done", notebooks
    assert "notebooks/11_generating.ipynb" in names
    nb = nbformat.read(out / "notebooks" / "11_generating.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "device: cpu | size: smoke" in text
    assert f"loaded: {checkpoint.name}" in text  # Chapter 11 started from part 1's model instead of training

    # part 5: one run at the smoke size (the notebook's cap of 30 steps), scored, and no T4 target from it
    assert capstone["status"] == "done" and "t4_target" not in capstone
    (run,) = capstone["runs"]
    assert run["t4_steps"] == estimate.t4_capstone_steps(2.0) and run["practice"]["steps"] == 30
    assert run["practice"]["windows"] > 0 and 0 < run["practice"]["loss"] < 5
    assert "no T4 target from the smoke size (the notebook's own cap trained 30 steps)" in log
    executed = nbformat.read(out / "capstone" / f"lab16_capstone_t4_{run['t4_steps']}.ipynb", as_version=4)
    added = next(i for i, c in enumerate(executed.cells) if "gpu_suite.py part 5" in c.source)
    assert "plan_file.write_text" in executed.cells[added - 1].source  # right after the notebook's planning cell
    assert f"capstone/lab16_capstone_t4_{run['t4_steps']}.ipynb" in names


def suite():
    """benchmarks/gpu_suite.py as a module (its functions; main is not run)."""
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_t4_plan_is_added_after_the_capstones_planning_cell_only():
    """The capstone solution, as committed, has the one planning cell part 5 adds its plan after; a
    notebook without it (or with two) is refused with a message naming the cell part 5 looks for."""
    gs = suite()
    nb = nbformat.read(gs.CAPSTONE, as_version=4)
    planned = gs.with_t4_plan(nb, 1234)
    plan_cell = next(i for i, c in enumerate(nb.cells) if "plan_file.write_text" in c.source)
    assert [c.source for c in planned.cells[: plan_cell + 1]] == [c.source for c in nb.cells[: plan_cell + 1]]
    assert "plan['max_steps'] = min(max_steps_cap, 1234)" in planned.cells[plan_cell + 1].source
    assert [c.source for c in planned.cells[plan_cell + 2 :]] == [c.source for c in nb.cells[plan_cell + 1 :]]
    second = copy.deepcopy(nb.cells[plan_cell])
    second.id = "a-second-planning-cell"
    for broken in ([c for c in nb.cells if "plan_file.write_text" not in c.source], [*nb.cells, second]):
        with pytest.raises(ValueError, match=r"expected one cell that writes the plan \(plan_file.write_text\)"):
            gs.with_t4_plan(nbformat.v4.new_notebook(cells=broken), 1234)


def test_gpu_suite_skips_notebooks_without_jupyter(tmp_path: Path) -> None:
    """Parts 4 and 5 where the Jupyter packages cannot be imported (the GPU machine before its wheels)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import importlib.util as u\n_find = u.find_spec\n"
        "u.find_spec = lambda name, *a, **k: None if name == 'nbclient' else _find(name, *a, **k)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hide), str(ROOT)]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(SUITE), "--out", str(tmp_path / "out"), "--size", "smoke", "--parts", "45"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for part in ("notebooks", "capstone_t4"):
        result = json.loads((tmp_path / "out" / f"{part}.json").read_text())
        assert result["status"] == "skipped" and "nbclient" in result["reason"]
    assert "SKIPPED: the Jupyter packages nbclient are not installed" in proc.stdout
