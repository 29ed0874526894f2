"""Exercise specs for Lab 14 (the in-context evaluation harness, ``learner/incontext.py``), against
the course's :mod:`gptcourse.incontext`: ``prompt(task, demos, query, described)``,
``training_batch(words, batch_size, n_demos, rng, tasks, described)``, ``complete(model, encoding,
text, max_new_tokens, stop, device)``, ``few_shot_accuracy(model, task, k, words, n, seed, device,
described)``, ``loss_by_demonstration(model, words, n_demos, batch_size, seed, device)`` and
``induction_score(attn, period)``.

The references are the package's functions where the lab asks for exactly them, and a variant of
them where the lab asks for more: :func:`complete` and :func:`few_shot_accuracy` let the context
*slide* (the model reads the last ``block_size`` tokens at every step), so a prompt that fills the
whole context still gets its answer. :class:`RuleModel` stands in for a trained model in the
accuracy's cases: it reads its prompt as text and answers by rule, right on most queries, so an
accuracy far from 0 and 1 shows every mistake of the harness.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from gptcourse import incontext
from gptcourse.attention import attention_maps
from gptcourse.grading.spec import (
    AnswerError,
    Case,
    Misconception,
    Spec,
    close,
    exact,
    global_seed,
    randint,
    randomize_,
    seeded,
)
from gptcourse.incontext import ARROW, COLON, DESCRIPTIONS, END, TASKS, WORD_LEN, demo_length, split_words
from gptcourse.loops import evaluating
from gptcourse.model import GPT, GPTConfig

HARNESS = (  # the package's harness: no exercise may call the pieces the lab asks for
    "gptcourse.incontext.demonstration",
    "gptcourse.incontext.description",
    "gptcourse.incontext.prompt",
    "gptcourse.incontext.training_batch",
    "gptcourse.incontext.complete",
    "gptcourse.incontext.few_shot_accuracy",
    "gptcourse.incontext.loss_by_demonstration",
    "gptcourse.incontext.induction_score",
    "gptcourse.generate.generate",
)
TOK = incontext.tokenizer()
V = TOK.vocab_size
TRAIN_WORDS, HELDOUT_WORDS = split_words()


def _pick(g: torch.Generator, items: Sequence[Any]) -> Any:
    return items[randint(g, 0, len(items) - 1)]


def _words(g: torch.Generator, n: int, pool: Sequence[str] = HELDOUT_WORDS) -> list[str]:
    return [pool[i] for i in torch.randperm(len(pool), generator=g)[:n].tolist()]


class Rng(random.Random):
    """A ``random.Random`` that names its seed in messages."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.first_seed = seed

    def __repr__(self) -> str:
        return f"random.Random({self.first_seed})"

    def __reduce__(self) -> tuple:
        return (type(self), (self.first_seed,), self.getstate())


def _tiny_gpt(g: torch.Generator, block_size: int, dropout: float = 0.0, n_layer: int = 1) -> GPT:
    with seeded(g):
        model = GPT(
            GPTConfig(vocab_size=V, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=16, dropout=dropout)
        )
    return randomize_(model, g)


def _lively_gpt(g: torch.Generator, block_size: int) -> GPT:
    """A random GPT whose greedy continuations change with the context (the plain random one mostly
    repeats one token whatever it reads): its matrices are scaled up five times."""
    with seeded(g):
        model = GPT(GPTConfig(vocab_size=V, block_size=block_size, n_layer=1, n_head=2, n_embd=32))
    randomize_(model, g)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    return model


# --- Exercise 1: the prompt ----------------------------------------------------------------------------


def prompt_cases(g: torch.Generator) -> list[Case]:
    """``(task, demos, query[, described])``."""
    w = _words(g, 12)
    cases = [
        Case("zero demonstrations, no description: the bare query", ("reverse", [], w[0])),
        Case("zero-shot: the description and the query", ("sort", [], w[1], True)),
        Case("one demonstration", ("shift", [w[2]], w[3])),
        Case("three demonstrations, described", ("rotate", w[4:7], w[7], True)),
        Case("two demonstrations, described=False given", ("swap pairs", w[8:10], w[10], False)),
    ]
    for i in range(4):
        k = randint(g, 1, 5)
        words = _words(g, k + 1, TRAIN_WORDS)
        cases.append(
            Case(
                f"random prompt {i + 1} ({k} demonstrations)", (_pick(g, list(TASKS)), words[:k], words[k], i % 2 == 0)
            )
        )
    return cases


def _prompt(
    end_last: bool = True, arrow: bool = True, colon: bool = True, give_answer: bool = False
) -> Callable[..., str]:
    """The reference prompt with one piece changed (a misconception)."""

    def prompt(task: str, demos: Sequence[str], query: str, described: bool = False) -> str:
        head = DESCRIPTIONS[task] + (COLON if colon else "") if described else ""
        shown = [f"{d}{ARROW}{TASKS[task](d)}" for d in demos]
        body = END.join(shown) + (END if shown and end_last else "")
        tail = f"{query}{ARROW}{TASKS[task](query)}{END}" if give_answer else query + (ARROW if arrow else "")
        return head + body + tail

    return prompt


PROMPT = Spec(
    id="lab14.prompt",
    points=1,
    name="prompt",
    reference=incontext.prompt,
    cases=prompt_cases,
    compare=exact(),
    forbidden=HARNESS,
    hint="a prompt is the optional description (the task's name and a colon), the demonstrations "
    "'input>output;' one after the other, then the query and '>' (Chapter 15, Demonstrations, descriptions "
    "and prompts)",
    misconceptions=(
        Misconception(
            "no separator after the last demonstration",
            _prompt(end_last=False),
            "every demonstration ends with ';', the last one too: the query must start after a ';' as every "
            "input did in training",
        ),
        Misconception(
            "query without its arrow",
            _prompt(arrow=False),
            "the prompt ends with the query and '>': the model continues after the arrow with the answer, as "
            "it saw after every input",
        ),
        Misconception(
            "description without its colon",
            _prompt(colon=False),
            "the description is the task's 4-letter name and a colon, 'REVR:' (Chapter 15, Demonstrations, "
            "descriptions and prompts)",
        ),
        Misconception(
            "the query's answer given away",
            _prompt(give_answer=True),
            "the prompt stops at the query's '>': the answer is what the model must produce, not part of what it reads",
        ),
    ),
)


# --- Exercise 2: the training sequences ------------------------------------------------------------------


def batch_cases(g: torch.Generator) -> list[Case]:
    """``(words, batch_size, n_demos, rng[, tasks, described])``; the rng a fresh ``random.Random``."""
    words = _words(g, 40, TRAIN_WORDS)
    s = [randint(g, 0, 10_000) for _ in range(8)]
    cases = [
        Case("no description (described=0)", (words, 4, 3, Rng(s[0])), {"described": 0.0}),
        Case("every row described (described=1)", (words, 4, 2, Rng(s[1])), {"described": 1.0}),
        Case("the default: half described", (words, 6, 3, Rng(s[2]))),
        Case("two tasks only", (words, 5, 2, Rng(s[3])), {"tasks": ["reverse", "sort"]}),
        Case("one demonstration per row", (words, 3, 1, Rng(s[4])), {"described": 0.5}),
    ]
    for i in range(3):
        cases.append(Case(f"random batch {i + 1}", (words, randint(g, 2, 8), randint(g, 1, 5), Rng(s[5 + i]))))
    return cases


def run_batch(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    out = answer(*case.args, **case.kwargs)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise AnswerError(f"training_batch returned a {type(out).__name__}; return a pair (x, y) of (B, T) tensors")
    x, y = out
    return {"x": x, "y": y}


def _batch(
    shift: bool = True, task_per_row: bool = True, room_for_head: bool = True, coin: bool = True
) -> Callable[..., Any]:
    """The reference batch with one piece changed (a misconception)."""

    def training_batch(
        words: Sequence[str],
        batch_size: int,
        n_demos: int,
        rng: random.Random,
        tasks: Sequence[str] | None = None,
        described: float = 0.5,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tasks = list(TASKS) if tasks is None else list(tasks)
        length = (incontext.DESCRIPTION_LEN if room_for_head else 0) + n_demos * demo_length()
        rows = []
        for _ in range(batch_size):
            task = rng.choice(tasks)
            head = DESCRIPTIONS[task] + COLON if (rng.random() < described if coin else True) else ""
            demos = []
            for _ in range(n_demos + 1):
                t = task if task_per_row else rng.choice(tasks)
                w = rng.choice(words)
                demos.append(f"{w}{ARROW}{TASKS[t](w)}{END}")
            rows.append(TOK.encode((head + "".join(demos))[:length]))
        data = torch.tensor(rows)
        return (data[:, :-1], data[:, 1:]) if shift else (data[:, :-1], data[:, :-1])

    return training_batch


TRAINING_BATCH = Spec(
    id="lab14.training_batch",
    points=2,
    name="training_batch",
    reference=incontext.training_batch,
    cases=batch_cases,
    run=run_batch,
    compare=exact(),
    forbidden=HARNESS,
    hint="each row: one task (rng.choice), a description with probability `described` (rng.random()), "
    "n_demos + 1 demonstrations of that task (rng.choice(words) each), cut to DESCRIPTION_LEN + n_demos * "
    "demo_length() characters; x and y are that row without its last and without its first character "
    "(Chapter 15, Pre-training on sequences of demonstrations)",
    misconceptions=(
        Misconception(
            "targets not shifted",
            _batch(shift=False),
            "the target at position t is the character at t + 1: y is the row without its first character, "
            "x without its last",
        ),
        Misconception(
            "a new task for every demonstration",
            _batch(task_per_row=False),
            "all the demonstrations of a row are of one task, drawn once per row: otherwise the context "
            "says nothing about the query's task",
        ),
        Misconception(
            "no room for the description",
            _batch(room_for_head=False),
            "every row has DESCRIPTION_LEN + n_demos * demo_length() characters, described or not: the "
            "undescribed rows fill the description's 5 characters with the start of one more demonstration",
        ),
        Misconception(
            "every row described",
            _batch(coin=False),
            "a row opens with the description only with probability `described`: draw rng.random() for each "
            "row, after its task, and compare it with `described`",
        ),
    ),
)


# --- Exercise 3: greedy completion -----------------------------------------------------------------------


def _greedy_text(model: nn.Module, ids: list[int], max_new_tokens: int) -> list[int]:
    idx = torch.tensor([ids])
    with evaluating(model):
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, -model.config.block_size :])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0].tolist()


def complete_cases(g: torch.Generator) -> list[Case]:
    """``(model, encoding, text, max_new_tokens[, stop])`` on a random GPT of the letter vocabulary;
    a stop string the model does produce is read off the model's own continuation."""
    model = _lively_gpt(g, block_size=16)
    words = _words(g, 12)
    short = incontext.prompt("reverse", words[:0], words[0])  # 5 characters
    fits = incontext.prompt("sort", words[1:2], words[2])  # 15 characters: the window fills while writing
    long1 = incontext.prompt("shift", words[3:6], words[6], True)  # 40 characters: cropped
    long2 = incontext.prompt("rotate", words[7:10], words[10])  # 35 characters

    def produced(text: str, n: int) -> str:
        ids = TOK.encode(text)[-model.config.block_size :]
        new = TOK.decode(_greedy_text(model, ids, n)[len(ids) :])
        return new[len(new) // 2]

    return [
        Case("a short prompt, no stop", (model, TOK, short, 6), {"stop": None}),
        Case("the window fills while writing", (model, TOK, fits, 8), {"stop": None}),
        Case("a prompt longer than block_size", (model, TOK, long1, 5), {"stop": None}),
        Case("a stop string the model writes", (model, TOK, short, 10), {"stop": produced(short, 10)}),
        Case("a stop string that never comes", (model, TOK, long2, 4), {"stop": "Z"}),
        Case("a long prompt and a stop string", (model, TOK, long2, 10), {"stop": produced(long2, 10)}),
    ]


def _complete(
    crop_left: bool = True,
    greedy: bool = True,
    cut_before_stop: bool = True,
    last_position: bool = True,
    new_only: bool = True,
) -> Callable[..., str]:
    """The reference completion with one piece changed (a misconception)."""

    def complete(
        model: nn.Module,
        encoding: Any,
        text: str,
        max_new_tokens: int = 10,
        stop: str | None = "\n",
        device: str = "cpu",
    ) -> str:
        block_size = model.config.block_size
        ids = encoding.encode(text)
        ids = ids[-block_size:] if crop_left else ids[:block_size]
        idx = torch.tensor([ids], device=device)
        with evaluating(model):
            for _ in range(max_new_tokens):
                logits, _ = model(idx[:, -block_size:])
                logits = logits[:, -1] if last_position else logits[:, 0]
                if greedy:
                    nxt = logits.argmax(-1, keepdim=True)
                else:
                    nxt = torch.multinomial(torch.softmax(logits, -1), 1)
                idx = torch.cat([idx, nxt], dim=1)
        new = encoding.decode(idx[0, len(ids) :].tolist())
        if stop and stop in new:
            new = new[: new.index(stop) + (0 if cut_before_stop else len(stop))]
        return new if new_only else encoding.decode(ids) + new

    return complete


def run_complete(answer: Callable[..., Any], case: Case) -> str:
    with global_seed():
        out = answer(*case.args, **case.kwargs)
    if not isinstance(out, str):
        raise AnswerError(f"complete returned a {type(out).__name__}; return the continuation as a str")
    return out


COMPLETE = Spec(
    id="lab14.complete",
    points=3,
    name="complete",
    reference=_complete(),
    cases=complete_cases,
    run=run_complete,
    compare=exact(),
    forbidden=HARNESS,
    hint="encode, keep the last block_size tokens, then max_new_tokens times: run the model on the last "
    "block_size tokens, append the argmax of the last position's logits; decode only the new tokens and cut "
    "them before the first stop string (Chapter 15, The same prompts on real GPT-2)",
    misconceptions=(
        Misconception(
            "sampled instead of greedy",
            _complete(greedy=False),
            "the evaluation is greedy: take the most likely next token (argmax), do not sample; a sampled "
            "answer changes from run to run",
        ),
        Misconception(
            "next token read from the first position",
            _complete(last_position=False),
            "the logits at position t predict token t + 1: the next token comes from the last position's logits",
        ),
        Misconception(
            "the prompt returned too",
            _complete(new_only=False),
            "return only the continuation, the tokens after the prompt: the caller already has the prompt",
        ),
        Misconception(
            "prompt cropped from the wrong end",
            _complete(crop_left=False),
            "a prompt longer than the context keeps its *last* block_size tokens: the end of the prompt, "
            "the query, is what the model must continue",
        ),
        Misconception(
            "stop string kept",
            _complete(cut_before_stop=False),
            "cut the continuation *before* the first stop string: the stop marks the end of the answer and "
            "is not part of it",
        ),
    ),
)


# --- Exercise 4: few-shot accuracy -----------------------------------------------------------------------


class RuleModel(nn.Module):
    """A stand-in for a trained letter-task model, with a GPT's interface (``config``, ``forward(idx)``
    returning ``(logits, None)``, a ValueError for a sequence longer than ``block_size``).

    At the last position it reads the row as text: the task is the description's when the row opens
    with one, else the first task (in ``TASKS`` order) that every complete demonstration in view
    agrees with (``copy`` with none); it then writes that task's answer to the query after ``>``,
    with its last letter wrong on words whose letters sum to a multiple of 3, and ``;`` after it.
    The right token gets a logit of 6, the others a fixed noise in [0, 1)."""

    def __init__(self, block_size: int, seed: int = 0) -> None:
        super().__init__()
        self.config = GPTConfig(vocab_size=V, block_size=block_size, n_layer=1, n_head=1, n_embd=4)
        self.register_buffer("noise", torch.rand(V, generator=torch.Generator().manual_seed(seed)))
        self.scale = nn.Parameter(torch.tensor(6.0))

    def extra_repr(self) -> str:
        return f"block_size={self.config.block_size}"

    def next_char(self, text: str) -> str:
        name = re.match(r"([A-Z]{4}):", text)
        by_name = {v: k for k, v in DESCRIPTIONS.items()}
        if name and name.group(1) in by_name:
            task = by_name[name.group(1)]
        else:
            shown = re.findall(r"([a-f]{4})>([a-f]{4});", text)
            task = next((t for t in TASKS if all(TASKS[t](w) == o for w, o in shown)), "copy")
        m = re.search(r"([a-f]{4})>([a-f]*)$", text)
        if m is None:
            return END
        query, written = m.groups()
        answer = TASKS[task](query)
        if sum(incontext.LETTERS.index(c) for c in query) % 3 == 0:
            answer = answer[:-1] + incontext.LETTERS[(incontext.LETTERS.index(answer[-1]) + 1) % 6]
        return answer[len(written)] if len(written) < WORD_LEN else END

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        B, T = idx.shape
        self.calls = getattr(self, "calls", 0) + 1
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size={self.config.block_size}")
        logits = self.noise.expand(B, T, V).clone()
        logits.scatter_add_(2, ((idx + 1) % V).unsqueeze(-1), torch.ones(B, T, 1))  # earlier positions: a shift
        for b in range(B):
            logits[b, -1] = self.noise
            logits[b, -1, TOK.encode(self.next_char(TOK.decode(idx[b].tolist())))[0]] += self.scale.detach()
        return logits, None


def accuracy_cases(g: torch.Generator) -> list[Case]:
    """``(model, task, k, words[, n, seed, described])``."""
    model = RuleModel(block_size=64, seed=randint(g, 0, 1000))
    words = _words(g, 120)
    s = [randint(g, 0, 10_000) for _ in range(6)]
    fit_k = 3  # 5 + 3 * 10 + 5 = 40 characters: the whole context of a block_size-40 model
    return [
        Case(
            "four demonstrations, described", (model, "reverse", 4, words), {"n": 40, "seed": s[0], "described": True}
        ),
        Case("two demonstrations", (model, "sort", 2, words), {"n": 40, "seed": s[1]}),
        Case("zero-shot: the description only", (model, "shift", 0, words), {"n": 40, "seed": s[2], "described": True}),
        Case("the bare query (K=0, no description)", (model, "rotate", 0, words), {"n": 30, "seed": s[3]}),
        Case(
            "a prompt that fills the whole context",
            (RuleModel(block_size=40, seed=s[4]), "swap pairs", fit_k, words),
            {"n": 30, "seed": s[4], "described": True},
        ),
        Case("a prompt longer than the context", (RuleModel(block_size=20), "reverse", 2, words), {"n": 10}),
        Case("one demonstration, default n and seed", (model, "rotate", 1, words)),
    ]


def _few_shot(
    greedy: bool = True, use_description: bool = True, answer_at: int = 0, slide: bool = True, check: bool = True
) -> Callable[..., float]:
    """The reference accuracy with one piece changed (a misconception)."""

    def few_shot_accuracy(
        model: nn.Module,
        task: str,
        k: int,
        words: Sequence[str],
        n: int = 200,
        seed: int = 0,
        device: str = "cpu",
        described: bool = False,
    ) -> float:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        block_size = model.config.block_size
        head = len(DESCRIPTIONS[task] + COLON) if described else 0
        if check and head + k * demo_length() + WORD_LEN + 1 > block_size:
            raise ValueError(f"{k} demonstrations do not fit the model's block_size={block_size}")
        rng = random.Random(seed)
        queries = [rng.choice(words) for _ in range(n)]
        prompts = [
            incontext.prompt(task, rng.sample([w for w in words if w != q], k), q, described and use_description)
            for q in queries
        ]
        idx = torch.tensor([TOK.encode(p) for p in prompts], device=device)
        with evaluating(model):
            for _ in range(WORD_LEN):
                logits, _ = model(idx[:, -block_size:] if slide else idx)
                last = logits[:, -1]
                nxt = last.argmax(-1, keepdim=True) if greedy else torch.multinomial(torch.softmax(last, -1), 1)
                idx = torch.cat([idx, nxt], dim=1)
        end = idx.size(1) - answer_at
        outputs = [TOK.decode(row[end - WORD_LEN : end].tolist()) for row in idx]
        return sum(o == TASKS[task](q) for o, q in zip(outputs, queries)) / n

    return few_shot_accuracy


def run_accuracy(answer: Callable[..., Any], case: Case) -> Any:
    model = case.args[0]
    model.calls = 0
    with global_seed():
        try:
            out = answer(*case.args, **case.kwargs)
        except ValueError:
            if model.calls == 0:
                return "raised ValueError before running the model"
            return "the model raised ValueError (it was given more than block_size tokens)"
    if isinstance(out, torch.Tensor) and out.numel() == 1:
        out = out.item()
    if isinstance(out, bool) or not isinstance(out, (int, float)):
        raise AnswerError(f"few_shot_accuracy returned a {type(out).__name__}; return the accuracy as a float")
    return float(out)


FEW_SHOT_ACCURACY = Spec(
    id="lab14.few_shot_accuracy",
    points=3,
    name="few_shot_accuracy",
    reference=_few_shot(),
    cases=accuracy_cases,
    run=run_accuracy,
    compare=close(atol=1e-9, rtol=1e-9),
    forbidden=HARNESS,
    hint="draw the n queries first, then each query's k demonstrations (rng.sample of the other words); "
    "build every prompt, run them as one batch, append the argmax of the last position WORD_LEN times with "
    "the model reading at most its last block_size tokens, and compare the WORD_LEN new characters with the "
    "task's answer (Chapter 15, Zero-, one- and few-shot accuracy)",
    misconceptions=(
        Misconception(
            "sampled instead of greedy",
            _few_shot(greedy=False),
            "the accuracy is of greedy answers: the argmax at each step, not a sample; a sampled accuracy "
            "changes from run to run",
        ),
        Misconception(
            "description left out",
            _few_shot(use_description=False),
            "pass `described` on to the prompt: with it, K = 0 is zero-shot in GPT-3's sense (the task's "
            "name and the query), without it the bare query",
        ),
        Misconception(
            "answer read one character early",
            _few_shot(answer_at=1),
            "the answer is the WORD_LEN characters the model wrote, the last WORD_LEN of each row after "
            "generation, not including the prompt's '>'",
        ),
        Misconception(
            "the context does not slide",
            _few_shot(slide=False),
            "a prompt may fill the whole context: while the answer is written, feed the model only the last "
            "block_size tokens, as a model with any context length must be fed",
        ),
        Misconception(
            "no check that the prompt fits",
            _few_shot(check=False),
            "a prompt longer than the context cannot be answered as written: raise a ValueError that says "
            "the k demonstrations do not fit block_size, rather than score a cropped prompt",
        ),
    ),
)


# --- Exercise 5: the loss by demonstration ---------------------------------------------------------------


def loss_cases(g: torch.Generator) -> list[Case]:
    """``(model, words[, n_demos, batch_size, seed])``; models with dropout, some in training mode."""
    words = _words(g, 60)
    cases = []
    for n_demos, batch, dropout, training in ((3, 16, 0.3, True), (5, 8, 0.0, False), (2, 12, 0.2, False)):
        model = _tiny_gpt(g, block_size=64, dropout=dropout)
        model.train(training)
        label = f"{n_demos} demonstrations, dropout {dropout}, model in {'training' if training else 'eval'} mode"
        cases.append(Case(label, (model, words), {"n_demos": n_demos, "batch_size": batch, "seed": randint(g, 0, 999)}))
    model = _tiny_gpt(g, block_size=96, dropout=0.1)
    cases.append(Case("the defaults (9 demonstrations, 256 rows)", (model, words)))
    return cases


def run_loss(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    model = case.args[0]
    with global_seed():
        out = answer(*case.args, **case.kwargs)
    if isinstance(out, torch.Tensor):
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise AnswerError(f"loss_by_demonstration returned a {type(out).__name__}; return a list of floats")
    return {"losses": [float(v) for v in out], "mode afterwards": "training" if model.training else "eval"}


def _losses(
    first: int = WORD_LEN,
    last: int = 2 * WORD_LEN,
    described: float = 0.0,
    eval_mode: bool = True,
    restore: bool = True,
) -> Callable[..., list[float]]:
    """The reference loss with one piece changed (a misconception)."""

    def loss_by_demonstration(
        model: nn.Module,
        words: Sequence[str],
        n_demos: int = 9,
        batch_size: int = 256,
        seed: int = 0,
        device: str = "cpu",
    ) -> list[float]:
        x, y = incontext.training_batch(words, batch_size, n_demos, random.Random(seed), described=described)
        was_training = model.training
        model.train(not eval_mode)
        with torch.no_grad():
            logits, _ = model(x.to(device))
        if restore:
            model.train(was_training)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y.to(device), reduction="none")
        L = demo_length()
        return [nll[:, j * L + first : j * L + last].mean().item() for j in range(n_demos)]

    return loss_by_demonstration


LOSS_BY_DEMONSTRATION = Spec(
    id="lab14.loss_by_demonstration",
    points=2,
    name="loss_by_demonstration",
    reference=incontext.loss_by_demonstration,
    cases=loss_cases,
    run=run_loss,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=HARNESS,
    hint="undescribed sequences from training_batch(words, batch_size, n_demos, random.Random(seed), "
    "described=0.0), one forward pass in eval mode, the per-position cross-entropy, and for demonstration j "
    "the mean over the rows and its WORD_LEN output positions of y (Chapter 15, Learning inside the context)",
    misconceptions=(
        Misconception(
            "targets read one position late",
            _losses(first=WORD_LEN + 1, last=2 * WORD_LEN + 1),
            "y[:, t] is the character at t + 1: the outputs of demonstration j are the targets at "
            "j*L + WORD_LEN .. j*L + 2*WORD_LEN - 1 (the positions from the '>' on), not one later",
        ),
        Misconception(
            "the input's characters scored too",
            _losses(first=0, last=demo_length()),
            "score only the output characters: the input word is random and no demonstration can help to "
            "predict it, so its loss hides the effect of the context",
        ),
        Misconception(
            "described sequences",
            _losses(described=0.5),
            "the sequences have no description (described=0.0): the curve must show what the demonstrations alone do",
        ),
        Misconception(
            "dropout left on",
            _losses(eval_mode=False),
            "evaluate in eval mode: dropout would add noise to every loss",
        ),
        Misconception(
            "mode not restored",
            _losses(restore=False),
            "afterwards put the model back in the mode it was in (a training loop that measures this curve "
            "must go on training with dropout)",
        ),
    ),
)


# --- Exercise 6: the induction score ---------------------------------------------------------------------


def induction_cases(g: torch.Generator) -> list[Case]:
    """``(attn, period)``: random causal attention, then a real GPT's maps on a repeated batch."""

    def random_attn(B: int, nh: int, T: int) -> torch.Tensor:
        scores = torch.randn(B, nh, T, T, generator=g) * 2
        return scores.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf")).softmax(-1)

    model = _tiny_gpt(g, block_size=32, n_layer=2)
    x, _ = incontext.repeated_batch(3, 24, V, g, periods=(8, 8))
    maps = attention_maps(model, x)
    cases = [
        Case("random causal attention, period 4", (random_attn(3, 2, 12), 4)),
        Case("a real GPT's layer-2 maps on a repeated batch", (maps[1], 8)),
        Case("period 1: every position repeats the one before", (random_attn(2, 3, 6), 1)),
        Case("period T - 1: one position", (random_attn(2, 2, 7), 6)),
        Case("period T: no position repeats (a ValueError)", (random_attn(2, 2, 5), 5)),
    ]
    for i in range(2):
        T = randint(g, 6, 20)
        cases.append(
            Case(
                f"random attention {i + 1}",
                (random_attn(randint(g, 2, 4), randint(g, 1, 4), T), randint(g, 2, T - 2)),
            )
        )
    return cases


def run_induction(answer: Callable[..., Any], case: Case) -> Any:
    try:
        return answer(*case.args, **case.kwargs)
    except ValueError:
        return "raised ValueError"


def _induction(
    offset: int = 1, start: int = 0, heads: bool = True, batch: bool = True, check: bool = True
) -> Callable[..., torch.Tensor]:
    """The reference score with one piece changed (a misconception)."""

    def induction_score(attn: torch.Tensor, period: int) -> torch.Tensor:
        T = attn.size(-1)
        if check and not 1 <= period < T:
            raise ValueError(f"period must be in [1, T={T}), got {period}")
        i = torch.arange(period - start, T)
        picked = attn[:, :, i, i - period + offset]  # (B, nh, positions)
        if not batch:
            return picked[0].mean(-1)
        return picked.mean(dim=(0, 2)) if heads else picked.mean(dim=(0, 1))

    return induction_score


INDUCTION_SCORE = Spec(
    id="lab14.induction_score",
    points=2,
    name="induction_score",
    reference=incontext.induction_score,
    cases=induction_cases,
    run=run_induction,
    compare=close(atol=1e-6, rtol=1e-5),
    forbidden=HARNESS,
    hint="for every position i from period to T - 1, the weight on position i - period + 1; average over the "
    "batch and those positions, one score per head (Chapter 15, Why the loss drops suddenly: induction heads)",
    misconceptions=(
        Misconception(
            "the previous occurrence itself",
            _induction(offset=0),
            "an induction head attends to the token *after* the previous occurrence of the current token, "
            "i - period + 1, since that is the token it copies forward",
        ),
        Misconception(
            "positions before the first repeat counted",
            _induction(start=1),
            "only positions i >= period have a previous occurrence: position period - 1 is still in the "
            "first copy and has nothing to look back to",
        ),
        Misconception(
            "averaged over the heads",
            _induction(heads=False),
            "the score is per head, (nh,): average over the batch and the positions, keep the heads apart",
        ),
        Misconception(
            "only the first sequence",
            _induction(batch=False),
            "average over every sequence of the batch, not the first one only",
        ),
        Misconception(
            "period not checked",
            _induction(check=False),
            "a period must be in [1, T): with period >= T no position has a previous occurrence; raise a "
            "ValueError rather than return a mean of nothing",
        ),
    ),
)

SPECS = (PROMPT, TRAINING_BATCH, COMPLETE, FEW_SHOT_ACCURACY, LOSS_BY_DEMONSTRATION, INDUCTION_SCORE)
