"""benchmarks/gpu_suite.py (issue 16) at the smoke size on CPU: the prepared GPU run must not rot.

One run of the whole suite into a temporary folder (parts 1-3 always; part 4 executes Chapter 11,
which loads part 1's checkpoint, or, where the Jupyter packages are absent, must say it skipped),
then its files, its archive, and the SMOKE banner are checked."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
PARTS = ("time_to_loss", "ladder", "decoding", "notebooks")
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
    for title in ("== 1. time to loss ==", "== 2. speed ladder ==", "== 3. decoding ==", "== 4. notebooks =="):
        assert title in log
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

    notebooks = results["notebooks"]
    if not jupyter:  # the GPU machine's case: a skip must say so, in the log and the json
        assert notebooks["status"] == "skipped" and "SKIPPED: the Jupyter packages" in log
        return
    assert notebooks["status"] == "done", notebooks
    assert "notebooks/11_generating.ipynb" in names
    nb = nbformat.read(out / "notebooks" / "11_generating.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "device: cpu | size: smoke" in text
    assert f"loaded: {checkpoint.name}" in text  # Chapter 11 started from part 1's model instead of training


def test_gpu_suite_skips_notebooks_without_jupyter(tmp_path: Path) -> None:
    """Part 4 alone where the Jupyter packages cannot be imported (the GPU machine before its wheels)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import importlib.util as u\n_find = u.find_spec\n"
        "u.find_spec = lambda name, *a, **k: None if name == 'nbclient' else _find(name, *a, **k)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hide), str(ROOT)]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(SUITE), "--out", str(tmp_path / "out"), "--size", "smoke", "--parts", "4"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "notebooks.json").read_text())
    assert result["status"] == "skipped" and "nbclient" in result["reason"]
    assert "SKIPPED: the Jupyter packages nbclient are not installed" in proc.stdout
