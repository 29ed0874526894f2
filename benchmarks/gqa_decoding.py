"""Benchmark: decoding speed with the KV cache for multi-head, grouped-query and multi-query attention.

Three GPTs that differ only in ``n_kv_head`` (8 = MHA, 2 = GQA, 1 = MQA; 4 layers, 8 heads, 256 wide,
random weights: speed does not depend on what was learned) read the same prompt and greedily generate
the same number of tokens with the cache. The runs are interleaved so that a noisy machine slows all
alike; the best of the repeats is reported, with the cache size at the end and the ratio to MHA.

    python benchmarks/gqa_decoding.py
"""

from __future__ import annotations

import argparse
import time

import torch

from gptcourse.attention import KVCache
from gptcourse.generate import generate
from gptcourse.model import GPT, GPTConfig

VARIANTS = {"MHA": 8, "GQA": 2, "MQA": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=256, help="prompt length in tokens")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {}
    for name, n_kv_head in VARIANTS.items():
        torch.manual_seed(0)
        models[name] = GPT(
            GPTConfig(
                vocab_size=65,
                block_size=args.prompt + args.new_tokens,
                n_layer=4,
                n_head=8,
                n_embd=256,
                n_kv_head=n_kv_head,
            )
        ).eval()
    prompt = torch.randint(0, 65, (args.batch, args.prompt))
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            t0 = time.perf_counter()
            generate(model, prompt, args.new_tokens, temperature=0)
            rates[name].append(args.batch * args.new_tokens / (time.perf_counter() - t0))
    print(
        f"prompt {args.prompt}, {args.new_tokens} new tokens, batch {args.batch}, {args.threads} thread(s), "
        f"best of {args.repeats}"
    )
    print(f"{'':4s} {'n_kv_head':>9} {'cache bytes':>12} {'tokens/s':>9} {'vs MHA':>7}")
    full = torch.randint(0, 65, (args.batch, args.prompt + args.new_tokens))  # the cache at the end
    for name, model in models.items():
        cache = KVCache(model.config.n_layer)
        with torch.no_grad():
            model(full, cache=cache)
        print(
            f"{name:4s} {VARIANTS[name]:9d} {cache.nbytes():12,d} {max(rates[name]):9.0f} "
            f"{max(rates[name]) / max(rates['MHA']):6.2f}x"
        )


if __name__ == "__main__":
    main()
