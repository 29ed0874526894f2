"""Benchmark: time per generated token inside the context window and past it, with the KV cache.

Past ``block_size`` a model with learned positions cannot slide its cache, so ``generate`` keeps the
context's last half and rebuilds the cache once per ``block_size // 2`` tokens
(``gptcourse.generate.context_start``). The reference is what cropping at every token costs: a
full forward over the last ``block_size`` tokens for each new token (what ``generate`` did before).
All three are greedy, on the same random-weight model, interleaved over repeats; best of the repeats.

    python benchmarks/generate_past_window.py    # goal: past the window <= 2x the time inside it
"""

from __future__ import annotations

import argparse
import time

import torch

from gptcourse.generate import generate
from gptcourse.model import GPT, GPTConfig


@torch.no_grad()
def crop_every_token(model: GPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding that feeds the last ``block_size`` tokens at every step (no cache)."""
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size :], last_only=True)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--past", type=int, default=256, help="tokens generated past the window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=args.block_size, n_layer=4, n_head=4, n_embd=256)).eval()
    prompt = torch.randint(0, 65, (1, 8))
    inside_n = args.block_size - prompt.size(1)  # tokens until the window is full
    full = generate(model, prompt, inside_n, temperature=0)  # a context that fills the window exactly
    times: dict[str, list[float]] = {
        "inside the window (cache)": [],
        "past the window (cache, half-window)": [],
        "past the window (crop every token)": [],
    }
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        generate(model, prompt, inside_n, temperature=0)
        times["inside the window (cache)"].append((time.perf_counter() - t0) / inside_n)
        t0 = time.perf_counter()
        generate(model, full, args.past, temperature=0)
        times["past the window (cache, half-window)"].append((time.perf_counter() - t0) / args.past)
        t0 = time.perf_counter()
        crop_every_token(model, full, args.past)
        times["past the window (crop every token)"].append((time.perf_counter() - t0) / args.past)
    best = {name: min(ts) for name, ts in times.items()}
    inside = best["inside the window (cache)"]
    print(
        f"model: {model.num_params() / 1e6:.2f}M parameters, block {args.block_size} | {inside_n} tokens inside "
        f"the window, {args.past} past it | greedy, batch 1 | {args.threads} threads | torch {torch.__version__} "
        f"| best of {args.repeats}"
    )
    print(f"{'decoding':38s} {'ms/token':>9} {'vs inside':>10}")
    for name, seconds in best.items():
        print(f"{name:38s} {1000 * seconds:9.2f} {seconds / inside:9.2f}x")
    print(f"past / inside with the cache: {best['past the window (cache, half-window)'] / inside:.2f}x (goal <= 2x)")


if __name__ == "__main__":
    main()
