"""Instruction tuning and RLHF in miniature: the three steps of InstructGPT (Ouyang et al., 2022).

1. **Supervised fine-tuning (SFT)**: train on demonstrations ``instruction=response.``, with the
   loss on the response only (the instruction is given, not predicted).
2. **Reward model (RM)**: sample several responses per instruction from the SFT model, let a
   labeller rank them, and train a scalar model ``r(x, y)`` on every ranked pair with the
   Bradley-Terry loss ``-log σ(r(x, y_w) - r(x, y_l))``.
3. **Policy optimisation with PPO**: sample from the policy, score with the RM, subtract a KL
   penalty ``β·(log π(y|x) - log π_SFT(y|x))`` that keeps the policy near the SFT model, and
   maximise with PPO's clipped objective.

Everything is offline and character-level: the "instructions" are a handful of string operations
on random words (``reverse kbd=dbk.``), some demonstrators are sloppy (their answers trail off into
filler words, :func:`demonstrations`), and the "labeller" is :func:`labeller_score`, a hidden
preference (how close a response is to the right answer) that the reward model only sees through
comparisons, as in the paper. Because the labeller is a function, the course can also measure what
a real project cannot: the true quality (exact-match accuracy) next to the learned reward.

What is simplified, stated (InstructGPT's Section 3.5 and Appendix C for the real recipe):

* the policy optimiser is PPO's clipped objective **without a critic**: no learned value function
  and no generalised advantage estimation; the advantage of a response is its total reward minus
  the mean over the batch, divided by the batch's standard deviation, one number shared by all of
  its tokens. That is the REINFORCE-with-baseline family of RLOO (Ahmadian et al., 2024) and GRPO
  (Shao et al., 2024), except that those draw several responses per prompt and take the baseline
  from the prompt's own group, where this draws one response per prompt and uses the batch;
* the KL penalty is one sequence-level estimate, ``log π(y|x) - log π_SFT(y|x)`` summed over the
  sampled response, subtracted from the reward; InstructGPT adds it per token;
* no PPO-ptx: InstructGPT mixes pre-training gradients into the PPO loss (``γ·log π`` on
  pre-training text) to keep performance on public NLP benchmarks; there is no pre-training here;
* each PPO batch is reused for ``epochs`` full-batch steps (no minibatches), no entropy bonus, no
  reward normalisation, and the reward model is the policy's own size (InstructGPT: a 6B reward
  model for every policy size);
* the labeller is a function, and the models are tiny and character-level.

DPO (Rafailov et al., 2023, eq. 7) is the same pipeline without steps 2 and 3: :func:`dpo` trains the
policy directly on the comparisons collected for the reward model.
"""

from __future__ import annotations

import difflib
import random
import string
from dataclasses import dataclass, field
from itertools import combinations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from gptcourse.finetune import hidden_and_logits
from gptcourse.generate import generate
from gptcourse.loops import evaluating, optimizer_step
from gptcourse.model import GPT
from gptcourse.tokenizers import CharTokenizer
from gptcourse.train import configure_optimizer

SEP, EOS = "=", "."
INSTRUCTIONS = {
    "reverse": lambda w: w[::-1],
    "upper": str.upper,
    "double": lambda w: w + " " + w,
    "first": lambda w: w[0],
    "last": lambda w: w[-1],
    "length": lambda w: str(len(w)),
}
FILLERS = ("um", "ok", "so", "well")
MAX_RESPONSE = 24  # "double abcde" -> "abcde abcde" (11), two filler words (up to 10) and the end mark

# Chapter 16's recipe at each size, shared with experiments/ch16_rlhf.py so that the chapter's run is
# one seed of the sweep: model shape, data sizes, and the steps of SFT, the reward model, PPO and DPO.
RECIPES = {
    "smoke": dict(
        n_layer=1, n_embd=32, demo_words=30, rm_words=10, sft_steps=20, rm_steps=10, ppo_iterations=3, dpo_steps=5
    ),
    "cpu": dict(
        n_layer=2,
        n_embd=64,
        demo_words=200,
        rm_words=250,
        sft_steps=1500,
        rm_steps=200,
        ppo_iterations=150,
        dpo_steps=200,
    ),
    "gpu": dict(
        n_layer=4,
        n_embd=128,
        demo_words=1000,
        rm_words=300,
        sft_steps=3000,
        rm_steps=1000,
        ppo_iterations=300,
        dpo_steps=1000,
    ),
}
PPO_SETTINGS = dict(batch_size=32, epochs=4, lr=1e-4, beta=0.1)  # Chapter 16's PPO, at every size
DPO_SETTINGS = dict(batch_size=32, lr=1e-4, beta=0.1)  # and its DPO (β = 0.1: TRL's default too)


def tokenizer() -> CharTokenizer:
    """Every character an instruction or a response can contain."""
    return CharTokenizer(string.ascii_lowercase + string.ascii_uppercase + string.digits + " " + SEP + EOS)


def random_words(n: int, seed: int, min_len: int = 3, max_len: int = 5) -> list[str]:
    """``n`` random lowercase words (a fixed ``seed`` gives a fixed list)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(min_len, max_len))) for _ in range(n)]


def instruction_set(words: list[str]) -> list[tuple[str, str]]:
    """``(prompt, response)`` pairs, every instruction on every word: ``("reverse kbd=", "dbk.")``."""
    return [(f"{name} {w}{SEP}", fn(w) + EOS) for w in words for name, fn in INSTRUCTIONS.items()]


def demonstrations(words: list[str], sloppy: float = 0.3, seed: int = 0) -> list[tuple[str, str]]:
    """The instruction set as written by demonstrators of uneven care: with probability ``sloppy`` a
    response trails off into one or two filler words (``"dbk um ok."``). SFT imitates them all,
    habits included; the labeller's preferences are what can remove the habit."""
    if not 0.0 <= sloppy <= 1.0:
        raise ValueError(f"sloppy must be in [0, 1], got {sloppy}")
    rng = random.Random(seed)
    out = []
    for prompt, response in instruction_set(words):
        if rng.random() < sloppy:
            filler = " ".join(rng.choice(FILLERS) for _ in range(rng.randint(1, 2)))
            response = f"{response.rstrip(EOS)} {filler}{EOS}"
        out.append((prompt, response))
    return out


def correct_response(prompt: str) -> str:
    """The right response to ``prompt`` (without the end mark)."""
    name, word = prompt.rstrip(SEP).split(" ", 1)
    return INSTRUCTIONS[name](word)


def labeller_score(prompt: str, response: str) -> float:
    """The hidden preference: similarity in ``[0, 1]`` of ``response`` to the right answer (1 =
    exactly right). The reward model never sees it, only which of two responses scored higher."""
    return difflib.SequenceMatcher(None, response.rstrip(EOS), correct_response(prompt)).ratio()


def exact_match(prompt: str, response: str) -> bool:
    return response.rstrip(EOS) == correct_response(prompt)


def has_filler(prompt: str, response: str) -> bool:
    """The sloppy demonstrators' habit: the right answer, then more words (``"dbk um ok."``)."""
    return response.startswith(correct_response(prompt) + " ")


# --------------------------------------------------------------------------- batches of (prompt, response)


def encode_pairs(
    pairs: list[tuple[str, str]], tok: CharTokenizer, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``idx`` ``(B, T)``, ``targets`` ``(B, T)`` holding the next token only where it
    belongs to the response (``-1`` elsewhere: prompt and padding), and ``last`` ``(B,)``, the index
    of each row's final token."""
    rows = [(tok.encode(p), tok.encode(r)) for p, r in pairs]
    T = max(len(p) + len(r) for p, r in rows)
    idx = torch.zeros(len(rows), T, dtype=torch.long)
    targets = torch.full((len(rows), T), -1, dtype=torch.long)
    for b, (p, r) in enumerate(rows):
        seq = p + r
        idx[b, : len(seq)] = torch.tensor(seq)
        targets[b, len(p) - 1 : len(seq) - 1] = torch.tensor(r)
    last = torch.tensor([len(p) + len(r) - 1 for p, r in rows])
    return idx.to(device), targets.to(device), last.to(device)


def response_logprobs(model: GPT, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` log-probability of each response token under ``model`` (0 where ``targets`` is -1)."""
    logits, _ = model(idx)
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = targets >= 0
    return logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask


# --------------------------------------------------------------------------- 1. supervised fine-tuning


def _update(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float = 0.0) -> float:
    """One optimiser step of ``model`` on ``loss`` (global gradient norm clipped to ``grad_clip``,
    0: no clipping); returns the loss value. The update every stage of this module shares."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer_step(model, optimizer, grad_clip)
    return loss.item()


def sft(
    model: GPT,
    pairs: list[tuple[str, str]],
    steps: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Step 1: next-token cross-entropy on the responses of ``pairs``. Returns the loss per step."""
    tok, rng = tokenizer(), random.Random(seed)
    optimizer = configure_optimizer(model, lr, 0.1)
    model.to(device).train()
    losses = []
    for _ in tqdm(range(steps), disable=not progress, desc="SFT"):
        idx, targets, _ = encode_pairs(rng.sample(pairs, min(batch_size, len(pairs))), tok, device)
        _, loss = model(idx, targets)
        losses.append(_update(model, optimizer, loss))
    return losses


@torch.no_grad()
def sample_responses(
    model: GPT,
    prompts: list[str],
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    device: str = "cpu",
) -> list[str]:
    """One response per prompt, cut after the end mark (or at ``MAX_RESPONSE`` characters).
    Prompts of equal length are sampled together, so no padding enters the model."""
    tok = tokenizer()
    out: list[str] = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    for n, rows in by_length.items():
        idx = torch.tensor([tok.encode(prompts[i]) for i in rows], device=device)
        if temperature == 0:
            ids = generate(model, idx, MAX_RESPONSE, temperature=0)
        else:
            ids = generate(model, idx, MAX_RESPONSE, temperature=temperature, generator=generator)
        for i, row in zip(rows, ids[:, n:].tolist()):
            text = tok.decode(row)
            out[i] = text[: text.index(EOS) + 1] if EOS in text else text
    return out


def evaluate(model: GPT, prompts: list[str], device: str = "cpu") -> tuple[float, float]:
    """``(exact-match accuracy, mean labeller score)`` of greedy responses."""
    responses = sample_responses(model, prompts, temperature=0, device=device)
    n = len(prompts)
    return (
        sum(exact_match(p, r) for p, r in zip(prompts, responses)) / n,
        sum(labeller_score(p, r) for p, r in zip(prompts, responses)) / n,
    )


# --------------------------------------------------------------------------- 2. the reward model


class RewardModel(nn.Module):
    """A GPT with a scalar head on the hidden state of the final token: ``r(x, y)``."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt
        self.head = nn.Linear(gpt.config.n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """``idx`` ``(B, T)``, ``last`` ``(B,)`` -> rewards ``(B,)``."""
        hidden, _ = hidden_and_logits(self.gpt, idx)
        return self.head(hidden[torch.arange(idx.size(0), device=idx.device), last]).squeeze(-1)

    def score(self, pairs: list[tuple[str, str]], device: str = "cpu") -> torch.Tensor:
        idx, _, last = encode_pairs(pairs, tokenizer(), device)
        return self(idx, last)


def preference_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: ``mean(-log σ(r_w - r_l))``."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


@dataclass(frozen=True)
class Comparison:
    prompt: str
    chosen: str
    rejected: str


def comparison_pairs(comparisons: list[Comparison]) -> list[tuple[str, str]]:
    """The ``(prompt, response)`` pairs of ``comparisons``: every chosen response, then every rejected
    one, so that the scores of a batch split as ``[:n]`` (chosen) and ``[n:]`` (rejected)."""
    return [(c.prompt, c.chosen) for c in comparisons] + [(c.prompt, c.rejected) for c in comparisons]


def collect_comparisons(
    model: GPT, prompts: list[str], k: int = 4, seed: int = 0, min_gap: float = 0.0, device: str = "cpu"
) -> list[Comparison]:
    """Sample ``k`` responses per prompt, rank them by the labeller, keep every pair whose scores
    differ by more than ``min_gap`` (InstructGPT: rank K = 4..9 responses, train on all K(K-1)/2
    pairs; ``min_gap`` plays the labeller who calls near-equal responses a tie)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    samples = [sample_responses(model, prompts, 1.0, generator, device) for _ in range(k)]
    comparisons = []
    for i, p in enumerate(prompts):
        distinct = dict.fromkeys(s[i] for s in samples)  # drop repeats, keep the order they were sampled in
        for a, b in combinations(distinct, 2):  # (a set's order would change with PYTHONHASHSEED)
            sa, sb = labeller_score(p, a), labeller_score(p, b)
            if abs(sa - sb) > min_gap:
                comparisons.append(Comparison(p, a, b) if sa > sb else Comparison(p, b, a))
    return comparisons


def train_reward_model(
    rm: RewardModel,
    comparisons: list[Comparison],
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Step 2: minimise :func:`preference_loss` on batches of comparisons. Returns the loss per step."""
    rng = random.Random(seed)
    optimizer = configure_optimizer(rm, lr, 0.1)
    rm.to(device).train()
    losses = []
    for _ in tqdm(range(steps), disable=not progress, desc="reward model"):
        batch = rng.sample(comparisons, min(batch_size, len(comparisons)))
        r = rm.score(comparison_pairs(batch), device)
        loss = preference_loss(r[: len(batch)], r[len(batch) :])
        losses.append(_update(rm, optimizer, loss))
    return losses


def preference_accuracy(rm: RewardModel, comparisons: list[Comparison], device: str = "cpu") -> float:
    """How often the reward model ranks the labeller's preferred response higher."""
    with evaluating(rm):
        r = rm.score(comparison_pairs(comparisons), device)
    n = len(comparisons)
    return (r[:n] > r[n:]).float().mean().item()


# --------------------------------------------------------------------------- 3. PPO


def ppo_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """PPO's clipped surrogate, to minimise: ``-mean(min(ρ·A, clip(ρ, 1-ε, 1+ε)·A))`` over the
    response tokens (``mask``), with ``ρ = π/π_old`` per token. ``logp``, ``old_logp``, ``mask``
    ``(B, T)``; ``advantages`` ``(B,)`` (one per sequence, shared by its tokens)."""
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    return -(surrogate * mask).sum() / mask.sum()


@dataclass
class PPOHistory:
    """Per iteration: the reward model's mean reward, the KL to the SFT model, and the labeller's
    mean score of the sampled responses (the truth the reward model stands in for)."""

    reward: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    true_score: list[float] = field(default_factory=list)


@dataclass
class PPOBatch:
    """What one PPO iteration sampled and how it scored it: the ``(prompt, response)`` pairs, the
    reward model's rewards ``(B,)``, the sequence KL to the reference ``(B,)``, the advantages ``(B,)``
    and the loss of each of its steps."""

    pairs: list[tuple[str, str]]
    reward: torch.Tensor
    kl: torch.Tensor
    advantages: torch.Tensor
    losses: list[float]


def ppo_iteration(
    policy: GPT,
    reference: GPT,
    rm: nn.Module,
    prompts: list[str],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None = None,
    epochs: int = 4,
    beta: float = 0.05,
    clip: float = 0.2,
    device: str = "cpu",
) -> PPOBatch:
    """One PPO update: sample a response to each prompt from the policy, score it
    ``R = rm(x, y) - beta·KL``, turn ``R`` into advantages (minus the batch mean, over the batch's
    standard deviation: no critic), then take ``epochs`` clipped-surrogate steps on that batch."""
    tok = tokenizer()
    responses = sample_responses(policy, prompts, 1.0, generator, device)
    pairs = list(zip(prompts, responses))
    idx, targets, last = encode_pairs(pairs, tok, device)
    mask = (targets >= 0).float()
    with evaluating(policy):  # π_old without dropout: the policy the samples were drawn from
        old_logp = response_logprobs(policy, idx, targets)
    with torch.no_grad():
        kl = (old_logp - response_logprobs(reference, idx, targets)).sum(-1)  # (B,)
        reward = rm(idx, last)
        total = reward - beta * kl
        advantages = (total - total.mean()) / (total.std() + 1e-8)
    losses = [
        _update(
            policy,
            optimizer,
            ppo_loss(response_logprobs(policy, idx, targets), old_logp, advantages, mask, clip),
            grad_clip=1.0,
        )
        for _ in range(epochs)
    ]
    return PPOBatch(pairs, reward, kl, advantages, losses)


def ppo(
    policy: GPT,
    reference: GPT,
    rm: nn.Module,
    prompts: list[str],
    iterations: int,
    batch_size: int = 32,
    epochs: int = 4,
    lr: float = 3e-4,
    beta: float = 0.05,
    clip: float = 0.2,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> PPOHistory:
    """Step 3: ``iterations`` times, draw ``batch_size`` prompts and take one :func:`ppo_iteration`."""
    rng = random.Random(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    optimizer = configure_optimizer(policy, lr, 0.0)
    policy.train()
    reference.eval()
    rm.eval()
    history = PPOHistory()
    for _ in tqdm(range(iterations), disable=not progress, desc="PPO"):
        batch = ppo_iteration(
            policy,
            reference,
            rm,
            rng.sample(prompts, min(batch_size, len(prompts))),
            optimizer,
            generator,
            epochs,
            beta,
            clip,
            device,
        )
        history.reward.append(batch.reward.mean().item())
        history.kl.append(batch.kl.mean().item())
        history.true_score.append(sum(labeller_score(p, r) for p, r in batch.pairs) / len(batch.pairs))
    return history


def dpo_margin(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """The implicit reward margin ``β·[(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]``
    ``(B,)`` of sequence log-probabilities ``(B,)``: positive where the policy ranks a pair as the labeller did."""
    return beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """DPO (Rafailov et al., 2023), the alternative to steps 2+3: no reward model, no sampling;
    ``-log σ(`` :func:`dpo_margin` ``)``, averaged over the batch of preferred and rejected responses."""
    return -F.logsigmoid(dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)).mean()


def comparison_logprobs(
    model: GPT, comparisons: list[Comparison], device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probabilities ``log π(y|x)`` ``(B,)`` of the chosen and of the rejected responses,
    in one forward pass over both (right padding does not reach the response: attention is causal)."""
    idx, targets, _ = encode_pairs(comparison_pairs(comparisons), tokenizer(), device)
    logp = response_logprobs(model, idx, targets).sum(-1)
    return logp[: len(comparisons)], logp[len(comparisons) :]


@dataclass
class DPOHistory:
    """Per step: the DPO loss, the mean implicit reward margin
    ``β·[(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]`` and the share of the batch's
    pairs where that margin is positive (the policy ranks the pair as the labeller did)."""

    loss: list[float] = field(default_factory=list)
    margin: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)


def dpo(
    policy: GPT,
    reference: GPT,
    comparisons: list[Comparison],
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-4,
    beta: float = 0.1,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> DPOHistory:
    """DPO instead of steps 2 and 3: minimise :func:`dpo_loss` on batches of ``comparisons`` (collected
    from the SFT model, which is also the frozen ``reference``). No reward model, no sampling."""
    rng = random.Random(seed)
    optimizer = configure_optimizer(policy, lr, 0.0)
    policy.to(device).train()
    reference.eval()
    history = DPOHistory()
    for _ in tqdm(range(steps), disable=not progress, desc="DPO"):
        batch = rng.sample(comparisons, min(batch_size, len(comparisons)))
        with torch.no_grad():
            ref_chosen, ref_rejected = comparison_logprobs(reference, batch, device)
        chosen, rejected = comparison_logprobs(policy, batch, device)
        loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
        margin = dpo_margin(chosen, rejected, ref_chosen, ref_rejected, beta).detach()
        history.loss.append(_update(policy, optimizer, loss, grad_clip=1.0))
        history.margin.append(margin.mean().item())
        history.accuracy.append((margin > 0).float().mean().item())
    return history
