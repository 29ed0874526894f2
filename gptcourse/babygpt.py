"""The baby GPT: a GPT small enough to be read as a Markov chain (after Karpathy's "GPT as a
finite-state Markov chain" notebook).

With a vocabulary of 2 tokens (bits) and a context of 3, the model's whole input is one of
``2**3 = 8`` states. Feeding a state gives the probability of the next bit; appending that bit and
dropping the oldest one gives the next state. So the GPT *is* an 8-state Markov chain with two
arrows out of every state, and training only moves the arrows' probabilities.

States are numbered by their bits read as a binary number: state ``5`` is ``101``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from gptcourse.loops import evaluating, optimizer_step
from gptcourse.model import GPT, GPTConfig

SEQUENCE = "111101111011110"  # the training sequence of the original notebook
VOCAB_SIZE, CONTEXT = 2, 3


def baby_config() -> GPTConfig:
    """The binary GPT: vocab 2, context 3, 4 layers, 4 heads, width 16, no biases, no dropout."""
    return GPTConfig(vocab_size=VOCAB_SIZE, block_size=CONTEXT, n_layer=4, n_head=4, n_embd=16, bias=False)


def state_name(state: int, context: int = CONTEXT) -> str:
    """``5 -> "101"``."""
    return format(state, f"0{context}b")


def all_states(context: int = CONTEXT) -> torch.Tensor:
    """``(2**context, context)`` int64: every context as bits, row ``s`` spelling ``state_name(s)``."""
    s = torch.arange(2**context)[:, None]
    shifts = torch.arange(context - 1, -1, -1)
    return (s >> shifts) & 1


def next_state(state: int, bit: int, context: int = CONTEXT) -> int:
    """Drop the oldest bit, append ``bit``: ``next_state(0b101, 1) == 0b011``."""
    return ((state << 1) | bit) & (2**context - 1)


def make_dataset(sequence: str = SEQUENCE, context: int = CONTEXT) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window of ``sequence``: ``X`` ``(N, context)`` bits and ``Y`` ``(N,)`` the bit after it,
    with ``N = len(sequence) - context``."""
    if set(sequence) - {"0", "1"} or len(sequence) <= context:
        raise ValueError(f"sequence must be a string of 0/1 longer than context={context}, got {sequence!r}")
    bits = [int(c) for c in sequence]
    X = torch.tensor([bits[i : i + context] for i in range(len(bits) - context)])
    Y = torch.tensor([bits[i + context] for i in range(len(bits) - context)])
    return X, Y


def state_counts(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``(2**context, 2)`` counts: how often each state is followed by a 0 and by a 1 in the data."""
    context = X.size(1)
    weights = 2 ** torch.arange(context - 1, -1, -1)
    states = (X * weights).sum(1)
    counts = torch.zeros(2**context, 2, dtype=torch.long)
    counts.index_put_((states, Y), torch.ones_like(Y), accumulate=True)
    return counts


def transition_probs(model: GPT) -> torch.Tensor:
    """``(2**context, 2)``: ``P(next bit | state)`` for every state, read at the last position."""
    with evaluating(model):
        logits, _ = model(all_states(model.config.block_size))
    return F.softmax(logits[:, -1, :], dim=-1)


def transition_matrix(probs: torch.Tensor) -> torch.Tensor:
    """The ``(S, S)`` Markov matrix ``M[s, s'] = P(s -> s')`` from ``(S, 2)`` next-bit probabilities."""
    S = probs.size(0)
    context = S.bit_length() - 1
    M = torch.zeros(S, S, dtype=probs.dtype)
    for s in range(S):
        for bit in (0, 1):
            M[s, next_state(s, bit, context)] += probs[s, bit]
    return M


def train_baby_gpt(
    model: GPT,
    X: torch.Tensor,
    Y: torch.Tensor,
    steps: int = 50,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
) -> list[torch.Tensor]:
    """Full-batch AdamW on the last position's next bit, as in the original notebook (every parameter
    decayed). Returns the transition probabilities before training and after each step
    (``steps + 1`` tensors of shape ``(8, 2)``); ``callback(step, loss, probs)`` sees each step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    snapshots = [transition_probs(model)]
    model.train()
    for step in range(1, steps + 1):
        logits, _ = model(X)
        loss = F.cross_entropy(logits[:, -1, :], Y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(model, optimizer)
        snapshots.append(transition_probs(model))
        if callback is not None:
            callback(step, loss.item(), snapshots[-1])
    return snapshots


# A planar drawing of the 8-state chain (a de Bruijn graph): 000 on the left, 111 on the right.
LAYOUT = {
    0b000: (-3.0, 0.0),
    0b001: (-1.5, 1.5),
    0b011: (1.5, 1.5),
    0b111: (3.0, 0.0),
    0b110: (1.5, -1.5),
    0b100: (-1.5, -1.5),
    0b010: (-0.6, 0.0),
    0b101: (0.6, 0.0),
}


def draw_chain(probs: torch.Tensor, ax=None, title: str | None = None, seen: torch.Tensor | None = None):
    """Draw the Markov chain of ``(8, 2)`` next-bit probabilities with matplotlib (no graphviz).

    Every state has two arrows, "append 0" (orange) and "append 1" (blue), whose width and label
    give the probability. ``seen`` (``(8,)`` bool) shades green the states that occur in the
    training data (grey: never seen). Returns the axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, FancyArrowPatch

    if tuple(probs.shape) != (2**CONTEXT, 2):
        raise ValueError(f"draw_chain draws the 8-state chain: probs must be (8, 2), got {tuple(probs.shape)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    radius, rad = 0.3, 0.2
    for s in range(8):
        for bit in (0, 1):
            p = float(probs[s, bit])
            t = next_state(s, bit)
            style = dict(
                arrowstyle="-|>",
                mutation_scale=14,
                lw=0.5 + 4 * p,
                alpha=0.25 + 0.75 * p,
                color="tab:blue" if bit else "tab:orange",
                shrinkA=0,
                shrinkB=0,
            )
            (x0, y0), (x1, y1) = LAYOUT[s], LAYOUT[t]
            if s == t:  # a self-loop, drawn on the outer side of 000 / 111
                out = 1.0 if x0 > 0 else -1.0
                start, end = (x0 + out * radius * 0.7, y0 + radius * 0.7), (x0 + out * radius * 0.7, y0 - radius * 0.7)
                ax.add_patch(FancyArrowPatch(start, end, connectionstyle=f"arc3,rad={-1.8 * out}", **style))
                lx, ly = x0 + out * (radius + 0.75), y0
            else:
                dx, dy = x1 - x0, y1 - y0
                norm = (dx**2 + dy**2) ** 0.5
                ux, uy = dx / norm, dy / norm
                start, end = (x0 + radius * ux, y0 + radius * uy), (x1 - radius * ux, y1 - radius * uy)
                ax.add_patch(FancyArrowPatch(start, end, connectionstyle=f"arc3,rad={rad}", **style))
                # the middle of matplotlib's arc3 curve: mid + rad/2 * (dy, -dx)
                lx, ly = (x0 + x1) / 2 + rad / 2 * dy, (y0 + y1) / 2 - rad / 2 * dx
            ax.text(
                lx,
                ly,
                f"{p:.0%}",
                fontsize=8,
                color=style["color"],
                ha="center",
                va="center",
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.85),
            )
    for s, xy in LAYOUT.items():
        shade = "#d9ead3" if seen is None or bool(seen[s]) else "#e6e6e6"
        ax.add_patch(Circle(xy, radius, fc=shade, ec="black", zorder=3))
        ax.text(*xy, state_name(s), ha="center", va="center", fontsize=10, zorder=4, family="monospace")
    ax.set_xlim(-4.2, 4.2)
    ax.set_ylim(-2.0, 2.0)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax
