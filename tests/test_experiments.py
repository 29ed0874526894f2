"""The seed sweeps under ``experiments/`` run at the smoke size and print the lines their chapters
parse, so that a change in the package cannot silently break a committed sweep's script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# script -> (extra arguments, the line prefixes its chapter reads)
SWEEPS = {
    "ch13_moe_vs_dense.py": (["--seeds", "0"], ("CONFIG ", "NGRAM ", "RUN ")),
    "ch14_finetune.py": (["--seeds", "0"], ("size=", "run ", "curve ")),
    "ch15_shots.py": (["--seeds", "0"], ("header ", "acc ")),
    "ch16_rlhf.py": (["--seeds", "0"], ("device ", "recipe ", "RESULT ")),
}


@pytest.mark.parametrize("script", sorted(SWEEPS))
def test_sweep_runs_at_the_smoke_size_and_prints_what_its_chapter_parses(script, tmp_path, shakespeare):
    args, prefixes = SWEEPS[script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPTCOURSE_CHECKPOINT_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), "--size", "smoke", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for prefix in prefixes:
        assert any(line.startswith(prefix) for line in lines), f"{script} printed no {prefix!r} line"
    if script == "ch13_moe_vs_dense.py":  # its RUN lines are JSON
        runs = [json.loads(line[len("RUN ") :]) for line in lines if line.startswith("RUN ")]
        assert {r["variant"] for r in runs} == {"dense", "moe", "moe-no-balance"}
