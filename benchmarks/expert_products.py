"""Benchmark: why 64 experts cost more than 8 even when the dispatch is free.

``moe_dispatch.py`` shows that with 64 experts the step's extra time is in the experts' own matrix
products (its "experts alone" row), not in getting the tokens to them. This one looks at that
product by itself: the same rows (``--rows``, the assignments of one batch), the same ``C -> H``
weights per expert, split over 8 experts or over 64, so the FLOPs are equal, computed four ways,
side by side (round-robin), on one thread and on two:

* ``one mm per expert``: what the sorted dispatch does (each expert's slice times its weight);
* ``torch.bmm, equal blocks``: one batched product, every expert given the same number of rows
  (the experts' weights stacked beforehand; the padded dispatch's kind of product, with no padding);
* ``F.grouped_mm``: PyTorch's grouped product over the same stacked weights and row offsets;
* ``nested bmm``: a nested tensor of the slices times a nested tensor of the weights.

    python benchmarks/expert_products.py
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import round_robin


def products(n_expert: int, rows: int, n_embd: int, hidden: int) -> dict[str, Callable[[], object]]:
    """The four ways of computing ``x_e @ W_e`` for ``n_expert`` experts of ``rows // n_expert`` rows each."""
    torch.manual_seed(0)
    per_expert = rows // n_expert
    x = torch.randn(n_expert * per_expert, n_embd)
    weights = torch.randn(n_expert, n_embd, hidden)
    slices, blocks = x.split(per_expert), x.view(n_expert, per_expert, n_embd)
    offsets = torch.arange(1, n_expert + 1, dtype=torch.int32) * per_expert
    nested_x, nested_w = torch.nested.nested_tensor(list(slices)), torch.nested.nested_tensor(list(weights))
    ways: dict[str, Callable[[], object]] = {
        "one mm per expert": lambda: [rows_e @ w for rows_e, w in zip(slices, weights, strict=True)],
        "torch.bmm, equal blocks": lambda: torch.bmm(blocks, weights),
        "nested bmm": lambda: torch.bmm(nested_x, nested_w),
    }
    if hasattr(F, "grouped_mm"):  # new in torch 2.8
        ways["F.grouped_mm"] = lambda: F.grouped_mm(x, weights, offs=offsets)
    return ways


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--rows", type=int, default=4096, help="assignments: 2048 tokens x top-2")
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="products per turn")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    few, many = args.experts[0], args.experts[-1]
    print(
        f"{args.rows} rows x ({args.n_embd} -> {args.hidden}), split over {' or '.join(map(str, args.experts))} "
        f"experts (equal FLOPs) | forward product only | device cpu | torch {torch.__version__} "
        f"| median of {args.rounds} turns of {args.steps} products"
    )
    for threads in args.threads:
        torch.set_num_threads(threads)
        ways = {e: products(e, args.rows, args.n_embd, args.hidden) for e in args.experts}
        steps = {(name, e): way for e, named in ways.items() for name, way in named.items()}
        times = round_robin(steps, args.rounds, args.steps, "cpu")
        header = "".join(f"{f'{e} x {args.rows // e} rows (ms)':>22}" for e in args.experts)
        print(f"\n## {threads} thread{'s' if threads > 1 else ''}\n{'':<26}{header}{f'ratio {many}/{few}':>12}")
        for name in ways[few]:
            ms = [1000 * statistics.median(times[(name, e)]) for e in args.experts]
            print(f"{name:<26}" + "".join(f"{m:>22.2f}" for m in ms) + f"{ms[-1] / ms[0]:>12.2f}")


if __name__ == "__main__":
    main()
