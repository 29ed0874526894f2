"""Chapter 14: does pre-training help GPT-1-style fine-tuning, and does the auxiliary LM loss (λ)?

The four conditions of the chapter, each over several seeds: the speaker task of
:func:`gptcourse.finetune.build_speaker_task` (which of the 4 speakers with the most lines says a
pair of consecutive lines; split by speech), fine-tuned from

* ``scratch``: the same architecture, randomly initialised (the seed sets the initial weights);
* ``pretrained``: :func:`gptcourse.finetune.pretrained_speaker_lm`, the course's cpu recipe trained
  on the pre-training text (the held-out speeches removed), cached and shared with the chapter;

with ``λ = 0`` (``L2`` only) or ``λ = 0.5`` (``L3 = L2 + 0.5·L1``, GPT-1's setting). Every run uses the
same steps, batch, peak learning rate and schedule (linear warmup, linear decay to 0); the seed also
sets the head's initial weights and the order of the batches. The held-out accuracy and task loss
``L2`` are measured every ``--eval-every`` steps: the learning curves, which show whether the runs
have converged. The chapter parses the printed output (``run`` and ``curve`` lines).

Each run of 800 steps takes about five minutes on one thread at the cpu size, an hour for the
twelve. The first run also pre-trains the shared checkpoint (the recipe of
Chapter 10's model, whose training time Chapter 10 prints, 5-10 minutes on 2 threads; here the
context is 96 characters, not 64): run the chapter or one sweep first, so that two processes do not
both train it. An earlier sweep of 400 steps, whose held-out accuracy was still rising at its end, is kept in
``experiments/results/ch14_finetune_400steps.txt`` (``--steps 400 --eval-every 50``); the chapter
shows why the runs are this long::

    OMP_NUM_THREADS=1 python experiments/ch14_finetune.py --size cpu | tee experiments/results/ch14_finetune.txt
    OMP_NUM_THREADS=1 python experiments/ch14_finetune.py --size smoke     # seconds: checks the script

On two cores, the two starting points can run side by side and their outputs be concatenated
(the chapter reads every ``run``/``curve`` line, and the first header)::

    python experiments/ch14_finetune.py --starts scratch > a.txt &
    python experiments/ch14_finetune.py --starts pretrained > b.txt; wait
    cat a.txt b.txt > experiments/results/ch14_finetune.txt
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from gptcourse.data import load_text
from gptcourse.finetune import (
    GPTClassifier,
    TaskTokenizer,
    build_speaker_task,
    finetune,
    pretrained_speaker_lm,
    speaker_lm_config,
)
from gptcourse.model import GPT
from gptcourse.tokenizers import CharTokenizer

# size: (steps, eval_every) of every fine-tuning run
SIZES = {"smoke": (6, 3), "cpu": (800, 100)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="default: by size")
    parser.add_argument("--eval-every", type=int, help="default: by size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--starts", nargs="+", default=["scratch", "pretrained"], choices=["scratch", "pretrained"])
    parser.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.5])
    args = parser.parse_args()
    steps, eval_every = SIZES[args.size]
    steps, eval_every = args.steps or steps, args.eval_every or eval_every
    warmup = max(1, steps // 10)

    text = load_text("tinyshakespeare")
    task = build_speaker_task(text, n_speakers=4, val_fraction=0.2)
    tok = TaskTokenizer(CharTokenizer(text))
    print(
        f"size={args.size} steps={steps} batch_size={args.batch_size} lr={args.lr} warmup={warmup} "
        f"eval_every={eval_every} train={len(task.train)} val={len(task.val)} threads={torch.get_num_threads()}"
    )
    lm = None  # the scratch runs alone do not need the pre-trained model (nor wait for it to train)
    if "pretrained" in args.starts:
        lm = pretrained_speaker_lm(text, task, tok, args.size)
        print(f"pretrained={lm.path.name} pretrain_val_loss={lm.history.eval_val_loss[-1]:.4f}")
    for seed in args.seeds:
        for start in args.starts:
            for lam in args.lams:
                torch.manual_seed(seed)  # the scratch GPT's weights (if any), then the head's
                gpt = GPT(speaker_lm_config(tok, args.size)) if start == "scratch" else copy.deepcopy(lm.model)
                model = GPTClassifier(gpt, n_classes=len(task.speakers))
                t0 = time.perf_counter()
                h = finetune(
                    model,
                    task,
                    tok,
                    lam=lam,
                    steps=steps,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    warmup_steps=warmup,
                    seed=seed,
                    progress=False,
                    eval_every=eval_every,
                )
                seconds = time.perf_counter() - t0
                tail = h.lm_loss[-eval_every:]
                print(
                    f"run start={start} lam={lam} seed={seed} acc={h.val_accuracy:.4f} "
                    f"val_l2={h.val_task_loss:.4f} train_l1_end={sum(tail) / len(tail):.4f} "
                    f"train_l1_start={h.lm_loss[0]:.4f} seconds={seconds:.1f}"
                )
                print(
                    f"curve start={start} lam={lam} seed={seed} "
                    + " ".join(
                        f"{s}:{a:.4f}:{loss:.4f}" for s, a, loss in zip(h.eval_steps, h.eval_accuracy, h.eval_task_loss)
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
