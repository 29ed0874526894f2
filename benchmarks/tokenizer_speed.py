"""Python BPE vs tiktoken: the same GPT-2 merges, the same ids, how much slower is the Python loop?

    python benchmarks/tokenizer_speed.py [--chars 200000] [--repeats 3]

Encodes the first ``--chars`` characters of Tiny Shakespeare three ways: with
``BPETokenizer.from_tiktoken("gpt2")`` (the course's merge loop, pure Python, which merges each
distinct pre-split chunk once per call), with the same merge loop run on every chunk again (no
per-chunk cache: what ``encode`` did before it had one), and with tiktoken's ``encode`` (Rust).
It checks that all three give the same ids, and prints the best-of-``--repeats`` times and the
ratios. tiktoken runs single-threaded here (``encode``, not ``encode_batch``).
"""

from __future__ import annotations

import argparse
import time

from gptcourse.data import load_text
from gptcourse.tokenizers import BPETokenizer, _utf8, gpt2_encoding


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=200_000, help="characters of Tiny Shakespeare to encode")
    parser.add_argument("--repeats", type=int, default=3, help="runs per tokenizer; the best is kept")
    args = parser.parse_args()

    text = load_text("tinyshakespeare")[: args.chars]
    enc = gpt2_encoding("gpt2")
    start = time.perf_counter()
    ours = BPETokenizer.from_tiktoken("gpt2")
    recover = time.perf_counter() - start

    ids = enc.encode(text)
    if ours.encode(text) != ids:
        raise SystemExit("the Python BPE and tiktoken disagree: the benchmark would compare different work")

    def uncached() -> list[int]:  # the merge loop on every chunk, repeated chunks included
        return [i for chunk in ours._chunks(text) for i in ours._encode_chunk(_utf8(chunk))]

    if uncached() != ids:
        raise SystemExit("the uncached loop disagrees with tiktoken: the benchmark would compare different work")
    t_python = best_time(lambda: ours.encode(text), args.repeats)
    t_uncached = best_time(uncached, args.repeats)
    t_tiktoken = best_time(lambda: enc.encode(text), args.repeats)

    mb = len(text.encode("utf-8")) / 1e6
    chunks = ours._chunks(text)
    print(
        f"text: {len(text):,} characters, {len(ids):,} GPT-2 tokens (identical ids from all three), "
        f"{len(chunks):,} pre-split chunks, {len(set(chunks)):,} distinct"
    )
    print(f"recovering GPT-2's 50,000 merges from tiktoken's ranks: {recover:.2f} s")
    print(f"{'tokenizer':<22}{'seconds':>10}{'MB/s':>10}{'tokens/s':>14}")
    rows = (("Python BPE (course)", t_python), ("  without chunk cache", t_uncached), ("tiktoken (Rust)", t_tiktoken))
    for name, t in rows:
        print(f"{name:<22}{t:>10.4f}{mb / t:>10.2f}{len(ids) / t:>14,.0f}")
    print(f"ratio: the per-chunk cache makes the Python merge loop {t_uncached / t_python:.1f}x faster")
    print(f"ratio: the Python merge loop is {t_python / t_tiktoken:.0f}x slower than tiktoken")


if __name__ == "__main__":
    main()
