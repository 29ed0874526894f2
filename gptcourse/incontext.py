"""In-context learning: a model that learns a task from examples in its prompt, with no weight update.

GPT-3 (Brown et al., 2020, Figure 2.1) evaluates *zero-shot* (a task description and the query),
*one-shot* (the description, one demonstration, the query) and *few-shot* (the description, K
demonstrations, the query) by putting them in the context and letting the model continue. Nothing
is trained at evaluation time.

In miniature, offline: a family of string tasks on 4-letter words over ``a``-``f`` (copy, reverse,
sort, shift each letter, rotate, swap pairs). Every task maps the same input to a different output,
so a model shown only the query cannot tell which task is asked; a *description* (a 4-letter task
name such as ``REVR:``) or demonstrations can. A small GPT is pre-trained on sequences of
demonstrations ``abcd>dcba;bcaf>facb;...``, each sequence from one task, half of them opening with
the task's name; it is then evaluated on held-out input words (never seen in training, neither as
queries nor as demonstrations) with 0, 1, 2, 4, 8 demonstrations, with and without the name.

Induction heads (Olsson et al., 2022): :func:`repeated_batch` makes sequences of random tokens that
repeat, the simplest text where copying "what came after this token last time" pays, and
:func:`induction_score` measures how much a head attends to exactly that position.

The same prompting code drives real GPT-2 (online only): :func:`format_prompt` builds prompts in
the style of the papers, :func:`complete` continues them greedily with any course :class:`GPT`.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from gptcourse.loops import evaluating, optimizer_step
from gptcourse.model import GPTConfig
from gptcourse.tokenizers import CharTokenizer

LETTERS = "abcdef"
WORD_LEN = 4
ARROW, END, COLON = ">", ";", ":"


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

# The task descriptions: a 4-letter name in capitals (never confused with the lower-case words),
# all of one length (DESCRIPTION_LEN with the colon) so that described prompts line up in one batch.
DESCRIPTIONS: dict[str, str] = {
    "copy": "COPY",
    "reverse": "REVR",
    "sort": "SORT",
    "shift": "SHFT",
    "rotate": "ROTL",
    "swap pairs": "SWAP",
}


def tokenizer() -> CharTokenizer:
    """The character vocabulary: the letters, ``>``, ``;``, ``:`` and the capitals of the task names."""
    return CharTokenizer(LETTERS + ARROW + END + COLON + "".join(DESCRIPTIONS.values()))


def split_words(heldout_fraction: float = 0.25, seed: int = 0) -> tuple[list[str], list[str]]:
    """All ``6^4 = 1296`` words, shuffled with ``seed`` and split into ``(train, heldout)``."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    words = ["".join(p) for p in itertools.product(LETTERS, repeat=WORD_LEN)]
    random.Random(seed).shuffle(words)
    n = int(len(words) * heldout_fraction)
    return words[n:], words[:n]


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")


def demonstration(task: str, word: str) -> str:
    """One demonstration, ``input>output;``."""
    _check_task(task)
    return f"{word}{ARROW}{TASKS[task](word)}{END}"


def description(task: str) -> str:
    """The task description that may open a sequence: its name and a colon, e.g. ``"REVR:"``."""
    _check_task(task)
    return DESCRIPTIONS[task] + COLON


DESCRIPTION_LEN = 5  # len(description(task)) for every task


def demo_length() -> int:
    """Characters in one demonstration (every word and every output has ``WORD_LEN`` letters)."""
    return 2 * WORD_LEN + 2


def training_batch(
    words: Sequence[str],
    batch_size: int,
    n_demos: int,
    rng: random.Random,
    tasks: Sequence[str] | None = None,
    described: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` ``(B, T)`` language-modelling pairs, each row demonstrations of one random task.

    With probability ``described`` a row opens with the task's :func:`description` and then has
    ``n_demos`` demonstrations; otherwise it has ``n_demos`` demonstrations and the start of one
    more. Every row has ``DESCRIPTION_LEN + n_demos * demo_length()`` characters, so ``T`` is one
    less, and both kinds of row train every position a prompt with up to ``n_demos - 1``
    demonstrations (and a description) reaches. Every output position is a prediction after 0, 1,
    ... earlier demonstrations, so one sequence teaches every number of shots at once."""
    if not 0.0 <= described <= 1.0:
        raise ValueError(f"described must be a probability in [0, 1], got {described}")
    tok = tokenizer()
    tasks = list(TASKS) if tasks is None else list(tasks)
    length = DESCRIPTION_LEN + n_demos * demo_length()
    rows = []
    for _ in range(batch_size):
        task = rng.choice(tasks)
        head = description(task) if rng.random() < described else ""
        text = head + "".join(demonstration(task, rng.choice(words)) for _ in range(n_demos + 1))
        rows.append(tok.encode(text[:length]))
    data = torch.tensor(rows)
    return data[:, :-1], data[:, 1:]


def recipe(size: str) -> tuple[GPTConfig, dict]:
    """``(GPTConfig, pretrain kwargs)`` of the letter-task model at ``size`` (smoke/cpu/gpu): the
    model Chapter 15 trains and ``experiments/ch15_shots.py`` trains once per seed."""
    sizes = {
        "smoke": (dict(n_layer=1, n_embd=32), dict(steps=20)),
        "cpu": (dict(n_layer=2, n_embd=96), dict(steps=1500)),
        "gpu": (dict(n_layer=4, n_embd=128), dict(steps=5000)),
    }
    if size not in sizes:
        raise ValueError(f"unknown size {size!r}; sizes: {', '.join(sizes)}")
    model_kwargs, train_kwargs = sizes[size]
    config = GPTConfig(vocab_size=tokenizer().vocab_size, block_size=96, n_head=4, **model_kwargs)
    return config, dict(batch_size=32, lr=2e-3, described=0.5, **train_kwargs)


def pretrain(
    model: torch.nn.Module,
    words: Sequence[str],
    steps: int,
    batch_size: int = 32,
    n_demos: int = 9,
    lr: float = 2e-3,
    warmup_steps: int = 50,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    described: float = 0.5,
) -> list[float]:
    """Train ``model`` on :func:`training_batch` sequences (a fraction ``described`` of them opening
    with the task's name) with AdamW and the course's warmup + cosine schedule
    (:func:`gptcourse.train.lr_at`). Returns the loss per step."""
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
        x, y = training_batch(words, batch_size, n_demos, rng, described=described)
        _, loss = model(x.to(device), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(model, optimizer, grad_clip=1.0)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return losses


def loss_by_demonstration(
    model: torch.nn.Module,
    words: Sequence[str],
    n_demos: int = 9,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
) -> list[float]:
    """Mean cross-entropy of the *output* characters of demonstration ``j`` (``j = 0 .. n_demos-1``)
    on fresh undescribed sequences of ``words``: how much the ``j`` demonstrations before it help."""
    x, y = training_batch(words, batch_size, n_demos, random.Random(seed), described=0.0)
    with evaluating(model):
        logits, _ = model(x.to(device))
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y.to(device), reduction="none")  # (B, T)
    # y[:, t] is character t + 1 of the sequence; the outputs of demo j are characters j*L + W+1 .. j*L + 2W
    L = demo_length()
    return [nll[:, j * L + WORD_LEN : j * L + 2 * WORD_LEN].mean().item() for j in range(n_demos)]


def prompt(task: str, demos: Sequence[str], query: str, described: bool = False) -> str:
    """``k`` demonstrations then the query, ``d1>o1;...;dk>ok;query>`` (opened by the task's
    :func:`description` when ``described``): the model must continue with the query's output."""
    head = description(task) if described else ""
    return head + "".join(demonstration(task, w) for w in demos) + query + ARROW


def few_shot_accuracy(
    model: torch.nn.Module,
    task: str,
    k: int,
    words: Sequence[str],
    n: int = 200,
    seed: int = 0,
    device: str = "cpu",
    described: bool = False,
) -> float:
    """Exact-match accuracy of greedy outputs on ``n`` queries drawn from ``words``, each with ``k``
    demonstrations drawn from ``words`` too (never the query itself), the prompt opened by the
    task's description when ``described`` (``k = 0`` and ``described``: zero-shot as GPT-3 defines it)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    head = len(description(task)) if described else 0
    if head + k * demo_length() + WORD_LEN + 1 > model.config.block_size:
        raise ValueError(f"{k} demonstrations do not fit the model's block_size={model.config.block_size}")
    rng = random.Random(seed)
    tok = tokenizer()
    queries = [rng.choice(words) for _ in range(n)]
    prompts = [prompt(task, rng.sample([w for w in words if w != q], k), q, described) for q in queries]
    idx = torch.tensor([tok.encode(p) for p in prompts], device=device)
    block_size = model.config.block_size
    with evaluating(model):
        for _ in range(WORD_LEN):  # all prompts have the same length: one batch, no padding
            # a prompt that fills the context slides: the model reads its last block_size tokens
            logits, _ = model(idx[:, -block_size:], last_only=True)
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    outputs = [tok.decode(row[-WORD_LEN:].tolist()) for row in idx]
    return sum(o == TASKS[task](q) for o, q in zip(outputs, queries)) / n


def accuracy_table(
    model: torch.nn.Module,
    words: Sequence[str],
    shots: Sequence[int] = (0, 1, 2, 4, 8),
    n: int = 200,
    device: str = "cpu",
    progress: bool = True,
    described: bool = False,
    seed: int = 0,
) -> dict[str, list[float]]:
    """``{task: [accuracy with k shots for k in shots]}`` on the held-out ``words``; the queries and
    demonstrations of column ``k`` are drawn with seed ``1000 * seed + k``."""
    table = {}
    for task in tqdm(TASKS, disable=not progress, desc="evaluating"):
        table[task] = [
            few_shot_accuracy(model, task, k, words, n, seed=1000 * seed + k, device=device, described=described)
            for k in shots
        ]
    return table


def task_blind_accuracy(words: Sequence[str], tasks: Sequence[str] | None = None) -> float:
    """The best mean accuracy over ``tasks`` (equally likely) of any answer that ignores which task
    is asked: on each word, the output that the most tasks agree on, right for that many of them."""
    tasks = list(TASKS) if tasks is None else list(tasks)
    best = [Counter(TASKS[t](w) for t in tasks).most_common(1)[0][1] for w in words]
    return sum(best) / (len(tasks) * len(words))


# --------------------------------------------------------------------------- induction heads


def repeated_batch(
    batch_size: int, block_size: int, vocab_size: int, generator: torch.Generator, periods: tuple[int, int] = (8, 32)
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` ``(B, block_size)`` pairs of random tokens that repeat: each row draws a period
    ``P`` uniformly in ``periods`` (both ends included) and ``P`` uniform tokens, then repeats them.
    The first ``P`` tokens cannot be predicted; every later one is the token that followed the
    previous occurrence of the current one, ``P`` positions back. The period changes from row to
    row, so no fixed position offset solves it: the model must find the earlier copy by content."""
    low, high = periods
    if not 1 <= low <= high:
        raise ValueError(f"periods must be (low, high) with 1 <= low <= high, got {periods}")
    rows = []
    for _ in range(batch_size):
        period = int(torch.randint(low, high + 1, (1,), generator=generator))
        tokens = torch.randint(vocab_size, (period,), generator=generator)
        rows.append(tokens.repeat(block_size // period + 2)[: block_size + 1])
    data = torch.stack(rows)
    return data[:, :-1], data[:, 1:]


def induction_score(attn: torch.Tensor, period: int) -> torch.Tensor:
    """``(nh,)``: the mean attention weight, per head, from each position ``i >= period`` of
    sequences that repeat with ``period`` to position ``i - period + 1``, the token *after* the
    previous occurrence of token ``i`` (Olsson et al., 2022). ``attn`` is ``(B, nh, T, T)`` as
    :func:`gptcourse.attention.attention_maps` returns it; 1 means a perfect induction head."""
    T = attn.size(-1)
    if not 1 <= period < T:
        raise ValueError(f"period must be in [1, T={T}), got {period}")
    i = torch.arange(period, T, device=attn.device)
    return attn[:, :, i, i - period + 1].mean(dim=(0, 2))


# --------------------------------------------------------------------------- prompts for real GPT-2


def format_prompt(
    description: str, examples: Sequence[tuple[str, str]], query: str, separator: str = " =>", joiner: str = "\n"
) -> str:
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
def complete(
    model: torch.nn.Module, encoding, text: str, max_new_tokens: int = 10, stop: str | None = "\n", device: str = "cpu"
) -> str:
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
TRANSLATION = (
    "Translate English to French:",
    [("sea otter", "loutre de mer"), ("peppermint", "menthe poivrée"), ("plush girafe", "girafe peluche")],
    "cheese",
    " =>",
)
QUESTIONS = (
    "",
    [
        ("Q: What is the capital of France?", "Paris"),
        ("Q: How many legs does a spider have?", "eight"),
        ("Q: Who wrote Romeo and Juliet?", "William Shakespeare"),
    ],
    "Q: What is the largest planet in the solar system?",
    "\nA:",
)
