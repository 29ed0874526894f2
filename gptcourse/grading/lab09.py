"""Exercise specs for Lab 9 (training): ``lr_schedule(step, max_steps, lr, min_lr, warmup_steps)``,
``clip_gradients(parameters, max_norm)`` and ``accumulate_step(model, optimizer, x, y,
accum_steps, grad_clip)``, against the course's trainer (:mod:`gptcourse.train`).

The last two change state (gradients, weights), so their drivers build the parameters, the model
and the optimiser from the case, run the answer, and return what changed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gptcourse.grading.spec import AnswerError, Case, Misconception, Spec, close, randomize_, seeded
from gptcourse.model import GPT, GPTConfig
from gptcourse.train import TrainConfig, lr_at, train_step


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """An int in ``[low, high]``."""
    return int(torch.randint(low, high + 1, (), generator=g))


def _number(value: Any, name: str) -> Any:
    """A returned number as a float; a one-element tensor counts as a number. ``None`` and other
    tensors pass through for the comparison to name; anything else cannot be graded."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if value is None or isinstance(value, torch.Tensor):
        return value
    raise AnswerError(f"{name} returned a {type(value).__name__}; return a number (a float)")


# --- Exercise 1: the learning-rate schedule ---------------------------------------------------------------


def _phase(step: int, max_steps: int, warmup: int) -> str:
    return "warmup" if step < warmup else "after max_steps" if step >= max_steps else "cosine decay"


def schedule_cases(g: torch.Generator) -> list[Case]:
    """One call per case: ``(step, max_steps, lr, min_lr, warmup_steps)``."""
    W = (100, 1e-3, 1e-4, 10)  # max_steps, lr, min_lr, warmup_steps
    cases = [
        Case("first warmup step (step 0)", (0, *W)),
        Case("last warmup step", (9, *W)),
        Case("first step after warmup", (10, *W)),
        Case("a quarter of the decay", (32, *W)),
        Case("middle of the decay", (55, *W)),
        Case("last step before max_steps", (99, *W)),
        Case("at max_steps", (100, *W)),
        Case("after max_steps", (150, *W)),
        Case("no warmup, step 0", (0, 50, 3e-3, 0.0, 0)),
        Case("no warmup, decay to min_lr = 0", (20, 50, 3e-3, 0.0, 0)),
        Case("a one-step warmup", (0, 40, 2e-3, 2e-4, 1)),
    ]
    for i in range(8):
        max_steps = _randint(g, 10, 2000)
        warmup = 0 if i == 0 else _randint(g, 1, max_steps // 2)
        lr = float(f"{10 ** _uniform(g, -4, -2):.3g}")
        min_lr = float(f"{lr * (0.0, 0.1, _uniform(g, 0, 1))[i % 3]:.3g}")
        step = _randint(g, 0, max_steps + 20)
        cases.append(
            Case(f"random schedule {i + 1} ({_phase(step, max_steps, warmup)})", (step, max_steps, lr, min_lr, warmup))
        )
    return cases


def reference_schedule(step: int, max_steps: int, lr: float, min_lr: float, warmup_steps: int) -> float:
    return lr_at(step, TrainConfig(max_steps=max_steps, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps))


def _schedule(
    warmup_from_zero: bool = False,
    capped: bool = True,
    floor: bool = True,
    offset: bool = True,
    cosine: bool = True,
    decay_over_all: bool = False,
) -> Callable[..., float]:
    """The reference schedule with one piece changed (a misconception)."""

    def schedule(step: int, max_steps: int, lr: float, min_lr: float, warmup_steps: int) -> float:
        if step < warmup_steps:
            return lr * (step if warmup_from_zero else step + 1) / warmup_steps
        decay_steps = max_steps if decay_over_all else max(1, max_steps - warmup_steps)
        progress = (step - warmup_steps if offset else step) / decay_steps
        progress = min(1.0, progress) if capped else progress
        low = min_lr if floor else 0.0
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cosine else 1.0 - progress
        return low + shape * (lr - low)

    return schedule


LR_SCHEDULE = Spec(
    id="lab09.lr_schedule",
    points=2,
    name="lr_schedule",
    reference=reference_schedule,
    cases=schedule_cases,
    compare=close(atol=1e-12, rtol=1e-6),
    forbidden=("gptcourse.train.lr_at",),
    hint="two phases (Chapter 10): a linear warmup over steps 0 .. W-1 that reaches lr at step W-1, then half a "
    "cosine from lr down to min_lr as progress (t - W) / (T - W) goes from 0 to 1, capped at 1",
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


# --- Exercise 2: gradient clipping ------------------------------------------------------------------------


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
        shape = tuple(_randint(g, 1, 6) for _ in range(_randint(g, 1, 3)))
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
        params = _parameters(g, _randint(g, 1, 5), 10 ** _uniform(g, -1, 2))
        ratio = (0.1, 0.5, 2.0)[_randint(g, 0, 2)]
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
    return {"returned norm": _number(norm, "clip_gradients"), "gradients": [p.grad for p in params]}


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


# --- Exercise 3: one optimisation step with gradient accumulation ----------------------------------------


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """Case input for ``accumulate_step``: which optimiser the driver builds on the case's model."""

    kind: str  # "SGD" or "AdamW"
    lr: float

    def __repr__(self) -> str:
        return f"{self.kind}(lr={self.lr:g})"

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        optimizer = torch.optim.SGD if self.kind == "SGD" else torch.optim.AdamW
        return optimizer(model.parameters(), lr=self.lr)


STEPS, BATCH, BLOCK = 2, 8, 8  # two steps: gradients left over from the first show in the second


def _model(g: torch.Generator) -> GPT:
    vocab = _randint(g, 12, 24)
    with seeded(g):
        model = GPT(GPTConfig(vocab_size=vocab, block_size=BLOCK, n_layer=1, n_head=2, n_embd=8))
    return randomize_(model, g)


def _step_case(g: torch.Generator, label: str, optimizer: Optimizer, accum: int, clip: float) -> Case:
    model = _model(g)
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
    optimizer = Optimizer("SGD", 0.5) if _randint(g, 0, 1) else Optimizer("AdamW", 1e-2)
    accum, clip = (1, 2, 4)[_randint(g, 0, 2)], (0.0, 0.1)[_randint(g, 0, 1)]
    label = f"random: {accum} micro-batch{'es' if accum > 1 else ''}, grad_clip {clip:g}, {optimizer}"
    return cases + [_step_case(g, label, optimizer, accum, clip)]


def run_steps(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """Run the answer for every batch of the case on the case's model and a fresh optimiser; return
    the losses it returned and the parameters it left."""
    model, optimizer, xs, ys, accum_steps, grad_clip = case.args
    opt = optimizer.build(model)
    losses = [_number(answer(model, opt, x, y, accum_steps, grad_clip), "accumulate_step") for x, y in zip(xs, ys)]
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


ACCUMULATE_STEP = Spec(
    id="lab09.accumulate_step",
    points=3,
    name="accumulate_step",
    reference=reference_step,
    cases=accumulate_cases,
    run=run_steps,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=("gptcourse.train.train_step", "gptcourse.loops.optimizer_step"),
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
            "gradients not zeroed",
            _accumulate(zero=False),
            "backward adds to .grad: zero the gradients at the start of every step, or the previous "
            "step's gradients are added to this one's",
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
            "no clipping",
            _accumulate(clip=False),
            "with grad_clip > 0, clip the global gradient norm to grad_clip (your clip_gradients) "
            "before the optimiser steps",
        ),
        Misconception(
            "clipped with grad_clip = 0",
            _accumulate(clip_at_zero=True),
            "grad_clip = 0 means no clipping: clipping to a norm of 0 would wipe out the gradients",
        ),
        Misconception(
            "the last micro-batch's loss returned",
            _accumulate(last_loss=True),
            "return the mean loss of the whole batch: the sum of the divided micro-batch losses, "
            "not the loss of the last micro-batch",
        ),
    ),
)

SPECS = (LR_SCHEDULE, CLIP_GRADIENTS, ACCUMULATE_STEP)
