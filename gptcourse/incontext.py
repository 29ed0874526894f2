"""In-context learning: a model that learns a task from examples in its prompt, with no weight update.

GPT-3 (Brown et al., 2020) evaluates *zero-shot* (a task description only), *one-shot* (one
demonstration) and *few-shot* (K demonstrations) by putting the demonstrations in the context and
letting the model continue. Nothing is trained at evaluation time.

In miniature, offline: a family of string tasks on 4-letter words over ``a``-``f`` (copy, reverse,
sort, shift each letter, rotate, swap pairs). Every task maps the same input to a different output,
so the model can only tell which task it is being asked from the demonstrations. A small GPT is
pre-trained on sequences of demonstrations ``abcd>dcba;bcaf>facb;...``, each sequence from one
task; it is then evaluated on held-out input words (never seen in training, neither as queries nor
as demonstrations) with 0, 1, 2, 4, 8 demonstrations in the prompt.

The same prompting code drives real GPT-2 (online only): :func:`format_prompt` builds prompts in
the style of the papers, :func:`complete` continues them greedily with any course :class:`GPT`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from gptcourse.loops import evaluating, optimizer_step
from gptcourse.tokenizers import CharTokenizer

LETTERS = "abcdef"
WORD_LEN = 4
ARROW, END = ">", ";"


def _shift(word: str) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + 1) % len(LETTERS)] for c in word)


TASKS: dict[str, Callable[[str], str]] = {
    "copy": lambda w: w,
    "reverse": lambda w: w[::-1],
    "sort": lambda w: "".join(sorted(w)),
    "shift": _shift,  # a->b, ..., f->a
    "rotate": lambda w: w[1:] + w[:1],
    "swap pairs": lambda w: "".join(w[i + 1] + w[i] for i in range(0, len(w), 2)),
}


def tokenizer() -> CharTokenizer:
    """The character vocabulary of the demonstrations: the letters, ``>`` and ``;``."""
    return CharTokenizer(LETTERS + ARROW + END)


def split_words(heldout_fraction: float = 0.25, seed: int = 0) -> tuple[list[str], list[str]]:
    """All ``6^4 = 1296`` words, shuffled with ``seed`` and split into ``(train, heldout)``."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    words = ["".join(p) for p in itertools.product(LETTERS, repeat=WORD_LEN)]
    random.Random(seed).shuffle(words)
    n = int(len(words) * heldout_fraction)
    return words[n:], words[:n]


def demonstration(task: str, word: str) -> str:
    """One demonstration, ``input>output;``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    return f"{word}{ARROW}{TASKS[task](word)}{END}"


def demo_length() -> int:
    """Characters in one demonstration (every word and every output has ``WORD_LEN`` letters)."""
    return 2 * WORD_LEN + 2


def training_batch(words: Sequence[str], batch_size: int, n_demos: int, rng: random.Random,
                   tasks: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` ``(B, T)`` language-modelling pairs, each row ``n_demos`` demonstrations of one
    random task (``T = n_demos * demo_length() - 1``). Every output position is a prediction after
    0, 1, ... earlier demonstrations, so one sequence teaches every number of shots at once."""
    tok = tokenizer()
    tasks = list(TASKS) if tasks is None else list(tasks)
    rows = []
    for _ in range(batch_size):
        task = rng.choice(tasks)
        rows.append(tok.encode("".join(demonstration(task, rng.choice(words)) for _ in range(n_demos))))
    data = torch.tensor(rows)
    return data[:, :-1], data[:, 1:]


def pretrain(model: torch.nn.Module, words: Sequence[str], steps: int, batch_size: int = 32,
             n_demos: int = 9, lr: float = 2e-3, warmup_steps: int = 50, device: str = "cpu", seed: int = 0,
             progress: bool = True) -> list[float]:
    """Train ``model`` on :func:`training_batch` sequences with AdamW and the course's warmup +
    cosine schedule (:func:`gptcourse.train.lr_at`). Returns the loss per step."""
    from gptcourse.train import TrainConfig, configure_optimizer, lr_at

    schedule = TrainConfig(max_steps=steps, lr=lr, warmup_steps=min(warmup_steps, steps))
    optimizer = configure_optimizer(model, lr, 0.1)
    rng = random.Random(seed)
    model.to(device).train()
    losses = []
    bar = tqdm(range(steps), disable=not progress, desc="pre-training on demonstrations")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, schedule)
        x, y = training_batch(words, batch_size, n_demos, rng)
        _, loss = model(x.to(device), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(model, optimizer, grad_clip=1.0)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return losses


def loss_by_demonstration(model: torch.nn.Module, words: Sequence[str], n_demos: int = 9, batch_size: int = 256,
                          seed: int = 0, device: str = "cpu") -> list[float]:
    """Mean cross-entropy of the *output* characters of demonstration ``j`` (``j = 0 .. n_demos-1``)
    on fresh sequences of ``words``: how much the ``j`` demonstrations before it help."""
    x, y = training_batch(words, batch_size, n_demos, random.Random(seed))
    with evaluating(model):
        logits, _ = model(x.to(device))
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y.to(device), reduction="none")  # (B, T)
    # y[:, t] is character t + 1 of the sequence; the outputs of demo j are characters j*L + W+1 .. j*L + 2W
    L = demo_length()
    return [nll[:, j * L + WORD_LEN : j * L + 2 * WORD_LEN].mean().item() for j in range(n_demos)]


def prompt(task: str, demos: Sequence[str], query: str) -> str:
    """``k`` demonstrations then the query, ``d1>o1;...;dk>ok;query>``: the model must continue
    with the query's output."""
    return "".join(demonstration(task, w) for w in demos) + query + ARROW


def few_shot_accuracy(model: torch.nn.Module, task: str, k: int, words: Sequence[str], n: int = 200,
                      seed: int = 0, device: str = "cpu") -> float:
    """Exact-match accuracy of greedy outputs on ``n`` queries drawn from ``words``, each with ``k``
    demonstrations drawn from ``words`` too (never the query itself)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k * demo_length() + WORD_LEN + 1 > model.config.block_size:
        raise ValueError(f"{k} demonstrations do not fit the model's block_size={model.config.block_size}")
    rng = random.Random(seed)
    tok = tokenizer()
    queries = [rng.choice(words) for _ in range(n)]
    prompts = [prompt(task, rng.sample([w for w in words if w != q], k), q) for q in queries]
    idx = torch.tensor([tok.encode(p) for p in prompts], device=device)
    with evaluating(model):
        for _ in range(WORD_LEN):  # all prompts have the same length: one batch, no padding
            logits, _ = model(idx)
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    outputs = [tok.decode(row[-WORD_LEN:].tolist()) for row in idx]
    return sum(o == TASKS[task](q) for o, q in zip(outputs, queries)) / n


def accuracy_table(model: torch.nn.Module, words: Sequence[str], shots: Sequence[int] = (0, 1, 2, 4, 8),
                   n: int = 200, device: str = "cpu", progress: bool = True) -> dict[str, list[float]]:
    """``{task: [accuracy with k shots for k in shots]}`` on the held-out ``words``."""
    table = {}
    for task in tqdm(TASKS, disable=not progress, desc="evaluating"):
        table[task] = [few_shot_accuracy(model, task, k, words, n, seed=k, device=device) for k in shots]
    return table


# --------------------------------------------------------------------------- prompts for real GPT-2


def format_prompt(description: str, examples: Sequence[tuple[str, str]], query: str,
                  separator: str = " =>", joiner: str = "\n") -> str:
    """A prompt in the style of GPT-3's Figure 2.1: a task description, ``k`` examples, the query.

    ``format_prompt("Translate English to French:", [("sea otter", "loutre de mer")], "cheese")``
    gives ``"Translate English to French:\\nsea otter => loutre de mer\\ncheese =>"``.
    With no examples it is zero-shot; with one, one-shot; with several, few-shot.
    """
    lines = [description] if description else []
    lines += [f"{x}{separator} {y}" for x, y in examples]
    lines.append(f"{query}{separator}")
    return joiner.join(lines)


@torch.no_grad()
def complete(model: torch.nn.Module, encoding, text: str, max_new_tokens: int = 10,
             stop: str | None = "\n", device: str = "cpu") -> str:
    """Greedy continuation of ``text`` by ``model`` (a course GPT) under ``encoding`` (tiktoken),
    cut at the first ``stop`` string. The prompt is cropped to the model's context from the left."""
    from gptcourse.generate import generate

    ids = encoding.encode(text)[-model.config.block_size :]
    idx = torch.tensor([ids], device=device)
    out = generate(model, idx, max_new_tokens, temperature=0)[0, len(ids) :].tolist()
    new = encoding.decode(out)
    if stop and stop in new:
        new = new[: new.index(stop)]
    return new


# Prompts of the papers' kind, as (description, examples, query, separator): translation as in
# GPT-3's Figure 2.1, question answering in the "Q: ... A:" form GPT-2 used for Natural Questions.
TRANSLATION = ("Translate English to French:",
               [("sea otter", "loutre de mer"), ("peppermint", "menthe poivrée"),
                ("plush girafe", "girafe peluche")],
               "cheese", " =>")
QUESTIONS = ("",
             [("Q: What is the capital of France?", "Paris"),
              ("Q: How many legs does a spider have?", "eight"),
              ("Q: Who wrote Romeo and Juliet?", "William Shakespeare")],
             "Q: What is the largest planet in the solar system?", "\nA:")
