"""In-context learning: the string-task family, demonstration sequences, few-shot evaluation, and
the paper-style prompts driven by a small random GPT on GPT-2's vocabulary (never the network)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from gptcourse import incontext
from gptcourse.incontext import (TASKS, TRANSLATION, complete, demo_length, demonstration, few_shot_accuracy,
                                 format_prompt, prompt, split_words, tokenizer, training_batch)
from gptcourse.model import GPT, GPTConfig


def test_tasks_on_one_word():
    outputs = {name: fn("abcf") for name, fn in TASKS.items()}
    assert outputs == {"copy": "abcf", "reverse": "fcba", "sort": "abcf", "shift": "bcda",
                       "rotate": "bcfa", "swap pairs": "bafc"}


def test_tasks_need_demonstrations_to_be_told_apart():
    # on many words all six tasks give six different outputs: the query alone cannot say which task
    words, _ = split_words()
    distinct = sum(len({fn(w) for fn in TASKS.values()}) == len(TASKS) for w in words)
    assert distinct / len(words) > 0.35


def test_split_is_fixed_disjoint_and_complete():
    train, held = split_words()
    assert split_words() == (train, held)
    assert not set(train) & set(held) and len(train) + len(held) == 6 ** 4 and len(held) == 324


def test_training_batch_is_shifted_demonstrations_of_one_task():
    x, y = training_batch(split_words()[0], batch_size=5, n_demos=3, rng=random.Random(0))
    assert x.shape == y.shape == (5, 3 * demo_length() - 1)
    assert torch.equal(x[:, 1:], y[:, :-1])
    tok = tokenizer()
    for row in x:
        text = tok.decode(row.tolist()) + ";"
        demos = [d for d in text.split(";") if d]
        pairs = [d.split(">") for d in demos]
        assert len(demos) == 3
        assert any(all(TASKS[t](a) == b for a, b in pairs) for t in TASKS)


def test_prompt_and_demonstration_format():
    assert demonstration("reverse", "abcd") == "abcd>dcba;"
    assert prompt("sort", ["dcba", "ffea"], "bbca") == "dcba>abcd;ffea>aeff;bbca>"
    assert prompt("copy", [], "abcd") == "abcd>"
    with pytest.raises(ValueError, match="unknown task"):
        demonstration("translate", "abcd")


class Oracle(torch.nn.Module):
    """A 'model' that knows the task: its logits always point at the right next character."""

    def __init__(self, task: str):
        super().__init__()
        self.task, self.config = task, GPTConfig(vocab_size=8, block_size=96, n_layer=1, n_head=1, n_embd=8)

    def forward(self, idx):
        tok = tokenizer()
        logits = torch.zeros(idx.size(0), idx.size(1), 8)
        for b, row in enumerate(idx.tolist()):
            text = tok.decode(row)
            query, _, done = text.rsplit(";", 1)[-1].partition(">")
            logits[b, -1, tok.stoi[TASKS[self.task](query)[len(done)]]] = 1.0
        return logits, None


def test_few_shot_accuracy_scores_an_oracle_and_a_wrong_oracle():
    _, held = split_words()
    assert few_shot_accuracy(Oracle("reverse"), "reverse", 2, held, n=20) == 1.0
    assert few_shot_accuracy(Oracle("shift"), "reverse", 2, held, n=20) == 0.0  # shift never equals reverse
    with pytest.raises(ValueError, match="block_size"):
        few_shot_accuracy(Oracle("copy"), "copy", 10, held)


def test_a_random_model_is_near_chance():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8, block_size=96, n_layer=1, n_head=2, n_embd=16))
    _, held = split_words()
    assert few_shot_accuracy(model, "copy", 4, held, n=50) < 0.1  # chance is (1/8)^4


def test_format_prompt_like_gpt3_figure():
    description, examples, query, separator = TRANSLATION
    text = format_prompt(description, examples[:1], query, separator)
    assert text == "Translate English to French:\nsea otter => loutre de mer\ncheese =>"
    assert format_prompt("", [], "Q: Why?", "\nA:") == "Q: Why?\nA:"  # zero-shot, no description


def test_complete_runs_offline_with_a_small_random_gpt(gpt2_enc):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=1, n_head=2, n_embd=16))
    description, examples, query, separator = incontext.QUESTIONS
    text = format_prompt(description, examples, query, separator)
    out = complete(model, gpt2_enc, text, max_new_tokens=5, stop=None)
    ids = gpt2_enc.encode(text)
    expected = model(torch.tensor([ids]))[0][0, -1].argmax().item()
    assert gpt2_enc.encode(out)[:1] == [expected] or out.startswith(gpt2_enc.decode([expected]))
    long = complete(model, gpt2_enc, text * 20, max_new_tokens=2)  # cropped to block_size, no error
    assert isinstance(long, str) and "\n" not in long


def test_pretrain_lowers_the_loss_and_loss_by_demonstration_reads_output_positions():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8, block_size=96, n_layer=1, n_head=2, n_embd=16))
    train, held = split_words()
    before = incontext.loss_by_demonstration(model, held, n_demos=3, batch_size=16)
    assert len(before) == 3 and all(abs(v - math.log(8)) < 0.3 for v in before)  # random model: ~uniform
    losses = incontext.pretrain(model, train, steps=30, batch_size=16, lr=3e-3, warmup_steps=5, progress=False)
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    # the output characters of a demonstration: positions whose targets are the 4 output letters
    x, y = training_batch(held, 1, 2, random.Random(0))
    L = demo_length()
    assert tokenizer().decode(y[0, L + 4 : L + 8].tolist()) == tokenizer().decode(x[0, L + 5 : L + 9].tolist())
    assert tokenizer().decode(x[0, L + 4 : L + 5].tolist()) == ">"
