"""Exercise specs for Lab 13 (GPT-1 fine-tuning): ``classifier_logits(hidden, extract_pos, head)``
and ``combined_loss(class_logits, labels, lm_logits, targets, lam)``, against
:mod:`gptcourse.finetune`. Fine-tuning trains through both, so the drivers return gradients too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptcourse import finetune as ref
from gptcourse.grading.spec import AnswerError, Case, Misconception, Spec, close, randomize_, seeded

_close = close(atol=1e-5, rtol=1e-4)


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """An int in ``[low, high]``."""
    return int(torch.randint(low, high + 1, (), generator=g))


def compare_with_gradients(got: Any, expected: Any, case: Case) -> str | None:
    """The values; a gradient that is missing (the result was cut off from the graph) is named as such."""
    if isinstance(got, dict) and isinstance(expected, dict):
        for key, value in expected.items():
            if key.startswith("gradient") and value is not None and key in got and got[key] is None:
                wrong = _close(
                    {k: got.get(k) for k in expected if not k.startswith("gradient")},
                    {k: v for k, v in expected.items() if not k.startswith("gradient")},
                    case,
                )
                return (
                    wrong
                    or f"has no {key}: the result must stay differentiable (no .detach(), .item() or "
                    "torch.tensor around it)"
                )
    return _close(got, expected, case)


# --- Exercise 1: the classification head ------------------------------------------------------------------


def _head_case(g: torch.Generator, label: str, B: int, T: int, C: int, K: int, bias: bool, positions: str) -> Case:
    """``positions``: "last" (no padding), "first" (one-token inputs) or "padded" (before the last)."""
    hidden = torch.randn(B, T, C, generator=g)
    if positions == "last":
        extract_pos = torch.full((B,), T - 1)
    elif positions == "first":
        extract_pos = torch.zeros(B, dtype=torch.long)
    else:
        extract_pos = torch.randint(1, T - 1, (B,), generator=g)
        extract_pos[0] = T - 2  # at least one row whose extract token is not at position 0
    with seeded(g):
        head = nn.Linear(C, K, bias=bias)
    return Case(label, (hidden, extract_pos, randomize_(head, g)))


def head_cases(g: torch.Generator) -> list[Case]:
    cases = [
        _head_case(g, "right-padded rows: extract before the end", 4, 7, 8, 3, True, "padded"),
        _head_case(g, "no padding: extract at the last position", 3, 6, 8, 3, True, "last"),
        _head_case(g, "one-token inputs: extract at position 0", 3, 5, 4, 2, True, "first"),
        _head_case(g, "a head without bias (as in GPT-1)", 4, 8, 8, 4, False, "padded"),
        _head_case(g, "a single row", 1, 6, 16, 5, False, "padded"),
    ]
    for i in range(3):
        B, T, C, K = _randint(g, 1, 6), _randint(g, 3, 12), (4, 8, 16)[i], _randint(g, 2, 5)
        cases.append(_head_case(g, f"random batch {i + 1}", B, T, C, K, i % 2 == 0, "padded"))
    return cases


def run_head(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """The class logits, and the gradient of their sum with respect to ``hidden``."""
    hidden, extract_pos, head = case.args
    hidden = hidden.detach().requires_grad_()
    logits = answer(hidden, extract_pos, head)
    if not isinstance(logits, torch.Tensor):
        raise AnswerError(f"classifier_logits returned a {type(logits).__name__}; return the (B, K) class logits")
    gradient = None
    if logits.requires_grad:
        gradient = torch.autograd.grad(logits.sum(), hidden, allow_unused=True)[0]
    return {"class logits": logits.detach(), "gradient with respect to hidden": gradient}


def _rows(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return hidden[torch.arange(hidden.size(0)), positions]


HEAD = Spec(
    id="lab13.classifier_logits",
    points=2,
    name="classifier_logits",
    reference=ref.classifier_logits,
    cases=head_cases,
    run=run_head,
    compare=compare_with_gradients,
    forbidden=("gptcourse.finetune.classifier_logits", "gptcourse.finetune.GPTClassifier.forward"),
    hint="for each row b take the hidden state at its own extract position extract_pos[b] (a (B, C) matrix), "
    "then apply the head: (B, K); keep it differentiable",
    misconceptions=(
        Misconception(
            "the last position of every row",
            lambda h, pos, head: head(h[:, -1]),
            "rows are right-padded, so the extract token <e> is not always at the LAST position: read "
            "each row at its own extract_pos",
        ),
        Misconception(
            "position 0 of every row",
            lambda h, pos, head: head(h[:, 0]),
            "position 0 holds the start token <s>, which has seen nothing yet: read the extract token "
            "<e>, whose hidden state has attended to the whole input",
        ),
        Misconception(
            "the token before the extract token",
            lambda h, pos, head: head(_rows(h, (pos - 1).clamp(min=0))),
            "extract_pos is the index of the extract token <e> itself: read that position",
        ),
        Misconception(
            "mean over the positions",
            lambda h, pos, head: head(h.mean(dim=1)),
            "GPT-1 reads one hidden state, the one at the extract token, not an average of the sequence",
        ),
        Misconception(
            "head's bias dropped",
            lambda h, pos, head: _rows(h, pos) @ head.weight.t(),
            "apply the head as the module it is: a linear layer with its bias, when it has one",
        ),
        Misconception(
            "detached",
            lambda h, pos, head: head(_rows(h, pos).detach()),
            "fine-tuning trains the whole model through this head: no .detach() (or .item()), so that "
            "the gradient reaches the hidden states",
        ),
    ),
)


# --- Exercise 2: the combined loss ------------------------------------------------------------------------


def _loss_case(g: torch.Generator, label: str, B: int, T: int, V: int, K: int, lam: float) -> Case:
    targets = torch.randint(V, (B, T), generator=g)
    targets[torch.rand(B, T, generator=g) < 0.3] = -1  # padding
    targets[:, -1] = -1  # nothing follows the extract token
    targets[:, 0] = torch.randint(V, (B,), generator=g)  # at least one real target per row
    return Case(
        label,
        (
            torch.randn(B, K, generator=g),
            torch.randint(K, (B,), generator=g),
            torch.randn(B, T, V, generator=g),
            targets,
            lam,
        ),
    )


def loss_cases(g: torch.Generator) -> list[Case]:
    cases = [
        _loss_case(g, "lambda 0.5 (GPT-1), with padding", 4, 6, 10, 3, 0.5),
        _loss_case(g, "lambda 0: the task loss only", 3, 5, 8, 2, 0.0),
        _loss_case(g, "lambda 2", 2, 7, 12, 4, 2.0),
        _loss_case(g, "a single row", 1, 8, 6, 3, 0.5),
    ]
    for i in range(3):
        B, T, V, K = _randint(g, 1, 6), _randint(g, 2, 10), _randint(g, 3, 20), _randint(g, 2, 5)
        cases.append(_loss_case(g, f"random batch {i + 1}", B, T, V, K, (0.1, 1.0, 0.5)[i]))
    return cases


def _scalar(value: Any, name: str) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    what = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
    raise AnswerError(f"combined_loss returned {what} as {name}; each loss is one number, a scalar tensor")


def run_loss(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """The three losses by name, and the gradients of L3 with respect to both logits."""
    class_logits, labels, lm_logits, targets, lam = case.args
    class_logits, lm_logits = class_logits.detach().requires_grad_(), lm_logits.detach().requires_grad_()
    result = answer(class_logits, labels, lm_logits, targets, lam)
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        what = f"{len(result)} values" if isinstance(result, (tuple, list)) else f"a {type(result).__name__}"
        raise AnswerError(f"combined_loss should return (L3, L2, L1), it returned {what}")
    l3, l2, l1 = result
    out: dict[str, Any] = {
        "L2": _scalar(l2, "L2"),
        "L1": _scalar(l1, "L1"),
        "L3": _scalar(l3, "L3"),
        "gradient of L3 with respect to class_logits": None,
        "gradient of L3 with respect to lm_logits": None,
    }
    if isinstance(l3, torch.Tensor) and l3.requires_grad:
        grads = torch.autograd.grad(l3.sum(), (class_logits, lm_logits), allow_unused=True)
        out["gradient of L3 with respect to class_logits"] = grads[0]
        # with lam = 0, L1 adds nothing: an unused lm_logits and a zero gradient are the same answer
        out["gradient of L3 with respect to lm_logits"] = torch.zeros_like(lm_logits) if grads[1] is None else grads[1]
    return out


def _losses(
    lm_mean_over_all: bool = False,
    padding_as_zero: bool = False,
    lam_on: str = "L1",
    order: str = "321",
    detach: bool = False,
) -> Callable[..., tuple[Any, ...]]:
    """The combined loss with one piece changed (a misconception); ``lam_on`` is where lambda goes
    ("L1", "L2", "none" or "both": (1 - lam) L2 + lam L1); ``order`` the order of the results."""

    def combined_loss(
        class_logits: torch.Tensor, labels: torch.Tensor, lm_logits: torch.Tensor, targets: torch.Tensor, lam: float
    ) -> tuple[Any, ...]:
        l2 = F.cross_entropy(class_logits, labels)
        flat, flat_targets = lm_logits.reshape(-1, lm_logits.size(-1)), targets.reshape(-1)
        if padding_as_zero:
            flat_targets = flat_targets.clamp(min=0)
        if lm_mean_over_all:  # padding contributes 0 but still counts in the mean
            l1 = F.cross_entropy(flat, flat_targets, ignore_index=-1, reduction="sum") / flat_targets.numel()
        else:
            l1 = F.cross_entropy(flat, flat_targets, ignore_index=-1)
        l3 = {"L1": l2 + lam * l1, "L2": lam * l2 + l1, "none": l2 + l1, "both": (1 - lam) * l2 + lam * l1}[lam_on]
        if detach:
            l3 = torch.tensor(l3.item())
        losses = {"3": l3, "2": l2, "1": l1}
        return tuple(losses[c] for c in order)

    return combined_loss


COMBINED_LOSS = Spec(
    id="lab13.combined_loss",
    points=3,
    name="combined_loss",
    reference=ref.combined_loss,
    cases=loss_cases,
    run=run_loss,
    compare=compare_with_gradients,
    forbidden=("gptcourse.finetune.combined_loss",),
    hint="L2 is the cross-entropy of the class logits against the labels; L1 the mean next-token cross-entropy "
    "over the positions whose target is not -1; L3 = L2 + lambda * L1 (GPT-1, Chapter 14); return (L3, L2, L1)",
    misconceptions=(
        Misconception(
            "padding counted in the mean",
            _losses(lm_mean_over_all=True),
            "L1 is the mean over the real targets only: positions marked -1 are left out of the sum "
            "and of the count (cross-entropy's ignore_index)",
        ),
        Misconception(
            "padding scored as token 0",
            _losses(padding_as_zero=True),
            "positions marked -1 are padding, not a token: leave them out of L1 altogether (cross-entropy's "
            "ignore_index), rather than mapping them onto a real token id",
        ),
        Misconception(
            "lambda on the task loss",
            _losses(lam_on="L2"),
            "lambda weighs the auxiliary language-modelling loss: L3 = L2 + lambda * L1",
        ),
        Misconception(
            "lambda ignored",
            _losses(lam_on="none"),
            "L3 = L2 + lambda * L1: with lambda = 0 the model fine-tunes on the task alone",
        ),
        Misconception(
            "a weighted average",
            _losses(lam_on="both"),
            "L3 = L2 + lambda * L1 adds the auxiliary loss to the full task loss; L2 is not scaled by (1 - lambda)",
        ),
        Misconception(
            "results in another order", _losses(order="231"), "return the three losses in the order (L3, L2, L1)"
        ),
        Misconception(
            "L3 cut from the graph",
            _losses(detach=True),
            "build L3 from the loss tensors themselves: a new tensor made from .item() values has no "
            "gradient, so fine-tuning would not train",
        ),
    ),
)

SPECS = (HEAD, COMBINED_LOSS)
