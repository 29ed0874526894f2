"""Exercise specs for Lab 9 (the training loop, ``learner/train.py``), against the course's trainer
(:mod:`gptcourse.train`): ``lr_at(step, config)``, ``configure_optimizer(model, lr, weight_decay,
betas, device)``, ``clip_gradients(parameters, max_norm)``, ``train_step(model, optimizer, x, y,
accum_steps, grad_clip)``, ``estimate_loss(model, data, batch_size, iters, device, seed)`` and
``train(model, train_data, val_data, config, device, stop_after)``, graded twice: a run from start
to end, and a run interrupted and resumed from its checkpoint.

Most of them change state (gradients, weights, a checkpoint on disk), so their drivers build what
the case describes, run the answer, and return what changed as plain data.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gptcourse.data import get_batch
from gptcourse.grading.spec import (
    AnswerError,
    Case,
    Misconception,
    Optimizer,
    Spec,
    close,
    global_seed,
    number,
    randint,
    randomize_,
    seeded,
    update_misconceptions,
)
from gptcourse.model import GPT, GPTConfig
from gptcourse.train import (
    History,
    TrainConfig,
    configure_optimizer,
    estimate_loss,
    load_checkpoint,
    lr_at,
    save_checkpoint,
    train,
    train_step,
)

TRAINER = (  # the package's trainer: no exercise may call the piece it asks for
    "gptcourse.train.lr_at",
    "gptcourse.train.configure_optimizer",
    "gptcourse.train.train_step",
    "gptcourse.train.estimate_loss",
    "gptcourse.train.train",
    "gptcourse.loops.optimizer_step",
)


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


# --- Exercise 1: the learning-rate schedule ---------------------------------------------------------------


@dataclasses.dataclass(repr=False)
class Schedule(TrainConfig):
    """A :class:`TrainConfig` that shows only its schedule's fields in messages."""

    def __repr__(self) -> str:
        return (
            f"TrainConfig(max_steps={self.max_steps}, lr={self.lr:g}, min_lr={self.min_lr!r}, "
            f"warmup_steps={self.warmup_steps})"
        )


def _phase(step: int, max_steps: int, warmup: int) -> str:
    return "warmup" if step < warmup else "after max_steps" if step >= max_steps else "cosine decay"


def schedule_cases(g: torch.Generator) -> list[Case]:
    """One call per case: ``(step, config)``; only the schedule's fields of the config matter."""

    def case(label: str, step: int, max_steps: int, lr: float, min_lr: float | None, warmup: int) -> Case:
        return Case(label, (step, Schedule(max_steps=max_steps, lr=lr, min_lr=min_lr, warmup_steps=warmup)))

    W = (100, 1e-3, 1e-4, 10)  # max_steps, lr, min_lr, warmup_steps
    cases = [
        case("first warmup step (step 0)", 0, *W),
        case("last warmup step", 9, *W),
        case("first step after warmup", 10, *W),
        case("a quarter of the decay", 32, *W),
        case("middle of the decay", 55, *W),
        case("last step before max_steps", 99, *W),
        case("at max_steps", 100, *W),
        case("after max_steps", 150, *W),
        case("no warmup, step 0", 0, 50, 3e-3, 0.0, 0),
        case("no warmup, decay to min_lr = 0", 20, 50, 3e-3, 0.0, 0),
        case("a one-step warmup", 0, 40, 2e-3, 2e-4, 1),
        case("min_lr None: lr / 10, middle of the decay", 30, 50, 1e-3, None, 10),
        case("min_lr None: lr / 10, at the end", 60, 50, 1e-3, None, 10),
    ]
    for i in range(8):
        max_steps = randint(g, 10, 2000)
        warmup = 0 if i == 0 else randint(g, 1, max_steps // 2)
        lr = float(f"{10 ** _uniform(g, -4, -2):.3g}")
        min_lr = None if i == 3 else float(f"{lr * (0.0, 0.1, _uniform(g, 0, 1))[i % 3]:.3g}")
        step = randint(g, 0, max_steps + 20)
        label = f"random schedule {i + 1} ({_phase(step, max_steps, warmup)})"
        cases.append(case(label, step, max_steps, lr, min_lr, warmup))
    return cases


def _schedule(
    warmup_from_zero: bool = False,
    capped: bool = True,
    floor: bool = True,
    offset: bool = True,
    cosine: bool = True,
    decay_over_all: bool = False,
    none_is_zero: bool = False,
) -> Callable[..., float]:
    """The reference schedule with one piece changed (a misconception)."""

    def schedule(step: int, config: TrainConfig) -> float:
        lr, warmup = config.lr, config.warmup_steps
        min_lr = config.min_lr if config.min_lr is not None else 0.0 if none_is_zero else lr / 10
        if step < warmup:
            return lr * (step if warmup_from_zero else step + 1) / warmup
        decay_steps = config.max_steps if decay_over_all else max(1, config.max_steps - warmup)
        progress = (step - warmup if offset else step) / decay_steps
        progress = min(1.0, progress) if capped else progress
        low = min_lr if floor else 0.0
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cosine else 1.0 - progress
        return low + shape * (lr - low)

    return schedule


LR_AT = Spec(
    id="lab09.lr_at",
    points=2,
    name="lr_at",
    reference=lr_at,
    cases=schedule_cases,
    compare=close(atol=1e-12, rtol=1e-6),
    forbidden=TRAINER,
    hint="two phases (Chapter 10, The loop, line by line): a linear warmup over steps 0 .. W-1 that reaches lr at "
    "step W-1, then half a cosine from lr down to min_lr as progress (t - W) / (T - W) goes from 0 to 1, capped at 1",
    misconceptions=(
        Misconception(
            "warmup starts at zero",
            _schedule(warmup_from_zero=True),
            "the warmup is linear from step 0 and step 0 already trains: step t of the warmup uses "
            "(t + 1) / W of the rate, so the last warmup step reaches the full rate",
        ),
        Misconception(
            "progress not capped",
            _schedule(capped=False),
            "after max_steps the rate stays at min_lr: cap the progress of the cosine at 1, otherwise "
            "the cosine climbs back up",
        ),
        Misconception(
            "min_lr None read as 0",
            _schedule(none_is_zero=True),
            "TrainConfig.min_lr = None means a tenth of lr (read the field's comment), not zero",
        ),
        Misconception(
            "decays to zero",
            _schedule(floor=False),
            "the cosine ends at min_lr, not at 0: it moves between lr and min_lr",
        ),
        Misconception(
            "progress counted from step 0",
            _schedule(offset=False),
            "the decay starts when the warmup ends: progress counts the steps since step W, so it "
            "is 0 at the first step after warmup",
        ),
        Misconception(
            "decay spread over max_steps",
            _schedule(decay_over_all=True),
            "the decay lasts max_steps - warmup_steps steps, so that min_lr is reached exactly at max_steps",
        ),
        Misconception(
            "linear decay",
            _schedule(cosine=False),
            "after warmup the rate follows half a cosine, 0.5 (1 + cos(pi progress)), not a straight line",
        ),
    ),
)


# --- Exercise 2: AdamW with weight decay on the matrices only --------------------------------------------


def _small_gpt(g: torch.Generator, **overrides: Any) -> GPT:
    """A one-block GPT small enough that a case trains it in milliseconds."""
    config = dict(vocab_size=randint(g, 12, 24), block_size=8, n_layer=1, n_head=2, n_embd=8)
    with seeded(g):
        return GPT(GPTConfig(**(config | overrides)))


def optimizer_cases(g: torch.Generator) -> list[Case]:
    """``(model, lr, weight_decay[, betas], device)``."""
    frozen = _small_gpt(g)
    frozen.transformer.ln_f.requires_grad_(False)  # a frozen LayerNorm, as in fine-tuning (Chapter 13)
    frozen.transformer.wpe.weight.requires_grad_(False)
    return [
        Case("a GPT with biases", (_small_gpt(g), 1e-3, 0.1, (0.9, 0.95), "cpu")),
        Case("a GPT without biases, other betas", (_small_gpt(g, bias=False), 3e-4, 0.05, (0.8, 0.99), "cpu")),
        Case("frozen parameters (requires_grad False)", (frozen, 1e-3, 0.1, (0.9, 0.95), "cpu")),
        Case("betas left at their default", (_small_gpt(g), 6e-4, 0.2), {"device": "cpu"}),
    ]


def run_optimizer(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """Build the optimiser; return, for every parameter it updates, its group's settings and how
    many times it is listed (a parameter listed twice would be updated twice per step)."""
    model = case.args[0]
    optimizer = answer(*case.args, **case.kwargs)
    if not isinstance(optimizer, torch.optim.AdamW):
        raise AnswerError(f"configure_optimizer returned a {type(optimizer).__name__}, expected a torch.optim.AdamW")
    names = {id(p): name for name, p in model.named_parameters()}
    settings: dict[str, Any] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names.get(id(p), "a tensor that is not one of the model's parameters")
            entry = settings.setdefault(
                name,
                {
                    "weight_decay": float(group["weight_decay"]),
                    "lr": float(group["lr"]),
                    "betas": tuple(float(b) for b in group["betas"]),
                    "times listed": 0,
                },
            )
            entry["times listed"] += 1
    return dict(sorted(settings.items()))


def _optimizer(
    decay_all: bool = False,
    by_name: bool = False,
    default_decay: bool = False,
    frozen: bool = False,
    pass_betas: bool = True,
) -> Callable[..., torch.optim.AdamW]:
    """The reference optimiser with one piece changed (a misconception)."""

    def configure(
        model: nn.Module, lr: float, weight_decay: float, betas: tuple = (0.9, 0.95), device: str = "cpu"
    ) -> torch.optim.AdamW:
        named = [(n, p) for n, p in model.named_parameters() if frozen or p.requires_grad]
        decayed = (lambda n, p: n.endswith("weight")) if by_name else (lambda n, p: decay_all or p.dim() >= 2)
        groups: list[dict[str, Any]] = [
            {"params": [p for n, p in named if decayed(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if not decayed(n, p)]},
        ]
        if not default_decay:
            groups[1]["weight_decay"] = 0.0
        groups = [group for group in groups if group["params"]]
        return torch.optim.AdamW(groups, lr=lr, **({"betas": betas} if pass_betas else {}))

    return configure


CONFIGURE_OPTIMIZER = Spec(
    id="lab09.configure_optimizer",
    points=2,
    name="configure_optimizer",
    reference=configure_optimizer,
    cases=optimizer_cases,
    run=run_optimizer,
    compare=close(atol=0.0, rtol=1e-12),
    forbidden=TRAINER,
    hint="AdamW with two parameter groups (Chapter 10, The loop, line by line): the trainable parameters with 2 or "
    "more dimensions (matrices, embeddings) decayed by weight_decay, the others (biases, LayerNorm gains) with a "
    "weight decay of 0; lr and betas as given",
    misconceptions=(
        Misconception(
            "every parameter decayed",
            _optimizer(decay_all=True),
            "weight decay pulls weights towards 0; a bias or a LayerNorm gain (a vector) is not decayed: "
            "only parameters with 2 or more dimensions are",
        ),
        Misconception(
            "decayed by name",
            _optimizer(by_name=True),
            "a LayerNorm's gain is also called weight: choose by the number of dimensions (2 or more: "
            "decayed), not by the name",
        ),
        Misconception(
            "the second group at AdamW's default decay",
            _optimizer(default_decay=True),
            "a group without its own weight_decay gets AdamW's default (0.01), not 0: give the no-decay "
            "group a weight decay of 0 explicitly",
        ),
        Misconception(
            "frozen parameters included",
            _optimizer(frozen=True),
            "only trainable parameters (requires_grad) go to the optimiser: a frozen one must not move, "
            "and weight decay would move it",
        ),
        Misconception(
            "betas not passed",
            _optimizer(pass_betas=False),
            "pass the betas to AdamW: its default beta2 is 0.999, while GPT training uses 0.95 (the "
            "function's default)",
        ),
    ),
)


# --- Exercise 3: gradient clipping ------------------------------------------------------------------------


class Parameters(tuple):
    """Case input for ``clip_gradients``: ``(weight, grad)`` pairs, from which the driver builds
    fresh ``nn.Parameter`` objects (a deep copy of a parameter would lose its ``.grad``)."""

    @property
    def norm(self) -> float:
        """The global norm of the gradients."""
        return math.sqrt(sum(float((grad.double() ** 2).sum()) for _, grad in self))

    def __repr__(self) -> str:
        return f"{len(self)} parameters, grad norm {self.norm:.3g}"


def _parameters(g: torch.Generator, count: int, scale: float) -> Parameters:
    pairs = []
    for _ in range(count):
        shape = tuple(randint(g, 1, 6) for _ in range(randint(g, 1, 3)))
        pairs.append((torch.randn(shape, generator=g), torch.randn(shape, generator=g) * scale))
    return Parameters(pairs)


def clip_cases(g: torch.Generator) -> list[Case]:
    """``(parameters, max_norm)``, with ``max_norm`` a multiple of the gradients' global norm."""
    fixed = [
        ("norm above max_norm: clipped", 4, 1.0, 0.5),
        ("norm below max_norm: unchanged", 3, 1.0, 2.0),
        ("a single parameter", 1, 1.0, 0.3),
        ("large gradients", 3, 100.0, 0.1),
        ("small gradients", 4, 0.05, 0.5),
    ]
    cases = []
    for label, count, scale, ratio in fixed:
        params = _parameters(g, count, scale)
        cases.append(Case(label, (params, float(f"{ratio * params.norm:.4g}"))))
    for i in range(3):
        params = _parameters(g, randint(g, 1, 5), 10 ** _uniform(g, -1, 2))
        ratio = (0.1, 0.5, 2.0)[randint(g, 0, 2)]
        cases.append(Case(f"random parameters {i + 1}", (params, float(f"{ratio * params.norm:.4g}"))))
    return cases


def run_clip(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """Build the parameters, clip, and return the norm it returned and the gradients it left."""
    pairs, max_norm = case.args
    params = []
    for weight, grad in pairs:
        p = nn.Parameter(weight.clone())
        p.grad = grad.clone()
        params.append(p)
    norm = answer(params, max_norm)
    return {"returned norm": number(norm, "clip_gradients"), "gradients": [p.grad for p in params]}


def reference_clip(parameters: list[nn.Parameter], max_norm: float) -> float:
    return float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))


def _clip(
    per_parameter: bool = False,
    always: bool = False,
    report_after: bool = False,
    sqrt: bool = True,
    in_place: bool = True,
    of_weights: bool = False,
) -> Callable[..., float]:
    """A clipping with one piece changed (a misconception)."""

    def clip(parameters: list[nn.Parameter], max_norm: float) -> float:
        def norm_of(ps: list[nn.Parameter]) -> float:
            total = sum(float(((p.detach() if of_weights else p.grad).double() ** 2).sum()) for p in ps)
            return math.sqrt(total) if sqrt else total

        groups = [[p] for p in parameters] if per_parameter else [list(parameters)]
        norm = norm_of(parameters)
        for group in groups:
            n = norm_of(group)
            if n > max_norm or always:
                for p in group:
                    scaled = p.grad * (max_norm / (n + 1e-6))
                    if in_place:  # otherwise the scaled copy is dropped, as when only a local name is rebound
                        p.grad.copy_(scaled)
        return min(norm, max_norm) if report_after else norm

    return clip


CLIP_GRADIENTS = Spec(
    id="lab09.clip_gradients",
    points=2,
    name="clip_gradients",
    reference=reference_clip,
    cases=clip_cases,
    run=run_clip,
    compare=close(atol=1e-6, rtol=1e-4),
    forbidden=(
        "torch.nn.utils.clip_grad_norm_",
        "torch.nn.utils.clip_grad_norm",
        "torch.nn.utils.get_total_norm",
        "torch.nn.utils.clip_grads_with_norm_",
        "gptcourse.loops.optimizer_step",
    ),
    hint="treat all the gradients as one long vector: its 2-norm is the global norm; only when it exceeds "
    "max_norm, scale every gradient by max_norm / norm, in place; return the norm measured before clipping",
    misconceptions=(
        Misconception(
            "each parameter clipped on its own",
            _clip(per_parameter=True),
            "the norm is global: one norm over all the gradients together, and one scale factor "
            "for all of them, so the update keeps its direction",
        ),
        Misconception(
            "always rescaled",
            _clip(always=True),
            "only clip when the norm is larger than max_norm: smaller gradients are left as they are, not scaled up",
        ),
        Misconception(
            "norm after clipping returned",
            _clip(report_after=True),
            "return the norm measured before clipping (what the trainer logs to spot spikes)",
        ),
        Misconception(
            "no square root",
            _clip(sqrt=False),
            "the 2-norm is the square root of the sum of the squared gradient entries",
        ),
        Misconception(
            "gradients not changed in place",
            _clip(in_place=False),
            "the optimiser reads p.grad: scale the gradient tensors themselves (in place); a scaled "
            "copy bound to a local name changes nothing",
        ),
        Misconception(
            "norm of the weights", _clip(of_weights=True), "measure the gradients (p.grad), not the parameters' values"
        ),
    ),
)


# --- Exercise 4: one optimisation step with gradient accumulation ----------------------------------------


STEPS, BATCH, BLOCK = 2, 8, 8  # two steps: gradients left over from the first show in the second


def _step_case(g: torch.Generator, label: str, optimizer: Optimizer, accum: int, clip: float) -> Case:
    model = randomize_(_small_gpt(g, block_size=BLOCK), g)
    V = model.config.vocab_size
    xs, ys = (torch.randint(V, (STEPS, BATCH, BLOCK), generator=g) for _ in range(2))
    return Case(f"{label} ({STEPS} steps)", (model, optimizer, xs, ys, accum, clip))


def accumulate_cases(g: torch.Generator) -> list[Case]:
    """``(model, optimizer, xs, ys, accum_steps, grad_clip)``: ``xs``, ``ys`` are ``(STEPS, B, T)``,
    one batch per step."""
    # the first case alone catches most misconceptions, which keeps the judge's work small
    cases = [
        _step_case(g, "four micro-batches with clipping", Optimizer("SGD", 1.0), 4, 0.05),
        _step_case(g, "one micro-batch, no clipping", Optimizer("AdamW", 1e-2), 1, 0.0),
        _step_case(g, "two micro-batches, no clipping", Optimizer("SGD", 0.5), 2, 0.0),
    ]
    optimizer = Optimizer("SGD", 0.5) if randint(g, 0, 1) else Optimizer("AdamW", 1e-2)
    accum, clip = (1, 2, 4)[randint(g, 0, 2)], (0.0, 0.1)[randint(g, 0, 1)]
    label = f"random: {accum} micro-batch{'es' if accum > 1 else ''}, grad_clip {clip:g}, {optimizer}"
    return cases + [_step_case(g, label, optimizer, accum, clip)]


def run_steps(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """Run the answer for every batch of the case on the case's model and a fresh optimiser; return
    the losses it returned and the parameters it left."""
    model, optimizer, xs, ys, accum_steps, grad_clip = case.args
    opt = optimizer.build(model)
    losses = [number(answer(model, opt, x, y, accum_steps, grad_clip), "train_step") for x, y in zip(xs, ys)]
    return {"losses": losses, "parameters": {name: p.detach() for name, p in model.named_parameters()}}


def reference_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    accum_steps: int,
    grad_clip: float,
) -> float:
    return float(train_step(model, optimizer, x, y, accum_steps=accum_steps, grad_clip=grad_clip))


def _accumulate(
    divide: bool = True,
    zero: bool = True,
    pieces_of_size: bool = False,
    step_each: bool = False,
    clip_each: bool = False,
    clip: bool = True,
    clip_at_zero: bool = False,
    last_loss: bool = False,
) -> Callable[..., float]:
    """An accumulation step with one piece changed (a misconception)."""

    def step(
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        accum_steps: int,
        grad_clip: float,
    ) -> float:
        def clip_now() -> None:
            if clip and (grad_clip > 0 or clip_at_zero):
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)

        if zero:
            optimizer.zero_grad(set_to_none=True)
        pieces = (
            zip(x.split(accum_steps), y.split(accum_steps))
            if pieces_of_size
            else zip(x.chunk(accum_steps), y.chunk(accum_steps))
        )
        total, loss = 0.0, torch.zeros(())
        for xm, ym in pieces:
            _, loss = model(xm, ym)
            part = loss / accum_steps if divide else loss
            part.backward()
            total += float(part.detach())
            if clip_each:
                clip_now()
            if step_each:
                optimizer.step()
        if not clip_each:
            clip_now()
        if not step_each:
            optimizer.step()
        return float(loss.detach()) if last_loss else total

    return step


TRAIN_STEP = Spec(
    id="lab09.train_step",
    points=3,
    name="train_step",
    reference=reference_step,
    cases=accumulate_cases,
    run=run_steps,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=TRAINER,
    hint="zero the gradients, then for each of the accum_steps micro-batches: loss / accum_steps, backward; after "
    "the last one clip once (if grad_clip > 0) and step once; return the sum of the divided losses",
    misconceptions=(
        Misconception(
            "loss not divided",
            _accumulate(divide=False),
            "divide each micro-batch's loss by accum_steps before backward: the gradients then add up "
            "to those of the mean loss over the whole batch, and the returned loss is that mean",
        ),
        Misconception(
            "micro-batches of accum_steps sequences",
            _accumulate(pieces_of_size=True),
            "accum_steps is the number of micro-batches, not their size: B sequences make accum_steps "
            "micro-batches of B / accum_steps sequences each",
        ),
        Misconception(
            "a step per micro-batch",
            _accumulate(step_each=True),
            "accumulating means one optimiser step per batch: step once, after the last micro-batch",
        ),
        Misconception(
            "clipped after every micro-batch",
            _accumulate(clip_each=True),
            "clip once, after the last micro-batch: the norm to limit is that of the whole batch's "
            "gradient, not of each partial sum",
        ),
        Misconception(
            "the last micro-batch's loss returned",
            _accumulate(last_loss=True),
            "return the mean loss of the whole batch: the sum of the divided micro-batch losses, "
            "not the loss of the last micro-batch",
        ),
        *update_misconceptions(_accumulate),
    ),
)

# --- Exercise 5: the evaluation -------------------------------------------------------------------------


def _tokens(g: torch.Generator, vocab_size: int, n: int) -> torch.Tensor:
    return torch.randint(vocab_size, (n,), generator=g)


def estimate_cases(g: torch.Generator) -> list[Case]:
    """``(model, data, batch_size, iters, device[, seed])`` with a model that has dropout."""

    def model(training: bool) -> GPT:
        return randomize_(_small_gpt(g, dropout=0.2), g, scale=0.2).train(training)

    def data(m: GPT) -> torch.Tensor:
        return _tokens(g, m.config.vocab_size, 300)

    m1, m2, m3 = model(True), model(False), model(True)
    cases = [
        Case("a model in training mode, with dropout", (m1, data(m1), 4, 3, "cpu", 0)),
        Case("a model in eval mode (it must stay so)", (m2, data(m2), 3, 2, "cpu", 0)),
        Case("another seed", (m3, data(m3), 4, 2, "cpu", 7)),
        Case("the default seed", (m1, data(m1), 2, 3), {"device": "cpu"}),
    ]
    m = model(bool(randint(g, 0, 1)))
    batch, iters, seed = randint(g, 1, 6), randint(g, 1, 5), randint(g, 0, 1000)
    return cases + [
        Case(f"random: batch {batch}, {iters} batches, seed {seed}", (m, data(m), batch, iters, "cpu", seed))
    ]


def run_estimate(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """The loss it returned, the mode it left the model in, and whether it left gradients."""
    model = case.args[0]
    with global_seed():
        loss = number(answer(*case.args, **case.kwargs), "estimate_loss")
    return {
        "loss": loss,
        "mode afterwards": "training" if model.training else "eval",
        "gradients left in .grad": any(p.grad is not None for p in model.parameters()),
    }


def _estimate(
    eval_mode: bool = True, restore: bool = True, own_generator: bool = True, use_seed: bool = True, mean: bool = True
) -> Callable[..., float]:
    """The reference evaluation with one piece changed (a misconception)."""

    def estimate(
        model: nn.Module, data: torch.Tensor, batch_size: int, iters: int, device: str = "cpu", seed: int = 0
    ) -> float:
        generator = torch.Generator().manual_seed(seed if use_seed else 0) if own_generator else None
        was_training = model.training
        model.train(not eval_mode and was_training)
        losses = []
        with torch.no_grad():
            for _ in range(iters):
                x, y = get_batch(data, model.config.block_size, batch_size, device, generator)
                losses.append(float(model(x, y)[1]))
        model.train(was_training if restore else True)
        return sum(losses) / len(losses) if mean else losses[-1]

    return estimate


ESTIMATE_LOSS = Spec(
    id="lab09.estimate_loss",
    points=2,
    name="estimate_loss",
    reference=estimate_loss,
    cases=estimate_cases,
    run=run_estimate,
    forbidden=(*TRAINER, "gptcourse.loops.evaluating"),
    hint="(Chapter 10, The loop, line by line) in eval mode and without gradients, the mean loss of iters batches "
    "drawn by get_batch from a generator of your own seeded with seed; then put the model back in the mode it was in",
    misconceptions=(
        Misconception(
            "dropout left on",
            _estimate(eval_mode=False),
            "evaluate in eval mode: dropout is for training, and it makes the estimate noisy and too high",
        ),
        Misconception(
            "always back to training mode",
            _estimate(restore=False),
            "put the model back in the mode it had when the function was called: a model given in eval "
            "mode stays in eval mode",
        ),
        Misconception(
            "batches from the global generator",
            _estimate(own_generator=False),
            "draw the batches from a torch.Generator of your own seeded with seed: the same batches at every "
            "call, so that two evaluations differ only because the model did (and training's random numbers "
            "are not disturbed)",
        ),
        Misconception(
            "seed ignored",
            _estimate(use_seed=False),
            "seed the generator with the seed argument: a different seed draws different batches",
        ),
        Misconception(
            "the last batch's loss",
            _estimate(mean=False),
            "return the mean of the iters batches' losses: one batch is a noisy estimate",
        ),
    ),
)


# --- Exercises 6 and 7: the loop, and its exact resume ----------------------------------------------------


def _train_case(g: torch.Generator, label: str, dropout: float = 0.0, eval_mode: bool = False, **config: Any) -> Case:
    model = _small_gpt(g, dropout=dropout).train(not eval_mode)
    V = model.config.vocab_size
    base = dict(
        max_steps=6, batch_size=4, lr=1e-2, eval_interval=3, eval_iters=2, progress=False, seed=randint(g, 0, 10**6)
    )
    return Case(label, (model, _tokens(g, V, 400), _tokens(g, V, 200), TrainConfig(**(base | config))))


def train_cases(g: torch.Generator) -> list[Case]:
    """``(model, train_data, val_data, config[, stop_after])``: a few steps of a one-block GPT."""
    cases = [
        _train_case(g, "warmup, cosine decay and clipping", warmup_steps=2, grad_clip=0.5, min_lr=1e-3),
        _train_case(g, "two micro-batches per step, min_lr None", grad_accum_steps=2, batch_size=2),
        _train_case(g, "7 steps, an evaluation every 3 and one at max_steps", max_steps=7),
        _train_case(g, "a model given in eval mode, with dropout", dropout=0.1, eval_mode=True, weight_decay=0.5),
    ]
    stopped = _train_case(g, "stop_after 4 of 6 steps", warmup_steps=1, eval_interval=2)
    cases.append(Case(stopped.label, stopped.args, {"stop_after": 4}))
    accum, clip = randint(g, 1, 2), (0.0, 0.3)[randint(g, 0, 1)]
    label = f"random: {accum} micro-batch(es), grad_clip {clip:g}, dropout 0.1"
    return cases + [_train_case(g, label, dropout=0.1, grad_accum_steps=accum, grad_clip=clip, warmup_steps=2)]


def _history(history: Any, model: nn.Module) -> dict[str, Any]:
    """What a run produced: its history's losses, rates and evaluations, and the weights it left."""
    fields = ("train_loss", "lr", "eval_steps", "eval_train_loss", "eval_val_loss")
    missing = [name for name in fields if not isinstance(getattr(history, name, None), list)]
    if missing:
        raise AnswerError(
            f"train returned a {type(history).__name__} without the list {missing[0]!r}; return a "
            "gptcourse.train.History with its lists filled in"
        )
    out: dict[str, Any] = {name: [number(v, f"history.{name}") for v in getattr(history, name)] for name in fields}
    out["eval_steps"] = [int(v) if isinstance(v, float) and v.is_integer() else v for v in out["eval_steps"]]
    out["weights"] = {name: p.detach().clone() for name, p in model.named_parameters()}
    return out


def run_train(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """Train the case's model with the answer (no checkpoint); return the history and the weights."""
    model = case.args[0]
    with global_seed():
        return _history(answer(*case.args, **case.kwargs), model)


def resume_cases(g: torch.Generator) -> list[Case]:
    """``(model, train_data, val_data, config, stop_after)``: the run is stopped after ``stop_after``
    steps and started again, from the same initial model, with the same checkpoint path."""
    at_checkpoint = _train_case(g, "", dropout=0.1, eval_interval=2, warmup_steps=2, grad_clip=0.5)
    between = _train_case(g, "", dropout=0.1, eval_interval=3, grad_accum_steps=2, batch_size=2)
    return [
        Case("interrupted at a checkpoint (step 4 of 6, one every 2)", (*at_checkpoint.args, 4)),
        Case("interrupted between checkpoints (step 5 of 6, one every 3)", (*between.args, 5)),
    ]


def run_resume(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """Run until ``stop_after``, then again from a copy of the initial model (as after a restart):
    the second run must continue from the checkpoint and end where an uninterrupted run would, having
    done only the steps that were left."""
    model, train_data, val_data, config, stop_after = case.args
    restarted = copy.deepcopy(model)  # the same initial model, built again after the interruption
    passes = [0]  # training-mode forward passes of the restarted model: the steps it redid

    def count(module: nn.Module, args: Any, output: Any) -> None:
        passes[0] += int(module.training)

    restarted.register_forward_hook(count)
    with tempfile.TemporaryDirectory() as folder, global_seed():
        config = dataclasses.replace(config, checkpoint_path=os.path.join(folder, "run.pt"))
        first = answer(model, train_data, val_data, config, stop_after=stop_after)
        written = os.path.exists(config.checkpoint_path)
        out = _history(answer(restarted, train_data, val_data, config), restarted)
    out["steps before the interruption"] = len(getattr(first, "train_loss", []))
    out["checkpoint written by the first run"] = written
    out["training forward passes after the restart"] = passes[0]
    return out


def _loop(
    schedule: bool = True,
    own_batches: bool = True,
    whole_batch: bool = True,
    seed_dropout: bool = True,
    train_mode: bool = True,
    last_eval: bool = True,
    resume: bool = True,
    save_batches: bool = True,
    save_rng: bool = True,
    save_optimizer: bool = True,
    save_history: bool = True,
) -> Callable[..., History]:
    """A short training loop with the package's pieces, with one piece changed (a misconception)."""

    def loop(
        model: nn.Module,
        train_data: torch.Tensor,
        val_data: torch.Tensor,
        config: TrainConfig,
        device: str = "cpu",
        stop_after: int | None = None,
    ) -> History:
        if train_mode:
            model.train()
        optimizer = configure_optimizer(model, config.lr, config.weight_decay, (config.beta1, config.beta2))
        batches = torch.Generator().manual_seed(config.seed)
        if seed_dropout:
            torch.manual_seed(config.seed)
        history, step, path = History(), 0, config.checkpoint_path
        if resume and path is not None and os.path.exists(path):
            state = load_checkpoint(path)
            model.load_state_dict(state["model"])
            step = state["step"]
            if save_optimizer:
                optimizer.load_state_dict(state["optimizer"])
            if save_batches:
                batches.set_state(state["batches"])
            if save_rng:
                torch.set_rng_state(state["rng"])
            if save_history:
                history = History(**state["history"])
        block, per_step = model.config.block_size, config.batch_size * (config.grad_accum_steps if whole_batch else 1)
        end = config.max_steps if stop_after is None else min(stop_after, config.max_steps)
        while step < end:
            lr = lr_at(step, config) if schedule else config.lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = get_batch(train_data, block, per_step, device, batches if own_batches else None)
            loss = train_step(model, optimizer, x, y, config.grad_accum_steps, config.grad_clip)
            history.train_loss.append(float(loss))
            history.lr.append(lr)
            step += 1
            if step % config.eval_interval == 0 or (last_eval and step == config.max_steps):
                history.eval_steps.append(step)
                for data, losses in ((train_data, history.eval_train_loss), (val_data, history.eval_val_loss)):
                    losses.append(estimate_loss(model, data, config.batch_size, config.eval_iters, device))
                if path is not None:
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
                    state |= {"batches": batches.get_state(), "rng": torch.get_rng_state()}
                    save_checkpoint(path, state | {"history": dataclasses.asdict(history)})
        return history

    return loop


TRAIN = Spec(
    id="lab09.train",
    points=3,
    name="train",
    reference=train,
    cases=train_cases,
    run=run_train,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=TRAINER,
    hint="(Chapter 10, The loop, line by line) train mode; your optimiser; a batch generator and torch's own seeded "
    "with config.seed; at each step set the rate lr_at(step), draw batch_size * grad_accum_steps windows, one "
    "train_step; evaluate both splits every eval_interval steps and at max_steps",
    misconceptions=(
        Misconception(
            "no schedule",
            _loop(schedule=False),
            "set every parameter group's lr to lr_at(step, config) before each step: warmup and decay "
            "are part of the run",
        ),
        Misconception(
            "batches from the global generator",
            _loop(own_batches=False),
            "draw the training windows from a torch.Generator of your own seeded with config.seed: the "
            "data order is then the same in every run, and a checkpoint can store where it is",
        ),
        Misconception(
            "one micro-batch drawn per step",
            _loop(whole_batch=False),
            "a step sees batch_size * grad_accum_steps windows: draw them all, and train_step splits "
            "them into grad_accum_steps micro-batches of batch_size",
        ),
        Misconception(
            "dropout not seeded",
            _loop(seed_dropout=False),
            "seed torch's own generator with config.seed too (torch.manual_seed): dropout draws from it, "
            "and a run should be reproducible",
        ),
        Misconception(
            "not switched to training mode",
            _loop(train_mode=False),
            "call model.train() at the start: a model handed over in eval mode would train without dropout",
        ),
        Misconception(
            "no evaluation at max_steps",
            _loop(last_eval=False),
            "evaluate every eval_interval steps and also after the last step, so the run ends with a measurement",
        ),
    ),
)

RESUME = Spec(
    id="lab09.resume",
    points=3,
    name="train",
    reference=train,
    cases=resume_cases,
    run=run_resume,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=TRAINER,
    hint="(Chapter 10, Checkpoints and exact resume) at every evaluation save all that the next steps depend on "
    "(weights, optimiser, step, history, the batch generator's state, torch's random state) with save_checkpoint; "
    "at the start, when config.checkpoint_path exists, load it all back and go on from its step",
    misconceptions=(
        Misconception(
            "checkpoint not read",
            _loop(resume=False),
            "when config.checkpoint_path names an existing file, continue from it: the restarted run must "
            "not train the finished steps again",
        ),
        Misconception(
            "data order restarted",
            _loop(save_batches=False),
            "save the batch generator's state (get_state) and restore it (set_state): otherwise the resumed "
            "run trains on the first windows again",
        ),
        Misconception(
            "dropout's random state not saved",
            _loop(save_rng=False),
            "save torch's random state (torch.get_rng_state) and restore it: dropout's masks after the "
            "restart must be those the uninterrupted run drew",
        ),
        Misconception(
            "optimizer state not saved",
            _loop(save_optimizer=False),
            "save and load the optimiser's state_dict: AdamW's moment estimates are part of the run",
        ),
        Misconception(
            "history not saved",
            _loop(save_history=False),
            "save the history in the checkpoint and load it back: the resumed run returns the losses of "
            "all the steps, before and after the interruption",
        ),
    ),
)

SPECS = (LR_AT, CONFIGURE_OPTIMIZER, CLIP_GRADIENTS, TRAIN_STEP, ESTIMATE_LOSS, TRAIN, RESUME)
