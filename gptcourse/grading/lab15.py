"""Exercise specs for Lab 15 (Direct Preference Optimization, ``learner/dpo.py``), against
:mod:`gptcourse.rlhf`: the padded batch ``encode_pairs``, ``response_logprobs``,
``comparison_logprobs``, the Bradley-Terry ``preference_loss``, ``dpo_margin``, ``dpo_loss``, one
update ``dpo_step`` (the package's loop has it inline; the reference here is that loop's body) and
the loop ``dpo``. The models are tiny randomized GPTs over :func:`gptcourse.rlhf.tokenizer`'s
characters, and the comparisons are prompts of Chapter 16's instructions with responses of
different lengths, so padding and masking show."""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptcourse import rlhf as ref
from gptcourse.grading.spec import (
    AnswerError,
    Case,
    Misconception,
    Optimizer,
    Spec,
    close,
    compare_with_gradients,
    exact,
    global_seed,
    number,
    randint,
    randomize_,
    seeded,
    update_misconceptions,
)
from gptcourse.model import GPT, GPTConfig
from gptcourse.train import configure_optimizer

CH = "Chapter 16"
TOK = ref.tokenizer()
_close = close(atol=1e-5, rtol=1e-4)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _word(g: torch.Generator, low: int = 3, high: int = 5) -> str:
    return "".join(_LETTERS[randint(g, 0, 25)] for _ in range(randint(g, low, high)))


def _prompt(g: torch.Generator) -> str:
    names = list(ref.INSTRUCTIONS)
    return f"{names[randint(g, 0, len(names) - 1)]} {_word(g)}{ref.SEP}"


def _comparison(g: torch.Generator) -> ref.Comparison:
    """The right answer against a sloppy one (filler words) or a wrong word: lengths differ."""
    prompt = _prompt(g)
    right = ref.correct_response(prompt)
    wrong = f"{right} {ref.FILLERS[randint(g, 0, 3)]}" if randint(g, 0, 1) else _word(g, 1, 8)
    chosen, rejected = (right, wrong) if randint(g, 0, 3) else (wrong, right)  # labellers are not always right
    return ref.Comparison(prompt, chosen + ref.EOS, rejected + ref.EOS)


def _comparisons(g: torch.Generator, n: int) -> list[ref.Comparison]:
    return [_comparison(g) for _ in range(n)]


def _gpt(g: torch.Generator, dropout: float = 0.0, n_layer: int = 1) -> GPT:
    """A tiny randomized GPT without biases: a key bias gets only rounding noise as its gradient (softmax
    ignores it), which AdamW's normalisation would turn into updates of size lr that differ between two
    correct implementations."""
    config = GPTConfig(
        bias=False, vocab_size=TOK.vocab_size, block_size=48, n_layer=n_layer, n_head=2, n_embd=16, dropout=dropout
    )
    with seeded(g):
        model = GPT(config)
    return randomize_(model, g, scale=0.3)


def _tensors(result: Any, n: int, name: str) -> tuple[torch.Tensor, ...]:
    if (
        not isinstance(result, (tuple, list))
        or len(result) != n
        or not all(isinstance(t, torch.Tensor) for t in result)
    ):
        raise AnswerError(f"{name} should return {n} tensors, it returned {type(result).__name__}")
    return tuple(result)


def _gradients(value: torch.Tensor, model: nn.Module) -> dict[str, Any]:
    """The gradient of ``value.sum()`` with respect to each parameter (None: cut off from the graph)."""
    params = dict(model.named_parameters())
    if not value.requires_grad:
        return {"gradient of the sum": None}
    grads = torch.autograd.grad(value.sum(), list(params.values()), allow_unused=True)
    return {
        "gradient of the sum": {
            n: g if g is not None else torch.zeros_like(p) for (n, p), g in zip(params.items(), grads)
        }
    }


# --- Step 1: the padded batch ------------------------------------------------------------------------------


def encode_cases(g: torch.Generator) -> list[Case]:
    fixed = [
        Case("two rows of different lengths", ([("first ab=", "a."), ("upper abc=", "ABC.")], TOK)),
        Case("one row (no padding)", ([("reverse kbd=", "dbk.")], TOK)),
        Case("rows of equal length", ([("last abc=", "c."), ("last xyz=", "z.")], TOK)),
        Case(
            "a long response after a short prompt", ([("double abcde=", "abcde abcde um ok."), ("first a=", "a.")], TOK)
        ),
    ]
    for i in range(3):
        pairs = [(c.prompt, c.chosen) for c in _comparisons(g, randint(g, 2, 6))]
        fixed.append(Case(f"random batch {i + 1}", (pairs, TOK)))
    return fixed


def run_encode(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    idx, targets, last = _tensors(answer(*case.args, **case.kwargs), 3, "encode_pairs")
    return {"idx": idx, "targets": targets, "last": last}


def _encode(
    left: bool = False, prompt_targets: bool = False, shift: int = 1, last_is_end: bool = False, pad: int = 0
) -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The reference batch with one piece changed (a misconception)."""

    def encode_pairs(pairs: list[tuple[str, str]], tok: Any, device: str = "cpu"):
        rows = [(tok.encode(p), tok.encode(r)) for p, r in pairs]
        T = max(len(p) + len(r) for p, r in rows)
        idx = torch.full((len(rows), T), pad, dtype=torch.long)
        targets = torch.full((len(rows), T), -1, dtype=torch.long)
        last = torch.zeros(len(rows), dtype=torch.long)
        for b, (p, r) in enumerate(rows):
            seq = p + r
            start = T - len(seq) if left else 0
            idx[b, start : start + len(seq)] = torch.tensor(seq)
            first = 0 if prompt_targets else len(p) - shift
            targets[b, start + first : start + len(seq) - shift] = torch.tensor(seq[first + shift :])
            last[b] = T - 1 if last_is_end else start + len(seq) - 1
        return idx.to(device), targets.to(device), last.to(device)

    return encode_pairs


ENCODE_PAIRS = Spec(
    id="lab15.encode_pairs",
    points=2,
    name="encode_pairs",
    reference=ref.encode_pairs,
    cases=encode_cases,
    run=run_encode,
    compare=exact(),
    forbidden=("gptcourse.rlhf.encode_pairs",),
    hint=f"({CH}, step 1) each row is prompt + response, padded on the right with 0 to the longest row; targets[b, t] "
    "is the token at t + 1 where that token is part of the response, -1 elsewhere; last is each row's final index",
    misconceptions=(
        Misconception(
            "left padding",
            _encode(left=True),
            "pad on the right: the tokens of each row start at position 0, so the sequence log-probability "
            "reads the same positions whatever the batch (attention is causal, so right padding never reaches them)",
        ),
        Misconception(
            "targets on the prompt too",
            _encode(prompt_targets=True),
            "DPO scores the response given the prompt, log π(y | x): the prompt is given, not predicted, so only "
            "the positions whose next token belongs to the response get a target (-1 on the prompt)",
        ),
        Misconception(
            "targets not shifted",
            _encode(shift=0),
            "position t predicts the token at t + 1: the first response token is the target of the prompt's LAST "
            "position, and the final position has no target",
        ),
        Misconception(
            "last = T - 1 for every row",
            _encode(last_is_end=True),
            "last is the index of each row's own final token: in a right-padded batch a shorter row ends before T - 1",
        ),
        Misconception(
            "padding with -1 in idx",
            _encode(pad=-1),
            "idx must hold valid token ids everywhere (the embedding would fail on -1): pad idx with 0; -1 marks "
            "the positions without a target, in targets only",
        ),
    ),
)


# --- Step 2: the log-probability of each response token --------------------------------------------------


def logp_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, comparisons: list[ref.Comparison], n_layer: int = 1) -> Case:
        idx, targets, _ = ref.encode_pairs(ref.comparison_pairs(comparisons), TOK)
        return Case(label, (_gpt(g, n_layer=n_layer), idx, targets))

    return [
        case("a batch of 4 responses of different lengths", _comparisons(g, 2)),
        case("one comparison, two layers", _comparisons(g, 1), n_layer=2),
        case("random batch", _comparisons(g, randint(g, 2, 4))),
    ]


def run_logp(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    model = case.args[0]
    out = answer(*case.args)
    if not isinstance(out, torch.Tensor):
        raise AnswerError(f"response_logprobs returned a {type(out).__name__}; return the (B, T) tensor")
    return {"log-probabilities": out.detach(), **_gradients(out, model)}


def _logp(
    mask: bool = True, log: bool = True, inputs: bool = False, detach: bool = False
) -> Callable[..., torch.Tensor]:
    """The reference log-probabilities with one piece changed (a misconception)."""

    def response_logprobs(model: GPT, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, _ = model(idx)
        p = torch.log_softmax(logits.float(), dim=-1) if log else torch.softmax(logits.float(), dim=-1)
        which = idx if inputs else targets.clamp(min=0)
        out = p.gather(-1, which.unsqueeze(-1)).squeeze(-1)
        out = out * (targets >= 0) if mask else out
        return out.detach() if detach else out

    return response_logprobs


RESPONSE_LOGPROBS = Spec(
    id="lab15.response_logprobs",
    points=2,
    name="response_logprobs",
    reference=ref.response_logprobs,
    cases=logp_cases,
    run=run_logp,
    compare=compare_with_gradients(),
    forbidden=("gptcourse.rlhf.response_logprobs", "gptcourse.rlhf.comparison_logprobs"),
    hint=f"({CH}, step 2) log_softmax of the model's logits over the vocabulary, then at each position the entry of "
    "its target token (gather along the last dimension), times 0 where the target is -1; keep it differentiable",
    misconceptions=(
        Misconception(
            "prompt and padding not masked",
            _logp(mask=False),
            "where targets is -1 there is no response token to score: those positions must contribute 0, or the "
            "prompt and the padding are counted in log π(y | x)",
        ),
        Misconception(
            "probabilities instead of log-probabilities",
            _logp(log=False),
            "a sequence's log-probability is a SUM of per-token log-probabilities: take log_softmax, not softmax",
        ),
        Misconception(
            "the input token scored",
            _logp(inputs=True),
            "score the target, the token that comes next (targets[b, t]), not the token the position reads (idx)",
        ),
        Misconception(
            "detached",
            _logp(detach=True),
            "the policy learns through these log-probabilities: no .detach() (or torch.no_grad) here",
        ),
    ),
)


# --- Step 3: both responses of a batch of comparisons ----------------------------------------------------


class _CountingModel(nn.Module):
    """The case's GPT, counting the forward passes an answer makes."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt, self.calls = gpt, 0

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        self.calls += 1
        return self.gpt(idx, targets)


def comparison_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("2 comparisons", (_gpt(g), _comparisons(g, 2))),
        Case("one comparison, two layers", (_gpt(g, n_layer=2), _comparisons(g, 1))),
        Case("random batch", (_gpt(g), _comparisons(g, randint(g, 3, 6)))),
    ]


def run_comparison(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    gpt, comparisons = case.args
    model = _CountingModel(gpt)
    chosen, rejected = _tensors(answer(model, comparisons), 2, "comparison_logprobs")
    both = torch.cat([chosen.reshape(-1), rejected.reshape(-1)])
    return {
        "log π(y_w | x)": chosen.detach(),
        "log π(y_l | x)": rejected.detach(),
        "forward passes": model.calls,
        **_gradients(both, gpt),
    }


def _comparison_logp(two_passes: bool = False, mean: bool = False, swap: bool = False, prompt: bool = False):
    """The reference sums with one piece changed (a misconception)."""

    def comparison_logprobs(model: nn.Module, comparisons: list[ref.Comparison], device: str = "cpu"):
        def sums(pairs: list[tuple[str, str]]) -> torch.Tensor:
            idx, targets, _ = (_encode(prompt_targets=True) if prompt else ref.encode_pairs)(pairs, TOK, device)
            logp = ref.response_logprobs(model, idx, targets)
            return logp.sum(-1) / (targets >= 0).sum(-1) if mean else logp.sum(-1)

        n = len(comparisons)
        if two_passes:
            chosen = sums([(c.prompt, c.chosen) for c in comparisons])
            rejected = sums([(c.prompt, c.rejected) for c in comparisons])
        else:
            both = sums(ref.comparison_pairs(comparisons))
            chosen, rejected = both[:n], both[n:]
        return (rejected, chosen) if swap else (chosen, rejected)

    return comparison_logprobs


COMPARISON_LOGPROBS = Spec(
    id="lab15.comparison_logprobs",
    points=2,
    name="comparison_logprobs",
    reference=ref.comparison_logprobs,
    cases=comparison_cases,
    run=run_comparison,
    compare=compare_with_gradients(),
    forbidden=("gptcourse.rlhf.comparison_logprobs", "gptcourse.rlhf.response_logprobs", "gptcourse.rlhf.encode_pairs"),
    hint=f"({CH}, step 3) one batch of every (prompt, chosen) pair followed by every (prompt, rejected) pair, your "
    "encode_pairs with rlhf.tokenizer(), your response_logprobs, summed over positions; rows [:B] are the chosen "
    "sums and [B:] the rejected",
    misconceptions=(
        Misconception(
            "two forward passes",
            _comparison_logp(two_passes=True),
            "put the chosen and the rejected responses in ONE padded batch and run the model once: half the "
            "passes, and the reference model's sums come from the same kind of batch",
        ),
        Misconception(
            "mean over the response",
            _comparison_logp(mean=True),
            "log π(y | x) is the SUM of the response's token log-probabilities (the chain rule), not their mean",
        ),
        Misconception(
            "chosen and rejected swapped",
            _comparison_logp(swap=True),
            "return (chosen, rejected): the first B rows of the batch are the chosen responses y_w",
        ),
        Misconception(
            "the prompt scored too",
            _comparison_logp(prompt=True),
            "score the response only: log π(y | x) conditions on the prompt, so the prompt's tokens get no target",
        ),
    ),
)


# --- Steps 4 to 6: the Bradley-Terry loss, the margin and the DPO loss --------------------------------------


def _sums(g: torch.Generator, B: int) -> list[torch.Tensor]:
    """Four sequence log-probabilities ``(B,)``: policy chosen, policy rejected, reference chosen, rejected."""
    ref_sums = -20 * torch.rand(2, B, generator=g) - 1
    policy = ref_sums + torch.randn(2, B, generator=g) * 2
    return [policy[0], policy[1], ref_sums[0], ref_sums[1]]


def reward_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("rewards of 4 pairs", (torch.randn(4, generator=g), torch.randn(4, generator=g))),
        Case("one pair", (torch.tensor([0.3]), torch.tensor([1.1]))),
        Case("a margin of -200 (and +200)", (torch.tensor([-100.0, 100.0, 0.5]), torch.tensor([100.0, -100.0, 0.2]))),
    ]
    B = randint(g, 2, 9)
    return cases + [Case("random rewards", (torch.randn(B, generator=g) * 3, torch.randn(B, generator=g) * 3))]


def _with_grads(answer: Callable[..., Any], args: list[torch.Tensor], kwargs: dict, name: str) -> dict[str, Any]:
    inputs = [a.detach().clone().requires_grad_() for a in args]
    loss = answer(*inputs, **kwargs)
    if not isinstance(loss, torch.Tensor):
        raise AnswerError(f"{name} returned a {type(loss).__name__}; return a tensor")
    out: dict[str, Any] = {"value": loss.detach()}
    if loss.requires_grad:
        grads = torch.autograd.grad(loss.sum(), inputs, allow_unused=True)
        out["gradients"] = [torch.zeros_like(a) if d is None else d for a, d in zip(inputs, grads)]
    else:
        out["gradients"] = None
    return out


def run_loss(name: str) -> Callable[[Callable[..., Any], Case], dict[str, Any]]:
    """The driver of a loss named ``name``: its value, which must be one number, and its gradients."""

    def run(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
        out = _with_grads(answer, list(case.args), case.kwargs, name)
        if out["value"].dim() != 0:
            raise AnswerError(f"{name} returned shape {tuple(out['value'].shape)}; the loss is one number")
        return out

    return run


PREFERENCE_LOSS = Spec(
    id="lab15.preference_loss",
    points=1,
    name="preference_loss",
    reference=ref.preference_loss,
    cases=reward_cases,
    run=run_loss("preference_loss"),
    compare=compare_with_gradients(),
    forbidden=("gptcourse.rlhf.preference_loss", "gptcourse.rlhf.dpo_loss"),
    hint=f"({CH}, step 2, the reward model) the mean over the batch of -log σ(r_w - r_l), with a log-sigmoid that "
    "stays finite for any margin",
    misconceptions=(
        Misconception(
            "log of sigmoid",
            lambda rw, rl: -torch.log(torch.sigmoid(rw - rl)).mean(),
            "log(sigmoid(x)) underflows to log(0) = -inf for a margin of -200: use the log-sigmoid function, "
            "which computes the same value stably",
        ),
        Misconception(
            "margin the wrong way round",
            lambda rw, rl: -F.logsigmoid(rl - rw).mean(),
            "the loss falls when the chosen response's reward r_w is ABOVE the rejected one's: σ(r_w - r_l)",
        ),
        Misconception(
            "sum over the batch",
            lambda rw, rl: -F.logsigmoid(rw - rl).sum(),
            "average over the pairs of the batch, so that the loss (and the step size) does not grow with B",
        ),
        Misconception(
            "sigmoid without the log",
            lambda rw, rl: -torch.sigmoid(rw - rl).mean(),
            "Bradley-Terry maximises the log-likelihood of the labeller's choices: -log σ, not -σ",
        ),
    ),
)


def margin_cases(g: torch.Generator) -> list[Case]:
    at_reference = _sums(g, 3)[2:]
    return [
        Case("beta 0.1 (the default), 4 pairs", tuple(_sums(g, 4))),
        Case("beta 0.5", tuple(_sums(g, 3)), {"beta": 0.5}),
        Case("at the reference (policy = reference): margin 0", (*at_reference, *at_reference), {"beta": 1.0}),
        Case("random, beta 0.25", tuple(_sums(g, randint(g, 2, 8))), {"beta": 0.25}),
    ]


def run_margin(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    return _with_grads(answer, list(case.args), case.kwargs, "dpo_margin")


def _margin(with_beta: bool = True, swapped: bool = False, one_ratio: bool = False, no_reference: bool = False):
    """The reference margin with one piece changed (a misconception)."""

    def dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
        pc, pr, rc, rr = policy_chosen, policy_rejected, ref_chosen, ref_rejected
        b = beta if with_beta else 1.0
        if swapped:
            pc, pr, rc, rr = pr, pc, rr, rc
        if no_reference:
            rc, rr = 0.0, 0.0
        if one_ratio:
            return b * (pc - rc) - (pr - rr)
        return b * ((pc - rc) - (pr - rr))

    return dpo_margin


DPO_MARGIN = Spec(
    id="lab15.dpo_margin",
    points=1,
    name="dpo_margin",
    reference=ref.dpo_margin,
    cases=margin_cases,
    run=run_margin,
    compare=compare_with_gradients(),
    forbidden=("gptcourse.rlhf.dpo_margin",),
    hint=f"({CH}, DPO) β times the difference of two log-ratios: (policy - reference) for the chosen response "
    "minus (policy - reference) for the rejected one",
    misconceptions=(
        Misconception(
            "beta left out",
            _margin(with_beta=False),
            "the implicit reward is β·log(π/π_ref): multiply the margin by beta, the argument (it sets how far "
            "the policy may move from the reference)",
        ),
        Misconception(
            "chosen and rejected swapped",
            _margin(swapped=True),
            "the margin is the chosen response's log-ratio MINUS the rejected one's: positive where the policy "
            "ranks the pair as the labeller did",
        ),
        Misconception(
            "beta on the chosen ratio only",
            _margin(one_ratio=True),
            "β multiplies the whole difference of the two log-ratios (both implicit rewards are β·log-ratios)",
        ),
        Misconception(
            "no reference model",
            _margin(no_reference=True),
            "each implicit reward is a log-RATIO, log π_θ(y) - log π_ref(y): subtract the reference's sums",
        ),
    ),
)


def _far(g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Sums whose margins at beta 5 are -300, +300, -15 and +15."""
    _, _, rc, rr = _sums(g, 4)
    return rc + torch.tensor([-60.0, 60.0, 0.0, 1.0]), rr + torch.tensor([0.0, 0.0, 3.0, -2.0]), rc, rr


def dpo_loss_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("beta 0.1 (the default), 4 pairs", tuple(_sums(g, 4))),
        Case("beta 0.5", tuple(_sums(g, 3)), {"beta": 0.5}),
        Case("far from the reference: margins of -300 and +300", _far(g), {"beta": 5.0}),
        Case("random, beta 0.25", tuple(_sums(g, randint(g, 2, 8))), {"beta": 0.25}),
    ]


def _dpo_loss(with_beta: bool = True, stable: bool = True, mean: bool = True, no_reference: bool = False):
    """The reference DPO loss with one piece changed (a misconception)."""

    def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
        margin = _margin(with_beta, no_reference=no_reference)(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta
        )
        losses = -F.logsigmoid(margin) if stable else -torch.log(torch.sigmoid(margin))
        return losses.mean() if mean else losses.sum()

    return dpo_loss


DPO_LOSS = Spec(
    id="lab15.dpo_loss",
    points=2,
    name="dpo_loss",
    reference=ref.dpo_loss,
    cases=dpo_loss_cases,
    run=run_loss("dpo_loss"),
    compare=compare_with_gradients(),
    forbidden=("gptcourse.rlhf.dpo_loss", "gptcourse.rlhf.dpo_margin", "gptcourse.rlhf.preference_loss"),
    hint=f"({CH}, DPO; Rafailov et al., 2023, eq. 7) the mean over the batch of -log σ(margin), the margin from your "
    "dpo_margin with the same beta, through a log-sigmoid that is stable for any margin",
    misconceptions=(
        Misconception(
            "beta left out",
            _dpo_loss(with_beta=False),
            "β goes inside the sigmoid, on the margin (pass beta on to your dpo_margin): without it the loss "
            "saturates at once and the policy is free to drift from the reference",
        ),
        Misconception(
            "log of sigmoid",
            _dpo_loss(stable=False),
            "log(sigmoid(m)) becomes -inf for a margin of -100: use the log-sigmoid function",
        ),
        Misconception(
            "sum over the batch",
            _dpo_loss(mean=False),
            "average over the pairs of the batch (the expectation in the DPO objective)",
        ),
        Misconception(
            "no reference model",
            _dpo_loss(no_reference=True),
            "DPO's implicit reward is a log-RATIO to the frozen reference, log π_θ(y) - log π_ref(y): without it "
            "the loss only pushes the rejected response's probability to zero",
        ),
    ),
)


# --- Step 7: one DPO update --------------------------------------------------------------------------------


STEPS = 2  # two steps: gradients left over from the first show in the second


def step_cases(g: torch.Generator) -> list[Case]:
    """``(policy, reference, batches, optimizer, beta, grad_clip)``; the reference is handed over in
    training mode with dropout, so that one not put in eval mode shows."""

    def case(label: str, optimizer: Optimizer, beta: float, clip: float, dropout: float = 0.2) -> Case:
        reference = _gpt(g, dropout=dropout)
        policy = randomize_(copy.deepcopy(reference), g, scale=0.1)
        batches = [_comparisons(g, randint(g, 2, 4)) for _ in range(STEPS)]
        return Case(f"{label} ({STEPS} steps)", (policy, reference.train(), batches, optimizer, beta, clip))

    return [
        case("SGD, beta 0.5, clipped to 0.05", Optimizer("SGD", 0.5), 0.5, 0.05),
        case("SGD, beta 0.1, grad_clip 0 (no clipping)", Optimizer("SGD", 0.5), 0.1, 0.0),
        case("AdamW, beta 0.1, clipped to 1", Optimizer("AdamW", 1e-2), 0.1, 1.0),
        case("random", Optimizer("SGD", 0.3), (0.1, 0.3, 1.0)[randint(g, 0, 2)], 0.1),
    ]


def run_step(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    policy, reference, batches, optimizer, beta, clip = case.args
    opt = optimizer.build(policy)
    before = {n: p.detach().clone() for n, p in reference.named_parameters()}
    losses, margins = [], []
    with global_seed():
        for batch in batches:
            result = answer(policy, reference, batch, opt, beta, clip)
            if not isinstance(result, (tuple, list)) or len(result) != 2:
                raise AnswerError(f"dpo_step should return (loss, margins), it returned a {type(result).__name__}")
            loss, margin = result
            if not isinstance(margin, torch.Tensor):
                raise AnswerError(f"dpo_step returned margins as a {type(margin).__name__}; return the (B,) tensor")
            losses.append(number(loss, "dpo_step"))
            margins.append(margin)
    return {
        "losses": losses,
        "margins": [m.detach() for m in margins],
        "margins detached": not any(m.requires_grad for m in margins),
        "policy's parameters": {n: p.detach() for n, p in policy.named_parameters()},
        "reference unchanged": all(torch.equal(p, before[n]) for n, p in reference.named_parameters()),
        "gradients on the reference": any(p.grad is not None for p in reference.parameters()),
    }


def _step(eval_ref: bool = True, no_grad: bool = True, zero: bool = True, clip: bool = True, clip_at_zero=False):
    """The reference update (the body of :func:`gptcourse.rlhf.dpo`'s loop) with one piece changed."""

    def dpo_step(
        policy: nn.Module,
        reference: nn.Module,
        batch: list[ref.Comparison],
        optimizer: torch.optim.Optimizer,
        beta: float = 0.1,
        grad_clip: float = 1.0,
        device: str = "cpu",
    ) -> tuple[float, torch.Tensor]:
        if eval_ref:
            reference.eval()
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            ref_chosen, ref_rejected = ref.comparison_logprobs(reference, batch, device)
        chosen, rejected = ref.comparison_logprobs(policy, batch, device)
        loss = ref.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
        if zero:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip and (grad_clip > 0 or clip_at_zero):
            torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
        optimizer.step()
        return loss.item(), ref.dpo_margin(chosen, rejected, ref_chosen, ref_rejected, beta).detach()

    return dpo_step


DPO_STEP = Spec(
    id="lab15.dpo_step",
    points=3,
    name="dpo_step",
    reference=_step(),
    cases=step_cases,
    run=run_step,
    compare=_close,
    forbidden=("gptcourse.rlhf.dpo", "gptcourse.rlhf.dpo_loss", "gptcourse.rlhf.comparison_logprobs"),
    hint=f"({CH}, DPO) the reference's sums in eval mode under torch.no_grad(), the policy's with gradients (your "
    "comparison_logprobs), your dpo_loss; zero the gradients, backward, clip the policy's global norm to grad_clip "
    "when it is > 0, step; return (loss as a float, the margins detached)",
    misconceptions=(
        Misconception(
            "reference left in training mode",
            _step(eval_ref=False),
            "the reference is frozen: put it in eval mode before its forward pass, or its dropout makes π_ref a "
            "different random model at every step",
        ),
        Misconception(
            "reference with gradients",
            _step(no_grad=False),
            "compute the reference's sums under torch.no_grad(): it is not trained, so backward must not reach "
            "(or fill .grad of) its parameters",
        ),
        *update_misconceptions(_step),
    ),
)


# --- Step 8: the loop --------------------------------------------------------------------------------------


def dpo_cases(g: torch.Generator) -> list[Case]:
    """``(policy, reference, comparisons, steps)`` and keyword arguments; the policy starts as a copy
    of the reference (as in Chapter 16), so the first step's margins are exactly 0."""

    def case(label: str, dropout: float = 0.0, training: bool = True, n: int = 8, **kwargs: Any) -> Case:
        reference = _gpt(g, dropout=dropout)
        policy = copy.deepcopy(reference).train(training)
        base = dict(batch_size=4, lr=1e-2, beta=0.5, seed=randint(g, 0, 1000), progress=False)
        return Case(label, (policy, reference.train(), _comparisons(g, n), 3), base | kwargs)

    return [
        case("3 steps from a copy of the reference (first margins 0)"),
        case("a policy given in eval mode, with dropout 0.2", dropout=0.2, training=False),
        case("batch_size larger than the comparisons", n=3, batch_size=8, beta=0.1),
        case("random", batch_size=randint(g, 2, 6), beta=(0.1, 0.5)[randint(g, 0, 1)]),
    ]


def run_dpo(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    policy = case.args[0]
    with global_seed():
        history = answer(*case.args, **case.kwargs)
    fields = ("loss", "margin", "accuracy")
    missing = [name for name in fields if not isinstance(getattr(history, name, None), list)]
    if missing:
        raise AnswerError(
            f"dpo returned a {type(history).__name__} without the list {missing[0]!r}; return a "
            "gptcourse.rlhf.DPOHistory with its lists filled in"
        )
    out: dict[str, Any] = {name: [number(v, f"history.{name}") for v in getattr(history, name)] for name in fields}
    out["policy's weights"] = {n: p.detach().clone() for n, p in policy.named_parameters()}
    return out


def _loop(train_mode: bool = True, decay: float = 0.0, sample: bool = True, strict: bool = True, one_rng: bool = True):
    """The package's loop with one piece changed (a misconception)."""

    def dpo(
        policy: GPT,
        reference: GPT,
        comparisons: list[ref.Comparison],
        steps: int,
        batch_size: int = 32,
        lr: float = 1e-4,
        beta: float = 0.1,
        device: str = "cpu",
        seed: int = 0,
        progress: bool = True,
    ) -> ref.DPOHistory:
        rng = random.Random(seed)
        optimizer = configure_optimizer(policy, lr, decay)
        if train_mode:
            policy.train()
        history = ref.DPOHistory()
        step = _step()
        for i in range(steps):
            k = min(batch_size, len(comparisons))
            if not one_rng:
                rng = random.Random(seed + i)
            batch = rng.sample(comparisons, k) if sample else rng.choices(comparisons, k=k)
            loss, margin = step(policy, reference, batch, optimizer, beta, 1.0, device)
            history.loss.append(loss)
            history.margin.append(margin.mean().item())
            history.accuracy.append(((margin > 0) if strict else (margin >= 0)).float().mean().item())
        return history

    return dpo


DPO = Spec(
    id="lab15.dpo",
    points=2,
    name="dpo",
    reference=ref.dpo,
    cases=dpo_cases,
    run=run_dpo,
    compare=_close,
    forbidden=("gptcourse.rlhf.dpo", "gptcourse.rlhf.dpo_loss", "gptcourse.rlhf.comparison_logprobs"),
    hint=f"({CH}, DPO) the policy in training mode, the reference in eval mode; your Lab 9 configure_optimizer("
    "policy, lr, 0.0); one random.Random(seed) drawing rng.sample(comparisons, min(batch_size, len(comparisons))) "
    "per step; one dpo_step with grad_clip=1.0; record the loss, the mean margin and the share of margins > 0",
    misconceptions=(
        Misconception(
            "policy not put in training mode",
            _loop(train_mode=False),
            "call policy.train() at the start: a policy handed over in eval mode would train without its dropout",
        ),
        Misconception(
            "weight decay",
            _loop(decay=0.1),
            "build the optimiser with weight_decay 0.0, as Chapter 16's DPO does: decay would pull the policy "
            "towards zero, away from the reference it starts from",
        ),
        Misconception(
            "batches drawn with replacement",
            _loop(sample=False),
            "draw each batch with rng.sample (without replacement): one comparison appears at most once in a batch",
        ),
        Misconception(
            "ties counted as wins",
            _loop(strict=False),
            "the accuracy is the share of margins strictly above 0: at the first step the policy IS the "
            "reference, every margin is 0, and no pair is ranked yet",
        ),
        Misconception(
            "a new generator every step",
            _loop(one_rng=False),
            "make ONE random.Random(seed) before the loop and draw every batch from it",
        ),
    ),
)

SPECS = (
    ENCODE_PAIRS,
    RESPONSE_LOGPROBS,
    COMPARISON_LOGPROBS,
    PREFERENCE_LOSS,
    DPO_MARGIN,
    DPO_LOSS,
    DPO_STEP,
    DPO,
)
