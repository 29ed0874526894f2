"""The training loop: predict, measure the error, update — with the care a real run needs.

AdamW with weight decay on 2-D weights only (matmuls and embeddings; biases and LayerNorm gains are
not decayed), a learning rate with linear warmup from step 0 then cosine decay to ``min_lr``,
gradient clipping, periodic evaluation on held-out data, a progress bar, and atomic checkpoints
that a run interrupted at any point resumes from exactly (model, optimizer, step, data order).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gptcourse.data import get_batch


@dataclass
class TrainConfig:
    """How to train: steps, batch, optimiser, schedule, evaluation and checkpoints."""

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

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "eval_interval", "eval_iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"TrainConfig.min_lr must be in [0, lr], got {self.min_lr!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("TrainConfig.weight_decay and TrainConfig.grad_clip must be >= 0")


@dataclass
class History:
    """What a run measured: the training loss at every step, and evaluations every few steps."""

    train_loss: list[float] = field(default_factory=list)  # one per step
    lr: list[float] = field(default_factory=list)  # one per step
    eval_steps: list[int] = field(default_factory=list)
    eval_train_loss: list[float] = field(default_factory=list)
    eval_val_loss: list[float] = field(default_factory=list)


def configure_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                        betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW where only parameters with 2 or more dimensions (weights, embeddings) are decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate at ``step``: linear warmup from step 0 (``lr * (step + 1) / warmup_steps``),
    then cosine decay from ``lr`` down to ``min_lr`` at ``max_steps``."""
    min_lr = config.lr / 10 if config.min_lr is None else config.min_lr
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - min_lr)


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, data: torch.Tensor, batch_size: int, iters: int,
                  device: str = "cpu", seed: int = 0) -> float:
    """Mean loss over ``iters`` random batches; the same batches every call (a fixed ``seed``),
    so that two evaluations differ only because the model did."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    block_size = model.config.block_size
    losses = [model(*get_batch(data, block_size, batch_size, device, generator))[1].item()
              for _ in range(iters)]
    model.train(was_training)
    return sum(losses) / len(losses)


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` with ``torch.save`` to a temporary file, then rename it over ``path``: a
    crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The state saved by :func:`save_checkpoint`."""
    return torch.load(path, map_location="cpu", weights_only=False)


def train(model: torch.nn.Module, train_data: torch.Tensor, val_data: torch.Tensor,
          config: TrainConfig, device: str = "cpu") -> History:
    """Train ``model`` on random windows of ``train_data`` for ``config.max_steps`` steps.

    If ``config.checkpoint_path`` names an existing checkpoint, training resumes from it (and
    produces the same losses as a run that was never interrupted). Returns the :class:`History`.
    """
    model.to(device)
    model.train()
    optimizer = configure_optimizer(model, config.lr, config.weight_decay, (config.beta1, config.beta2))
    batches = torch.Generator().manual_seed(config.seed)
    history, step = History(), 0
    ckpt = config.checkpoint_path
    if ckpt is not None and os.path.exists(ckpt):
        state = load_checkpoint(ckpt)
        if state["model_config"] != model.config.to_dict():
            raise ValueError(f"checkpoint {ckpt} was saved from a different model configuration: "
                             f"{state['model_config']}; delete it or train that model")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batches.set_state(state["batches"])
        history, step = History(**state["history"]), state["step"]
    bar = tqdm(total=config.max_steps, initial=step, disable=not config.progress, desc="training")
    block_size = model.config.block_size
    while step < config.max_steps:
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(train_data, block_size, config.batch_size, device, batches)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        history.train_loss.append(loss.item())
        history.lr.append(lr)
        bar.update(1)
        if step % config.eval_interval == 0 or step == config.max_steps:
            history.eval_steps.append(step)
            history.eval_train_loss.append(estimate_loss(model, train_data, config.batch_size, config.eval_iters, device))
            history.eval_val_loss.append(estimate_loss(model, val_data, config.batch_size, config.eval_iters, device))
            bar.set_postfix(train=f"{history.eval_train_loss[-1]:.3f}", val=f"{history.eval_val_loss[-1]:.3f}")
            if ckpt is not None:
                save_checkpoint(ckpt, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "batches": batches.get_state(), "history": asdict(history), "step": step,
                    "model_config": model.config.to_dict(), "train_config": asdict(config),
                })
    bar.close()
    return history
