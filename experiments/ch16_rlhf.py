"""Chapter 16: SFT -> reward model -> PPO, and SFT -> DPO, over several seeds.

Each seed runs Chapter 16's whole pipeline with the recipe of ``gptcourse.rlhf.RECIPES`` for the
chosen size (the chapter's own run is seed 0 of it): the same instruction set and sloppy
demonstrations for every seed; the seed sets the model's initialisation, the order of the SFT and
reward-model batches, the responses sampled for the comparisons, PPO's samples and DPO's batches.

1. SFT on the demonstrations;
2. comparisons from the SFT model (4 samples per prompt, pairs more than 0.2 apart in labeller
   score), a reward model trained on them, and its preference accuracy on held-out comparisons
   (the test prompts, other samples);
3. PPO from the SFT model against the reward model, and, from the same SFT model, DPO on the same
   comparisons (no reward model).

Every model is scored on the 300 held-out test prompts, greedy: exact match, mean labeller score,
and the share of answers that are right but padded with filler. The ``RESULT`` lines are what
Chapter 16 parses.

Run (at the cpu size, 5 to 8 minutes per seed on one thread of a busy 2-core machine: the TIME lines)::

    OMP_NUM_THREADS=1 python experiments/ch16_rlhf.py --size cpu --seeds 0 1 2 | tee experiments/results/ch16_rlhf.txt
    OMP_NUM_THREADS=1 python experiments/ch16_rlhf.py --size cpu --seeds 3 4 | tee -a experiments/results/ch16_rlhf.txt
    OMP_NUM_THREADS=1 python experiments/ch16_rlhf.py --size smoke --seeds 0 1   # seconds: a check of the script
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import torch

from gptcourse import rlhf
from gptcourse.model import GPT, GPTConfig

PPO, DPO = rlhf.PPO_SETTINGS, rlhf.DPO_SETTINGS


def data(recipe: dict) -> dict:
    """The fixed data of every seed: demonstrations, reward-model and PPO prompts, test prompts."""
    rl_words = rlhf.random_words(400, seed=2)
    return dict(
        demos=rlhf.demonstrations(rlhf.random_words(recipe["demo_words"], seed=1), sloppy=0.3, seed=0),
        rm_prompts=[p for p, _ in rlhf.instruction_set(rl_words[: recipe["rm_words"]])],
        ppo_prompts=[p for p, _ in rlhf.instruction_set(rl_words[300:])],
        test_prompts=[p for p, _ in rlhf.instruction_set(rlhf.random_words(50, seed=3))],
    )


def scores(model: GPT, rm: rlhf.RewardModel, prompts: list[str], device: str) -> dict:
    """Greedy answers to ``prompts``: exact match, labeller score, filler share, mean learned reward."""
    responses = rlhf.sample_responses(model, prompts, temperature=0, device=device)
    pairs = list(zip(prompts, responses))
    with torch.no_grad():
        reward = rm.eval().score(pairs, device).mean().item()
    n = len(pairs)
    return dict(
        exact=sum(rlhf.exact_match(p, r) for p, r in pairs) / n,
        score=sum(rlhf.labeller_score(p, r) for p, r in pairs) / n,
        filler=sum(rlhf.has_filler(p, r) for p, r in pairs) / n,
        reward=reward,
        n=n,
    )


def run_seed(seed: int, recipe: dict, d: dict, device: str) -> list[str]:
    """The whole pipeline for one seed; returns its ``RESULT`` lines."""
    times, start = {}, time.perf_counter()
    tok = rlhf.tokenizer()
    config = GPTConfig(
        vocab_size=tok.vocab_size, block_size=40, n_layer=recipe["n_layer"], n_head=4, n_embd=recipe["n_embd"]
    )
    torch.manual_seed(seed)
    policy = GPT(config).to(device)
    rlhf.sft(policy, d["demos"], steps=recipe["sft_steps"], device=device, seed=seed, progress=False)
    sft_model = copy.deepcopy(policy)
    times["sft"] = time.perf_counter() - start

    start = time.perf_counter()
    comparisons = rlhf.collect_comparisons(sft_model, d["rm_prompts"], k=4, seed=seed, min_gap=0.2, device=device)
    heldout = rlhf.collect_comparisons(sft_model, d["test_prompts"], k=4, seed=1000 + seed, min_gap=0.2, device=device)
    rm = rlhf.RewardModel(copy.deepcopy(sft_model))
    rlhf.train_reward_model(
        rm, comparisons, steps=recipe["rm_steps"], batch_size=64, lr=5e-4, device=device, seed=seed, progress=False
    )
    accuracy = rlhf.preference_accuracy(rm, heldout, device)
    times["rm"] = time.perf_counter() - start

    start = time.perf_counter()
    ppo_history = rlhf.ppo(
        policy,
        sft_model,
        rm,
        d["ppo_prompts"],
        iterations=recipe["ppo_iterations"],
        device=device,
        seed=seed,
        progress=False,
        **PPO,
    )
    times["ppo"] = time.perf_counter() - start

    start = time.perf_counter()
    dpo_policy = copy.deepcopy(sft_model)
    dpo_history = rlhf.dpo(
        dpo_policy, sft_model, comparisons, steps=recipe["dpo_steps"], device=device, seed=seed, progress=False, **DPO
    )
    times["dpo"] = time.perf_counter() - start

    lines = [f"RESULT seed={seed} stage=rm accuracy={accuracy:.4f} n={len(heldout)} train={len(comparisons)}"]
    for stage, model in (("sft", sft_model), ("ppo", policy), ("dpo", dpo_policy)):
        s = scores(model, rm, d["test_prompts"], device)
        lines.append(
            f"RESULT seed={seed} stage={stage} exact={s['exact']:.4f} score={s['score']:.4f} "
            f"filler={s['filler']:.4f} reward={s['reward']:.4f} n={s['n']}"
        )
    k = min(5, len(ppo_history.reward))
    lines.append(
        f"RESULT seed={seed} stage=ppo_train reward_first={sum(ppo_history.reward[:k]) / k:.4f} "
        f"reward_last={sum(ppo_history.reward[-k:]) / k:.4f} "
        f"true_first={sum(ppo_history.true_score[:k]) / k:.4f} "
        f"true_last={sum(ppo_history.true_score[-k:]) / k:.4f} kl_last={sum(ppo_history.kl[-k:]) / k:.4f}"
    )
    k = min(5, len(dpo_history.loss))
    lines.append(
        f"RESULT seed={seed} stage=dpo_train loss_first={sum(dpo_history.loss[:k]) / k:.4f} "
        f"loss_last={sum(dpo_history.loss[-k:]) / k:.4f} margin_last={sum(dpo_history.margin[-k:]) / k:.4f}"
    )
    lines.append(f"TIME seed={seed} " + " ".join(f"{name}={t:.0f}s" for name, t in times.items()))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(rlhf.RECIPES), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    recipe = rlhf.RECIPES[args.size]
    print(
        f"$ OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python experiments/ch16_rlhf.py "
        f"--size {args.size} --seeds {' '.join(map(str, args.seeds))}"
    )
    print(
        f"device {args.device} | {torch.get_num_threads()} thread(s) | torch {torch.__version__} | "
        f"{platform.processor() or platform.machine()} | {time.strftime('%Y-%m-%d')}"
    )
    print(f"recipe {recipe} | PPO {PPO} | DPO {DPO}")
    d = data(recipe)
    for seed in args.seeds:
        for line in run_seed(seed, recipe, d, args.device):
            print(line, flush=True)


if __name__ == "__main__":
    main()
