"""Benchmark: does a mixture-of-experts layer cost the same with 64 experts as with 8?

Each token visits ``k`` experts of the same width in both cases (equal active compute per token),
so only the dispatch, getting the tokens to their experts and back, can make more experts cost
more. Forward + backward of a small MoE GPT, the configurations taking turns (round-robin) so that
a noisy machine slows them alike. Three dispatches side by side:

* ``sorted``: gptcourse without a capacity (assignments sorted by expert, one sync per layer);
* ``padded``: gptcourse with a capacity factor (one batched product over an ``(E, capacity, C)``
  grid; the path that compiles without graph breaks);
* ``per-expert nonzero``: the dispatch gptcourse used before, written here for comparison: a
  ``torch.nonzero`` over all assignments for every expert (a host-device sync each, and work that
  grows with the number of experts).

    python benchmarks/moe_dispatch.py                    # CPU, 2 threads
    python benchmarks/moe_dispatch.py --device cuda --batch-size 32 --block-size 256
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import round_robin

from gptcourse.model import GPT, GPTConfig
from gptcourse.moe import MoE, load_balancing_loss


def nonzero_dispatch(self: MoE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The replaced forward: each expert finds its tokens with ``torch.nonzero`` over all of them."""
    B, T, C = x.shape
    flat = x.reshape(B * T, C)
    gates, experts, keep, probs = self.route(flat)
    out = torch.zeros_like(flat)
    for e, expert in enumerate(self.experts):
        token, slot = torch.nonzero((experts == e) & keep, as_tuple=True)
        if token.numel():
            out.index_add_(0, token, gates[token, slot, None] * expert(flat[token]))
    return out.view(B, T, C), load_balancing_loss(probs, experts, self.alpha)


def build(n_expert: int, dispatch: str, args: argparse.Namespace) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=65,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=4,
        n_embd=args.n_embd,
        bias=False,
        ffn="moe",
        n_expert=n_expert,
        expert_top_k=args.top_k,
        expert_hidden=args.expert_hidden,
        capacity_factor=args.capacity_factor if dispatch == "padded" else None,
    )
    model = GPT(config).to(args.device)
    if dispatch == "per-expert nonzero":
        for module in model.modules():
            if isinstance(module, MoE):
                module.forward = nonzero_dispatch.__get__(module)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--expert-hidden", type=int, default=256)
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="steps per turn")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dispatches = ["sorted", "padded", "per-expert nonzero"]
    models = {(d, e): build(e, d, args) for d in dispatches for e in args.experts}
    x = torch.randint(0, 65, (args.batch_size, args.block_size), device=args.device)

    def training_step(model: GPT):
        def step():
            model.zero_grad(set_to_none=True)
            model(x, x)[1].backward()

        return step

    times = round_robin(
        {key: training_step(model) for key, model in models.items()}, args.rounds, args.steps, args.device
    )
    print(
        f"MoE GPT: {args.n_layer} layers, n_embd {args.n_embd}, experts {args.expert_hidden} wide, top-{args.top_k}, "
        f"batch {args.batch_size} x {args.block_size} | forward + backward | device {args.device}, "
        f"{args.threads} threads | torch {torch.__version__} | median of {args.rounds} turns of {args.steps} steps"
    )
    print(
        f"{'dispatch':<20}"
        + "".join(f"{f'{e} experts (ms)':>17}" for e in args.experts)
        + f"{f'ratio {args.experts[-1]}/{args.experts[0]}':>12}"
    )
    for d in dispatches:
        ms = [1000 * statistics.median(times[(d, e)]) for e in args.experts]
        print(f"{d:<20}" + "".join(f"{m:>17.1f}" for m in ms) + f"{ms[-1] / ms[0]:>12.2f}")
    print(
        f"goal: ratio <= 1.5 for sorted, the default dispatch (padded: capacity factor {args.capacity_factor}, "
        "for torch.compile and accelerators; its batched products are measured here too)"
    )


if __name__ == "__main__":
    main()
