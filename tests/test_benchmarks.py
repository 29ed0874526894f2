"""The side-by-side benchmarks still run (at a tiny size, so that they cannot rot between the runs
whose output is committed under benchmarks/results/); their speed is never asserted here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--threads", "1", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCHMARKS,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_plain_gpt_is_the_same_size_as_the_course_gpt():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from nanogpt_style import Config, PlainGPT
    finally:
        sys.path.remove(str(BENCHMARKS))
    from gptcourse.model import GPT, GPTConfig

    cfg = Config(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    plain = PlainGPT(cfg)
    ours = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32))
    assert sum(p.numel() for p in plain.parameters()) == ours.num_params()
    x = torch.randint(0, 65, (3, 16))
    loss = plain(x, x)
    assert abs(loss.item() - torch.log(torch.tensor(65.0)).item()) < 0.5  # small init: nearly uniform
    loss.backward()
    assert all(p.grad is not None for p in plain.parameters())


def test_train_throughput_prints_both_ratios(transformers):  # the fixture: skips, or fails under CI, without it
    out = run("train_throughput.py", "--n-layer", "1", "--n-embd", "32", "--batch-size", "2", "--block-size", "16",
              "--rounds", "1", "--steps", "1")  # fmt: skip
    assert "throughput ratio gptcourse / nanoGPT-style plain GPT:" in out
    assert "throughput ratio gptcourse / transformers GPT2LMHeadModel:" in out


def test_moe_dispatch_prints_the_ratio_of_every_dispatch_and_of_the_floor():
    out = run("moe_dispatch.py", "--n-embd", "32", "--expert-hidden", "32", "--batch-size", "2", "--block-size", "16",
              "32", "--rounds", "1", "--steps", "1")  # fmt: skip
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("## ")] == [
        "## 32 tokens per batch (2 x 16): mean assignments per expert 8 with 8, 1 with 64",
        "## 64 tokens per batch (2 x 32): mean assignments per expert 16 with 8, 2 with 64",
    ]
    for row in ("sorted", "padded", "per-expert nonzero", "experts alone", "the rest (sorted - alone)"):
        # the row's name, then its two times and their ratio, in both tables
        assert sum(bool(re.fullmatch(re.escape(row) + r"( +-?\d+\.\d+){3}", line)) for line in lines) == 2, out
    assert sum(line.startswith("assignments per expert as routed (any layer): ") for line in lines) == 2, out
    goal = r"goal \(64 experts <= 1\.5x 8\): sorted (met|NOT met) \(\d+\.\d\d\), padded (met|NOT met) \(\d+\.\d\d\)"
    assert sum(bool(re.fullmatch(goal, line)) for line in lines) == 2, out


def test_expert_products_prints_every_way_on_every_thread_count():
    out = run("expert_products.py", "--rows", "64", "--n-embd", "16", "--hidden", "32", "--rounds", "1", "--steps", "1")
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("## ")] == ["## 1 thread"]  # run() passes --threads 1
    ways = ["one mm per expert", "torch.bmm, equal blocks", "nested bmm", "F.grouped_mm"]
    assert [line.split("  ")[0] for line in lines if line.split("  ")[0] in ways] == ways, out
