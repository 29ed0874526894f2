"""GPT-1 fine-tuning: the speaker task and its split, the input transformation, the head, L3."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptcourse.finetune import (
    TASK_BLOCK_SIZE,
    Example,
    GPTClassifier,
    SpeakerTask,
    TaskTokenizer,
    build_speaker_task,
    classifier_logits,
    collate,
    combined_loss,
    evaluate,
    finetune,
    finetune_step,
    hidden_and_logits,
    lm_targets,
    lr_scale,
    pretrained_speaker_lm,
    pretraining_text,
    speeches,
)
from gptcourse.model import GPT, GPTConfig
from gptcourse.tokenizers import CharTokenizer

TOY = """First Citizen:
Before we proceed any further, hear me speak.

ALL:
Speak, speak.

ANNE:
one
two
three

BOB:
uno
dos

ANNE:
four
five

ANNE:
six
seven

BOB:
tres
cuatro
cinco
"""


def tiny_classifier(tok: TaskTokenizer, n_classes: int = 2, block_size: int = 32) -> GPTClassifier:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)
    return GPTClassifier(GPT(cfg), n_classes)


def test_speeches_parse_speaker_and_lines():
    parsed = speeches(TOY)
    assert [s.speaker for s in parsed] == ["First Citizen", "ALL", "ANNE", "BOB", "ANNE", "ANNE", "BOB"]
    assert parsed[2].lines == ("one", "two", "three")


def test_speaker_task_labels_by_line_count_and_splits_by_speech():
    task = build_speaker_task(TOY, n_speakers=2, val_fraction=0.4)
    assert task.speakers == ["ANNE", "BOB"]  # 7 lines, then 5
    train_lines = {line for e in task.train for line in e.texts}
    val_lines = {line for e in task.val for line in e.texts}
    assert val_lines and train_lines and not train_lines & val_lines
    # training pairs overlap (1+2, 2+3), held-out pairs do not
    assert Example(("one", "two"), 0) in task.train and Example(("two", "three"), 0) in task.train
    assert task.counts("train") + task.counts("val") != [0, 0]


def test_pretraining_text_drops_exactly_the_heldout_speeches():
    task = build_speaker_task(TOY, n_speakers=2, val_fraction=0.4)
    pre = pretraining_text(TOY, task)
    for e in task.val:
        assert all(line not in pre for line in e.texts)
    for e in task.train:
        assert all(line in pre for line in e.texts)


def test_speaker_task_on_shakespeare(shakespeare):
    task = build_speaker_task(shakespeare, n_speakers=4)
    assert task.speakers[0] == "GLOUCESTER" and len(task.speakers) == 4
    val, train = task.counts("val"), task.counts("train")
    assert all(v > 0 for v in val) and sum(train) > 4 * sum(val)
    # the raw text names the speaker before each line: pre-training text must not hold held-out speeches
    pre = pretraining_text(shakespeare, task)
    held = [s for s in speeches(shakespeare) if s.block in task.heldout_blocks]
    assert held and all("\n".join(s.lines) not in pre for s in held[:50])


def test_speaker_task_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_speakers"):
        build_speaker_task(TOY, n_speakers=1)
    with pytest.raises(ValueError, match="fewer than"):
        build_speaker_task(TOY, n_speakers=10)
    with pytest.raises(ValueError, match="val_fraction"):
        build_speaker_task(TOY, val_fraction=1.5)


def test_transform_places_start_delimiter_extract():
    tok = TaskTokenizer(CharTokenizer("abc"))
    assert (tok.start, tok.delim, tok.extract, tok.vocab_size) == (3, 4, 5, 6)
    assert tok.transform(("ab", "c")) == [3, 0, 1, 4, 2, 5]
    assert tok.transform(("cab",)) == [3, 2, 0, 1, 5]
    assert tok.decode(tok.transform(("ab", "c"))) == "<s>ab<$>c<e>"
    cut = tok.transform(("aaaaaa", "bbbbbb"), max_len=9)  # room for 3 + 3 characters
    assert len(cut) == 9 and cut[-1] == tok.extract and cut.count(0) == 3 and cut.count(1) == 3
    with pytest.raises(ValueError):
        tok.transform(())


def test_collate_pads_right_and_points_at_extract():
    tok = TaskTokenizer(CharTokenizer("abc"))
    idx, pos, labels = collate([Example(("a", "b"), 1), Example(("abc", "cab"), 0)], tok, 32)
    assert idx.shape == (2, 9) and pos.tolist() == [4, 8] and labels.tolist() == [1, 0]
    assert (idx[torch.arange(2), pos] == tok.extract).all()
    targets = lm_targets(idx, pos)
    assert targets[0].tolist() == [0, 4, 1, 5, -1, -1, -1, -1, -1]


def test_hidden_and_logits_hooks_the_input_of_lm_head():
    tok = TaskTokenizer(CharTokenizer("abc"))
    model = tiny_classifier(tok).gpt
    idx = torch.randint(0, tok.vocab_size, (3, 7))
    hidden, logits = hidden_and_logits(model, idx)
    assert hidden.shape == (3, 7, 16)
    torch.testing.assert_close(logits, model(idx)[0])
    torch.testing.assert_close(hidden @ model.transformer.wte.weight.T, logits)
    assert not model.lm_head._forward_hooks  # the hook is removed


def test_classifier_logits_read_the_extract_position():
    hidden = torch.randn(4, 6, 8)
    pos = torch.tensor([0, 5, 2, 3])
    head = torch.nn.Linear(8, 3, bias=False)
    expected = torch.stack([head(hidden[b, p]) for b, p in enumerate(pos.tolist())])
    torch.testing.assert_close(classifier_logits(hidden, pos, head), expected)


def test_padding_does_not_change_a_rows_prediction():
    tok = TaskTokenizer(CharTokenizer("abc"))
    model = tiny_classifier(tok).eval()
    short, long = Example(("a", "b"), 0), Example(("abcabc", "cabcab"), 1)
    alone, _ = model(*collate([short], tok, 32)[:2])
    batched, _ = model(*collate([short, long], tok, 32)[:2])
    torch.testing.assert_close(alone[0], batched[0])


def test_combined_loss_matches_its_parts():
    tok = TaskTokenizer(CharTokenizer("abc"))
    model = tiny_classifier(tok)
    idx, pos, labels = collate([Example(("ab", "c"), 1), Example(("abc", "ca"), 0)], tok, 32)
    class_logits, lm_logits = model(idx, pos)
    targets = lm_targets(idx, pos)
    l3, l2, l1 = combined_loss(class_logits, labels, lm_logits, targets, 0.5)
    torch.testing.assert_close(l2, F.cross_entropy(class_logits, labels))
    torch.testing.assert_close(l1, model.gpt(idx, targets)[1])  # the model's own LM loss on the input
    torch.testing.assert_close(l3, l2 + 0.5 * l1)
    torch.testing.assert_close(combined_loss(class_logits, labels, lm_logits, targets, 0.0)[0], l2)
    with pytest.raises(ValueError, match="lam"):
        combined_loss(class_logits, labels, lm_logits, targets, -1.0)


def test_finetune_learns_a_separable_task():
    # class 0 lines are made of a's, class 1 of b's: a few steps must separate them
    tok = TaskTokenizer(CharTokenizer("ab"))
    examples = [Example(("a" * n, "a" * (n + 1)), 0) for n in range(1, 9)] + [
        Example(("b" * n, "b" * (n + 1)), 1) for n in range(1, 9)
    ]
    task = SpeakerTask(["a", "b"], examples, examples)
    model = tiny_classifier(tok)
    history = finetune(model, task, tok, lam=0.5, steps=40, batch_size=8, lr=3e-3, warmup_steps=5, progress=False)
    assert len(history.loss) == len(history.lm_loss) == 40
    assert history.task_loss[-1] < history.task_loss[0]
    assert history.val_accuracy == 1.0 and history.val_accuracy == evaluate(model, examples, tok)[0]


def test_lr_scale_warms_up_then_decays_to_zero():
    scales = [lr_scale(s, 10, 2) for s in range(10)]
    assert scales[:2] == [0.5, 1.0] and scales[2] == 1.0 and scales[-1] == 1 / 8
    assert all(a >= b for a, b in zip(scales[1:], scales[2:]))
    assert lr_scale(10, 10, 2) == 0.0  # one step past the last: nothing left


def test_finetune_step_is_one_update_on_l3():
    tok = TaskTokenizer(CharTokenizer("abc"))
    model = tiny_classifier(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idx, pos, labels = collate([Example(("ab", "c"), 1), Example(("abc", "ca"), 0)], tok, 32)
    class_logits, lm_logits = model(idx, pos)
    expected = [v.item() for v in combined_loss(class_logits, labels, lm_logits, lm_targets(idx, pos), 0.5)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = finetune_step(model, optimizer, idx, pos, labels, 0.5)
    assert losses == pytest.approx(expected)
    assert not torch.equal(before["head.weight"], model.head.weight)
    assert not torch.equal(before["gpt.transformer.wte.weight"], model.gpt.transformer.wte.weight)  # all of it trains


def test_finetune_records_a_learning_curve():
    tok = TaskTokenizer(CharTokenizer("ab"))
    examples = [Example(("a" * n, "a"), 0) for n in range(1, 9)] + [Example(("b" * n, "b"), 1) for n in range(1, 9)]
    task = SpeakerTask(["a", "b"], examples, examples)
    history = finetune(
        tiny_classifier(tok), task, tok, steps=7, batch_size=4, warmup_steps=1, progress=False, eval_every=3
    )
    assert history.eval_steps == [3, 6, 7]  # every 3 steps, and the last
    assert len(history.eval_accuracy) == len(history.eval_task_loss) == 3
    assert history.val_accuracy == history.eval_accuracy[-1]
    with pytest.raises(ValueError, match="steps"):
        finetune(tiny_classifier(tok), task, tok, steps=0, progress=False)


def test_pretrained_speaker_lm_trains_once_without_the_heldout_speeches(shakespeare, tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCOURSE_CHECKPOINT_DIR", str(tmp_path))
    task = build_speaker_task(shakespeare, n_speakers=4)
    tok = TaskTokenizer(CharTokenizer(shakespeare))
    first = pretrained_speaker_lm(shakespeare, task, tok, "smoke")
    assert first.trained and first.path.is_file() and first.path.parent == tmp_path
    assert first.path.name.startswith("speaker-lm-smoke-")
    config = first.model.config
    assert (config.vocab_size, config.block_size) == (tok.vocab_size, TASK_BLOCK_SIZE)
    # it trained on the pre-training text (90/10), which holds no held-out speech
    seen = tok.base.decode(first.train_ids.tolist()) + tok.base.decode(first.val_ids.tolist())
    assert seen == pretraining_text(shakespeare, task)
    assert first.history.eval_val_loss[-1] < first.history.eval_val_loss[0]
    again = pretrained_speaker_lm(shakespeare, task, tok, "smoke")
    assert not again.trained and again.path == first.path
    for k, v in first.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[k], v)
    # another pre-training text is another model
    other = build_speaker_task(shakespeare, n_speakers=3)
    assert pretrained_speaker_lm(shakespeare, other, tok, "smoke").path != first.path


def test_lab13_specs_accept_the_package_and_catch_common_mistakes():
    from gptcourse.grading import GradingError, check

    check("lab13.classifier_logits", classifier_logits, seed=0)
    check("lab13.combined_loss", combined_loss, seed=0)
    with pytest.raises(GradingError, match="LAST position"):
        check("lab13.classifier_logits", lambda hidden, pos, head: head(hidden[:, -1]), seed=0)
    with pytest.raises(GradingError, match="ignore_index"):
        check(
            "lab13.combined_loss",
            lambda c, y, lm, t, lam: (
                F.cross_entropy(c, y) + lam * F.cross_entropy(lm.flatten(0, 1), t.flatten().clamp(min=0)),
                F.cross_entropy(c, y),
                F.cross_entropy(lm.flatten(0, 1), t.flatten().clamp(min=0)),
            ),
            seed=0,
        )
    with pytest.raises(NotImplementedError):
        check("lab13.combined_loss", lambda *args: (_ for _ in ()).throw(NotImplementedError()), seed=0)
