"""Chapter 15: accuracy against the number of demonstrations K, with and without the task's name, over model seeds.

For each seed, the letter-task GPT of :func:`gptcourse.incontext.recipe` at ``--size`` is
pre-trained (the seed sets its initial weights and the order of its training sequences) with
:func:`gptcourse.incontext.pretrain`, then evaluated on the held-out words by
:func:`gptcourse.incontext.accuracy_table` with K = 0, 1, 2, 4, 8 demonstrations, in two prompt
formats: without a description (K = 0 is the bare query) and opened by the task's name (K = 0 is
zero-shot as GPT-3 defines it). Every cell scores ``--n`` queries (the seed also draws them). The
chapter parses the printed ``acc`` lines (and the ``header`` and ``trained`` lines); seed 0 is the
model the chapter itself trains.

Run (about two minutes per seed on one thread at the cpu size)::

    OMP_NUM_THREADS=1 python experiments/ch15_shots.py --size cpu | tee experiments/results/ch15_shots.txt
    OMP_NUM_THREADS=1 python experiments/ch15_shots.py --size smoke     # seconds: checks the script
"""

from __future__ import annotations

import argparse
import time

import torch

from gptcourse import incontext
from gptcourse.model import GPT

SHOTS = (0, 1, 2, 4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["smoke", "cpu"], default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, help="queries per (task, K) cell; default 20 (smoke) or 300 (cpu)")
    args = parser.parse_args()
    n = args.n or {"smoke": 20, "cpu": 300}[args.size]
    config, kwargs = incontext.recipe(args.size)
    train_words, heldout_words = incontext.split_words()
    print(
        f"header size={args.size} n={n} layers={config.n_layer} width={config.n_embd} steps={kwargs['steps']} "
        f"heldout_words={len(heldout_words)} task_blind={incontext.task_blind_accuracy(heldout_words):.4f} "
        f"threads={torch.get_num_threads()}",
        flush=True,
    )
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = GPT(config)
        t0 = time.perf_counter()
        losses = incontext.pretrain(model, train_words, seed=seed, progress=False, **kwargs)
        tail = losses[-50:]
        print(
            f"trained seed={seed} final_loss={sum(tail) / len(tail):.4f} seconds={time.perf_counter() - t0:.1f}",
            flush=True,
        )
        for described in (False, True):
            table = incontext.accuracy_table(
                model, heldout_words, SHOTS, n=n, progress=False, described=described, seed=seed
            )
            for task, accs in table.items():
                for k, acc in zip(SHOTS, accs):
                    print(
                        f"acc seed={seed} described={int(described)} task={task.replace(' ', '_')} k={k} n={n} "
                        f"acc={acc:.4f}"
                    )
        print(flush=True)


if __name__ == "__main__":
    main()
