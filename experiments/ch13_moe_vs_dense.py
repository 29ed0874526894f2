"""Chapter 13: a mixture-of-experts GPT against a dense GPT with the same active parameters, over seeds.

Character-level Tiny Shakespeare, Chapter 1's split (the first 90% of the ids to train, the last
10% held out). Three variants of one small GPT, trained with the same recipe, steps and batches:

* ``dense``: every block has the usual MLP (``C -> 4C -> C``);
* ``moe``: every MLP becomes a Switch-style mixture of 8 such MLPs, each token routed to one
  (``expert_top_k=1``), with a capacity factor of 1.25 in every forward pass, training included
  (tokens over an expert's capacity are dropped and ride the residual stream), and the Switch
  load-balancing loss with ``alpha = 0.01``;
* ``moe-no-balance``: the same MoE with ``alpha = 0`` (no balancing loss), to see what the loss
  does for the routing.

A token uses the same parameters in all three (one ``4C`` MLP per block, plus the MoE's router):
equal active parameters, eight times the feed-forward parameters in total for the MoEs.
For every run the script prints one ``RUN`` line of JSON: the held-out loss of the final model on
every held-out character (``gptcourse.loops.heldout_loss``), the evaluation curve, and, for the
MoEs, the share of the routing assignments that each expert received and the fraction of
assignments dropped for capacity, per layer, averaged over windows of training steps (training
forward passes only). A ``CONFIG`` line gives the recipe, a ``NGRAM`` line Chapter 1's 5-gram
(k = 0.01, fitted on the training split) on the same held-out text.

Run (about 12 minutes on one thread at the cpu size; seconds at the smoke size)::

    OMP_NUM_THREADS=1 python experiments/ch13_moe_vs_dense.py --size cpu \\
        | tee experiments/results/ch13_moe_vs_dense.txt
    OMP_NUM_THREADS=1 python experiments/ch13_moe_vs_dense.py --size smoke
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from gptcourse.data import load_text, train_val_split
from gptcourse.loops import heldout_loss
from gptcourse.model import GPT, GPTConfig
from gptcourse.moe import MoE, active_params
from gptcourse.ngram import NGramModel
from gptcourse.tokenizers import CharTokenizer
from gptcourse.train import TrainConfig, train

VARIANTS = {
    "dense": dict(ffn="mlp"),
    "moe": dict(ffn="moe", n_expert=8, expert_top_k=1, capacity_factor=1.25, moe_aux_weight=0.01),
    "moe-no-balance": dict(ffn="moe", n_expert=8, expert_top_k=1, capacity_factor=1.25, moe_aux_weight=0.0),
}

# size: (GPTConfig kwargs without the vocabulary, TrainConfig kwargs without the seed)
RECIPES = {
    "smoke": (
        dict(block_size=32, n_layer=2, n_head=2, n_embd=32, bias=False, dropout=0.0),
        dict(max_steps=30, batch_size=8, lr=3e-3, warmup_steps=3, eval_interval=10, eval_iters=2),
    ),
    "cpu": (
        dict(block_size=64, n_layer=2, n_head=4, n_embd=64, bias=False, dropout=0.0),
        dict(
            max_steps=1500,
            batch_size=16,
            lr=3e-3,
            min_lr=3e-4,
            warmup_steps=75,
            beta2=0.99,
            eval_interval=250,
            eval_iters=10,
        ),
    ),
}
WINDOWS = 30  # the routing statistics are averaged over this many windows of training steps


def record_routing(model: GPT) -> tuple[list[list[torch.Tensor]], list[list[float]], list]:
    """Forward hooks on every MoE layer of ``model``: per layer, the ``(E,)`` expert shares and the
    fraction of assignments dropped, of every training forward pass; and the hooks' handles."""
    shares, dropped, handles = [], [], []
    for block in model.transformer.h:
        if isinstance(block.mlp, MoE):
            layer_shares, layer_dropped = [], []
            shares.append(layer_shares)
            dropped.append(layer_dropped)

            def hook(module: MoE, args: tuple, out: tuple, s: list = layer_shares, d: list = layer_dropped) -> None:
                if module.training:  # evaluation passes are not training
                    counts = module.tokens_per_expert.float()
                    s.append(counts / counts.sum())
                    d.append(module.dropped.item() / counts.sum().item())

            handles.append(block.mlp.register_forward_hook(hook))
    return shares, dropped, handles


def windowed(values: list, windows: int) -> list:
    """The mean of ``values`` (tensors or floats, one per step) over ``windows`` equal runs of steps."""
    edges = [round(i * len(values) / windows) for i in range(windows + 1)]
    out = []
    for a, b in zip(edges, edges[1:]):
        chunk = values[a:b]
        if isinstance(chunk[0], torch.Tensor):
            out.append([round(v, 4) for v in torch.stack(chunk).mean(0).tolist()])
        else:
            out.append(round(sum(chunk) / len(chunk), 5))
    return out


def run(variant: str, seed: int, size: str, train_ids: torch.Tensor, val_ids: torch.Tensor, vocab_size: int) -> dict:
    """Train ``variant`` with ``seed`` (initial weights, batches) at ``size``; what it measured."""
    model_kwargs, train_kwargs = RECIPES[size]
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, **model_kwargs, **VARIANTS[variant]))
    config = TrainConfig(**train_kwargs, seed=seed, progress=False)
    shares, dropped, handles = record_routing(model)
    start = time.perf_counter()
    history = train(model, train_ids, val_ids, config, "cpu")
    seconds = time.perf_counter() - start
    for handle in handles:
        handle.remove()
    windows = min(WINDOWS, config.max_steps)
    return {
        "variant": variant,
        "seed": seed,
        "params": model.num_params(),
        "active": active_params(model),
        "heldout": round(heldout_loss(model, val_ids, model.config.block_size), 5),
        "eval_steps": history.eval_steps,
        "eval_val_loss": [round(v, 4) for v in history.eval_val_loss],
        "seconds": round(seconds, 1),
        "tokens_per_s": round(sum(history.tokens_per_s) / len(history.tokens_per_s)),
        "window_steps": [round((i + 1) * config.max_steps / windows) for i in range(windows)],
        "shares": [windowed(s, windows) for s in shares],
        "dropped": [windowed(d, windows) for d in dropped],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(RECIPES), default="cpu")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args()
    text = load_text("tinyshakespeare")
    chars = CharTokenizer(text)
    train_ids, val_ids = train_val_split(torch.tensor(chars.encode(text)))
    model_kwargs, train_kwargs = RECIPES[args.size]
    print(
        f"# {torch.__version__}, {torch.get_num_threads()} thread(s), cpu; train on {len(train_ids):,} chars, "
        f"score on all {len(val_ids):,} held-out chars"
    )
    print(
        "CONFIG "
        + json.dumps(
            {
                "size": args.size,
                "model": model_kwargs,
                "train": train_kwargs,
                "variants": {v: VARIANTS[v] for v in args.variants},
                "seeds": args.seeds,
            }
        )
    )
    # the 5-gram on the whole training split takes a while: the smoke size fits it on a slice (and scores a slice)
    fit_ids, score_ids = (train_ids, val_ids) if args.size != "smoke" else (train_ids[:100_000], val_ids[:10_000])
    ngram = NGramModel(5, k=0.01).fit(chars.decode(fit_ids.tolist()), chars.chars)
    print(
        "NGRAM "
        + json.dumps(
            {
                "n": 5,
                "k": 0.01,
                "fitted_on": len(fit_ids),
                "scored_on": len(score_ids),
                "heldout": round(math.log(ngram.perplexity(chars.decode(score_ids.tolist()))), 5),
            }
        )
    )
    for seed in args.seeds:  # seed by seed, so that a partial output already compares the variants
        for variant in args.variants:
            print("RUN " + json.dumps(run(variant, seed, args.size, train_ids, val_ids, chars.vocab_size)), flush=True)


if __name__ == "__main__":
    main()
