"""``experiments/ladder.py`` (Part VII's ladder) at the smoke size: two seeds, a few steps, and the
lines its chapter loads (the table's rows, the JSON lines, the skipped rungs, the output file)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "ladder.py"


def load_ladder():
    spec = importlib.util.spec_from_file_location("ladder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parsed(lines: list[str], prefix: str) -> list[dict]:
    return [json.loads(line[len(prefix) :]) for line in lines if line.startswith(prefix)]


def test_ladder_runs_at_the_smoke_size_and_prints_what_its_chapter_loads(tmp_path, shakespeare):
    out = tmp_path / "ladder-smoke.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--size", "smoke", "--device", "cpu", "--seeds", "0", "1", "--steps", "6", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "device: cpu" in lines[0] and "size: smoke" in lines[0] and "run on: cpu" in lines[0]
    assert out.read_text() == done.stdout  # --out writes exactly what was printed

    ladder = load_ladder()
    (skipped,) = parsed(lines, "SKIPPED ")
    (config,) = parsed(lines, "CONFIG ")
    rungs = list(config["rungs"])
    assert rungs[0] == "gpt2" and set(rungs) | set(skipped) == set(ladder.RUNGS) and not set(rungs) & set(skipped)
    for name in ("+rope", "+rmsnorm", "+no-bias", "+qk-norm", "+muon"):  # the fields the package has today
        assert name in rungs
    assert config["rungs"]["gpt2"]["model"]["bias"] is True and config["rungs"]["+muon"]["train"]["optimizer"] == "muon"
    assert config["rungs"]["+qk-norm"]["model"] == {
        "pos": "rope",
        "norm_type": "rmsnorm",
        "bias": False,
        "qk_norm": True,
    }

    # a side rung branches off without the next rung building on it
    assert config["rungs"]["+moe"]["model"] == {
        **config["rungs"]["+qk-norm"]["model"],
        "ffn": "moe",
        "n_expert": 4,
        "expert_top_k": 1,
    }
    assert "ffn" not in config["rungs"]["+muon"]["model"] and "ffn" not in config["rungs"][config["final"]]["model"]
    assert config["rungs"]["+untied"]["model"]["mlp"] == "relu2"  # built on +relu2, not on the +swiglu side rung

    rows = [line.split()[1] for line in lines if line.startswith("ROW ")]
    assert rows == rungs  # one table row per rung, in ladder order
    for line in lines:
        if line.startswith("ROW "):
            assert line.count("±") == 4  # val@steps, val@time, tokens/s, seconds

    runs = parsed(lines, "RUN ")
    assert [(r["seed"], r["rung"]) for r in runs] == [(s, n) for s in (0, 1) for n in rungs]  # seed by seed
    for r in runs:
        assert r["eval_steps"][-1] == 6 and r["params"] > 0 and r["tokens_per_s"] > 0
        assert r["val_steps"] == r["eval_val_loss"][-1] and r["val_time"] in r["eval_val_loss"]
    gpt2 = {r["seed"]: r for r in runs if r["rung"] == "gpt2"}
    assert all(g["val_time"] == g["val_steps"] and g["steps_to_target"] == 6 for g in gpt2.values())

    entries = parsed(lines, "LADDER ")
    assert [e["rung"] for e in entries] == rungs
    for e in entries:
        assert e["seeds"] == [0, 1]
        for key in ("val_steps", "val_time", "tokens_per_s", "seconds", "params"):
            assert len(e[key]["values"]) == 2 and min(e[key]["values"]) <= e[key]["mean"] <= max(e[key]["values"])
    (target,) = parsed(lines, "TARGET ")
    assert target["final"] == config["final"] and [p["seed"] for p in target["per_seed"]] == [0, 1]
    assert any(line.startswith("TIME ") for line in lines)


def test_a_rung_whose_field_the_config_lacks_is_skipped_and_said(monkeypatch):
    ladder = load_ladder()
    monkeypatch.setitem(ladder.RUNGS, "+future", ({"no_such_field": 1}, {}, None))
    monkeypatch.setitem(ladder.RUNGS, "+after", ({"bias": False}, {}, "+future"))
    built, skipped = ladder.build_rungs(block_size=32)
    assert "'no_such_field'" in skipped["+future"] and "+future" in skipped["+after"]
    assert "+future" not in built and "gpt2" in built


def test_the_budget_stops_cleanly_and_prints_what_finished(tmp_path, capsys, shakespeare):
    ladder = load_ladder()
    out = tmp_path / "out.txt"
    ladder.main(
        ["--size", "smoke", "--device", "cpu", "--seeds", "0", "--steps", "4", "--budget-s", "0", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert "STOPPED budget 0 s: stopped before gpt2 seed 0; 0 runs finished" in printed
    assert "RUN " not in printed and "TIME " in printed
    assert out.read_text() == printed


@pytest.mark.parametrize("values, expected", [([3.0, 2.5, 2.0], 2), ([3.0, 2.9], None)])
def test_steps_to_target_is_the_first_evaluation_at_or_below(values, expected):
    steps = [1, 2, 3][: len(values)]
    assert load_ladder().first_at_or_below(steps, values, 2.5 if expected else 1.0) == expected


def test_seeds_run_apart_merge_into_the_ladder_one_run_prints(tmp_path, capsys, shakespeare):
    ladder = load_ladder()
    common = ["--size", "smoke", "--device", "cpu", "--steps", "3", "--eval-interval", "1", "--rungs", "+rope"]
    for name, seeds in (("both", ["0", "1"]), ("s0", ["0"]), ("s1", ["1"])):
        ladder.main([*common, "--seeds", *seeds, "--out", str(tmp_path / f"{name}.txt")])
    capsys.readouterr()
    ladder.main(["--merge", str(tmp_path / "s0.txt"), str(tmp_path / "s1.txt"), "--out", str(tmp_path / "merged.txt")])
    merged = capsys.readouterr().out
    assert (tmp_path / "merged.txt").read_text() == merged
    lines, both = merged.splitlines(), (tmp_path / "both.txt").read_text().splitlines()
    assert "merged from 2 outputs" in lines[0] and parsed(lines, "CONFIG ")[0]["seeds"] == [0, 1]

    # the losses are the same runs' (timings differ from run to run, so they are left out)
    def losses(ls: list[str]) -> list[tuple]:
        return [(r["rung"], r["seed"], r["eval_val_loss"], r["steps_to_target"]) for r in parsed(ls, "RUN ")]

    assert losses(lines) == losses(both)
    assert [e["val_steps"] for e in parsed(lines, "LADDER ")] == [e["val_steps"] for e in parsed(both, "LADDER ")]
    assert parsed(lines, "TARGET ")[0]["per_seed"] == parsed(both, "TARGET ")[0]["per_seed"]

    with pytest.raises(ValueError, match="seed 0 is in both"):
        ladder.main(["--merge", str(tmp_path / "s0.txt"), str(tmp_path / "both.txt")])
    longer = tmp_path / "longer.txt"
    ladder.main([*common, "--steps", "4", "--seeds", "1", "--out", str(longer)])
    with pytest.raises(ValueError, match="its train differs"):
        ladder.main(["--merge", str(tmp_path / "s0.txt"), str(longer)])
    (tmp_path / "empty.txt").write_text("not a ladder\n")
    with pytest.raises(ValueError, match="not a ladder output"):
        ladder.main(["--merge", str(tmp_path / "empty.txt")])
