"""Benchmark 1: training-step throughput of gptcourse's GPT vs Hugging Face's GPT2LMHeadModel.

Same configuration, same batch, same optimiser (AdamW), same process; the two models take turns
(round-robin) so that a noisy machine slows both alike. Prints ms per step, tokens/s and the ratio
(gptcourse / transformers; > 1 means gptcourse is faster).

    python benchmarks/train_throughput.py                 # CPU, 2 threads
    python benchmarks/train_throughput.py --device cuda --n-layer 12 --n-embd 768 --block-size 1024 --batch-size 8
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import round_robin


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

    def training_step(model, optimizer, loss_of):
        def step():
            loss = loss_of(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    steps = {
        "gptcourse GPT": training_step(ours, torch.optim.AdamW(ours.parameters(), lr=1e-4), lambda m: m(x, x)[1]),
        "transformers GPT2LMHeadModel": training_step(
            theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-4), lambda m: m(input_ids=x, labels=x).loss
        ),
    }
    times = round_robin(steps, args.rounds, args.steps, args.device)
    tokens = args.batch_size * args.block_size
    print(
        f"config: {args.n_layer} layers, {args.n_head} heads, n_embd {args.n_embd}, block {args.block_size}, "
        f"batch {args.batch_size}, vocab {args.vocab_size} | device {args.device}, {args.threads} threads | "
        f"torch {torch.__version__}"
    )
    print(
        f"parameters: gptcourse {n_ours:,} | transformers {n_theirs:,} "
        "(transformers also counts its position table as gptcourse does; both tie the output layer)"
    )
    print(f"{'model':<30} {'ms/step (median)':>17} {'tokens/s':>10}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, m in medians.items():
        print(f"{name:<30} {1000 * m:>17.1f} {tokens / m:>10.0f}")
    ratio = medians["transformers GPT2LMHeadModel"] / medians["gptcourse GPT"]
    print(f"throughput ratio gptcourse / transformers: {ratio:.2f} (goal >= 1.0)")


if __name__ == "__main__":
    main()
