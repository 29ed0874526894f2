"""A neural language model (Chapter 3, Lab 3): from a bigram table to Bengio et al.'s MLP (2003).

Both models read a fixed window of ``context`` previous token ids and output logits for the next:

* :class:`BigramLM` is the count table of Chapter 1 turned into a one-layer network: the logits
  after token ``a`` are row ``a`` of a learned ``(V, V)`` matrix (a one-hot vector times a weight
  matrix), so ``softmax(W[a])`` plays the role of the normalised bigram counts;
* :class:`MLPLM` embeds each of the ``context`` tokens in ``n_embd`` dimensions, concatenates them,
  and maps them through a tanh hidden layer to the logits (Bengio et al. 2003, without the direct
  input-to-output connections).

Training minimises the cross-entropy: the mean negative log-likelihood of the true next tokens,
``-mean log softmax(logits)[target]``, whose exponential is the perplexity of Chapter 1.
:func:`cross_entropy` spells it out (with the log-sum-exp trick that keeps large logits finite);
:func:`train_step` is one turn of the loop "predict, measure the error, update".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gptcourse.loops import evaluating, optimizer_step


def context_windows(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training pairs from sliding a window over a 1-D tensor of ids: ``x[i] = ids[i : i + context]``
    and ``y[i] = ids[i + context]``, the token that follows. Shapes ``(N, context)`` and ``(N,)``
    with ``N = len(ids) - context``."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise ValueError("ids must be a 1-D tensor of token ids")
    if not isinstance(context, int) or context < 1:
        raise ValueError(f"context must be an integer >= 1, got {context!r}")
    if len(ids) <= context:
        raise ValueError(f"need more than context={context} ids to make one pair, got {len(ids)}")
    x = ids.unfold(0, context, 1)[:-1]  # (N, context): every window but the last, which has no target
    y = ids[context:]
    return x.long(), y.long()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log softmax(logits)[target]`` over rows: logits ``(N, V)``, targets ``(N,)``.

    ``log softmax(z)_i = z_i - log sum_j exp(z_j)``; subtracting ``max(z)`` before ``exp`` changes
    nothing mathematically but keeps ``exp`` from overflowing when logits are large.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (N, V) and targets (N,), got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    z = logits - logits.max(dim=1, keepdim=True).values
    log_probs = z - z.exp().sum(dim=1, keepdim=True).log()
    return -log_probs.gather(1, targets.long().unsqueeze(1)).mean()


class BigramLM(nn.Module):
    """Next-token logits from the last token alone: a ``(V, V)`` table of learned logits."""

    def __init__(self, vocab_size: int):
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.context = 1
        self.table = nn.Parameter(torch.zeros(vocab_size, vocab_size))  # zeros: uniform predictions

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx`` ``(B, context)`` -> logits ``(B, V)`` (only the last column is read) and the loss."""
        logits = self.table[idx[:, -1]]  # = one_hot(idx[:, -1]) @ table, without building the one-hot
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss


class MLPLM(nn.Module):
    """Bengio et al.'s neural probabilistic language model: embed, concatenate, tanh layer, logits."""

    def __init__(self, vocab_size: int, context: int = 3, n_embd: int = 16, n_hidden: int = 128):
        super().__init__()
        sizes = (("vocab_size", vocab_size), ("context", context), ("n_embd", n_embd), ("n_hidden", n_hidden))
        for name, value in sizes:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MLPLM {name} must be a positive integer, got {value!r}")
        self.context = context
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.hidden = nn.Linear(context * n_embd, n_hidden)
        self.out = nn.Linear(n_hidden, vocab_size)
        # small output weights: the untrained model predicts nearly uniformly (loss ~ log V)
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.zeros_(self.out.bias)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx`` ``(B, context)`` -> logits ``(B, V)`` and, given ``targets`` ``(B,)``, the loss."""
        if idx.dim() != 2 or idx.shape[1] != self.context:
            raise ValueError(f"idx must have shape (B, {self.context}), got {tuple(idx.shape)}")
        emb = self.wte(idx)  # (B, context, n_embd)
        h = torch.tanh(self.hidden(emb.flatten(1)))  # (B, n_hidden)
        logits = self.out(h)  # (B, V)
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Predict, measure the error, update: one gradient step on the batch ``(x, y)``; returns the loss."""
    _, loss = model(x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer_step(model, optimizer)
    return loss.item()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Mean cross-entropy (nats per token) over every pair of ``x`` ``(N, context)``, ``y`` ``(N,)``."""
    with evaluating(model):
        total = sum(
            model(x[i : i + batch_size], y[i : i + batch_size])[1].item() * len(y[i : i + batch_size])
            for i in range(0, len(y), batch_size)
        )
    return total / len(y)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-2,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    eval_interval: int = 100,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Train with AdamW on random minibatches of ``(x, y)`` for ``steps`` steps.

    Returns ``{"train": loss at every step, "val_steps": [...], "val": [...]}`` (the validation
    loss every ``eval_interval`` steps and at the end, when ``x_val``/``y_val`` are given).
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"train": [], "val_steps": [], "val": []}
    for step in tqdm(range(1, steps + 1), desc=type(model).__name__):
        rows = torch.randint(len(y), (batch_size,), generator=generator)
        history["train"].append(train_step(model, optimizer, x[rows], y[rows]))
        if x_val is not None and (step % eval_interval == 0 or step == steps):
            history["val_steps"].append(step)
            history["val"].append(evaluate(model, x_val, y_val))
    return history


def perplexity(loss: float) -> float:
    """The perplexity of a mean cross-entropy in nats: ``exp(loss)``."""
    return math.exp(loss)
