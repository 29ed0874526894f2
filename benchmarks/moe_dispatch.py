"""Benchmark: does a mixture-of-experts layer cost the same with 64 experts as with 8?

Each token visits ``k`` experts of the same width in both cases (equal active compute per token).
Forward + backward of a small MoE GPT, the configurations taking turns (round-robin) so that a
noisy machine slows them alike, at several batch sizes (tokens per batch). Three dispatches side
by side, and a floor:

* ``sorted``: gptcourse without a capacity (assignments sorted by expert, one sync per layer);
* ``padded``: gptcourse with a capacity factor (one batched product over an ``(E, capacity, C)``
  grid; the path that compiles without graph breaks);
* ``per-expert nonzero``: the dispatch gptcourse used before, written here for comparison: a
  ``torch.nonzero`` over all assignments for every expert (a host-device sync each, and work that
  grows with the number of experts);
* ``experts alone``: no router, no dispatch and nothing else of the model: each layer's experts
  forward and backward on contiguous chunks of the sizes its router gives the batch, one product
  per expert as in ``sorted``. Fewer rows per expert make those products slower per row (on a CPU,
  a small product does not use the second thread: ``expert_products.py``), so 64 experts cost more
  than 8 here even with no dispatch at all; ``sorted - experts alone`` is what the dispatch and the
  rest of the model cost, and that part should not grow with the number of experts. ``padded``
  escapes the floor by running all the experts in one batched product.

    python benchmarks/moe_dispatch.py                    # CPU, 2 threads, 2048, 4096 and 8192 tokens
    python benchmarks/moe_dispatch.py --device cuda --batch-size 32 --block-size 256
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from timing import round_robin

from gptcourse.model import GPT, GPTConfig
from gptcourse.moe import MoE, load_balancing_loss

DISPATCHES = ("sorted", "padded", "per-expert nonzero")
FLOOR = "experts alone"


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


def build(n_expert: int, dispatch: str, block_size: int, args: argparse.Namespace) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=65,
        block_size=block_size,
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


def training_step(model: GPT, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x, x)[1].backward()

    return step


def experts_alone(model: GPT, x: torch.Tensor) -> tuple[Callable[[], None], list[int]]:
    """The floor: forward + backward of each MoE layer's experts on contiguous chunks of the sizes
    its router gives ``x`` (random inputs of those sizes), with nothing else of the model. Returns
    the step and those sizes (assignments per expert, layer after layer)."""
    model(x, x)  # each MoE layer records its tokens_per_expert
    layers = [(m.experts, m.tokens_per_expert.tolist()) for m in model.modules() if isinstance(m, MoE)]
    inputs = [torch.randn(sum(sizes), model.config.n_embd, device=x.device, requires_grad=True) for _, sizes in layers]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        total = x.new_zeros((), dtype=torch.float32)
        for (experts, sizes), rows in zip(layers, inputs, strict=True):
            rows.grad = None
            y = torch.cat([expert(chunk) for expert, chunk in zip(experts, rows.split(sizes), strict=True)])
            total = total + y.square().mean()
        total.backward()

    return step, [size for _, sizes in layers for size in sizes]


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
    parser.add_argument("--block-size", type=int, nargs="+", default=[64, 128, 256], help="one table for each")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="steps per turn")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--goal", type=float, default=1.5, help="the largest acceptable ratio")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    few, many = args.experts[0], args.experts[-1]
    print(
        f"MoE GPT: {args.n_layer} layers, n_embd {args.n_embd}, experts {args.expert_hidden} wide, top-{args.top_k} "
        f"| forward + backward | device {args.device}, {args.threads} threads | torch {torch.__version__} "
        f"| median of {args.rounds} turns of {args.steps} steps"
    )
    for block_size in args.block_size:
        tokens = args.batch_size * block_size
        x = torch.randint(0, 65, (args.batch_size, block_size), device=args.device)
        steps: dict[tuple[str, int], Callable[[], None]] = {}
        routed: dict[int, list[int]] = {}  # assignments per expert, all layers: the floor's chunks
        for e in args.experts:
            for d in DISPATCHES:
                steps[(d, e)] = training_step(build(e, d, block_size, args), x)
            steps[(FLOOR, e)], routed[e] = experts_alone(build(e, "sorted", block_size, args), x)
        times = round_robin(steps, args.rounds, args.steps, args.device)
        ms = {key: 1000 * statistics.median(t) for key, t in times.items()}
        per_expert = ", ".join(f"{tokens * args.top_k // e} with {e}" for e in args.experts)
        shape = f"{args.batch_size} x {block_size}"
        print(f"\n## {tokens} tokens per batch ({shape}): mean assignments per expert {per_expert}")
        header = "".join(f"{f'{e} experts (ms)':>17}" for e in args.experts)
        print(f"{'':<26}{header}{f'ratio {many}/{few}':>12}")
        rows = {d: [ms[(d, e)] for e in args.experts] for d in (*DISPATCHES, FLOOR)}
        rows["the rest (sorted - alone)"] = [ms[("sorted", e)] - ms[(FLOOR, e)] for e in args.experts]
        for name, values in rows.items():
            print(f"{name:<26}" + "".join(f"{v:>17.1f}" for v in values) + f"{values[-1] / values[0]:>12.2f}")
        spread = ", ".join(f"{min(sizes)} to {max(sizes)} with {e}" for e, sizes in routed.items())
        print(f"assignments per expert as routed (any layer): {spread}")
        verdicts = []
        for d in ("sorted", "padded"):  # gptcourse's two dispatches
            ratio = rows[d][-1] / rows[d][0]
            verdicts.append(f"{d} {'met' if ratio <= args.goal else 'NOT met'} ({ratio:.2f})")
        print(f"goal ({many} experts <= {args.goal}x {few}): " + ", ".join(verdicts))
    print(
        f"\npadded: capacity factor {args.capacity_factor}, for torch.compile and accelerators. experts alone: the "
        "experts' own products on the routed chunk sizes, with no router, dispatch or rest of the model (the floor)"
    )


if __name__ == "__main__":
    main()
