"""Chapter 3: can Bengio's MLP beat Chapter 1's 5-gram (1.770 nats per character) on the held-out split?

A small sweep at the cpu size: character-level Tiny Shakespeare, Chapter 1's split (the first 90% of
the ids to train, the last 10% held out).

* ``--phase dev`` (choosing): the last 10% of the training ids is carved off as a dev split; each
  configuration trains on the rest, its dev loss is measured every ``--eval-every`` steps, and the
  best dev loss and its step are reported (early stopping). The 5-gram is fitted on the same 81%
  and scored on the same dev text, so the two compare on equal data.
* ``--phase final`` (scoring): the chosen configuration trains on the whole training split, as
  Chapter 1's 5-gram does, and its score is the held-out loss of its last step (the held-out loss
  is printed every ``--eval-every`` steps to show the curve; nothing is chosen from it); the 5-gram
  (k = 0.01, fitted on the whole training split) is scored on the same held-out text.

Why not score the dev-phase models on the held-out split: the 10% carved off is the text just
before the held-out 10%, where the plays of the held-out text begin (The Taming of the Shrew).
The 5-gram fitted without it scores about 2.01 nats per character on the held-out split instead of
1.77; a model trained without it would be judged on a handicap the 5-gram does not have.

The model is :class:`gptcourse.neural_lm.MLPLM` trained by AdamW on random minibatches, as
:func:`gptcourse.neural_lm.fit` does, with an optional linear decay of the learning rate to zero.

Run (a few minutes per configuration and seed on one thread)::

    OMP_NUM_THREADS=1 python experiments/ch03_mlp_sweep.py --phase dev
    OMP_NUM_THREADS=1 python experiments/ch03_mlp_sweep.py --phase final --configs NAME --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from gptcourse.data import load_text, train_val_split
from gptcourse.neural_lm import MLPLM, context_windows, evaluate
from gptcourse.ngram import NGramModel
from gptcourse.tokenizers import CharTokenizer

# name: (context, n_embd, n_hidden, batch_size, lr, weight_decay, steps, linear decay of the lr to 0)
CONFIGS = {
    "chapter-before": (8, 24, 256, 128, 3e-3, 0.0, 8000, False),
    "c8-e24-h256-b512": (8, 24, 256, 512, 3e-3, 0.0, 12000, False),
    "c8-e24-h256-b512-decay": (8, 24, 256, 512, 3e-3, 0.0, 12000, True),
    "c8-e32-h512-b512-decay": (8, 32, 512, 512, 3e-3, 0.0, 12000, True),
    "c12-e32-h512-b512-decay": (12, 32, 512, 512, 3e-3, 0.0, 12000, True),
    "c8-e32-h512-b512-decay-wd0.1": (8, 32, 512, 512, 3e-3, 0.1, 12000, True),
    "c8-e32-h512-b512-decay-wd0.3": (8, 32, 512, 512, 3e-3, 0.3, 12000, True),
}


def train(name: str, ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int, seed: int, eval_every: int) -> dict:
    """Train configuration ``name`` on ``ids``; the loss on ``eval_ids`` every ``eval_every`` steps."""
    context, n_embd, n_hidden, batch_size, lr, weight_decay, steps, decay = CONFIGS[name]
    x, y = context_windows(ids, context)
    x_eval, y_eval = context_windows(eval_ids, context)
    torch.manual_seed(seed)
    model = MLPLM(vocab_size, context, n_embd, n_hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    curve, train_sum, train_n = [], 0.0, 0
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if decay:
            for group in optimizer.param_groups:
                group["lr"] = lr * (1 - (step - 1) / steps)
        rows = torch.randint(len(y), (batch_size,), generator=generator)
        _, loss = model(x[rows], y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_sum, train_n = train_sum + loss.item(), train_n + 1
        if step % eval_every == 0 or step == steps:
            curve.append((step, train_sum / train_n, evaluate(model, x_eval, y_eval)))
            train_sum, train_n = 0.0, 0
    seconds = time.perf_counter() - start
    # the training loss of the final parameters, on a fixed sample of 100k training pairs
    sample = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))[:100_000]
    best_step, _, best = min(curve, key=lambda c: c[2])
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "seconds": seconds,
        "curve": curve,
        "best_step": best_step,
        "best": best,
        "last": curve[-1][2],
        "train": evaluate(model, x[sample], y[sample]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", choices=("dev", "final"), default="dev")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--eval-every", type=int, default=1000)
    args = parser.parse_args()
    text = load_text("tinyshakespeare")
    chars = CharTokenizer(text)
    train_all, heldout = train_val_split(torch.tensor(chars.encode(text)))
    if args.phase == "dev":
        ids, eval_ids = train_val_split(train_all)
        eval_name = "dev"
    else:
        ids, eval_ids = train_all, heldout
        eval_name = "held-out"
    print(
        f"phase {args.phase}: {torch.get_num_threads()} thread(s); train on {len(ids):,} chars, "
        f"score on {len(eval_ids):,} {eval_name} chars"
    )
    for n, k in ((4, 0.1), (5, 0.01), (5, 0.1)):
        ngram = NGramModel(n, k=k).fit(chars.decode(ids.tolist()), chars.chars)
        print(
            f"{n}-gram (k={k}) fitted on the same training chars, {eval_name}: "
            f"{math.log(ngram.perplexity(chars.decode(eval_ids.tolist()))):.4f} nats/char"
        )
    for name in args.configs:
        for seed in args.seeds:
            r = train(name, ids, eval_ids, chars.vocab_size, seed, args.eval_every)
            print(
                f"RESULT phase={args.phase} {name} seed={seed} params={r['params']} seconds={r['seconds']:.0f} "
                f"train={r['train']:.4f} {eval_name}_last={r['last']:.4f} "
                f"{eval_name}_best={r['best']:.4f}@{r['best_step']}"
            )
            print(
                f"  curve (step: mean train loss since the last eval / {eval_name} loss): "
                + " ".join(f"{s}:{t:.3f}/{d:.3f}" for s, t, d in r["curve"]),
                flush=True,
            )


if __name__ == "__main__":
    main()
