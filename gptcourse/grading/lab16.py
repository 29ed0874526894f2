"""Exercise specs and outcome targets of Lab 16, the capstone: the learner trains their own GPT,
built from their own modules, on Tiny Shakespeare and submits it.

Two small exercises are checked as usual, because the grader depends on them:

* ``lab16.build_model``: ``build_model(config: dict) -> nn.Module``, the learner's GPT from the
  checkpoint's config dict: the grader rebuilds the submitted model with it;
* ``lab16.plan_steps``: how many optimisation steps fit in a time budget, evaluations included.

The model itself is graded by :data:`OUTCOME`: its held-out loss, measured by the grader on text
it keeps (:mod:`gptcourse.grading.outcome`), against the targets below.

How the targets were set:

* 1.77 nats per character is Chapter 1's 5-gram on Tiny Shakespeare's validation split: a model
  that beats it has learned more than the spelling of the last few characters; the course's own
  CPU run (the committed outputs of ``solutions/lab16_capstone.ipynb``) reaches it with a margin
  in under 15 minutes on two cores;
* 1.55 is the loss the course's CPU recipe (Chapter 10, four minutes on two cores) ends near; the
  nanoGPT GPU configuration reaches 1.47 on an A100 (its README). It stands as the T4 target until
  the course's own GPU run sets it, and it is stated in the lab as such: ``benchmarks/gpu_suite.py``
  (part 5) trains the solution notebook for the steps a Colab T4 plans in the budget at half the
  rate ``gptcourse.estimate`` assumes (:func:`gptcourse.estimate.t4_capstone_steps`) and proposes its
  practice loss, rounded up to a hundredth.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gptcourse.grading.outcome import Outcome, Target
from gptcourse.grading.spec import Case, Misconception, Spec, close, exact, seeded
from gptcourse.model import GPT, GPTConfig

OUTCOME = Outcome(
    targets=(
        Target("beat Chapter 1's 5-gram (a CPU, 15 minutes)", 1.77, 6),
        Target("the T4 target (a Colab T4, 20 minutes)", 1.55, 4),
    ),
    context=128,
    max_windows=4000,
    checkpoint="capstone.pt",
    builder="build_model",
)


# --- Exercise 1: the builder the grader calls ------------------------------------------------------------


def build_cases(g: torch.Generator) -> list[Case]:
    """One config dict per case, as ``save_submission`` stores it (``GPTConfig`` fields)."""
    sizes = dict(vocab_size=int(torch.randint(20, 70, (), generator=g)), block_size=16, n_layer=2, n_head=2, n_embd=16)
    return [
        Case("a config without biases", ({**sizes, "bias": False},)),
        Case("grouped key/value heads and another block_size", ({**sizes, "n_kv_head": 1, "block_size": 24},)),
        Case("sinusoidal positions, dropout", ({**sizes, "pos": "sinusoidal", "dropout": 0.1},)),
        Case("the capstone's CPU shape", (dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128),)),
    ]


def run_build(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """The parameters' names and shapes of the model built; when they are the package GPT's, its
    eval-mode logits with the package model's weights loaded (what the grader will score)."""
    (config,) = case.args
    model = answer(dict(config))
    if not isinstance(model, nn.Module):
        return {"type": type(model).__name__}
    shapes = {name: list(p.shape) for name, p in model.named_parameters()}
    with seeded(torch.Generator().manual_seed(0)):
        reference = GPT(GPTConfig(**config))
    out: dict[str, Any] = {"type": "a Module", "parameters": shapes, "logits": None}
    if shapes == {name: list(p.shape) for name, p in reference.named_parameters()}:
        model.load_state_dict(reference.state_dict(), strict=False)
        idx = torch.arange(8).remainder(config["vocab_size"]).view(1, 8)
        with torch.no_grad():
            logits = model.eval()(idx)
        out["logits"] = logits[0] if isinstance(logits, tuple) else logits
    return out


def reference_build(config: dict) -> nn.Module:
    return GPT(GPTConfig(**config))


def _build(mistake: str) -> Callable[[dict], nn.Module]:
    def build(config: dict) -> nn.Module:
        if mistake == "sizes only":
            keep = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
            return GPT(GPTConfig(**{k: config[k] for k in keep}))
        if mistake == "fixed block_size":
            return GPT(GPTConfig(**{**config, "block_size": 64}))
        return GPT(GPTConfig(**{k: v for k, v in config.items() if k != "n_kv_head"}))  # "kv heads dropped"

    return build


BUILD_MODEL = Spec(
    id="lab16.build_model",
    points=2,
    name="build_model",
    reference=reference_build,
    cases=build_cases,
    run=run_build,
    compare=close(atol=1e-5, rtol=1e-4),
    hint="build your GPT from every field of the dict (it holds GPTConfig's fields, as save_submission stored "
    "them): the grader rebuilds your submitted model with this function and loads your weights into it",
    misconceptions=(
        Misconception(
            "key/value heads dropped",
            _build("kv heads dropped"),
            "n_kv_head is part of the config: a model trained with grouped key/value heads has a smaller c_attn",
        ),
        Misconception(
            "only the sizes read",
            _build("sizes only"),
            "the checkpoint's config holds every field your model was trained with (bias, positions, "
            "key/value heads...): pass them all on, or the weights will not fit the model",
        ),
        Misconception(
            "a fixed block_size",
            _build("fixed block_size"),
            "take block_size from the config too: the learned position table has block_size rows",
        ),
    ),
)


# --- Exercise 2: how many steps fit the budget -------------------------------------------------------------


def plan_cases(g: torch.Generator) -> list[Case]:
    """``(seconds_per_step, budget_seconds, eval_interval, seconds_per_eval)``."""
    cases = [
        Case("no evaluation cost", (0.1, 60.0, 100, 0.0)),
        Case("evaluations take time", (0.1, 60.0, 100, 2.0)),
        Case("an evaluation after the last step too", (1.0, 10.5, 4, 0.5)),
        Case("a budget too small for one step and its evaluation", (2.0, 2.5, 10, 1.0)),
        Case("the CPU capstone's order of magnitude", (0.085, 720.0, 500, 1.5)),
    ]
    for i in range(4):
        sps = float(f"{10 ** (-2 + 1.5 * float(torch.rand((), generator=g))):.3g}")
        budget = float(f"{60 * (1 + 19 * float(torch.rand((), generator=g))):.4g}")
        interval = int(torch.randint(10, 600, (), generator=g))
        cases.append(Case(f"random plan {i + 1}", (sps, budget, interval, float(f"{sps * interval / 20:.3g}"))))
    return cases


def reference_plan(seconds_per_step: float, budget_seconds: float, eval_interval: int, seconds_per_eval: float) -> int:
    """The largest ``n`` whose ``n`` steps and ``ceil(n / eval_interval)`` evaluations fit the budget."""
    steps = int(budget_seconds // seconds_per_step)
    while steps > 0 and steps * seconds_per_step + math.ceil(steps / eval_interval) * seconds_per_eval > budget_seconds:
        steps -= 1
    return steps


def _plan(mistake: str) -> Callable[..., int]:
    def plan(seconds_per_step: float, budget_seconds: float, eval_interval: int, seconds_per_eval: float) -> int:
        if mistake == "evaluations ignored":
            return int(budget_seconds // seconds_per_step)
        evals = (lambda n: n // eval_interval) if mistake == "last evaluation not counted" else None
        steps = int(budget_seconds // seconds_per_step)
        if mistake == "rounded":
            steps = round(budget_seconds / seconds_per_step)
        for n in range(steps, -1, -1):
            count = evals(n) if evals else math.ceil(n / eval_interval)
            if n * seconds_per_step + count * seconds_per_eval <= budget_seconds or (
                mistake == "rounded" and n == steps
            ):
                return n
        return 0

    return plan


PLAN_STEPS = Spec(
    id="lab16.plan_steps",
    points=2,
    name="plan_steps",
    reference=reference_plan,
    cases=plan_cases,
    compare=exact(),
    hint="n steps cost n * seconds_per_step, plus one evaluation every eval_interval steps and one after the last "
    "step, ceil(n / eval_interval) in all; return the largest n (an int) whose total fits the budget",
    misconceptions=(
        Misconception(
            "last evaluation not counted",
            _plan("last evaluation not counted"),
            "the loop also evaluates after the last step when it is not a multiple of eval_interval: "
            "n steps make ceil(n / eval_interval) evaluations",
        ),
        Misconception(
            "evaluations ignored",
            _plan("evaluations ignored"),
            "evaluations take time too: every eval_interval steps, and after the last one",
        ),
        Misconception(
            "rounded",
            _plan("rounded"),
            "a step that does not fit the budget cannot be done: round down, never to the nearest",
        ),
    ),
)

SPECS = (BUILD_MODEL, PLAN_STEPS)
