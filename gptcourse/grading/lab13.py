"""Exercise specs for Lab 13 (GPT-1 fine-tuning, ``learner/finetune.py``), against
:mod:`gptcourse.finetune`: ``lm_targets``, ``classifier_logits``, ``combined_loss``, the
``GPTClassifier`` module, GPT-1's schedule ``lr_scale``, ``finetune_step``, ``evaluate`` and the
loop ``finetune``. Fine-tuning trains through the pieces, so the drivers return gradients or the
weights they leave; a module is compared on the reference's weights (``load_reference_weights``)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptcourse import finetune as ref
from gptcourse.grading.spec import (
    AnswerError,
    Case,
    Misconception,
    Optimizer,
    Spec,
    close,
    compare_with_gradients,
    global_seed,
    load_reference_weights,
    number,
    randint,
    randomize_,
    seeded,
    update_misconceptions,
)
from gptcourse.model import GPT, GPTConfig
from gptcourse.tokenizers import CharTokenizer
from gptcourse.train import configure_optimizer

_close = close(atol=1e-5, rtol=1e-4)


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
        B, T, C, K = randint(g, 1, 6), randint(g, 3, 12), (4, 8, 16)[i], randint(g, 2, 5)
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
    compare=compare_with_gradients(),
    forbidden=("gptcourse.finetune.classifier_logits", "gptcourse.finetune.GPTClassifier.forward"),
    hint="(Chapter 14, The classification head) for each row b take the hidden state at its own extract position "
    "extract_pos[b] (a (B, C) matrix), then apply the head: (B, K); keep it differentiable",
    misconceptions=(
        Misconception(
            "the last position of every row",
            lambda h, pos, head: head(h[:, -1]),
            "rows are right-padded, so the extract token <e> is not always at the LAST position: read "
            "each row at its own extract_pos (Chapter 14, The input transformation)",
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
        B, T, V, K = randint(g, 1, 6), randint(g, 2, 10), randint(g, 3, 20), randint(g, 2, 5)
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
    compare=compare_with_gradients(),
    forbidden=("gptcourse.finetune.combined_loss",),
    hint="(Chapter 14, The objective) L2 is the cross-entropy of the class logits against the labels; L1 the mean "
    "next-token cross-entropy over the positions whose target is not -1; L3 = L2 + lambda * L1; return (L3, L2, L1)",
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
            "lambda weighs the auxiliary language-modelling loss: L3 = L2 + lambda * L1 (Chapter 14, The objective)",
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


# --- shared helpers -----------------------------------------------------------------------------------------


def _padded(g: torch.Generator, lengths: list[int], T: int, V: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx (B, T), extract_pos (B,))`` as :func:`gptcourse.finetune.collate` makes them: row ``b`` has
    ``lengths[b]`` tokens, the last of which is the extract token ``V - 1``, then padding (also ``V - 1``)."""
    idx = torch.randint(V - 1, (len(lengths), T), generator=g)
    extract_pos = torch.tensor([n - 1 for n in lengths])
    for b, n in enumerate(lengths):
        idx[b, n - 1 :] = V - 1
    return idx, extract_pos


def _lengths(g: torch.Generator, B: int, T: int, low: int = 1) -> list[int]:
    lengths = [randint(g, low, T) for _ in range(B)]
    lengths[0] = max(low, T - 2)  # at least one padded row
    return lengths


# --- Exercise 0: the targets of the language-modelling loss -------------------------------------------------


def targets_cases(g: torch.Generator) -> list[Case]:
    """``(idx, extract_pos)``: right-padded rows."""

    def case(label: str, lengths: list[int], T: int, V: int = 12) -> Case:
        return Case(label, _padded(g, lengths, T, V))

    cases = [
        case("rows of different lengths, right-padded", [6, 3, 8, 5], 8),
        case("no padding: every extract token at the last position", [7, 7, 7], 7),
        case("a one-token row (only <e>) beside longer ones", [1, 5, 4], 6),
        case("a single row", [4], 9),
    ]
    for i in range(3):
        B, T = randint(g, 1, 6), randint(g, 3, 12)
        cases.append(case(f"random batch {i + 1}", _lengths(g, B, T), T, randint(g, 5, 30)))
    return cases


def _targets(shift: int = 1, mask_from: int = 0, mask: bool = True, fill: int = -1) -> Callable[..., torch.Tensor]:
    """Next-token targets with one piece changed (a misconception): ``shift`` 1 is the next token, 0
    the token itself, -1 the previous one; positions ``>= extract_pos + mask_from`` are set to ``fill``."""

    def lm_targets(idx: torch.Tensor, extract_pos: torch.Tensor) -> torch.Tensor:
        targets = torch.full_like(idx, fill)
        if shift == 1:
            targets[:, :-1] = idx[:, 1:]
        elif shift == 0:
            targets = idx.clone()
        else:
            targets[:, 1:] = idx[:, :-1]
        if not mask:
            return targets
        positions = torch.arange(idx.size(1))
        return targets.masked_fill(positions[None, :] >= extract_pos[:, None] + mask_from, fill)

    return lm_targets


LM_TARGETS = Spec(
    id="lab13.lm_targets",
    points=2,
    name="lm_targets",
    reference=ref.lm_targets,
    cases=targets_cases,
    compare=close(atol=0.0, rtol=0.0),
    forbidden=("gptcourse.finetune.lm_targets",),
    hint="(Chapter 14, The objective) position t's target is the token at t + 1 (idx shifted left by one); every "
    "position from the row's extract token on gets -1, the ignore index, since no text follows <e>",
    misconceptions=(
        Misconception(
            "not shifted",
            _targets(shift=0),
            "a language model predicts the NEXT token: position t's target is idx[t + 1], not the token it "
            "already reads (Chapter 14, The objective)",
        ),
        Misconception(
            "shifted the wrong way",
            _targets(shift=-1),
            "the targets are the input shifted LEFT: position t predicts the token after it, t + 1, not the one before",
        ),
        Misconception(
            "the extract token's target kept",
            _targets(mask_from=1),
            "nothing real follows the extract token <e>: what comes after it is padding, so <e>'s own "
            "position is ignored too (-1 from extract_pos on, inclusive)",
        ),
        Misconception(
            "padding not masked",
            _targets(mask=False),
            "the rows are right-padded (Chapter 14, The input transformation): predicting padding is not "
            "language modelling, so mark every position from the extract token on with -1",
        ),
        Misconception(
            "ignored positions marked 0",
            _targets(fill=0),
            "0 is a real token id; cross-entropy's ignore index in this course is -1: mark the positions to "
            "leave out with -1",
        ),
    ),
)


# --- Exercise 3: the classifier module ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Body:
    """Case input: the pre-trained GPT the classifier wraps, built afresh by the driver from ``config``
    with torch seeded by ``seed`` (so that the head's initial weights can be looked at)."""

    config: GPTConfig
    seed: int

    def __repr__(self) -> str:
        c = self.config
        return f"GPT({c.n_layer} block, {c.n_embd} wide, vocab {c.vocab_size})"


class Weights(dict):
    """Case input: the reference's parameters by name, loaded into the answer's module."""

    def __repr__(self) -> str:
        return f"<{len(self)} reference weights>"


def _body_config(g: torch.Generator, vocab_size: int = 12, n_embd: int = 32, **overrides: Any) -> GPTConfig:
    return GPTConfig(
        **(dict(vocab_size=vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=n_embd, dropout=0.0) | overrides)
    )


def classifier_cases(g: torch.Generator) -> list[Case]:
    """``(body, n_classes, reference weights, idx, extract_pos, labels)``."""

    def case(label: str, lengths: list[int], T: int, K: int, **config: Any) -> Case:
        body = Body(_body_config(g, **config), randint(g, 0, 10**6))
        with seeded(g):
            model = randomize_(ref.GPTClassifier(GPT(body.config), K), g, scale=0.3)
        state = Weights((n, p.detach().clone()) for n, p in model.named_parameters())  # lm_head is tied to wte
        idx, extract_pos = _padded(g, lengths, T, body.config.vocab_size)
        labels = torch.randint(K, (len(lengths),), generator=g)
        return Case(label, (body, K, state, idx, extract_pos, labels))

    B, T = randint(g, 1, 5), randint(g, 4, 12)
    return [
        case("rows of different lengths, right-padded", [7, 3, 9, 5], 9, 4),
        case("no padding: every extract token last", [6, 6, 6], 6, 3),
        case("a GPT without biases, two classes", [5, 2, 8], 8, 2, bias=False),
        case("a single row", [4], 7, 5),
        case(f"random batch ({B} rows)", _lengths(g, B, T), T, randint(g, 2, 5)),
    ]


def run_classifier(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """Build the classifier on a fresh GPT (seeded), look at the head's initial weights, load the reference's
    weights, run it on the case's batch; return its outputs and the gradients of a loss through both."""
    body, n_classes, state, idx, extract_pos, labels = case.args
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(body.seed)
        model = answer(GPT(body.config), n_classes)
    if not isinstance(model, nn.Module):
        raise AnswerError(f"GPTClassifier(gpt, n_classes) made a {type(model).__name__}, not an nn.Module")
    head = dict(model.named_parameters()).get("head.weight")
    init = None if head is None else abs(float(head.detach().std()) - 0.02) < 0.006
    load_reference_weights(model, state, "your GPTClassifier")
    model.eval()
    out = model(idx, extract_pos)
    if not isinstance(out, (tuple, list)) or len(out) != 2 or not all(isinstance(t, torch.Tensor) for t in out):
        raise AnswerError("GPTClassifier.forward should return (class_logits (B, K), lm_logits (B, T, V))")
    class_logits, lm_logits = out
    loss = F.cross_entropy(class_logits, labels) + 0.1 * lm_logits.square().mean()
    loss.backward()
    return {
        "head.weight initialised with std 0.02": init,
        "class logits": class_logits.detach(),
        "lm logits": lm_logits.detach(),
        "gradients": {name: p.grad for name, p in model.named_parameters()},
    }


class _LastPosition(ref.GPTClassifier):
    def forward(self, idx: torch.Tensor, extract_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, lm_logits = ref.hidden_and_logits(self.gpt, idx)
        return self.head(hidden[:, -1]), lm_logits


class _DefaultInit(ref.GPTClassifier):
    def __init__(self, gpt: GPT, n_classes: int):
        nn.Module.__init__(self)
        self.gpt = gpt
        self.head = nn.Linear(gpt.config.n_embd, n_classes, bias=False)


class _BeforeFinalNorm(ref.GPTClassifier):
    def forward(self, idx: torch.Tensor, extract_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        caught = []
        handle = self.gpt.transformer.h[-1].register_forward_hook(
            lambda m, i, o: caught.append(o[0] if isinstance(o, tuple) else o)
        )
        try:
            lm_logits, _ = self.gpt(idx)
        finally:
            handle.remove()
        return ref.classifier_logits(caught[0], extract_pos, self.head), lm_logits


class _FrozenBody(ref.GPTClassifier):
    def forward(self, idx: torch.Tensor, extract_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, lm_logits = ref.hidden_and_logits(self.gpt, idx)
        return ref.classifier_logits(hidden.detach(), extract_pos, self.head), lm_logits


CLASSIFIER = Spec(
    id="lab13.GPTClassifier",
    points=3,
    name="GPTClassifier",
    reference=ref.GPTClassifier,
    cases=classifier_cases,
    run=run_classifier,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=("gptcourse.finetune.GPTClassifier", "gptcourse.finetune.classifier_logits"),
    hint="(Chapter 14, The classification head) keep the given GPT as self.gpt and add self.head, a Linear(n_embd, "
    "n_classes) without bias initialised N(0, 0.02); forward: one pass for the final hidden states and the LM "
    "logits, then your classifier_logits at each row's extract position; return (class_logits, lm_logits)",
    misconceptions=(
        Misconception(
            "the last position of every row",
            _LastPosition,
            "the rows are right-padded: read each row at its own extract token <e> (extract_pos), the last REAL "
            "token, not at the last position (Chapter 14, The classification head)",
        ),
        Misconception(
            "head left at nn.Linear's default initialisation",
            _DefaultInit,
            "GPT-1's new layer W_y starts small, like the model's other weights: normal with std 0.02 "
            "(nn.Linear's default is far larger, and its first updates would swamp the pre-trained features)",
        ),
        Misconception(
            "hidden state before the final LayerNorm",
            _BeforeFinalNorm,
            "h_l^m is the final hidden state, the input of lm_head: after the final LayerNorm ln_f, not the "
            "output of the last block (Chapter 14, The classification head: the forward hook)",
        ),
        Misconception(
            "the body frozen (hidden states detached)",
            _FrozenBody,
            "GPT-1 fine-tunes ALL of the model through the head: keep the hidden states in the graph, so that "
            "the task loss's gradient reaches the pre-trained weights",
        ),
    ),
)


# --- Exercise 4: GPT-1's learning-rate schedule -----------------------------------------------------------------


def scale_cases(g: torch.Generator) -> list[Case]:
    """``(step, steps, warmup_steps)``."""
    cases = [
        Case("first warmup step (step 0)", (0, 50, 5)),
        Case("last warmup step", (4, 50, 5)),
        Case("first step after warmup", (5, 50, 5)),
        Case("middle of the decay", (27, 50, 5)),
        Case("last step", (49, 50, 5)),
        Case("no warmup, step 0", (0, 20, 0)),
        Case("no warmup, a step of the decay", (8, 20, 0)),
    ]
    for i in range(4):
        steps = randint(g, 10, 500)
        warmup = 0 if i == 0 else randint(g, 1, steps // 3)
        cases.append(Case(f"random schedule {i + 1}", (randint(g, 0, steps - 1), steps, warmup)))
    return cases


def _scale(from_zero: bool = False, over_all: bool = False, decay: bool = True, offset: bool = True) -> Callable:
    def lr_scale(step: int, steps: int, warmup_steps: int) -> float:
        if step < warmup_steps:
            return (step if from_zero else step + 1) / warmup_steps
        if not decay:
            return 1.0
        if over_all:
            return (steps - step) / steps
        if not offset:
            return 1.0 - step / max(1, steps - warmup_steps)
        return (steps - step) / max(1, steps - warmup_steps)

    return lr_scale


LR_SCALE = Spec(
    id="lab13.lr_scale",
    points=1,
    name="lr_scale",
    reference=ref.lr_scale,
    cases=scale_cases,
    compare=close(atol=1e-12, rtol=1e-9),
    forbidden=("gptcourse.finetune.lr_scale",),
    hint="(Chapter 14, The fine-tuning step) a linear warmup, (step + 1) / W for step < W, then a linear decay "
    "(S - step) / (S - W) that reaches 0 just after the last of the S steps",
    misconceptions=(
        Misconception(
            "warmup starts at zero",
            _scale(from_zero=True),
            "step 0 already trains: step t of the warmup uses (t + 1) / W of the peak rate, so the last warmup "
            "step reaches the full rate",
        ),
        Misconception(
            "decay spread over all the steps",
            _scale(over_all=True),
            "the decay starts when the warmup ends: it falls from 1 right after warmup to 0 after the last step, "
            "over the S - W steps left",
        ),
        Misconception(
            "no decay after warmup",
            _scale(decay=False),
            "GPT-1's rate does not stay at its peak: after the warmup it decays linearly to 0 at the end of training",
        ),
        Misconception(
            "decay counted from step 0",
            _scale(offset=False),
            "count the decay's progress from the end of the warmup (step W), not from step 0: the first step "
            "after warmup is at the full rate",
        ),
    ),
)


# --- Exercise 5: one fine-tuning step ------------------------------------------------------------------------


STEPS = 2  # two steps: gradients left over from the first show in the second


def _classifier(g: torch.Generator, vocab_size: int = 12, n_embd: int = 16, **config: Any) -> ref.GPTClassifier:
    with seeded(g):
        model = ref.GPTClassifier(GPT(_body_config(g, vocab_size, n_embd, **config)), randint(g, 2, 4))
    return randomize_(model, g, scale=0.3)


def step_cases(g: torch.Generator) -> list[Case]:
    """``(model, optimizer, idxs, extract_poss, labels, lam[, grad_clip])``, one batch per step."""

    def case(label: str, optimizer: Optimizer, lam: float, clip: float | None, B: int = 4, T: int = 9) -> Case:
        model = _classifier(g)
        batches = [_padded(g, _lengths(g, B, T, low=2), T, model.config.vocab_size) for _ in range(STEPS)]
        idxs, poss = (torch.stack(t) for t in zip(*batches))
        labels = torch.randint(model.head.out_features, (STEPS, B), generator=g)
        args = (model, optimizer, idxs, poss, labels, lam)
        return Case(f"{label} ({STEPS} steps)", args if clip is None else (*args, clip))

    lam = (0.1, 0.5, 2.0)[randint(g, 0, 2)]
    return [
        case("lambda 0.5, clipped to 0.05", Optimizer("SGD", 0.5), 0.5, 0.05),
        case("lambda 1, grad_clip 0 (no clipping)", Optimizer("SGD", 0.5), 1.0, 0.0),
        case("AdamW, lambda 0, grad_clip left at its default (1.0)", Optimizer("AdamW", 1e-2), 0.0, None),
        case(f"random: lambda {lam}", Optimizer("SGD", 0.3), lam, 0.1, B=3),
    ]


def run_step(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """Run the answer for every batch on the case's model and a fresh optimiser; return the three losses
    of every step and the parameters it left."""
    model, optimizer, idxs, poss, labels, lam, *clip = case.args
    opt = optimizer.build(model)
    losses = []
    with global_seed():
        for idx, pos, y in zip(idxs, poss, labels):
            result = answer(model, opt, idx, pos, y, lam, *clip)
            if not isinstance(result, (tuple, list)) or len(result) != 3:
                raise AnswerError(f"finetune_step should return (L3, L2, L1), it returned a {type(result).__name__}")
            losses.append([number(v, "finetune_step") for v in result])
    return {"(L3, L2, L1) per step": losses, "parameters": {n: p.detach() for n, p in model.named_parameters()}}


def _step(
    masked: bool = True, zero: bool = True, clip: bool = True, clip_at_zero: bool = False, l3: bool = True
) -> Callable[..., tuple[float, float, float]]:
    """The reference step with one piece changed (a misconception)."""

    def finetune_step(
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        idx: torch.Tensor,
        extract_pos: torch.Tensor,
        labels: torch.Tensor,
        lam: float,
        grad_clip: float = 1.0,
    ) -> tuple[float, float, float]:
        class_logits, lm_logits = model(idx, extract_pos)
        if masked:
            targets = ref.lm_targets(idx, extract_pos)
        else:
            targets = torch.full_like(idx, -1)
            targets[:, :-1] = idx[:, 1:]
        loss3, loss2, loss1 = ref.combined_loss(class_logits, labels, lm_logits, targets, lam)
        if zero:
            optimizer.zero_grad(set_to_none=True)
        (loss3 if l3 else loss2).backward()
        if clip and (grad_clip > 0 or clip_at_zero):
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        return loss3.item(), loss2.item(), loss1.item()

    return finetune_step


FINETUNE_STEP = Spec(
    id="lab13.finetune_step",
    points=3,
    name="finetune_step",
    reference=ref.finetune_step,
    cases=step_cases,
    run=run_step,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=("gptcourse.finetune.finetune_step", "gptcourse.finetune.finetune", "gptcourse.loops.optimizer_step"),
    hint="(Chapter 14, The fine-tuning step) run the classifier, compute (L3, L2, L1) with your combined_loss on "
    "your lm_targets, zero the gradients, back-propagate L3, clip the global norm to grad_clip when it is > 0, "
    "step; return the three losses as floats",
    misconceptions=(
        Misconception(
            "padding in the LM targets",
            _step(masked=False),
            "L1's targets are your lm_targets(idx, extract_pos): a plain shift would train the model to "
            "predict the padding after <e> (Chapter 14, The objective)",
        ),
        Misconception(
            "only L2 back-propagated",
            _step(l3=False),
            "back-propagate the combined objective L3 = L2 + lambda L1, not the task loss alone: the LM term "
            "is what keeps the model a language model while it learns the task",
        ),
        *update_misconceptions(_step),
    ),
)


# --- Exercise 6: the evaluation ---------------------------------------------------------------------------------

_CHARS = "abcd \n"


def _examples(g: torch.Generator, n: int, n_classes: int) -> list[ref.Example]:
    def text() -> str:
        return "".join(_CHARS[randint(g, 0, len(_CHARS) - 1)] for _ in range(randint(g, 1, 7)))

    return [ref.Example((text(), text()), randint(g, 0, n_classes - 1)) for _ in range(n)]


def _task_model(g: torch.Generator, dropout: float, training: bool) -> tuple[ref.GPTClassifier, ref.TaskTokenizer]:
    tokenizer = ref.TaskTokenizer(CharTokenizer(_CHARS))
    model = _classifier(g, vocab_size=tokenizer.vocab_size, dropout=dropout)
    return model.train(training), tokenizer


def evaluate_cases(g: torch.Generator) -> list[Case]:
    """``(model, examples, tokenizer, batch_size[, device])`` with a classifier that has dropout."""

    def case(label: str, n: int, batch_size: int | None, training: bool) -> Case:
        model, tokenizer = _task_model(g, 0.2, training)
        examples = _examples(g, n, model.head.out_features)
        if batch_size is None:
            return Case(label, (model, examples, tokenizer), {"device": "cpu"})
        return Case(label, (model, examples, tokenizer, batch_size, "cpu"))

    n, b = randint(g, 3, 12), randint(g, 2, 5)
    return [
        case("a model in training mode, 10 examples in batches of 4", 10, 4, True),
        case("a model in eval mode (it must stay so), 7 examples in batches of 3", 7, 3, False),
        case("one batch larger than the examples", 5, 8, True),
        case("batch_size left at its default", 6, None, True),
        case(f"random: {n} examples in batches of {b}", n, b, bool(randint(g, 0, 1))),
    ]


def run_evaluate(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """The accuracy and the mean L2 it returned, the mode it left the model in, and gradients left."""
    model = case.args[0]
    with global_seed():
        result = answer(*case.args, **case.kwargs)
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise AnswerError(f"evaluate should return (accuracy, mean L2), it returned a {type(result).__name__}")
    return {
        "accuracy": number(result[0], "evaluate"),
        "mean L2": number(result[1], "evaluate"),
        "mode afterwards": "training" if model.training else "eval",
        "gradients left in .grad": any(p.grad is not None for p in model.parameters()),
    }


def _evaluate(
    eval_mode: bool = True, restore: bool = True, per_example: bool = True, last_batch: bool = True
) -> Callable[..., tuple[float, float]]:
    """The reference evaluation with one piece changed (a misconception)."""

    def evaluate(
        model: nn.Module,
        examples: list[ref.Example],
        tokenizer: ref.TaskTokenizer,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> tuple[float, float]:
        was_training = model.training
        model.train(not eval_mode and was_training)
        starts = range(0, len(examples) if last_batch else len(examples) - batch_size + 1, batch_size)
        accuracies, losses, counted = [], [], 0
        with torch.no_grad():
            for i in starts:
                idx, pos, labels = ref.collate(examples[i : i + batch_size], tokenizer, model.config.block_size, device)
                logits, _ = model(idx, pos)
                accuracies.append((logits.argmax(-1) == labels).sum().item())
                losses.append(F.cross_entropy(logits, labels, reduction="sum").item())
                counted += len(labels)
                if not per_example:
                    accuracies[-1] /= len(labels)
                    losses[-1] /= len(labels)
        model.train(was_training if restore else False)
        if not per_example:
            return sum(accuracies) / len(accuracies), sum(losses) / len(losses)
        total = counted if not last_batch else len(examples)
        return sum(accuracies) / max(1, total), sum(losses) / max(1, total)

    return evaluate


EVALUATE = Spec(
    id="lab13.evaluate",
    points=2,
    name="evaluate",
    reference=ref.evaluate,
    cases=evaluate_cases,
    run=run_evaluate,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=("gptcourse.finetune.evaluate", "gptcourse.finetune.finetune"),
    hint="(Chapter 14, The experiment) in eval mode and without gradients, go through the examples in batches of "
    "batch_size (collate), count the correct argmax predictions and sum the cross-entropies; divide both by the "
    "number of examples; then put the model back in the mode it was in",
    misconceptions=(
        Misconception(
            "dropout left on",
            _evaluate(eval_mode=False),
            "evaluate in eval mode: dropout is for training, and it makes the measured accuracy noisy and too low",
        ),
        Misconception(
            "mode not restored",
            _evaluate(restore=False),
            "put the model back in the mode it had when evaluate was called: fine-tuning goes on after each "
            "evaluation, in training mode",
        ),
        Misconception(
            "mean of the batch means",
            _evaluate(per_example=False),
            "average over the examples, not over the batches: the last batch can be smaller, and its "
            "examples must not weigh more than the others",
        ),
        Misconception(
            "last, smaller batch left out",
            _evaluate(last_batch=False),
            "every example counts: when batch_size does not divide the number of examples, the last batch "
            "is smaller, but it is evaluated too",
        ),
    ),
)


# --- Exercise 7: the fine-tuning loop -------------------------------------------------------------------------


def finetune_cases(g: torch.Generator) -> list[Case]:
    """``(model, task, tokenizer)`` and the loop's keyword arguments, on a toy three-class task."""

    def case(label: str, training: bool = True, dropout: float = 0.1, **kwargs: Any) -> Case:
        model, tokenizer = _task_model(g, dropout, training)
        K = model.head.out_features
        task = ref.SpeakerTask([f"speaker {k}" for k in range(K)], _examples(g, 24, K), _examples(g, 9, K))
        base = dict(
            lam=0.5, steps=5, batch_size=4, lr=1e-2, warmup_steps=2, device="cpu", seed=randint(g, 1, 1000),
            progress=False, eval_every=2, weight_decay=0.1,
        )  # fmt: skip
        return Case(label, (model, task, tokenizer), base | kwargs)

    return [
        case("5 steps, warmup 2, an evaluation every 2 steps and one at the end"),
        case("a model given in eval mode, with dropout", training=False),
        case("lambda 0, no intermediate evaluation", lam=0.0, eval_every=0, steps=4, warmup_steps=1),
        case("random", lam=(0.1, 1.0)[randint(g, 0, 1)], batch_size=randint(g, 2, 6), warmup_steps=randint(g, 0, 3)),
    ]


def run_finetune(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """Fine-tune the case's model with the answer; return the history it returned and the weights it left."""
    model = case.args[0]
    with global_seed():
        history = answer(*case.args, **case.kwargs)
    fields = ("loss", "task_loss", "lm_loss", "eval_steps", "eval_accuracy", "eval_task_loss")
    missing = [name for name in fields if not isinstance(getattr(history, name, None), list)]
    if missing:
        raise AnswerError(
            f"finetune returned a {type(history).__name__} without the list {missing[0]!r}; return a "
            "gptcourse.finetune.FinetuneHistory with its lists filled in"
        )
    out: dict[str, Any] = {name: [number(v, f"history.{name}") for v in getattr(history, name)] for name in fields}
    out["eval_steps"] = [int(v) for v in out["eval_steps"]]
    for name in ("val_accuracy", "val_task_loss"):
        out[name] = number(getattr(history, name, None), f"history.{name}")
    out["weights"] = {name: p.detach().clone() for name, p in model.named_parameters()}
    return out


def _loop(
    schedule: bool = True,
    sample: bool = True,
    train_mode: bool = True,
    decay_matrices: bool = True,
    last_eval: bool = True,
) -> Callable[..., ref.FinetuneHistory]:
    """The reference loop with one piece changed (a misconception)."""

    def finetune(
        model: ref.GPTClassifier,
        task: ref.SpeakerTask,
        tokenizer: ref.TaskTokenizer,
        lam: float = 0.5,
        steps: int = 200,
        batch_size: int = 32,
        lr: float = 3e-4,
        warmup_steps: int = 20,
        device: str = "cpu",
        seed: int = 0,
        progress: bool = True,
        eval_every: int = 0,
        weight_decay: float = 0.01,
    ) -> ref.FinetuneHistory:
        model.to(device)
        if train_mode:
            model.train()
        if decay_matrices:
            optimizer = configure_optimizer(model, lr, weight_decay=weight_decay)
        else:
            optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
        rng = random.Random(seed)
        history = ref.FinetuneHistory()
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * ref.lr_scale(step, steps, warmup_steps) if schedule else lr
            batch = rng.sample(task.train, batch_size) if sample else rng.choices(task.train, k=batch_size)
            idx, pos, labels = ref.collate(batch, tokenizer, model.config.block_size, device)
            l3, l2, l1 = ref.finetune_step(model, optimizer, idx, pos, labels, lam)
            history.loss.append(l3)
            history.task_loss.append(l2)
            history.lm_loss.append(l1)
            if (eval_every > 0 and (step + 1) % eval_every == 0) or (last_eval and step + 1 == steps):
                accuracy, task_loss = ref.evaluate(model, task.val, tokenizer, device=device)
                history.eval_steps.append(step + 1)
                history.eval_accuracy.append(accuracy)
                history.eval_task_loss.append(task_loss)
        if history.eval_accuracy:
            history.val_accuracy, history.val_task_loss = history.eval_accuracy[-1], history.eval_task_loss[-1]
        return history

    return finetune


FINETUNE = Spec(
    id="lab13.finetune",
    points=3,
    name="finetune",
    reference=ref.finetune,
    cases=finetune_cases,
    run=run_finetune,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=("gptcourse.finetune.finetune", "gptcourse.finetune.finetune_step", "gptcourse.finetune.evaluate"),
    hint="(Chapter 14, The fine-tuning step) training mode; your Lab 9 configure_optimizer(model, lr, weight_decay); "
    "random.Random(seed) for the batches; at each step set the rate lr * lr_scale(step, steps, warmup_steps), "
    "collate rng.sample(task.train, batch_size), one finetune_step; evaluate on task.val every eval_every steps "
    "and after the last",
    misconceptions=(
        Misconception(
            "no schedule",
            _loop(schedule=False),
            "set every parameter group's lr to lr * lr_scale(step, steps, warmup_steps) before each step: "
            "GPT-1's warmup and linear decay are part of the recipe",
        ),
        Misconception(
            "batches drawn with replacement",
            _loop(sample=False),
            "draw each batch with rng.sample (without replacement, as the package does), so the runs see the "
            "same batches: one example appears at most once in a batch",
        ),
        Misconception(
            "not switched to training mode",
            _loop(train_mode=False),
            "call model.train() at the start: a model handed over in eval mode would fine-tune without dropout",
        ),
        Misconception(
            "weight decay on every parameter",
            _loop(decay_matrices=False),
            "build the optimiser with your Lab 9 configure_optimizer: weight decay on the matrices only, not on "
            "the biases and LayerNorm gains",
        ),
        Misconception(
            "no evaluation after the last step",
            _loop(last_eval=False),
            "evaluate every eval_every steps and also after the last step: the run's result (val_accuracy) is "
            "the final model's",
        ),
    ),
)

SPECS = (LM_TARGETS, HEAD, COMBINED_LOSS, CLASSIFIER, LR_SCALE, FINETUNE_STEP, EVALUATE, FINETUNE)
