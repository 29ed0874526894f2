"""In-context learning: the string-task family, demonstration sequences, few-shot evaluation, and
the paper-style prompts driven by a small random GPT on GPT-2's vocabulary (never the network)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from gptcourse import incontext
from gptcourse.incontext import (
    DESCRIPTIONS,
    TASKS,
    TRANSLATION,
    complete,
    demo_length,
    demonstration,
    description,
    few_shot_accuracy,
    format_prompt,
    induction_score,
    prompt,
    repeated_batch,
    split_words,
    task_blind_accuracy,
    tokenizer,
    training_batch,
)
from gptcourse.model import GPT, GPTConfig


def test_tasks_on_one_word():
    outputs = {name: fn("abcf") for name, fn in TASKS.items()}
    assert outputs == {
        "copy": "abcf",
        "reverse": "fcba",
        "sort": "abcf",
        "shift": "bcda",
        "rotate": "bcfa",
        "swap pairs": "bafc",
    }


def test_tasks_need_demonstrations_to_be_told_apart():
    # on many words all six tasks give six different outputs: the query alone cannot say which task
    words, _ = split_words()
    distinct = sum(len({fn(w) for fn in TASKS.values()}) == len(TASKS) for w in words)
    assert distinct / len(words) > 0.35


def test_split_is_fixed_disjoint_and_complete():
    train, held = split_words()
    assert split_words() == (train, held)
    assert not set(train) & set(held) and len(train) + len(held) == 6**4 and len(held) == 324


def test_training_batch_is_shifted_demonstrations_of_one_task():
    x, y = training_batch(split_words()[0], batch_size=5, n_demos=3, rng=random.Random(0), described=0.0)
    assert x.shape == y.shape == (5, incontext.DESCRIPTION_LEN + 3 * demo_length() - 1)
    assert torch.equal(x[:, 1:], y[:, :-1])
    tok = tokenizer()
    for row in torch.cat([x, y[:, -1:]], dim=1):
        text = tok.decode(row.tolist())
        demos, rest = text[: 3 * demo_length()].split(";")[:3], text[3 * demo_length() :]
        pairs = [d.split(">") for d in demos]
        assert len(rest) == incontext.DESCRIPTION_LEN and rest[-1] == ">"  # the query of a 4th demonstration
        assert any(all(TASKS[t](a) == b for a, b in pairs) for t in TASKS)


def test_descriptions_and_described_batches():
    assert description("reverse") == "REVR:"
    assert {len(description(t)) for t in TASKS} == {incontext.DESCRIPTION_LEN}
    assert set(DESCRIPTIONS) == set(TASKS)
    assert not set("".join(DESCRIPTIONS.values())) & set(incontext.LETTERS)  # names never look like words
    tok, words = tokenizer(), split_words()[0]
    for described, opens in ((1.0, True), (0.0, False)):
        x, y = training_batch(words, batch_size=8, n_demos=3, rng=random.Random(0), described=described)
        assert x.shape == (8, incontext.DESCRIPTION_LEN + 3 * demo_length() - 1)
        texts = [tok.decode(row.tolist()) + tok.decode(y[i, -1:].tolist()) for i, row in enumerate(x)]
        assert all((t[4] == ":" and t[:4] in DESCRIPTIONS.values()) == opens for t in texts)
        assert all(t.endswith(";") for t in texts) == opens  # described rows hold 3 whole demonstrations
    x, _ = training_batch(words, batch_size=400, n_demos=2, rng=random.Random(1))  # default: half described
    share = sum(tok.decode(row.tolist())[4] == ":" for row in x) / 400
    assert 0.4 < share < 0.6
    with pytest.raises(ValueError, match="described"):
        training_batch(words, 2, 2, random.Random(0), described=1.5)


def test_task_blind_accuracy_by_hand():
    # "abcd": copy = sort = "abcd", the others differ: the best blind answer is right for 2 of 6 tasks
    # "aaaa": every task gives "aaaa" except shift ("bbbb"): 5 of 6
    assert task_blind_accuracy(["abcd"]) == pytest.approx(2 / 6)
    assert task_blind_accuracy(["abcd", "aaaa"]) == pytest.approx(7 / 12)
    assert task_blind_accuracy(["abcd"], tasks=["copy", "sort"]) == 1.0
    assert 1 / 6 <= task_blind_accuracy(split_words()[1]) < 0.35


def test_repeated_batch_repeats_with_a_period_per_row():
    x, y = repeated_batch(64, 40, 16, torch.Generator().manual_seed(0), periods=(5, 9))
    assert x.shape == y.shape == (64, 40) and torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < 16
    periods = set()
    for row in torch.cat([x, y[:, -1:]], dim=1):
        p = next(p for p in range(5, 10) if torch.equal(row[p:], row[:-p]))
        periods.add(p)
    assert periods == set(range(5, 10))
    with pytest.raises(ValueError, match="periods"):
        repeated_batch(2, 10, 4, torch.Generator(), periods=(5, 3))


def test_induction_score_of_a_perfect_and_of_a_uniform_head():
    T, period = 12, 5
    perfect = torch.zeros(2, 2, T, T)
    for i in range(T):
        perfect[:, 0, i, i - period + 1 if i >= period else 0] = 1.0
        perfect[:, 1, i, : i + 1] = 1.0 / (i + 1)  # head 1: causal uniform attention
    score = induction_score(perfect, period)
    assert score.shape == (2,) and score[0].item() == 1.0
    assert score[1].item() == pytest.approx(sum(1 / (i + 1) for i in range(period, T)) / (T - period))
    with pytest.raises(ValueError, match="period"):
        induction_score(perfect, T)


def test_prompt_and_demonstration_format():
    assert demonstration("reverse", "abcd") == "abcd>dcba;"
    assert prompt("sort", ["dcba", "ffea"], "bbca") == "dcba>abcd;ffea>aeff;bbca>"
    assert prompt("copy", [], "abcd") == "abcd>"
    assert prompt("copy", [], "abcd", described=True) == "COPY:abcd>"
    assert prompt("shift", ["abcf"], "aaaa", described=True) == "SHFT:abcf>bcda;aaaa>"
    with pytest.raises(ValueError, match="unknown task"):
        demonstration("translate", "abcd")


V = tokenizer().vocab_size


class Oracle(torch.nn.Module):
    """A 'model' that knows the task: its logits always point at the right next character."""

    def __init__(self, task: str):
        super().__init__()
        self.task, self.config = task, GPTConfig(vocab_size=V, block_size=96, n_layer=1, n_head=1, n_embd=8)

    def forward(self, idx, last_only=False):
        assert idx.size(1) <= self.config.block_size, "the context is longer than block_size"  # as GPT's ValueError
        tok = tokenizer()
        logits = torch.zeros(idx.size(0), idx.size(1), V)
        for b, row in enumerate(idx.tolist()):
            text = tok.decode(row)
            query, _, done = text.rsplit(";", 1)[-1].rsplit(":", 1)[-1].partition(">")
            logits[b, -1, tok.stoi[TASKS[self.task](query)[len(done)]]] = 1.0
        return logits, None


def test_few_shot_accuracy_scores_an_oracle_and_a_wrong_oracle():
    _, held = split_words()
    assert few_shot_accuracy(Oracle("reverse"), "reverse", 2, held, n=20) == 1.0
    assert few_shot_accuracy(Oracle("shift"), "reverse", 2, held, n=20) == 0.0  # shift never equals reverse
    with pytest.raises(ValueError, match="block_size"):
        few_shot_accuracy(Oracle("copy"), "copy", 10, held)
    # zero-shot proper: the description and the query, no demonstration
    assert few_shot_accuracy(Oracle("sort"), "sort", 0, held, n=20, described=True) == 1.0
    with pytest.raises(ValueError, match="block_size"):
        few_shot_accuracy(Oracle("copy"), "copy", 9, held, described=True)  # 5 + 90 + 5 > 96
    # 90 + 5 <= 96 without it: the prompt fits, and the generated characters slide the context
    assert few_shot_accuracy(Oracle("copy"), "copy", 9, held, n=5) == 1.0


def test_a_random_model_is_near_chance():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=96, n_layer=1, n_head=2, n_embd=16))
    _, held = split_words()
    assert few_shot_accuracy(model, "copy", 4, held, n=50) < 0.1  # chance is (1/V)^4


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
    model = GPT(GPTConfig(vocab_size=V, block_size=96, n_layer=1, n_head=2, n_embd=16))
    train, held = split_words()
    before = incontext.loss_by_demonstration(model, held, n_demos=3, batch_size=16)
    assert len(before) == 3 and all(abs(v - math.log(V)) < 0.3 for v in before)  # random model: ~uniform
    losses = incontext.pretrain(model, train, steps=30, batch_size=16, lr=3e-3, warmup_steps=5, progress=False)
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    # the output characters of a demonstration: positions whose targets are the 4 output letters
    x, y = training_batch(held, 1, 2, random.Random(0), described=0.0)
    L = demo_length()
    assert tokenizer().decode(y[0, L + 4 : L + 8].tolist()) == tokenizer().decode(x[0, L + 5 : L + 9].tolist())
    assert tokenizer().decode(x[0, L + 4 : L + 5].tolist()) == ">"
