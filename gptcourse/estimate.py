"""How long a run would take on a GPU nobody here has: its FLOPs, counted, over an assumed rate.

A learner in Colab gets a T4, and the course's gpu size must finish on one in 20 minutes. No T4
has run the course, so its run times are **estimates**, and every place that prints one says so.
An estimate has two parts:

* **the FLOPs, counted exactly:** :func:`step_flops` runs one forward (and backward) pass of the
  model on PyTorch's ``meta`` device under ``torch.utils.flop_counter.FlopCounterMode``: every
  matrix product with its real shapes and none of the arithmetic, in about a second on a CPU.
  :func:`run_flops` adds up a training run: its optimisation steps and its evaluations (a forward
  pass over ``eval_iters`` batches of each split, every ``eval_interval`` steps and at the end);
* **the rate, assumed:** :func:`t4_flops_per_s`, the FLOP/s a T4 sustains on a model of the course's
  gpu size, made of two published figures (below). The datasheet peak alone would be about 17 times
  too fast: small models do not fill a GPU, and a T4 is power-capped.

The rate. NVIDIA's T4 datasheet gives 65 fp16 tensor-core TFLOP/s, but the card is capped at
70 W and sustains about 24 TFLOP/s on large (4096^3) fp16 products with cuBLAS (NVIDIA developer
forum, "About GPU peak performance", 2023). A model of nanoGPT's character size gets a fraction
of what a GPU sustains: nanoGPT's README trains that model (6 layers, 384 wide, context 256,
batch 64; 5000 iterations, evaluating 200 batches of each split every 250) in about 3 minutes on
one A100, which is 16% of the A100's 312 TFLOP/s (:func:`nanogpt_a100_mfu` counts it). The
estimate assumes the same fraction of the T4's sustained 24: about 3.8 TFLOP/s.

How far to trust it: the A100 sustains more of its peak than the T4 does of its own (which the
24 accounts for), and the README's "about 3 minutes" is rounded. The one public T4-class figure
found points the other way: a Colab notebook training the same model reports about 525 ms per
iteration on Colab's GPU runtime (github.com/bsmith24/tiny_shakespeare_test), 2.2 TFLOP/s for the
training steps alone. So a real T4 may be up to twice as slow as these estimates; replace the
rate with a measured one once the course has run on a T4.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from typing import NamedTuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from gptcourse.grading.lab16 import reference_plan  # plan_steps' reference: the notebook's own plan
from gptcourse.hardware import PEAK_FLOPS
from gptcourse.model import GPT, GPTConfig
from gptcourse.run import preset
from gptcourse.train import TrainConfig

# nanoGPT's config/train_shakespeare_char.py (model, batch, iterations, evaluations) and its README's
# "about 3 minutes" for that run on one A100
NANOGPT_CHAR = GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False)
NANOGPT_CHAR_RUN = TrainConfig(max_steps=5000, batch_size=64, eval_interval=250, eval_iters=200, progress=False)
NANOGPT_A100_SECONDS = 3 * 60
T4_SUSTAINED_FLOPS = 24e12  # fp16, 4096^3 products with cuBLAS under the 70 W cap (NVIDIA developer forum)
# fp32 has no tensor cores on a T4 and no sustained figure found: its datasheet 8.1 TFLOP/s stands in
T4_FP32_FLOPS = PEAK_FLOPS["T4"]["fp32"]
T4_BUDGET_S = 20 * 60  # the course's promise: every notebook's gpu size finishes on a Colab T4 in 20 minutes
# Lab 16's gpu size (solutions/lab16_capstone.ipynb, pinned by tests/test_estimate.py): its training budget,
# evaluation interval, batches per evaluation and step cap; its model and batch are the char preset's
CAPSTONE_BUDGET_S = 16 * 60
CAPSTONE_EVAL_INTERVAL = 250
CAPSTONE_EVAL_ITERS = 50
CAPSTONE_MAX_STEPS = 5000


def step_flops(config: GPTConfig, batch_size: int, backward: bool = True) -> float:
    """FLOPs of one pass of a :class:`GPT` of ``config`` over ``(batch_size, block_size)`` tokens:
    forward and backward (a training micro-batch), or forward only (``backward=False``: an
    evaluation batch). Counted on the ``meta`` device: shapes, no arithmetic, no memory.

    A mixture of experts is counted with its padded dispatch at capacity factor 1 (the sorted one
    needs the data to know its shapes): the experts' products then have ``k * N / E`` rows each,
    the work the sorted dispatch does with perfectly balanced routing."""
    if config.ffn == "moe" and config.capacity_factor is None:
        config = GPTConfig(**{**config.to_dict(), "capacity_factor": 1.0})
    with torch.device("meta"):
        model = GPT(config)
        idx = torch.zeros(batch_size, config.block_size, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        if backward:
            model(idx, idx)[1].backward()
        else:
            with torch.no_grad():
                model(idx, idx)
    return float(counter.get_total_flops())


def evaluations(train: TrainConfig) -> int:
    """How many times :func:`gptcourse.train.train` evaluates: every ``eval_interval`` steps, and
    after the last step."""
    return train.max_steps // train.eval_interval + (train.max_steps % train.eval_interval != 0)


def run_flops(config: GPTConfig, train: TrainConfig) -> float:
    """FLOPs of :func:`gptcourse.train.train` on a GPT of ``config`` with ``train``: every
    micro-batch of every step, and each evaluation's ``eval_iters`` batches of both splits."""
    steps = train.max_steps * train.grad_accum_steps * step_flops(config, train.batch_size)
    evals = evaluations(train) * 2 * train.eval_iters * step_flops(config, train.batch_size, backward=False)
    return steps + evals


@functools.cache
def nanogpt_a100_mfu() -> float:
    """The utilisation of nanoGPT's README run (its char config on one A100 in about 3 minutes):
    the run's counted FLOPs, its evaluations included (they are inside the 3 minutes, and the
    estimates count them too), over 3 minutes at the A100's bf16 datasheet peak. About 0.16."""
    return run_flops(NANOGPT_CHAR, NANOGPT_CHAR_RUN) / NANOGPT_A100_SECONDS / PEAK_FLOPS["A100"]["half"]


def t4_flops_per_s(precision: str = "fp16") -> float:
    """The rate the estimates assume for a Colab T4: nanoGPT's A100 utilisation of what the T4
    sustains (see the module docstring): about 3.8e12 in fp16 (the trainer's autocast on a T4),
    1.3e12 in fp32."""
    return nanogpt_a100_mfu() * (T4_FP32_FLOPS if precision == "fp32" else T4_SUSTAINED_FLOPS)


def t4_minutes(flops: float, precision: str = "fp16") -> float:
    """The estimated minutes a Colab T4 takes for ``flops`` (see the module docstring), rounded up
    to a tenth."""
    return math.ceil(flops / t4_flops_per_s(precision) / 6) / 10


def t4_capstone_steps(slowdown: float = 1.0) -> int:
    """The ``max_steps`` Lab 16's plan gives a Colab T4 at the gpu size: its ``plan_steps`` with
    the seconds per step and per evaluation at the assumed rate divided by ``slowdown`` (2: the
    Colab figure in the module docstring, about half the rate), capped as the notebook caps it.

    A GPU that is not a T4 plans far more steps in the same minutes, so the course's T4 target is
    set by training this many (``benchmarks/gpu_suite.py``, part 5), not by the budget."""
    char, char_train = char_preset()
    rate = t4_flops_per_s() / slowdown
    step_s = step_flops(char, char_train.batch_size) / rate
    eval_s = 2 * CAPSTONE_EVAL_ITERS * step_flops(char, char_train.batch_size, backward=False) / rate
    return min(CAPSTONE_MAX_STEPS, reference_plan(step_s, CAPSTONE_BUDGET_S, CAPSTONE_EVAL_INTERVAL, eval_s))


class GpuRun(NamedTuple):
    """One training run a notebook makes at the gpu size, for :func:`t4_table`."""

    notebook: str
    what: str
    flops: float  # of one repeat
    repeats: int = 1
    precision: str = "fp16"  # what it runs in on a T4: the trainer's autocast, or fp32 where a notebook asks
    fixed_minutes: float = 0.0  # a time budget the run plans its steps to (Lab 16), on top of its flops
    note: str = ""

    @property
    def minutes(self) -> float:
        return self.fixed_minutes + t4_minutes(self.repeats * self.flops, self.precision)


def char_preset() -> tuple[GPTConfig, TrainConfig]:
    """The ``shakespeare-char`` preset at the gpu size, with Tiny Shakespeare's 65 characters."""
    model_kwargs, train_kwargs = preset("shakespeare-char", "gpu")
    return GPTConfig(vocab_size=65, **model_kwargs), TrainConfig(**train_kwargs, progress=False)


def gpu_runs() -> list[GpuRun]:
    """The training each notebook does at the gpu size, for the models whose time FLOPs decide
    (the notebooks not listed train models under a million parameters at every size, whose time
    is kernel launches, not FLOPs). Built from the package's presets where a notebook uses them,
    so that the table follows a change of preset; each entry names the cell it stands for. A run
    a notebook loads from an earlier notebook's checkpoint is counted: in Colab every notebook
    starts on a fresh machine without it."""
    char, char_train = char_preset()
    char_run = run_flops(char, char_train)  # Chapter 10's run, which Chapter 11 repeats on a fresh machine
    char_step = step_flops(char, char_train.batch_size)  # one training step of 64 windows (Chapters 10, 13, Lab 16)
    bpe_model, bpe_train = preset("shakespeare-bpe", "gpu")
    bpe = GPTConfig(**bpe_model)
    # Chapter 10's speed measurements: about 330 training steps of the char model, no evaluation
    speed = 330 * char_step
    # Chapter 12 (cell 31): five attention patterns x three seeds; masks do not change the products
    sparse = GPTConfig(vocab_size=65, block_size=256, n_layer=4, n_head=4, n_embd=192, dropout=0.0)
    sparse_train = TrainConfig(max_steps=2000, batch_size=32, eval_interval=333, eval_iters=20, progress=False)
    # Chapter 13 (cell 40): 468 timed steps in fp32, a third each of the dense GPT and the MoE with and without capacity
    moe = GPTConfig(**{**char.to_dict(), "ffn": "moe", "n_expert": 8, "expert_top_k": 1})
    moe_speed = 156 * (char_step + 2 * step_flops(moe, char_train.batch_size))
    # Chapter 14 and Lab 13: the speaker LM is the char preset's recipe with the task's 68 tokens and context 96
    speaker = GPTConfig(**{**char.to_dict(), "vocab_size": 68, "block_size": 96})
    speaker_run = run_flops(speaker, char_train)  # Chapter 14's, which Lab 13 repeats on a fresh machine
    finetune = 800 * step_flops(speaker, 16)  # Lab 13: one fine-tuning run of 800 steps of 16 pairs
    # Lab 16: 2 warm-up steps evaluated on 1 batch of each split, a 30-step timing trial and one more evaluation
    # (each of 50 batches of each split), then its 16-minute budget
    evaluation_batches = 2 * 1 + 4 * CAPSTONE_EVAL_ITERS
    trial = (2 + 30) * char_step + evaluation_batches * step_flops(char, char_train.batch_size, backward=False)
    # Lab 17 (cell 23): two ladder rows of the preset's model, 1000 steps evaluated every 100 on 20 batches
    ladder_train = dataclasses.replace(char_train, max_steps=1000, eval_interval=100, eval_iters=20)
    return [
        GpuRun("10_training", "shakespeare-char preset (writes the model Chapter 11 loads)", char_run),
        GpuRun("10_training", "shakespeare-bpe preset", run_flops(bpe, TrainConfig(**bpe_train, progress=False))),
        GpuRun("10_training", "speed measurements (about 330 steps)", speed),
        GpuRun(
            "11_generating",
            "shakespeare-char preset, unless Chapter 10's model is on this machine",
            char_run,
            note="0 when Chapter 10 ran on the same machine",
        ),
        GpuRun("12_sparse_attention", "5 attention patterns x 3 seeds", run_flops(sparse, sparse_train), repeats=15),
        GpuRun("13_mixture_of_experts", "dense vs MoE speed (468 steps, fp32)", moe_speed, precision="fp32"),
        GpuRun(
            "14_finetuning",
            "speaker LM (char preset recipe, context 96)",
            speaker_run,
            note="shared with Lab 13 on one machine",
        ),
        GpuRun(
            "lab13_finetune",
            "speaker LM (as Chapter 14)",
            speaker_run,
            note="0 when Chapter 14 ran on the same machine",
        ),
        GpuRun("lab13_finetune", "fine-tuning, 2 weights x 3 seeds of 800 steps", finetune, repeats=6),
        GpuRun(
            "lab16_capstone",
            "timing trial + the 16-minute training budget",
            trial,
            fixed_minutes=CAPSTONE_BUDGET_S / 60,
            note="the budget is wall-clock: steps are planned to fit it",
        ),
        GpuRun("lab17_modern", "two ladder rows, 1000 steps each", run_flops(char, ladder_train), repeats=2),
    ]


def t4_table(runs: list[GpuRun] | None = None) -> dict[str, float]:
    """Estimated T4 minutes per notebook (the sum of its :func:`gpu_runs`), in course order."""
    table: dict[str, float] = {}
    for run in gpu_runs() if runs is None else runs:
        table[run.notebook] = round(table.get(run.notebook, 0.0) + run.minutes, 1)
    return table


def main(argv: list[str] | None = None) -> int:
    """Print every :func:`gpu_runs` entry and each notebook's estimated T4 minutes."""
    parser = argparse.ArgumentParser(prog="python -m gptcourse.estimate", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    runs = gpu_runs()
    print(
        f"ESTIMATES, not measurements: FLOPs counted on the meta device over an assumed T4 rate of "
        f"{t4_flops_per_s() / 1e12:.2f} TFLOP/s in fp16 ({t4_flops_per_s('fp32') / 1e12:.2f} in fp32): "
        f"nanoGPT's A100 utilisation {nanogpt_a100_mfu():.3f} x the T4's sustained "
        f"{T4_SUSTAINED_FLOPS / 1e12:.0f} TFLOP/s (gptcourse/estimate.py says where each figure is from)"
    )
    print(f"{'notebook':<22} {'run':<66} {'PFLOP':>7} {'T4 min':>7}")
    for run in runs:
        what = run.what + (f" (x{run.repeats})" if run.repeats > 1 else "")
        print(
            f"{run.notebook:<22} {what:<66} {run.repeats * run.flops / 1e15:>7.2f} {run.minutes:>7.1f}"
            + (f"  {run.note}" if run.note else "")
        )
    print(f"\n{'notebook':<22} {'T4 min':>7}  (budget {T4_BUDGET_S // 60} minutes)")
    for notebook, minutes in t4_table(runs).items():
        print(f"{notebook:<22} {minutes:>7.1f}  {'over the budget' if minutes * 60 > T4_BUDGET_S else 'fits'}")
    print(
        f"\nLab 16's plan on a T4 (its {CAPSTONE_BUDGET_S // 60}-minute training budget): {t4_capstone_steps()} steps "
        f"at the assumed rate, {t4_capstone_steps(2.0)} at half of it"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
