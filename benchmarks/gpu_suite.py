"""The prepared GPU run of issues 15 and 16: time to loss, the speed ladder, decoding, notebook
outputs, and the capstone's T4 target.

One command, one output folder, five parts, each with its own deadline (``--loss-s``, ``--ladder-s``,
``--decode-s``, ``--notebooks-s``, ``--capstone-s``: a schedule, so that the seconds a part leaves
unused pass to the next; the defaults fit about 8 minutes on one H100/H200, and ``--total-s`` caps
them all), writing its results into ``--out`` as it goes: ``suite.txt`` (everything printed, as
printed), one json per part (``time_to_loss.json``, ``ladder.json``, ``decoding.json``,
``notebooks.json``, ``capstone_t4.json``), the executed notebooks in ``notebooks/`` and
``capstone/``, and ``gpu-suite.tar.gz``, an archive of all of it (the checkpoints excepted),
rewritten after every part so that a run cut short still leaves one.

1. **Time to loss**: the ``shakespeare-char`` preset (nanoGPT's char config at the gpu size) with
   bf16 autocast, fused AdamW, fused attention and ``torch.compile`` until validation loss <=
   ``--target`` (1.47); steps, wall time, tokens/s and MFU against the datasheet peak. It trains in
   chunks of one evaluation interval, each resuming from a checkpoint (in ``/dev/shm`` when it has
   room), so that the deadline is checked at every evaluation without reading the loss back after
   every step. The chunks see the batches of one uninterrupted run; on CUDA their dropout masks
   differ from it (the checkpoint holds the CPU generator only, so each chunk reseeds the GPU's).
   The model is saved where ``gptcourse.run.pretrained`` finds it (``run.checkpoint_path``:
   ``$GPTCOURSE_CHECKPOINT_DIR`` or ``~/.cache/gptcourse/checkpoints``), so Chapter 11 loads it
   instead of training again (Chapter 10 trains the preset again whatever is there).
2. **Speed ladder**: fp32 -> TF32 -> bf16 autocast -> fused SDPA (the rows above it force SDPA's
   math backend) -> ``torch.compile`` (with its compile time) -> fused AdamW -> vocabulary padded
   to a multiple of 64, each row keeping the rows above it; at the char config, then at GPT-2 small
   (124M, block 1024, random tokens) last, so a deadline cuts those first. Each row: the median of
   timed rounds after a warm-up round (``benchmarks/timing.py``); ms/step, tokens/s, MFU against
   the 16-bit datasheet peak, peak memory.
3. **Decoding**: the KV cache vs none, and MHA vs GQA vs MQA decoding tokens/s with cache bytes.
4. **Notebooks**: executes chapters (default 11, 10, 13: Chapter 11 first, since it loads part
   1's model while Chapter 10 trains the preset again for its whole schedule) at the run's size
   with nbclient, each in a child process killed at the deadline, into ``notebooks/``; skipped with
   a message when the Jupyter packages are absent.
5. **The capstone at a T4's steps** (issue 15): a faster GPU plans far more steps in Lab 16's
   16-minute budget than a Colab T4 does, so the solution notebook is executed (as part 4 does,
   in a fresh work folder) with one cell added after its planning cell that sets ``max_steps`` to
   the steps a T4 plans by ``gptcourse.estimate.t4_capstone_steps``: at half the assumed T4 rate
   first (about 1,370 steps), then at the rate (about 2,750). Each run's practice line (the
   grader's measure on the validation split) is read back, and the T4 target is the first run's
   loss rounded up to a hundredth: what the course's own solution reaches on a T4 twice as slow as
   the estimate. Set it in ``gptcourse/grading/lab16.py`` and the lab's table. ``--parts 5`` runs
   this part alone (about 3 minutes with the start).

Here (no GPU) it runs the smoke presets and says so loudly (``tests/test_gpu_suite.py``)::

    python benchmarks/gpu_suite.py --out /tmp/gs --size smoke

On the GPU machine (Python 3.12, torch, tiktoken, matplotlib, no Jupyter packages, no internet).
Prepare once, here, in the repository root (the wheels are 18.7 MiB, 40 files; never commit
them; both folders are ignored through ``.git/info/exclude``)::

    echo /.gpu-wheels/ >> .git/info/exclude; echo /.gpu-data/ >> .git/info/exclude
    python -m pip download --python-version 3.12 --only-binary=:all: --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d .gpu-wheels nbclient nbformat ipykernel ipywidgets
    mkdir -p .gpu-data && cp -r /work/shared/data /work/shared/tiktoken_cache .gpu-data/

then one device ``run`` with ``carry`` = ``[".gpu-wheels", ".gpu-data"]`` and ``timeout_s`` 560, this
one line (480 characters)::

    export PIP_BREAK_SYSTEM_PACKAGES=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD GPTCOURSE_DATA_DIR=$PWD/.gpu-data/data \
    TIKTOKEN_CACHE_DIR=$PWD/.gpu-data/tiktoken_cache GPTCOURSE_CHECKPOINT_DIR=/tmp/gs-ckpt; \
    python3 -m pip install -q --no-index --find-links .gpu-wheels nbclient nbformat ipykernel ipywidgets \
    || echo 'WHEELS NOT INSTALLED: parts 4 and 5 will skip'; nvidia-smi -L; \
    timeout 495 python3 benchmarks/gpu_suite.py --out /tmp/gs; cp /tmp/gs/suite.txt /tmp/gs/gpu-suite.tar.gz $OUT/

(the backslash-newlines removed). ``timeout`` ends the suite with SIGTERM, which it catches: it says
so and writes its archive, so the ``cp`` brings back whatever finished. Back here: ``tar xzf
gpu-suite.tar.gz``, copy ``notebooks/*.ipynb`` over ``chapters/`` and ``suite.txt`` to
``benchmarks/results/gpu-<device>.txt``, and set the T4 target from ``capstone_t4.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import round_robin  # noqa: E402  (benchmarks/timing.py)

from gptcourse import __version__  # noqa: E402
from gptcourse.attention import KVCache  # noqa: E402
from gptcourse.estimate import CAPSTONE_BUDGET_S, t4_capstone_steps  # noqa: E402
from gptcourse.generate import generate  # noqa: E402
from gptcourse.hardware import COMMIT_ENV, SIZE_ENV, describe, peak_flops  # noqa: E402
from gptcourse.model import GPT, GPTConfig  # noqa: E402
from gptcourse.run import checkpoint_path, model_config, prepare_data, preset, save_pretrained  # noqa: E402
from gptcourse.train import History, TrainConfig, autocast_context, flops_per_token, resolve_precision, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = "gpu-suite.tar.gz"
LADDER_ROWS = ("fp32", "TF32", "bf16 autocast", "fused SDPA", "torch.compile", "fused AdamW", "vocab padded to 64")
NOTEBOOKS = ("chapters/11_generating.ipynb", "chapters/10_training.ipynb", "chapters/13_mixture_of_experts.ipynb")
JUPYTER = ("nbclient", "nbformat", "ipykernel", "jupyter_client")


class Terminated(BaseException):  # not an Exception: no part or row may swallow it
    """SIGTERM (``timeout``'s signal): the suite stops, says so, and still writes its archive."""


def on_sigterm(signum: int, frame: object) -> None:
    raise Terminated(f"signal {signum}")


class Suite:
    """The output folder: a log printed as it goes (stdout and ``suite.txt``), jsons, the archive."""

    def __init__(self, out: Path, total_s: float) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(out / "suite.txt", "w", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self.start = time.perf_counter()
        self.total_s = total_s
        self.planned = 0.0
        self.status: dict[str, str] = {}

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def deadline(self, part_s: float) -> tuple[float, float]:
        """``(perf_counter time, seconds left)`` a part must end by: the parts' seconds are a schedule,
        so a part ends by the sum of its own and those of the parts run before it (the time an
        earlier part leaves unused passes on), and every part by ``total_s``."""
        self.planned += part_s
        end = min(self.start + self.planned, self.start + self.total_s)
        return end, end - time.perf_counter()

    def write_json(self, name: str, data: dict) -> None:
        (self.out / name).write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")

    def archive(self) -> Path:
        """(Re)write ``gpu-suite.tar.gz`` of everything in the folder but itself and checkpoints."""
        path = self.out / ARCHIVE
        tmp = path.with_name(path.name + ".tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            for file in sorted(self.out.rglob("*")):
                if file.is_file() and file.name not in (ARCHIVE, tmp.name) and file.suffix != ".pt":
                    tar.add(file, arcname=str(file.relative_to(self.out)))
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        self.log_file.close()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def half_precision(device: str) -> str:
    """The 16-bit format of this device's autocast: bf16, or fp16 (+ a gradient scaler) on a GPU without bf16."""
    return resolve_precision("auto", device) if device.startswith("cuda") else "bf16"


def device_peak(device: str, precision: str) -> float | None:
    return peak_flops(torch.cuda.get_device_name() if device.startswith("cuda") else device, precision)


def fmt_mfu(mfu: float | None) -> str:
    return "n/a" if mfu is None else f"{100 * mfu:.1f}%"


# ---------------------------------------------------------------------------------------------- 1
def time_to_loss(suite: Suite, args: argparse.Namespace, device: str, size: str) -> dict:
    deadline, left = suite.deadline(args.loss_s)
    t0 = time.perf_counter()
    model_kw, train_kw = preset("shakespeare-char", size)
    on_cuda = device.startswith("cuda")
    train_kw.update(compile=on_cuda and not args.no_compile, progress=False, stop_val_loss=args.target)
    if args.eval_iters is not None:
        train_kw["eval_iters"] = args.eval_iters
    elif size == "gpu":
        train_kw["eval_iters"] = 50  # as benchmarks/gpu_time_to_loss.py: 20 evaluations of 200 batches cost ~20 s
    train_ids, val_ids, tok = prepare_data("shakespeare-char")
    seed = TrainConfig().seed
    torch.manual_seed(seed)  # the initial weights of Chapter 10's run of the preset
    model = GPT(model_config("shakespeare-char", size, tok))
    precision = resolve_precision("auto", device)
    peak = device_peak(device, precision)
    interval, max_steps = train_kw["eval_interval"], train_kw["max_steps"]
    suite.say(
        f"{model.num_params() / 1e6:.2f}M parameters, block {model.config.block_size}, batch {train_kw['batch_size']}"
        f" | precision {precision} | compile {train_kw['compile']} | eval {train_kw['eval_iters']} batches every "
        f"{interval} steps | target val <= {args.target} | deadline in {left:.0f} s"
    )
    suite.say(f"{'step':>5} {'train':>7} {'val':>7} {'seconds':>8} {'tokens/s':>10} {'MFU':>6}")
    # the resume checkpoint (weights + AdamW's two moments, written beside the previous one) in memory
    # when /dev/shm has room for it (a container's may hold only 64 MiB), else in the usual temp folder
    need = 2 * 3 * 4 * model.num_params() + (64 << 20)
    shm_ok = os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) and shutil.disk_usage("/dev/shm").free > need
    shm = "/dev/shm" if shm_ok else None
    history, chunk, cut = History(), 0, False
    with tempfile.TemporaryDirectory(dir=shm, prefix="gpu-suite-") as tmp:
        while True:
            done = history.eval_steps[-1] if history.eval_steps else 0
            # the batches and the CPU generator resume from the checkpoint; the seed of later chunks
            # only reseeds the CUDA generator (dropout masks), which the checkpoint does not hold
            config = TrainConfig(**train_kw, seed=seed + 1000 * chunk, checkpoint_path=str(Path(tmp) / "run.pt"))
            history = train(model, train_ids, val_ids, config, device, stop_after=done + interval)
            chunk += 1
            for i in range(len(history.eval_steps)):
                if history.eval_steps[i] > done:
                    suite.say(
                        f"{history.eval_steps[i]:>5} {history.eval_train_loss[i]:>7.4f} "
                        f"{history.eval_val_loss[i]:>7.4f} {history.elapsed[i]:>8.1f} "
                        f"{history.tokens_per_s[i]:>10.0f} {fmt_mfu(history.mfu[i]):>6}"
                    )
            reached = history.eval_val_loss[-1] <= args.target
            if reached or history.eval_steps[-1] >= max_steps:
                break
            if time.perf_counter() >= deadline:
                cut = True
                break
    wall = time.perf_counter() - t0
    steps = history.eval_steps[-1]
    tokens_per_step = train_kw["batch_size"] * model.config.block_size
    overall = steps * tokens_per_step / wall
    if reached:
        verdict = f"reached val {history.eval_val_loss[-1]:.4f} <= {args.target} at step {steps}"
    else:
        why = "deadline" if cut else "the preset's schedule ended"
        verdict = f"did NOT reach {args.target} in {steps} steps ({why}; best val {min(history.eval_val_loss):.4f})"
    suite.say(f"{verdict} | wall time {wall:.1f} s (data, compile and evaluations included)")
    saved = save_pretrained("shakespeare-char", model, history, size)
    assert saved == checkpoint_path("shakespeare-char", size)
    suite.say(f"saved where gptcourse.run.pretrained finds it: {saved}")
    peak_text = "unknown TFLOP/s" if peak is None else f"{peak / 1e12:.0f} TFLOP/s {precision}"
    suite.say(
        f"tokens/s: {history.tokens_per_s[-1]:,.0f} (last window), {overall:,.0f} overall (wall) | "
        f"MFU {fmt_mfu(history.mfu[-1])} of {peak_text} (last window)"
    )
    return {
        "status": "reached" if reached else ("cut by deadline" if cut else "not reached"),
        "target": args.target,
        "reached": reached,
        "steps": steps,
        "wall_s": wall,
        "tokens_per_s_last": history.tokens_per_s[-1],
        "tokens_per_s_overall": overall,
        "mfu_last": history.mfu[-1],
        "peak_flops": peak,
        "precision": precision,
        "compile": train_kw["compile"],
        "parameters": model.num_params(),
        "train_config": {k: v for k, v in train_kw.items() if k != "progress"},
        "model_config": model.config.to_dict(),
        "checkpoint": str(saved),
        "history": {k: getattr(history, k) for k in ("eval_steps", "eval_train_loss", "eval_val_loss", "elapsed")},
    }


# ---------------------------------------------------------------------------------------------- 2
def ladder_models(size: str) -> list[tuple[str, GPTConfig, int]]:
    """``(label, config, batch)``: the char config, then GPT-2 small (a 2-layer stand-in at the smoke size)."""
    model_kw, train_kw = preset("shakespeare-char", size)
    char = ("char (" + ("nanoGPT char config" if size == "gpu" else f"{size} preset") + ")", model_kw)
    if size == "gpu":
        gpt2 = ("GPT-2 small (124M)", dict(block_size=1024, n_layer=12, n_head=12, n_embd=768), 12)
    else:
        gpt2 = ("GPT-2 stand-in (2 layers)", dict(block_size=64, n_layer=2, n_head=2, n_embd=32), 2)
    return [
        (char[0], GPTConfig(vocab_size=65, **char[1]), train_kw["batch_size"]),
        (gpt2[0], GPTConfig(vocab_size=50257, dropout=0.0, bias=False, **gpt2[1]), gpt2[2]),
    ]


def ladder_row(level: int, cfg: GPTConfig, batch: int, device: str, args: argparse.Namespace) -> dict:
    """Time one row of the ladder: row ``level`` keeps every change of the rows above it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    tf32, half, fused_sdpa, compiled, fused_adamw, padded = (level >= i for i in range(1, 7))
    on_cuda = device.startswith("cuda")
    real_vocab = cfg.vocab_size  # the tokens drawn; padding only adds rows that are never targets
    if padded:
        cfg = GPTConfig(**{**cfg.to_dict(), "vocab_size": 64 * math.ceil(cfg.vocab_size / 64)})
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    precision = half_precision(device) if half else "fp32"
    torch.manual_seed(0)
    raw = GPT(cfg).to(device)
    params = [p for p in raw.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt_kw = dict(fused=True) if fused_adamw else dict(foreach=True)
    optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), **opt_kw)
    model = torch.compile(raw, backend=args.compile_backend, dynamic=False) if compiled else raw
    scaler = torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None
    autocast = autocast_context(device, precision)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, real_vocab, (batch, cfg.block_size), generator=gen).to(device)
    y = torch.roll(x, -1, 1)
    backend = contextlib.nullcontext if fused_sdpa else (lambda: sdpa_kernel(SDPBackend.MATH))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with backend(), autocast:
            loss = model(x, y)[1]
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    compile_s = None
    if compiled:
        sync(device)
        t0 = time.perf_counter()
        step()  # compiles forward and backward
        sync(device)
        compile_s = time.perf_counter() - t0
    times = round_robin({"row": step}, args.ladder_rounds, args.ladder_steps, device)["row"]
    ms = 1000 * statistics.median(times)
    tokens_per_s = batch * cfg.block_size / (ms / 1000)
    peak = device_peak(device, half_precision(device))
    return {
        "precision": precision,
        "vocab_size": cfg.vocab_size,
        "ms_per_step": ms,
        "tokens_per_s": tokens_per_s,
        "mfu": None if peak is None else tokens_per_s * flops_per_token(raw) / peak,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None,
        "compile_s": compile_s,
        "step_ms": [1000 * t for t in times],
    }


def ladder(suite: Suite, args: argparse.Namespace, device: str, size: str) -> dict:
    deadline, left = suite.deadline(args.ladder_s)
    half = half_precision(device)
    suite.say(
        f"median of {args.ladder_rounds} rounds of {args.ladder_steps} steps after a warm-up round | MFU against the "
        f"{half} datasheet peak | compile backend {args.compile_backend} | deadline in {left:.0f} s"
    )
    suite.say(
        "fused SDPA: the package always calls F.scaled_dot_product_attention; rows above it force its math "
        "backend (sdpa_kernel(SDPBackend.MATH))"
    )
    suite.say(f"{'model':<26} {'row':<20} {'ms/step':>8} {'tokens/s':>11} {'MFU':>6} {'peak MiB':>9} {'compile s':>9}")
    rows, cut = [], False
    for label, cfg, batch in ladder_models(size):
        for level, name in enumerate(LADDER_ROWS):
            need = args.compile_min_s if level >= LADDER_ROWS.index("torch.compile") else 0.0
            if time.perf_counter() + need >= deadline:
                cut = True
                why = "deadline" if need == 0 else f"under {need:.0f} s to the deadline (compiling takes longer)"
                suite.say(f"{label:<26} {name:<20} not run: {why}")
                rows.append({"model": label, "row": name, "status": "deadline"})
                continue
            try:
                row = ladder_row(level, cfg, batch, device, args)
            except Exception as err:  # one failing row (out of memory, a compiler error) must not end the suite
                suite.say(f"{label:<26} {name:<20} FAILED: {type(err).__name__}: {str(err).splitlines()[:1]}")
                rows.append({"model": label, "row": name, "status": f"failed: {type(err).__name__}: {err}"[:500]})
            else:
                row = {"model": label, "row": name, "batch": batch, "block_size": cfg.block_size, "status": "ok", **row}
                rows.append(row)
                mib = "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
                comp = "" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
                suite.say(
                    f"{label:<26} {name:<20} {row['ms_per_step']:>8.2f} {row['tokens_per_s']:>11,.0f} "
                    f"{fmt_mfu(row['mfu']):>6} {mib:>9} {comp:>9}"
                )
            finally:
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True  # torch's default
    failed = any(r["status"].startswith("failed") for r in rows)
    return {"status": "cut by deadline" if cut else ("done, some rows failed" if failed else "done"), "rows": rows}


# ---------------------------------------------------------------------------------------------- 3
def decoding(suite: Suite, args: argparse.Namespace, device: str, size: str) -> dict:
    deadline, left = suite.deadline(args.decode_s)
    if size == "gpu":
        dims, prompt_len, new, batch = dict(block_size=256, n_layer=6, n_head=6, n_embd=384), 32, 224, 8
        variants = {"MHA": 6, "GQA": 2, "MQA": 1}
    else:
        dims, prompt_len, new, batch = dict(block_size=32, n_layer=2, n_head=4, n_embd=32), 8, 16, 2
        variants = {"MHA": 4, "GQA": 2, "MQA": 1}
    precision = resolve_precision("auto", device)
    autocast = autocast_context(device, precision)
    suite.say(
        f"{dims['n_layer']} layers, {dims['n_head']} heads, {dims['n_embd']} wide, block {dims['block_size']} | prompt "
        f"{prompt_len}, {new} new tokens, batch {batch}, greedy, median of {args.decode_repeats} after a warm-up | "
        f"{precision} | deadline in {left:.0f} s"
    )
    models = {}
    for name, n_kv in variants.items():
        torch.manual_seed(0)
        models[name] = GPT(GPTConfig(vocab_size=65, n_kv_head=n_kv, bias=False, **dims)).to(device).eval()
    prompt = torch.randint(0, 65, (batch, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)
    contenders: list[tuple[str, bool]] = [("MHA", False), *((name, True) for name in variants)]
    outputs: dict[tuple[str, bool], torch.Tensor] = {}

    def run(name: str, use_cache: bool) -> float:
        sync(device)
        t0 = time.perf_counter()
        with autocast:
            outputs[name, use_cache] = generate(models[name], prompt, new, temperature=0, use_cache=use_cache)
        sync(device)
        return time.perf_counter() - t0

    times: dict[tuple[str, bool], list[float]] = {c: [] for c in contenders}
    cut = False
    for repeat in range(args.decode_repeats + 1):  # repeat 0 warms up
        if repeat > 1 and time.perf_counter() >= deadline:
            cut = True
            break
        for c in contenders:
            seconds = run(*c)
            if repeat > 0:
                times[c].append(seconds)
    full = torch.randint(0, 65, (batch, prompt_len + new), generator=torch.Generator().manual_seed(1)).to(device)
    cache_bytes = {}
    for name, model in models.items():
        cache = KVCache(model.config.n_layer)
        with torch.no_grad(), autocast:
            model(full, cache=cache)
        cache_bytes[name] = cache.nbytes()
    suite.say(
        f"{'attention':<10} {'n_kv_head':>9} {'cache':>6} {'tokens/s':>10} {'cache bytes':>12} {'vs MHA+cache':>13}"
    )
    rows = []
    mha = batch * new / statistics.median(times["MHA", True])
    for name, use_cache in contenders:
        rate = batch * new / statistics.median(times[name, use_cache])
        row = {
            "attention": name,
            "n_kv_head": variants[name],
            "cache": use_cache,
            "tokens_per_s": rate,
            "cache_bytes": cache_bytes[name] if use_cache else None,
            "seconds": times[name, use_cache],
        }
        rows.append(row)
        bytes_text = f"{cache_bytes[name]:,}" if use_cache else "-"
        ratio = f"{rate / mha:.2f}x" if use_cache else ""
        cached = "yes" if use_cache else "no"
        suite.say(f"{name:<10} {variants[name]:>9} {cached:>6} {rate:>10,.0f} {bytes_text:>12} {ratio:>13}")
    identical = torch.equal(outputs["MHA", True], outputs["MHA", False])
    speedup = statistics.median(times["MHA", False]) / statistics.median(times["MHA", True])
    suite.say(
        f"KV cache speed-up (MHA): {speedup:.2f}x | greedy outputs with and without the cache identical: {identical}"
    )
    return {
        "status": "cut by deadline" if cut else "done",
        "precision": precision,
        "config": dims,
        "prompt": prompt_len,
        "new_tokens": new,
        "batch": batch,
        "rows": rows,
        "cache_speedup": speedup,
        "identical": identical,
    }


# ---------------------------------------------------------------------------------------------- 4
# the child that runs one notebook (a process of its own, so the deadline can kill it): gptcourse.outputs.execute
EXECUTE = (
    "import sys; from pathlib import Path; from gptcourse.outputs import execute; "
    "execute(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))"
)


def missing_jupyter() -> list[str]:
    return [name for name in JUPYTER if importlib.util.find_spec(name) is None]


def jupyter_skip(suite: Suite) -> str | None:
    """The message a notebook part skips with where the Jupyter packages are absent, else None."""
    missing = missing_jupyter()
    if not missing:
        return None
    message = (
        f"SKIPPED: the Jupyter packages {', '.join(missing)} are not installed; on the GPU machine install the "
        "wheels first (see this script's docstring)"
    )
    suite.say(message)
    return message


def notebook_env(size: str, **extra: str) -> dict[str, str]:
    """The environment a notebook runs in: the suite's size and the commit its outputs name."""
    from gptcourse.outputs import commit_stamp  # imports nbformat, which part 4's skip does without

    return dict(os.environ, **{SIZE_ENV: size, COMMIT_ENV: commit_stamp()}, **extra)


def run_notebook(path: Path, dst: Path, left: float, env: dict[str, str]) -> dict:
    """Execute ``path`` into ``dst`` in a child process (its own session) killed after ``left`` seconds:
    ``{"status", "seconds", "written", "tail"}`` (the last lines it printed)."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", EXECUTE, str(path), str(int(left) + 1), str(dst)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=left)
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        status = "killed at the deadline"
    except BaseException:  # Terminated, Ctrl-C: the child's own session must not outlive the suite
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    tail = output.decode(errors="replace").strip().splitlines()[-3:]
    return {"status": status, "seconds": time.perf_counter() - t0, "written": dst.is_file(), "tail": tail}


def tail_if_failed(result: dict) -> str:
    return "" if result["status"] == "ok" else f": {' | '.join(result['tail'])}"


def notebooks(suite: Suite, args: argparse.Namespace, size: str) -> dict:
    deadline, left = suite.deadline(args.notebooks_s)
    message = jupyter_skip(suite)
    if message:
        return {"status": "skipped", "reason": message, "notebooks": []}
    out = suite.out / "notebooks"
    out.mkdir(exist_ok=True)
    env = notebook_env(size)
    suite.say(
        f"size {size}, commit {env[COMMIT_ENV]} | each notebook in its own process, killed at the deadline "
        f"(in {left:.0f} s) | into {out}"
    )
    suite.say(
        "Chapter 10 trains the preset again for its whole schedule (its training cell calls trainer.train, then "
        "run.save_pretrained, replacing part 1's checkpoint); Chapter 11 loads part 1's via run.pretrained"
    )
    results, cut = [], False
    for name in args.notebooks:
        path = (ROOT / name).resolve() if not Path(name).is_absolute() else Path(name)
        left = deadline - time.perf_counter()
        if left < args.notebook_min_s:
            cut = True
            suite.say(f"  {name}: not run: {left:.0f} s left (< {args.notebook_min_s:.0f} s)")
            results.append({"notebook": name, "status": "deadline"})
            continue
        dst = out / path.name
        result = run_notebook(path, dst, left, env)
        cut = cut or result["status"] == "killed at the deadline"
        suite.say(f"  {name}: {result['status']} in {result['seconds']:.0f} s" + tail_if_failed(result))
        results.append({"notebook": name, **result})
    done = all(r["status"] == "ok" for r in results)
    return {"status": "done" if done else ("cut by deadline" if cut else "failed"), "notebooks": results}


# ---------------------------------------------------------------------------------------------- 5
CAPSTONE = ROOT / "solutions" / "lab16_capstone.ipynb"
PRACTICE = re.compile(r"practice: held-out loss ([0-9.]+) ± ([0-9.]+) \(standard error\) on (\d+) windows")
PLANNED = re.compile(r"T4 plan \(gpu_suite\.py part 5\): (\d+) steps")
# The steps a Colab T4 plans by the estimate, at half its assumed rate first (the Colab figure in
# gptcourse/estimate.py's docstring): the target is set from the run a slow T4 makes, so it holds on one.
T4_RATES = ((2.0, "half the assumed T4 rate"), (1.0, "the assumed T4 rate"))


def with_t4_plan(nb: Any, steps: int) -> Any:
    """A copy of the capstone notebook whose plan is ``steps``, the steps a T4 makes, instead of the
    many more this GPU plans in the same minutes: one cell after the planning cell sets them (and
    saves the plan, as that cell does). Everything else runs as a learner's notebook does."""
    import nbformat

    plan_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "plan_file.write_text" in c.source]
    if len(plan_cells) != 1:
        raise ValueError(
            f"{CAPSTONE.name}: expected one cell that writes the plan (plan_file.write_text), found {len(plan_cells)}"
        )
    source = (
        "# gpu_suite.py part 5: the steps a Colab T4 plans in this budget (gptcourse.estimate), not this GPU's\n"
        f"plan['max_steps'] = min(max_steps_cap, {steps})\n"
        "plan_file.write_text(json.dumps(plan))\n"
        "print(f\"T4 plan (gpu_suite.py part 5): {plan['max_steps']} steps\")"
    )
    nb = copy.deepcopy(nb)
    nb.cells.insert(plan_cells[0] + 1, nbformat.v4.new_code_cell(source))
    return nb


def practice_score(path: Path) -> dict | None:
    """What the executed capstone printed: the steps it trained (the added cell's line) and its
    practice line (the grader's measure on the validation split); None without both."""
    import nbformat

    if not path.is_file():
        return None
    nb = nbformat.read(path, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    planned, practice = PLANNED.search(text), PRACTICE.search(text)
    if planned is None or practice is None:
        return None
    loss, stderr, windows = float(practice[1]), float(practice[2]), int(practice[3])
    return {"steps": int(planned[1]), "loss": loss, "stderr": stderr, "windows": windows}


def capstone_t4(suite: Suite, args: argparse.Namespace, size: str) -> dict:
    """Issue 15's T4 target: the capstone solution trained for a T4's steps, scored the grader's way."""
    deadline, left = suite.deadline(args.capstone_s)
    message = jupyter_skip(suite)
    if message:
        return {"status": "skipped", "reason": message, "runs": []}
    import nbformat

    out = suite.out / "capstone"
    out.mkdir(exist_ok=True)
    source = nbformat.read(CAPSTONE, as_version=4)
    rates = T4_RATES if size == "gpu" else T4_RATES[:1]  # below the gpu size the notebook's cap decides the steps
    suite.say(
        f"{CAPSTONE.relative_to(ROOT)} at size {size}, trained for the steps a Colab T4 plans in its "
        f"{CAPSTONE_BUDGET_S // 60}-minute budget by gptcourse.estimate (this GPU would plan many more), each run "
        f"in a fresh work folder (the package's modules stand in for a learner's) | deadline in {left:.0f} s"
    )
    runs = []
    for slowdown, rate in rates:
        steps = t4_capstone_steps(slowdown)
        left = deadline - time.perf_counter()
        if left < args.notebook_min_s:
            suite.say(f"  {rate}, {steps} steps: not run: {left:.0f} s left (< {args.notebook_min_s:.0f} s)")
            runs.append({"rate": rate, "t4_steps": steps, "status": "deadline"})
            continue
        path = out / f"lab16_capstone_t4_{steps}.ipynb"
        nbformat.write(with_t4_plan(source, steps), path)
        with tempfile.TemporaryDirectory() as work:
            result = run_notebook(path, path, left, notebook_env(size, GPTCOURSE_WORK=work))
        score = practice_score(path)
        runs.append({"rate": rate, "t4_steps": steps, **result, "practice": score})
        scored = "no practice line"
        if score is not None:
            scored = f"trained {score['steps']} steps; held-out loss {score['loss']:.3f} ± {score['stderr']:.3f}"
        suite.say(
            f"  {rate}, {steps} steps: {result['status']} in {result['seconds']:.0f} s; {scored}"
            + tail_if_failed(result)
        )
    first = runs[0].get("practice")
    if first is None:
        return {"status": "failed" if runs[0]["status"] != "deadline" else "cut by deadline", "runs": runs}
    done = all(r["status"] == "ok" and r["practice"] for r in runs)
    result = {"status": "done" if done else "partly done", "runs": runs, "size": size}
    if size != "gpu":
        suite.say(f"no T4 target from the {size} size (the notebook's own cap trained {first['steps']} steps)")
        return result
    result["t4_target"] = math.ceil(first["loss"] * 100) / 100
    suite.say(
        f"T4 target: {result['t4_target']:.2f} (the loss above at {rates[0][1]}, rounded up to a hundredth: what the "
        f"course's own solution reaches in the steps a slow T4 makes; state it in gptcourse/grading/lab16.py)"
    )
    return result


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--size", choices=["smoke", "cpu", "gpu"], default="gpu" if cuda else "smoke")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--total-s", type=float, default=480.0, help="all parts together (default 480)")
    parser.add_argument("--loss-s", type=float, default=130.0, help="part 1's seconds (default 130)")
    parser.add_argument("--ladder-s", type=float, default=110.0, help="part 2's seconds (default 110)")
    parser.add_argument("--decode-s", type=float, default=20.0, help="part 3's seconds (default 20)")
    parser.add_argument("--notebooks-s", type=float, default=70.0, help="part 4's seconds (default 70)")
    parser.add_argument("--capstone-s", type=float, default=150.0, help="part 5's seconds (default 150)")
    parser.add_argument("--parts", default="12345", help="which parts to run (default 12345)")
    parser.add_argument("--target", type=float, default=1.47)
    parser.add_argument("--eval-iters", type=int, help="part 1 (default: 50 at the gpu size, else the preset's)")
    parser.add_argument("--no-compile", action="store_true", help="part 1 without torch.compile")
    parser.add_argument("--ladder-rounds", type=int, default=5 if cuda else 3)
    parser.add_argument("--ladder-steps", type=int, default=3 if cuda else 1, help="steps per timed round")
    parser.add_argument("--compile-backend", default="inductor" if cuda else "eager")
    parser.add_argument(
        "--compile-min-s", type=float, default=30.0 if cuda else 0.0, help="start a compiled row only with this left"
    )
    parser.add_argument("--decode-repeats", type=int, default=3 if cuda else 1)
    parser.add_argument("--notebooks", nargs="*", default=list(NOTEBOOKS), help="paths from the repository root")
    parser.add_argument("--notebook-min-s", type=float, default=15.0, help="start a notebook only with this left")
    args = parser.parse_args(argv)

    os.environ[SIZE_ENV] = args.size  # describe() and the notebooks see the suite's size
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    suite = Suite(args.out, args.total_s)
    suite.say(describe() + (f" | device arg {args.device}" if args.device != ("cuda" if cuda else "cpu") else ""))
    if args.size == "smoke" or not args.device.startswith("cuda"):
        suite.say(
            f"SMOKE RUN ON {args.device.upper()} (size {args.size}): these numbers are not GPU measurements"
            if args.size == "smoke"
            else f"NOT A GPU RUN (device {args.device}, size {args.size}): these numbers are not GPU measurements"
        )
    suite.say(f"gptcourse {__version__} | deadlines (s): total {args.total_s:.0f}, parts {args.parts}")
    parts: list[tuple[str, str, str, Callable[[], dict]]] = [
        ("1", "time_to_loss", "1. time to loss", lambda: time_to_loss(suite, args, args.device, args.size)),
        ("2", "ladder", "2. speed ladder", lambda: ladder(suite, args, args.device, args.size)),
        ("3", "decoding", "3. decoding", lambda: decoding(suite, args, args.device, args.size)),
        ("4", "notebooks", "4. notebooks", lambda: notebooks(suite, args, args.size)),
        ("5", "capstone_t4", "5. the capstone at a T4's steps", lambda: capstone_t4(suite, args, args.size)),
    ]
    failed = terminated = False
    signal.signal(signal.SIGTERM, on_sigterm)
    for key, name, title, run_part in parts:
        if key not in args.parts or terminated:
            continue
        suite.say(f"\n== {title} ==")
        t0 = time.perf_counter()
        try:
            result = run_part()
        except Terminated as err:
            failed = terminated = True
            result = {"status": f"terminated ({err}) after {time.perf_counter() - t0:.0f} s"}
            suite.say(f"TERMINATED ({err}): the parts after this one do not run")
        except Exception as err:  # a broken part must not cost the others their turn
            failed = True
            result = {"status": f"failed: {type(err).__name__}: {err}"[:1000]}
            suite.say(f"FAILED: {type(err).__name__}: {err}")
        result["seconds"] = time.perf_counter() - t0
        suite.status[name] = result["status"]
        suite.write_json(f"{name}.json", result)
        suite.archive()
    suite.say("\n== summary ==")
    for name, status in suite.status.items():
        suite.say(f"{name}: {status}")
    suite.say(f"total {time.perf_counter() - suite.start:.0f} s | results in {args.out}; archive {args.out / ARCHIVE}")
    suite.archive()
    suite.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
