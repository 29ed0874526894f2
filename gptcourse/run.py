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
import os
import sys

import tiktoken
import torch
import torch.distributed as dist

from gptcourse.data import load_text, train_val_split
from gptcourse.generate import generate
from gptcourse.hardware import describe, get_device, get_size
from gptcourse.model import GPT, GPTConfig
from gptcourse.tokenizers import CharTokenizer, gpt2_encoding
from gptcourse.train import PRECISIONS, TrainConfig, resolve_precision, train


def preset(name: str, size: str) -> tuple[dict, dict]:
    """``(GPTConfig kwargs, TrainConfig kwargs)`` of preset ``name`` at ``size`` (smoke/cpu/gpu).

    ``shakespeare-char``: characters of Tiny Shakespeare. Its gpu size is nanoGPT's char config
    (6 layers, 6 heads, 384 wide, block 256, batch 64, dropout 0.2, lr 1e-3); its cpu size is the
    recipe of benchmark 2 (val loss <= 1.88 in about two minutes on two cores).
    ``shakespeare-bpe``: Tiny Shakespeare in GPT-2 tokens (vocabulary padded 50,257 -> 50,304, a
    multiple of 64, on the GPU).
    """
    presets = {
        "shakespeare-char": {
            "smoke": (dict(block_size=32, n_layer=2, n_head=2, n_embd=32, bias=False),
                      dict(max_steps=30, batch_size=8, lr=3e-3, warmup_steps=5, eval_interval=15, eval_iters=4)),
            "cpu": (dict(block_size=64, n_layer=3, n_head=4, n_embd=128, bias=False),
                    dict(max_steps=1000, batch_size=32, lr=4e-3, min_lr=4e-4, warmup_steps=50, beta2=0.99,
                         weight_decay=0.1, eval_interval=100, eval_iters=10)),
            "gpu": (dict(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False),
                    dict(max_steps=5000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup_steps=100, beta2=0.99,
                         weight_decay=0.1, eval_interval=250, eval_iters=200)),
        },
        "shakespeare-bpe": {
            "smoke": (dict(block_size=32, n_layer=2, n_head=2, n_embd=32, bias=False),
                      dict(max_steps=20, batch_size=8, lr=3e-3, warmup_steps=5, eval_interval=10, eval_iters=4)),
            "cpu": (dict(block_size=64, n_layer=2, n_head=4, n_embd=64, bias=False),
                    dict(max_steps=150, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=15, beta2=0.99,
                         eval_interval=50, eval_iters=5)),
            "gpu": (dict(vocab_size=50304, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False),
                    dict(max_steps=2000, batch_size=64, lr=6e-4, min_lr=6e-5, warmup_steps=100, beta2=0.99,
                         eval_interval=250, eval_iters=100)),
        },
    }
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(presets)}")
    if size not in presets[name]:
        raise ValueError(f"unknown size {size!r}; sizes: smoke, cpu, gpu")
    model_kwargs, train_kwargs = presets[name][size]
    return dict(model_kwargs), dict(train_kwargs)


def prepare_data(name: str, text: str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, CharTokenizer | tiktoken.Encoding]:
    """``(train ids, val ids, tokenizer)`` for preset ``name`` from Tiny Shakespeare (90/10 split):
    two 1-D int64 tensors of token ids, and the tokenizer that made them."""
    text = load_text("tinyshakespeare") if text is None else text
    tokenizer = CharTokenizer(text) if name == "shakespeare-char" else gpt2_encoding("gpt2")
    ids = tokenizer.encode(text) if name == "shakespeare-char" else tokenizer.encode_ordinary(text)
    train_ids, val_ids = train_val_split(torch.tensor(ids, dtype=torch.long))
    return train_ids, val_ids, tokenizer


def main(argv: list[str] | None = None) -> int:
    """Train the preset named on the command line ``argv`` (default: ``sys.argv``), print its
    evaluations and a sample; under ``torchrun`` every process trains its slice of each batch."""
    parser = argparse.ArgumentParser(prog="python -m gptcourse.run",
                                     description="Train a GPT on Tiny Shakespeare from a named preset.")
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
    overrides = {"max_steps": args.max_steps, "batch_size": args.batch_size, "lr": args.lr,
                 "grad_accum_steps": args.grad_accum_steps, "precision": args.precision,
                 "checkpoint_path": args.checkpoint, "stop_val_loss": args.stop_val_loss}
    train_kwargs.update({k: v for k, v in overrides.items() if v is not None})
    if args.compile:
        train_kwargs["compile"] = True
    train_ids, val_ids, tokenizer = prepare_data(args.preset)
    vocab = tokenizer.vocab_size if args.preset == "shakespeare-char" else tokenizer.n_vocab
    model_kwargs.setdefault("vocab_size", vocab)
    model = GPT(GPTConfig(**model_kwargs))
    config = TrainConfig(**train_kwargs)
    if rank == 0:
        print(describe())
        print(f"preset {args.preset} | size {size} | device {device} | {world} process(es) | "
              f"{model.num_params() / 1e6:.2f}M parameters | precision {resolve_precision(config.precision, device)}")
        if model_kwargs["vocab_size"] != vocab:
            print(f"vocabulary: {vocab} real tokens, padded to {model_kwargs['vocab_size']}")
    history = train(model, train_ids, val_ids, config, device)
    if rank == 0:
        print("step  train   val    elapsed  tokens/s   MFU")
        for i, s in enumerate(history.eval_steps):
            mfu = history.mfu[i]
            print(f"{s:>5} {history.eval_train_loss[i]:.4f} {history.eval_val_loss[i]:.4f} "
                  f"{history.elapsed[i]:7.1f}s {history.tokens_per_s[i]:9.0f} "
                  f"{'n/a' if mfu is None else f'{100 * mfu:.1f}%'}")
        if args.sample_tokens > 0:
            start = torch.tensor([tokenizer.encode("\n")], dtype=torch.long, device=device)
            out = generate(model, start, args.sample_tokens, temperature=0.8, top_k=200)[0].tolist()
            print(tokenizer.decode(out))
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
