"""Outcome grading: held-out windows keep their targets back, only the last position is scored, and
the learner's checkpoint is loaded with weights_only=True by the learner's own builder."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gptcourse.grading import outcome
from gptcourse.model import GPT, GPTConfig

V = 11


def build(config: dict) -> GPT:
    return GPT(GPTConfig(**config))


def tiny_config() -> dict:
    return dict(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16)


def test_windows_keep_every_target_out_of_every_input():
    ids = torch.arange(100)  # each id is its own position
    inputs, targets = outcome.heldout_windows(ids, context=8)
    assert inputs.shape == (11, 8) and targets.tolist() == [9 * i + 8 for i in range(11)]
    assert not set(targets.tolist()) & set(inputs.flatten().tolist())
    assert outcome.heldout_windows(ids, 8, max_windows=3)[0].shape == (3, 8)
    with pytest.raises(ValueError, match="shorter than one window"):
        outcome.heldout_windows(ids[:5], 8)


def test_the_loss_is_the_cross_entropy_of_whatever_numbers_come_back():
    targets = torch.tensor([1, 2, 3, 0])
    loss, stderr = outcome.heldout_loss(torch.zeros(4, V).tolist(), targets)
    assert loss == pytest.approx(math.log(V)) and stderr == pytest.approx(0.0)
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.nn.functional.cross_entropy(logits, targets).item()
    assert outcome.heldout_loss(logits + 100.0, targets)[0] == pytest.approx(expected)  # normalised here
    with pytest.raises(ValueError, match="shape"):
        outcome.heldout_loss(torch.zeros(3, V), targets)
    with pytest.raises(ValueError, match="NaN"):
        outcome.heldout_loss(torch.full((4, V), float("nan")), targets)
    with pytest.raises(ValueError, match="cover"):
        outcome.heldout_loss(torch.zeros(4, 2), targets)


def test_a_model_that_peeks_ahead_gains_nothing_at_the_last_position():
    class Peeker(torch.nn.Module):
        """Predicts position t's next token by reading it at t + 1: perfect except at the end."""

        def forward(self, x):
            logits = torch.zeros(*x.shape, V)
            logits[:, :-1] = 50.0 * torch.nn.functional.one_hot(x[:, 1:], V)
            return logits

    ids = torch.randint(0, V, (2000,), generator=torch.Generator().manual_seed(1))
    inputs, targets = outcome.heldout_windows(ids, context=16)
    every_position = torch.nn.functional.cross_entropy(
        Peeker()(inputs)[:, :-1].reshape(-1, V), inputs[:, 1:].reshape(-1)
    )
    assert every_position < 1e-6  # scored at every position, peeking looks perfect
    loss, _ = outcome.heldout_loss(outcome.last_position_logits(Peeker(), inputs), targets)
    assert loss == pytest.approx(math.log(V))  # at the last position it knows nothing


def test_last_position_logits_crop_to_the_block_and_match_the_forward():
    torch.manual_seed(0)
    model = build(tiny_config()).eval()
    inputs = torch.randint(0, V, (5, 40))
    got = outcome.last_position_logits(model, inputs, batch_size=2)
    torch.testing.assert_close(got, model(inputs[:, -16:])[0][:, -1])


def test_a_submission_loads_with_weights_only_through_the_learners_builder(tmp_path):
    torch.manual_seed(0)
    model = build(tiny_config())
    path = tmp_path / "capstone.pt"
    torch.save({"config": tiny_config(), "model": model.state_dict()}, path)
    loaded = outcome.load_submission(path, build)
    assert not loaded.training
    x = torch.randint(0, V, (2, 16))
    torch.testing.assert_close(loaded(x)[0], model.eval()(x)[0])
    torch.save({"config": tiny_config(), "model": model}, path)  # a pickled module could run code on load
    with pytest.raises(Exception, match="[Ww]eights only"):
        outcome.load_submission(path, build)
    torch.save({"model": model.state_dict()}, path)
    with pytest.raises(ValueError, match="'config'"):
        outcome.load_submission(path, build)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        outcome.load_submission(tmp_path / "missing.pt", build)


def test_targets_award_all_or_nothing():
    targets = (outcome.Target("beat the 5-gram", 1.77, 10), outcome.Target("T4", 1.55, 5))
    assert [p for _, p in outcome.award(1.60, targets)] == [10, 0]
    assert [p for _, p in outcome.award(1.50, targets)] == [10, 5]
    assert [p for _, p in outcome.award(1.80, targets)] == [0, 0]


def test_unknown_held_out_characters_are_a_clear_error():
    assert outcome.encode_heldout("abca", "abc").tolist() == [0, 1, 2, 0]
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        outcome.encode_heldout("abcz", "abc")


def test_the_kernel_side_reports_logits_or_the_learners_error(tmp_path, monkeypatch):
    import IPython
    import IPython.display

    namespace, shown = {}, []
    monkeypatch.setattr(IPython, "get_ipython", lambda: type("Shell", (), {"user_ns": namespace})())
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw: shown.append(obj[outcome.MIME]))
    torch.manual_seed(0)
    torch.save({"config": tiny_config(), "model": build(tiny_config()).state_dict()}, tmp_path / "c.pt")
    inputs = torch.randint(0, V, (3, 8))
    torch.save(inputs, tmp_path / "inputs.pt")
    outcome.collect_outcome(str(tmp_path / "inputs.pt"), str(tmp_path / "c.pt"), "build_model", nonce=7)
    assert shown[-1] == {"nonce": 7, "error": "NameError: build_model is not defined (run the cell that defines it)"}
    namespace["build_model"] = build
    outcome.collect_outcome(str(tmp_path / "inputs.pt"), str(tmp_path / "c.pt"), "build_model", nonce=7)
    assert shown[-1]["nonce"] == 7 and len(shown[-1]["logits"]) == 3 and len(shown[-1]["logits"][0]) == V


def _capstone(tmp_path, monkeypatch, targets):
    """A one-cell capstone lab (lab99) whose model is graded by its held-out loss, its solution
    notebook, and a student's copy: its model cannot be built if the grader ran the training cell."""
    import nbformat

    from gptcourse import grade, labs
    from gptcourse.grading import harness

    task = outcome.Outcome(targets=targets, context=32, max_windows=300)
    monkeypatch.setattr(harness, "lab_specs", lambda lab: [])
    monkeypatch.setattr(harness, "lab_outcome", lambda lab: task)
    build = (
        "from gptcourse.learner import load\nfrom gptcourse.model import GPT, GPTConfig\n\n"
        "def build_model(config):\n"
        "    assert load('gpt').MARK == 'mine', 'the checkpoint did not bring my module'\n"
        "    assert 'TRAINED_HERE' not in globals(), 'the grader ran my training cell'\n"
        "    return GPT(GPTConfig(**config))\n"
    )
    train_cell = nbformat.v4.new_code_cell("TRAINED_HERE = True  # the grader must skip this cell")
    train_cell.metadata["tags"] = [labs.TRAIN_TAG]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(build), train_cell])
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    nbformat.write(nb, solutions / "lab99_capstone.ipynb")
    nbformat.write(nb, tmp_path / "alice_lab99.ipynb")
    return grade, solutions, tmp_path / "alice_lab99.ipynb"


def _trained_checkpoint(path, steps: int) -> None:
    """A tiny GPT trained ``steps`` steps on Tiny Shakespeare's training split, saved with a module."""
    from gptcourse.data import get_batch, load_text
    from gptcourse.tokenizers import CharTokenizer

    text = load_text()
    tok = CharTokenizer(text)
    data = torch.tensor(tok.encode(text[: len(text) * 9 // 10]))
    config = dict(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)
    torch.manual_seed(0)
    model = build(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x, y = get_batch(data, 32, 16, "cpu")
        optimizer.zero_grad()
        model(x, y)[1].backward()
        optimizer.step()
    torch.save({"config": config, "model": model.state_dict(), "code": {"gpt.py": "MARK = 'mine'\n"}}, path)


def test_the_grader_scores_the_submitted_model_on_held_out_text_it_keeps(tmp_path, monkeypatch):
    from gptcourse.data import load_text

    uniform = math.log(65)
    targets = (outcome.Target("better than uniform", uniform - 0.5, 3), outcome.Target("unreachable", 0.5, 2))
    grade, solutions, student = _capstone(tmp_path, monkeypatch, targets)
    heldout = tmp_path / "heldout.txt"
    heldout.write_text(load_text()[-12000:])  # the validation split's end: practice text, not secret
    _trained_checkpoint(student.with_suffix(".pt"), steps=150)
    log: list[str] = []
    rows = grade.grade([student], solutions, timeout=120, log=log.append, heldout=heldout)
    by = {r.exercise: r for r in rows}
    assert set(by) == {f"lab99.heldout<={uniform - 0.5:g}", "lab99.heldout<=0.5"}, (rows, log)
    better, unreachable = by[f"lab99.heldout<={uniform - 0.5:g}"], by["lab99.heldout<=0.5"]
    assert (better.status, better.points, unreachable.status, unreachable.points) == ("passed", 3, "failed", 0), rows
    assert "held-out loss" in better.message and "on 300 windows" in better.message


def test_an_outcome_lab_without_its_checkpoint_or_held_out_text_earns_nothing(tmp_path, monkeypatch):
    grade, solutions, student = _capstone(tmp_path, monkeypatch, (outcome.Target("any", 100.0, 1),))
    rows = grade.grade([student], solutions, timeout=60, log=lambda line: None)
    assert [(r.status, r.points) for r in rows] == [("not run", 0)] and "--heldout" in rows[0].message
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("To be, or not to be: that is the question. " * 20)
    rows = grade.grade([student], solutions, timeout=60, log=lambda line: None, heldout=heldout)
    assert [(r.status, r.points) for r in rows] == [("no result", 0)] and "alice_lab99.pt" in rows[0].message


def test_the_capstone_solution_is_graded_by_its_model_and_its_two_exercises(tmp_path, monkeypatch):
    """The real capstone lab end to end at the smoke size: its two exercises are judged as usual, and its
    submitted model is scored against the lab's targets plus a smoke-size target a tiny model reaches."""
    import shutil

    from gptcourse import grade, labs
    from gptcourse.data import load_text
    from gptcourse.grading import lab16

    smoke = outcome.Target("smoke: better than uniform", math.log(65) - 0.5, 1)
    monkeypatch.setattr(lab16, "OUTCOME", dataclasses.replace(lab16.OUTCOME, targets=(*lab16.OUTCOME.targets, smoke)))
    solutions = tmp_path / "solutions"  # the capstone's solution alone: the grader reads every one it is given
    solutions.mkdir()
    shutil.copyfile(labs.ROOT / "solutions" / "lab16_capstone.ipynb", solutions / "lab16_capstone.ipynb")
    student = tmp_path / "alice_lab16.ipynb"
    shutil.copyfile(solutions / "lab16_capstone.ipynb", student)
    _trained_checkpoint(student.with_suffix(".pt"), steps=150)
    heldout = tmp_path / "heldout.txt"
    heldout.write_text(load_text()[-40000:])  # the validation split's end: practice text, not secret
    rows = grade.grade([student], solutions, timeout=300, log=lambda line: None, heldout=heldout)
    by = {r.exercise: r for r in rows}
    assert (by["lab16.build_model"].status, by["lab16.plan_steps"].status) == ("passed", "passed"), rows
    for bound in (1.77, 1.55):  # 150 steps of a tiny model reach neither target
        row = by[f"lab16.heldout<={bound:g}"]
        assert (row.status, row.points) == ("failed", 0) and "held-out loss" in row.message, row
    reached = by[f"lab16.heldout<={smoke.max_loss:g}"]
    assert (reached.status, reached.points) == ("passed", 1), reached
