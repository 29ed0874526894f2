"""Benchmark 3: how much faster greedy decoding of 200 new tokens is with the KV cache (CPU).

The model is a character-level GPT with a 256-token context (4 layers, 4 heads, 256 wide,
3.2M parameters, random weights: speed does not depend on what was learned). Both runs must produce
identical tokens; they alternate so that a noisy machine slows both alike.

    python benchmarks/kv_cache_speedup.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gptcourse.generate import generate
from gptcourse.model import GPT, GPTConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--prompt", type=int, default=16, help="prompt length in tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=256, n_layer=4, n_head=4, n_embd=256, bias=False))
    prompt = torch.randint(0, 65, (1, args.prompt))
    times: dict[bool, list[float]] = {True: [], False: []}
    outputs = {}
    for _ in range(args.repeats):
        for use_cache in (True, False):
            t0 = time.perf_counter()
            outputs[use_cache] = generate(model, prompt, args.new_tokens, temperature=0, use_cache=use_cache)
            times[use_cache].append(time.perf_counter() - t0)
    identical = torch.equal(outputs[True], outputs[False])
    print(
        f"model: {model.num_params() / 1e6:.2f}M parameters, block 256 | prompt {args.prompt} tokens, "
        f"{args.new_tokens} new tokens, greedy | {args.threads} threads | torch {torch.__version__}"
    )
    print(f"{'decoding':<18} {'seconds (median)':>17} {'tokens/s':>10}")
    for use_cache, label in ((False, "without KV cache"), (True, "with KV cache")):
        m = statistics.median(times[use_cache])
        print(f"{label:<18} {m:>17.3f} {args.new_tokens / m:>10.0f}")
    speedup = statistics.median(times[False]) / statistics.median(times[True])
    print(f"speed-up: {speedup:.1f}x (goal >= 5x) | greedy outputs identical: {identical}")
    if not identical:
        raise SystemExit("the cached and uncached outputs differ")


if __name__ == "__main__":
    main()
