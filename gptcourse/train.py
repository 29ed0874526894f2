"""The training loop: predict, measure the error, update — with the care a real run needs.

* AdamW with weight decay on 2-D weights only (matmuls and embeddings; biases and LayerNorm gains
  are not decayed), using PyTorch's fused CUDA kernel on a GPU;
* a learning rate with linear warmup from step 0 then cosine decay to ``min_lr``;
* gradient clipping on the global norm, and gradient accumulation over micro-batches;
* mixed precision: bf16 autocast where the GPU supports it, else fp16 with a gradient scaler (a
  Colab T4), full fp32 on CPU and MPS unless asked otherwise;
* ``torch.compile`` as an option; attention always goes through
  ``torch.nn.functional.scaled_dot_product_attention`` (the fused kernels, see ``attention.py``);
* periodic evaluation on held-out data, tokens/s and model FLOPs utilisation (MFU, counting a
  mixture of experts' active parameters); the step losses are read back from the device only
  then, so the CPU never waits for the GPU between evaluations;
* atomic checkpoints that a run interrupted at any point resumes from exactly (model, optimizer,
  scaler, step, data order, dropout's random state): the resumed run's losses equal those of a run
  that was never interrupted;
* several GPUs (or CPU processes) with DistributedDataParallel under ``torchrun``.

Data order: every optimisation step draws ``batch_size * grad_accum_steps * world_size`` windows
from one seeded generator, and each process trains on its own slice of them. So two processes
with batch 8, one process accumulating 2 micro-batches of 8, and one process with batch 16 see
the same 16 windows per step and compute the same update (up to float rounding; tested).

The named runs (presets), their data and the command line that drive this loop are in
:mod:`gptcourse.run` (``python -m gptcourse.run --preset shakespeare-char``).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from gptcourse.data import get_batch
from gptcourse.hardware import peak_flops
from gptcourse.loops import evaluating, optimizer_step
from gptcourse.model import config_of
from gptcourse.moe import active_params
from gptcourse.muon import MuonAdamW, OptimizerLike

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "muon")


@dataclass
class TrainConfig:
    """How to train: steps, batch, optimiser, schedule, precision, evaluation and checkpoints.

    ``batch_size`` is the micro-batch of one process; one optimisation step sees
    ``batch_size * grad_accum_steps * world_size`` sequences.
    """

    max_steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float | None = None  # None: lr / 10
    warmup_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    eval_interval: int = 100
    eval_iters: int = 20
    checkpoint_path: str | None = None  # save here every eval_interval steps, and resume from it
    seed: int = 1337
    progress: bool = True
    grad_accum_steps: int = 1  # micro-batches whose gradients are summed before one update
    precision: str = "auto"  # "auto": bf16 on CUDA if supported, else fp16 (+ scaler); fp32 elsewhere
    compile: bool = False  # torch.compile the model (minutes of compilation pay off on long GPU runs)
    stop_val_loss: float | None = None  # stop at the first evaluation whose val loss is <= this
    optimizer: str = "adamw"  # "adamw", or "muon": Muon for the blocks' matrices, AdamW (lr) for the rest
    lr_muon: float = 0.02  # optimizer == "muon": the peak rate of the Muon matrices (the schedule scales both)

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "eval_interval", "eval_iters", "grad_accum_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"TrainConfig.min_lr must be in [0, lr], got {self.min_lr!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("TrainConfig.weight_decay and TrainConfig.grad_clip must be >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not self.lr_muon > 0:
            raise ValueError(f"TrainConfig.lr_muon must be > 0, got {self.lr_muon!r}")


@dataclass
class History:
    """What a run measured: the training loss at every step, and evaluations every few steps."""

    train_loss: list[float] = field(default_factory=list)  # one per step
    lr: list[float] = field(default_factory=list)  # one per step
    eval_steps: list[int] = field(default_factory=list)
    eval_train_loss: list[float] = field(default_factory=list)
    eval_val_loss: list[float] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)  # wall seconds since the start, per evaluation
    tokens_per_s: list[float] = field(default_factory=list)  # training throughput since the last evaluation
    mfu: list[float | None] = field(default_factory=list)  # model FLOPs utilisation (None: peak unknown)


def flops_per_token(model: torch.nn.Module) -> float:
    """Training FLOPs per token: ``6 N`` for the matmuls of the ``N`` parameters a token uses
    (forward 2N, backward 4N) plus ``12 L T C`` for attention's scores and weighted sums (PaLM,
    appendix B). ``N`` counts a mixture of experts' active parameters only: the experts a token
    is not routed to do no work for it, so counting them would overstate the MFU."""
    cfg = config_of(model)
    return 6 * active_params(model) + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd


def resolve_precision(precision: str, device: str) -> str:
    """``"auto"`` becomes ``"bf16"`` on a GPU that supports it, ``"fp16"`` on an older GPU (T4,
    V100) and ``"fp32"`` on CPU and MPS; an explicit choice is kept."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast_context(device: str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` (a null context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def configure_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    device: str = "cpu",
) -> torch.optim.AdamW:
    """AdamW where only parameters with 2 or more dimensions (weights, embeddings) are decayed.
    On CUDA the fused implementation (one kernel for all parameters) is used."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: str = "cpu") -> OptimizerLike:
    """The trainer's optimiser: AdamW with decay on the matrices (:func:`configure_optimizer`), or with
    ``config.optimizer == "muon"`` Muon for the blocks' matrices at ``config.lr_muon`` and AdamW at
    ``config.lr`` for embeddings, head, gains and biases (:class:`gptcourse.muon.MuonAdamW`, which
    steps, zeroes and checkpoints as one optimiser)."""
    betas = (config.beta1, config.beta2)
    if config.optimizer == "muon":
        return MuonAdamW(model, config.lr_muon, config.lr, config.weight_decay, betas=betas, device=device)
    return configure_optimizer(model, config.lr, config.weight_decay, betas, device)


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate at ``step``: linear warmup from step 0 (``lr * (step + 1) / warmup_steps``),
    then cosine decay from ``lr`` down to ``min_lr`` at ``max_steps``."""
    min_lr = config.lr / 10 if config.min_lr is None else config.min_lr
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - min_lr)


def estimate_loss(
    model: torch.nn.Module,
    data: torch.Tensor,
    batch_size: int,
    iters: int,
    device: str = "cpu",
    seed: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
) -> float:
    """Mean loss over ``iters`` random batches ``(batch_size, block_size)`` of the 1-D ``data``; the
    same batches every call (a fixed ``seed``), so that two evaluations differ only because the model did."""
    generator = torch.Generator().manual_seed(seed)
    block_size = config_of(model).block_size
    losses = []
    with evaluating(model):
        for _ in range(iters):
            x, y = get_batch(data, block_size, batch_size, device, generator)
            with autocast if autocast is not None else contextlib.nullcontext():
                losses.append(model(x, y)[1].item())
    return sum(losses) / len(losses)


def train_step(
    model: torch.nn.Module,
    optimizer: OptimizerLike,
    x: torch.Tensor,
    y: torch.Tensor,
    accum_steps: int = 1,
    grad_clip: float = 0.0,
    autocast: contextlib.AbstractContextManager | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """One optimisation step on the batch ``x, y`` ``(B, T)`` split into ``accum_steps`` micro-batches.

    Each micro-batch's loss is divided by ``accum_steps`` before ``backward``, so the summed
    gradient is the gradient of the mean loss over the whole batch (what one big batch would give,
    with 1/accum_steps of the activation memory). Then the global gradient norm is clipped to
    ``grad_clip`` (0: no clipping) and the optimiser steps. Under DistributedDataParallel the
    gradient all-reduce runs only after the last micro-batch.

    Returns the mean loss of the batch as a detached 0-d tensor on the model's device, not a
    Python float: reading its value makes the CPU wait for the GPU to finish the step, so the
    trainer reads a whole window of losses at once, at evaluation time (``float(loss)`` reads one).
    """
    if x.size(0) % accum_steps:
        raise ValueError(f"batch of {x.size(0)} sequences does not split into {accum_steps} micro-batches")
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=x.device)
    for i, (xm, ym) in enumerate(zip(x.chunk(accum_steps), y.chunk(accum_steps))):
        last = i == accum_steps - 1
        no_sync = getattr(model, "no_sync", None)  # DistributedDataParallel's: skip the all-reduce
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            with autocast:
                _, loss = model(xm, ym)
            loss = loss / accum_steps
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach()
    optimizer_step(model, optimizer, grad_clip, scaler)
    return total


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` with ``torch.save`` to a temporary file, then rename it over ``path``: a
    crash mid-write leaves the previous checkpoint intact, and two processes writing the same path
    at once (notebooks run in parallel) each rename a whole file of their own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The state saved by :func:`save_checkpoint`."""
    return torch.load(path, map_location="cpu", weights_only=False)


def _distributed() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(
    model: torch.nn.Module,
    train_data: torch.Tensor,
    val_data: torch.Tensor,
    config: TrainConfig,
    device: str = "cpu",
    stop_after: int | None = None,
    callback: Callable[[int, History], None] | None = None,
) -> History:
    """Train ``model`` on random windows of ``train_data`` for ``config.max_steps`` steps.

    If ``config.checkpoint_path`` names an existing checkpoint, training resumes from it (and
    produces the same losses as a run that was never interrupted). ``stop_after`` ends the run
    after that many steps (the schedule still runs to ``max_steps``: call again to continue).
    ``callback(step, history)`` runs after every step. Inside a ``torch.distributed`` process
    group the model is wrapped in DistributedDataParallel and each process trains on its slice of
    every batch; all processes return the same history. Returns the :class:`History`.

    The step losses stay on the device until an evaluation (or the end of the run) copies them
    into ``history.train_loss`` in one go: the loop never makes the CPU wait for the GPU between
    evaluations, so the CPU can queue the next steps while the GPU runs this one. A ``callback``
    reads the history, so with a callback the losses are copied after every step.
    """
    rank, world = _distributed()
    on_cuda = torch.device(device).type == "cuda"
    precision = resolve_precision(config.precision, device)
    if precision == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use precision='fp16' (or 'auto')")
    model.to(device)
    model.train()
    raw_model, model_config = model, config_of(model)
    optimizer = build_optimizer(model, config, device)
    scaler = torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None
    autocast = autocast_context(device, precision)
    batches = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed + rank)  # dropout masks: reproducible, different per process
    history, step = History(), 0
    ckpt = config.checkpoint_path
    if ckpt is not None and os.path.exists(ckpt):
        state = load_checkpoint(ckpt)
        if state["model_config"] != model_config.to_dict():
            raise ValueError(
                f"checkpoint {ckpt} was saved from a different model configuration: "
                f"{state['model_config']}; delete it or train that model"
            )
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batches.set_state(state["batches"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if "rng" in state:
            torch.set_rng_state(state["rng"][rank])
        history, step = History(**state["history"]), state["step"]
    if config.compile:
        model = cast(torch.nn.Module, torch.compile(model))  # an OptimizedModule: still a Module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[torch.device(device)] if on_cuda else None)
    peak = peak_flops(torch.cuda.get_device_name(device) if on_cuda else str(device), precision)
    model_flops = flops_per_token(raw_model)
    tokens_per_step = config.batch_size * config.grad_accum_steps * world * model_config.block_size
    eval_model = cast(torch.nn.Module, model.module) if world > 1 else model  # evaluation needs no gradient sync
    bar = tqdm(total=config.max_steps, initial=step, disable=not config.progress or rank != 0, desc="training")
    block_size = model_config.block_size
    per_process = config.batch_size * config.grad_accum_steps
    start = time.perf_counter() - (history.elapsed[-1] if history.elapsed else 0.0)
    window_start, window_steps = time.perf_counter(), 0
    end = config.max_steps if stop_after is None else min(config.max_steps, stop_after)
    pending: list[torch.Tensor] = []  # step losses not yet in the history (summed over processes)

    def record_losses() -> None:  # one device-to-host copy (and one wait) for all the pending steps
        if pending:
            history.train_loss.extend(loss / world for loss in torch.stack(pending).tolist())
            pending.clear()

    while step < end:
        lr = lr_at(step, config)
        for group in optimizer.param_groups:  # a group with its own peak rate (Muon's) follows the same schedule
            group["lr"] = lr if "base_lr" not in group else group["base_lr"] * lr / config.lr
        x, y = get_batch(train_data, block_size, per_process * world, "cpu", batches)
        x, y = x[rank * per_process : (rank + 1) * per_process], y[rank * per_process : (rank + 1) * per_process]
        if on_cuda:  # pinned memory lets the copy overlap with compute
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = train_step(model, optimizer, x, y, config.grad_accum_steps, config.grad_clip, autocast, scaler)
        if world > 1:  # report the loss of the whole step, the same number on every process
            dist.all_reduce(loss)
        pending.append(loss)
        step += 1
        window_steps += 1
        history.lr.append(lr)
        bar.update(1)
        if step % config.eval_interval == 0 or step == config.max_steps:
            record_losses()  # before the clock is read: the wait for the window's last step counts
            seconds = time.perf_counter() - window_start
            tokens_per_s = window_steps * tokens_per_step / seconds
            history.tokens_per_s.append(tokens_per_s)
            history.mfu.append(None if peak is None else tokens_per_s * model_flops / (peak * world))
            history.eval_steps.append(step)
            history.eval_train_loss.append(
                estimate_loss(eval_model, train_data, config.batch_size, config.eval_iters, device, autocast=autocast)
            )
            history.eval_val_loss.append(
                estimate_loss(eval_model, val_data, config.batch_size, config.eval_iters, device, autocast=autocast)
            )
            history.elapsed.append(time.perf_counter() - start)
            bar.set_postfix(train=f"{history.eval_train_loss[-1]:.3f}", val=f"{history.eval_val_loss[-1]:.3f}")
            if ckpt is not None:
                rng: list = [torch.get_rng_state()]
                if world > 1:  # every process's dropout generator, so that each resumes its own
                    rng_all: list = [None] * world
                    dist.all_gather_object(rng_all, rng[0])
                    rng = rng_all
                if rank == 0:
                    save_checkpoint(
                        ckpt,
                        {
                            "model": raw_model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict() if scaler is not None else None,
                            "batches": batches.get_state(),
                            "rng": rng,
                            "history": asdict(history),
                            "step": step,
                            "model_config": model_config.to_dict(),
                            "train_config": asdict(config),
                        },
                    )
            window_start, window_steps = time.perf_counter(), 0
            if config.stop_val_loss is not None and history.eval_val_loss[-1] <= config.stop_val_loss:
                break
        if callback is not None:
            record_losses()
            callback(step, history)
    record_losses()
    bar.close()
    return history
