"""Benchmark 1: training-step throughput of gptcourse's GPT vs a plain nanoGPT-style GPT and Hugging Face's
GPT2LMHeadModel.

Same configuration, same batch, same step (AdamW, gradient clipping), same process; the models take turns
(round-robin) so that a noisy machine slows them alike. gptcourse runs the step its trainer runs
(``gptcourse.train.train_step``); the plain GPT (``nanogpt_style.py``) is the yardstick without any of
gptcourse's options. Prints ms per step, tokens/s and the ratios (> 1 means gptcourse is faster).

    python benchmarks/train_throughput.py                 # CPU, 2 threads
    python benchmarks/train_throughput.py --device cuda --n-layer 12 --n-embd 768 --block-size 1024 --batch-size 8
"""

from __future__ import annotations

import argparse
import statistics

import torch
from nanogpt_style import Config, PlainGPT
from timing import round_robin

from gptcourse.train import configure_optimizer, train_step


def build(args):
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptcourse.model import GPT, GPTConfig

    torch.manual_seed(0)
    ours = GPT(
        GPTConfig(
            vocab_size=args.vocab_size,
            block_size=args.block_size,
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_embd=args.n_embd,
            dropout=0.0,
            bias=True,
        )
    )
    hf_config = GPT2Config(
        vocab_size=args.vocab_size,
        n_positions=args.block_size,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function="gelu_new",
        bos_token_id=0,
        eos_token_id=0,
    )
    hf_config._attn_implementation = "sdpa"  # the same fused attention kernel gptcourse uses
    theirs = GPT2LMHeadModel(hf_config)
    print(f"transformers {transformers.__version__}, attention implementation: {theirs.config._attn_implementation}")
    return ours.to(args.device), theirs.to(args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=65)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10, help="steps per turn")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours, theirs = build(args)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    x = torch.randint(0, args.vocab_size, (args.batch_size, args.block_size), device=args.device)

    plain = PlainGPT(Config(args.vocab_size, args.block_size, args.n_layer, args.n_head, args.n_embd, bias=True)).to(
        args.device
    )
    n_plain = sum(p.numel() for p in plain.parameters())

    def plain_step(model, optimizer, loss_of):
        """nanoGPT's step: zero the gradients, forward, backward, clip the global norm to 1, step."""

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss_of(model).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

        return step

    ours_optimizer = configure_optimizer(ours, 1e-4, 0.1, device=args.device)
    steps = {
        # the step gptcourse's trainer runs (gptcourse.train.train_step), clipping included
        "gptcourse GPT": lambda: train_step(ours, ours_optimizer, x, x, grad_clip=1.0),
        "nanoGPT-style plain GPT": plain_step(plain, plain.optimizer(1e-4), lambda m: m(x, x)),
        "transformers GPT2LMHeadModel": plain_step(
            theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-4), lambda m: m(input_ids=x, labels=x).loss
        ),
    }
    times = round_robin(steps, args.rounds, args.steps, args.device)
    tokens = args.batch_size * args.block_size
    print(
        f"config: {args.n_layer} layers, {args.n_head} heads, n_embd {args.n_embd}, block {args.block_size}, "
        f"batch {args.batch_size}, vocab {args.vocab_size} | device {args.device}, {args.threads} threads | "
        f"torch {torch.__version__} | one AdamW step with gradient clipping to 1.0 each"
    )
    print(
        f"parameters: gptcourse {n_ours:,} | nanoGPT-style {n_plain:,} | transformers {n_theirs:,} "
        "(all three count the position table and tie the output layer)"
    )
    print(f"{'model':<30} {'ms/step (median)':>17} {'tokens/s':>10}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, m in medians.items():
        print(f"{name:<30} {1000 * m:>17.1f} {tokens / m:>10.0f}")
    for other in ("nanoGPT-style plain GPT", "transformers GPT2LMHeadModel"):
        ratio = medians[other] / medians["gptcourse GPT"]
        print(f"throughput ratio gptcourse / {other}: {ratio:.2f} (goal >= 1.0)")


if __name__ == "__main__":
    main()
