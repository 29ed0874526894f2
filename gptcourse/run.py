"""Named training runs, their data, and the command line.

A preset names a model and a training recipe at each size (``smoke`` for tests, ``cpu`` for a
laptop, ``gpu`` for the full run), so that a notebook, a benchmark and the command line train the
same thing; :func:`prepare_data` turns Tiny Shakespeare into the token ids a preset trains on.
The loop itself is :func:`gptcourse.train.train`.

Command line (``python -m gptcourse.run --help``)::

    python -m gptcourse.run --preset shakespeare-char            # size follows the hardware
    python -m gptcourse.run --preset shakespeare-char --size cpu --max-steps 500
    torchrun --nproc_per_node=2 -m gptcourse.run --preset shakespeare-char
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import tiktoken
import torch
import torch.distributed as dist

from gptcourse.data import cache_dir, load_text, train_val_split
from gptcourse.generate import generate
from gptcourse.hardware import describe, get_device, get_size
from gptcourse.model import GPT, GPTConfig
from gptcourse.tokenizers import CharTokenizer, gpt2_encoding
from gptcourse.train import PRECISIONS, History, TrainConfig, load_checkpoint, resolve_precision, save_checkpoint, train

CHECKPOINT_ENV = "GPTCOURSE_CHECKPOINT_DIR"


def preset(name: str, size: str) -> tuple[dict, dict]:
    """``(GPTConfig kwargs, TrainConfig kwargs)`` of preset ``name`` at ``size`` (smoke/cpu/gpu).

    ``shakespeare-char``: characters of Tiny Shakespeare. Its gpu size is nanoGPT's char config
    (6 layers, 6 heads, 384 wide, block 256, batch 64, dropout 0.2, lr 1e-3); its cpu size is the
    recipe Chapter 8 measured (4 layers, 128 wide, block 64, 3000 steps of 32 windows: about
    1.55 nats per character on the held-out split, beating Chapter 1's 5-gram at 1.77, in about
    four minutes on two cores).
    ``shakespeare-bpe``: Tiny Shakespeare in GPT-2 tokens (vocabulary padded 50,257 -> 50,304, a
    multiple of 64, on the GPU).
    """
    presets = {
        "shakespeare-char": {
            "smoke": (
                dict(block_size=32, n_layer=2, n_head=2, n_embd=32, bias=False),
                dict(max_steps=30, batch_size=8, lr=3e-3, warmup_steps=5, eval_interval=15, eval_iters=4),
            ),
            "cpu": (
                dict(block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False),
                dict(
                    max_steps=3000,
                    batch_size=32,
                    lr=2e-3,
                    min_lr=2e-4,
                    warmup_steps=100,
                    beta2=0.99,
                    weight_decay=0.1,
                    eval_interval=500,
                    eval_iters=20,
                ),
            ),
            "gpu": (
                dict(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False),
                dict(
                    max_steps=5000,
                    batch_size=64,
                    lr=1e-3,
                    min_lr=1e-4,
                    warmup_steps=100,
                    beta2=0.99,
                    weight_decay=0.1,
                    eval_interval=250,
                    eval_iters=200,
                ),
            ),
        },
        "shakespeare-bpe": {
            "smoke": (
                dict(block_size=32, n_layer=2, n_head=2, n_embd=32, bias=False),
                dict(max_steps=20, batch_size=8, lr=3e-3, warmup_steps=5, eval_interval=10, eval_iters=4),
            ),
            "cpu": (
                dict(block_size=64, n_layer=2, n_head=4, n_embd=64, bias=False),
                dict(
                    max_steps=150,
                    batch_size=8,
                    lr=3e-3,
                    min_lr=3e-4,
                    warmup_steps=15,
                    beta2=0.99,
                    eval_interval=50,
                    eval_iters=5,
                ),
            ),
            "gpu": (
                dict(vocab_size=50304, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False),
                dict(
                    max_steps=2000,
                    batch_size=64,
                    lr=6e-4,
                    min_lr=6e-5,
                    warmup_steps=100,
                    beta2=0.99,
                    eval_interval=250,
                    eval_iters=100,
                ),
            ),
        },
    }
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(presets)}")
    if size not in presets[name]:
        raise ValueError(f"unknown size {size!r}; sizes: smoke, cpu, gpu")
    model_kwargs, train_kwargs = presets[name][size]
    return dict(model_kwargs), dict(train_kwargs)


def prepare_data(
    name: str, text: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, CharTokenizer | tiktoken.Encoding]:
    """``(train ids, val ids, tokenizer)`` for preset ``name`` from Tiny Shakespeare (90/10 split):
    two 1-D int64 tensors of token ids, and the tokenizer that made them."""
    text = load_text("tinyshakespeare") if text is None else text
    tokenizer = CharTokenizer(text) if name == "shakespeare-char" else gpt2_encoding("gpt2")
    ids = tokenizer.encode(text) if name == "shakespeare-char" else tokenizer.encode_ordinary(text)
    train_ids, val_ids = train_val_split(torch.tensor(ids, dtype=torch.long))
    return train_ids, val_ids, tokenizer


@dataclasses.dataclass
class Pretrained:
    """A preset's trained model and what came with it (see :func:`pretrained`)."""

    model: GPT  # in eval mode, on the device asked for
    tokenizer: CharTokenizer | tiktoken.Encoding
    history: History  # what the training run measured
    path: Path  # the checkpoint it was loaded from or saved to
    trained: bool  # True when no checkpoint existed and the model was trained just now


def vocab_size(tokenizer: CharTokenizer | tiktoken.Encoding) -> int:
    """How many distinct tokens ``tokenizer`` makes (a CharTokenizer's characters, a tiktoken encoding's ids)."""
    return tokenizer.vocab_size if isinstance(tokenizer, CharTokenizer) else tokenizer.n_vocab


def model_config(name: str, size: str, tokenizer: CharTokenizer | tiktoken.Encoding) -> GPTConfig:
    """The GPTConfig of preset ``name`` at ``size``, its vocabulary that of ``tokenizer`` unless the
    preset pads it (GPT-2's 50,257 tokens to 50,304 on the GPU)."""
    model_kwargs, _ = preset(name, size)
    model_kwargs.setdefault("vocab_size", vocab_size(tokenizer))
    return GPTConfig(**model_kwargs)


def checkpoint_dir() -> Path:
    """Where shared trained models live: ``$GPTCOURSE_CHECKPOINT_DIR``, default ``~/.cache/gptcourse/checkpoints``."""
    return Path(os.environ.get(CHECKPOINT_ENV) or cache_dir() / "checkpoints")


def config_digest(*recipe: object) -> str:
    """A short stable hash of ``recipe`` (JSON-serialisable values): the part of a checkpoint's
    name that changes whenever the model or the recipe that trained it does."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def checkpoint_path(name: str, size: str | None = None) -> Path:
    """Where the shared model of preset ``name`` at ``size`` lives: :func:`checkpoint_dir` /
    ``{name}-{size}-{hash}.pt``, the hash being that of the preset's model and training
    configuration, so that a changed recipe never loads an old model (the vocabulary is not in it:
    it comes from the checksummed text)."""
    size = size or get_size()
    return checkpoint_dir() / f"{name}-{size}-{config_digest(*preset(name, size))}.pt"


def load_or_train(path: Path, model: GPT, train_model: Callable[[], History]) -> tuple[History, bool]:
    """Fill ``model`` from the checkpoint at ``path`` and return ``(its History, False)``; when there
    is none, or it no longer fits the model's code (a renamed parameter: said in a message), run
    ``train_model()`` (which trains ``model`` in place and returns its History), save the result
    atomically at ``path`` and return ``(history, True)``. Any chapter can share a model this way."""
    if path.is_file():
        state = load_checkpoint(path)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as error:
            print(f"{path} does not fit the model ({str(error).splitlines()[0]}); training it again")
        else:
            return History(**state["history"]), False
    history = train_model()
    save_trained(path, model, history)
    return history, True


def save_trained(path: Path, model: GPT, history: History) -> None:
    """Save ``model``'s weights, config and ``history`` at ``path`` atomically (notebooks run in
    parallel may write the same file at once), in the form :func:`load_or_train` reads."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(path, {"config": model.config.to_dict(), "model": state, "history": dataclasses.asdict(history)})


def save_pretrained(name: str, model: GPT, history: History, size: str | None = None) -> Path:
    """Save ``model`` (trained on preset ``name`` at ``size``) and its ``history`` where
    :func:`pretrained` finds them."""
    path = checkpoint_path(name, size)
    save_trained(path, model, history)
    return path


def pretrained(name: str = "shakespeare-char", size: str | None = None, device: str | None = None) -> Pretrained:
    """The model of preset ``name`` at ``size``, trained once and shared by the chapters that use it.

    Loads the checkpoint of :func:`checkpoint_path` when there is one (Chapter 10 writes it);
    otherwise trains the preset with :func:`gptcourse.train.train` (seed and recipe of the
    preset, so the result is the one Chapter 10 gets), saves it, and returns it. A checkpoint that
    no longer fits the model's code (a renamed parameter) is trained again, with a message.
    """
    size = size or get_size()
    device = device or get_device()
    path = checkpoint_path(name, size)
    train_ids, val_ids, tokenizer = prepare_data(name)
    config = TrainConfig(**preset(name, size)[1])
    torch.manual_seed(config.seed)  # the initial weights of Chapter 10's run of the same preset
    model = GPT(model_config(name, size, tokenizer))

    def train_model() -> History:
        print(f"no checkpoint at {path}: training preset {name} at the {size} size on {device}")
        return train(model, train_ids, val_ids, config, device)

    history, trained = load_or_train(path, model, train_model)
    return Pretrained(model.to(device).eval(), tokenizer, history, path, trained)


def main(argv: list[str] | None = None) -> int:
    """Train the preset named on the command line ``argv`` (default: ``sys.argv``), print its
    evaluations and a sample; under ``torchrun`` every process trains its slice of each batch."""
    parser = argparse.ArgumentParser(
        prog="python -m gptcourse.run", description="Train a GPT on Tiny Shakespeare from a named preset."
    )
    parser.add_argument("--preset", default="shakespeare-char", choices=["shakespeare-char", "shakespeare-bpe"])
    parser.add_argument("--size", choices=["smoke", "cpu", "gpu"], help="default: $GPTCOURSE_SIZE, else by hardware")
    parser.add_argument("--device", help="default: cuda, then mps, then cpu")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--grad-accum-steps", type=int)
    parser.add_argument("--precision", choices=PRECISIONS)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--checkpoint", help="checkpoint file: saved at every evaluation, resumed from if present")
    parser.add_argument("--stop-val-loss", type=float)
    parser.add_argument("--sample-tokens", type=int, default=200, help="tokens to generate at the end")
    args = parser.parse_args(argv)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = args.device or get_device()
    if distributed:
        local_rank = int(os.environ["LOCAL_RANK"])
        if torch.device(device).type == "cuda":
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    size = args.size or get_size()
    model_kwargs, train_kwargs = preset(args.preset, size)
    overrides = {
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "grad_accum_steps": args.grad_accum_steps,
        "precision": args.precision,
        "checkpoint_path": args.checkpoint,
        "stop_val_loss": args.stop_val_loss,
    }
    train_kwargs.update({k: v for k, v in overrides.items() if v is not None})
    if args.compile:
        train_kwargs["compile"] = True
    train_ids, val_ids, tokenizer = prepare_data(args.preset)
    model = GPT(model_config(args.preset, size, tokenizer))
    config = TrainConfig(**train_kwargs)
    if rank == 0:
        print(describe())
        print(
            f"preset {args.preset} | size {size} | device {device} | {world} process(es) | "
            f"{model.num_params() / 1e6:.2f}M parameters | precision {resolve_precision(config.precision, device)}"
        )
        if model.config.vocab_size != vocab_size(tokenizer):
            print(f"vocabulary: {vocab_size(tokenizer)} real tokens, padded to {model.config.vocab_size}")
    history = train(model, train_ids, val_ids, config, device)
    if rank == 0:
        print("step  train   val    elapsed  tokens/s   MFU")
        for i, s in enumerate(history.eval_steps):
            mfu = history.mfu[i]
            print(
                f"{s:>5} {history.eval_train_loss[i]:.4f} {history.eval_val_loss[i]:.4f} "
                f"{history.elapsed[i]:7.1f}s {history.tokens_per_s[i]:9.0f} "
                f"{'n/a' if mfu is None else f'{100 * mfu:.1f}%'}"
            )
        if args.sample_tokens > 0:
            start = torch.tensor([tokenizer.encode("\n")], dtype=torch.long, device=device)
            out = generate(model, start, args.sample_tokens, temperature=0.8, top_k=200)[0].tolist()
            print(tokenizer.decode(out))
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
