"""Named runs and the command line: the presets, their data, and ``python -m gptcourse.run``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gptcourse import run
from gptcourse.model import GPT, GPTConfig


def test_presets_and_the_command_line(shakespeare, capsys, monkeypatch):
    with pytest.raises(ValueError, match="unknown preset"):
        run.preset("shakespeare-word", "cpu")
    model_kw, train_kw = run.preset("shakespeare-char", "gpu")  # nanoGPT's char config
    assert (
        model_kw["n_layer"],
        model_kw["n_head"],
        model_kw["n_embd"],
        model_kw["block_size"],
        train_kw["batch_size"],
    ) == (6, 6, 384, 256, 64)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert run.main(["--preset", "shakespeare-char", "--size", "smoke", "--sample-tokens", "20"]) == 0
    out = capsys.readouterr().out
    assert "device:" in out and "preset shakespeare-char | size smoke" in out and "tokens/s" in out


def test_prepare_data_splits_the_text_90_10_in_the_presets_tokens():
    text = "To be, or not to be: that is the question.\n" * 10
    train_ids, val_ids, tok = run.prepare_data("shakespeare-char", text)
    assert len(train_ids) == len(text) * 9 // 10 and len(train_ids) + len(val_ids) == len(text)
    assert tok.decode(train_ids.tolist() + val_ids.tolist()) == text


def test_the_loop_does_not_import_the_runs():
    """``train`` is below ``run``: importing the loop must not pull in the presets and the command line."""
    code = "import sys, gptcourse.train; print('gptcourse.run' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_checkpoint_path_names_the_preset_the_size_and_a_hash_of_the_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv(run.CHECKPOINT_ENV, str(tmp_path))
    smoke, cpu = run.checkpoint_path("shakespeare-char", "smoke"), run.checkpoint_path("shakespeare-char", "cpu")
    assert smoke.parent == tmp_path and smoke.name.startswith("shakespeare-char-smoke-") and smoke != cpu
    assert run.checkpoint_path("shakespeare-char", "smoke") == smoke  # stable
    original = run.preset

    def changed(name, size):
        model_kw, train_kw = original(name, size)
        return model_kw, {**train_kw, "lr": train_kw["lr"] / 2}

    monkeypatch.setattr(run, "preset", changed)
    assert run.checkpoint_path("shakespeare-char", "smoke") != smoke  # a changed recipe never loads the old model


def test_pretrained_trains_once_then_loads_the_same_model(shakespeare, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(run.CHECKPOINT_ENV, str(tmp_path))
    first = run.pretrained("shakespeare-char", "smoke", "cpu")
    assert first.trained and first.path.is_file() and "training preset" in capsys.readouterr().out
    assert (
        not first.model.training
        and len(first.history.train_loss) == run.preset("shakespeare-char", "smoke")[1]["max_steps"]
    )
    again = run.pretrained("shakespeare-char", "smoke", "cpu")
    assert not again.trained and again.path == first.path and again.history == first.history
    for (name, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert again.tokenizer.decode(again.tokenizer.encode("ROMEO:")) == "ROMEO:"
    assert list(tmp_path.iterdir()) == [first.path]  # no temporary file left behind


def test_pretrained_trains_again_when_the_checkpoint_no_longer_fits(shakespeare, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(run.CHECKPOINT_ENV, str(tmp_path))
    first = run.pretrained("shakespeare-char", "smoke", "cpu")
    state = torch.load(first.path, weights_only=False)
    state["model"]["renamed.weight"] = state["model"].pop("lm_head.weight")
    torch.save(state, first.path)
    capsys.readouterr()
    again = run.pretrained("shakespeare-char", "smoke", "cpu")
    assert again.trained and "does not fit the model" in capsys.readouterr().out
    assert "lm_head.weight" in torch.load(again.path, weights_only=False)["model"]


def test_load_or_train_trains_once_then_loads_the_same_weights(tmp_path):
    path = tmp_path / "m.pt"
    calls = []

    def make():
        torch.manual_seed(0)
        return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))

    first = make()

    def train_model():
        calls.append(1)
        with torch.no_grad():
            first.lm_head.weight.add_(1.0)
        return run.History(train_loss=[1.0])

    history, trained = run.load_or_train(path, first, train_model)
    assert trained and calls == [1] and path.is_file()
    second = make()
    history2, trained2 = run.load_or_train(path, second, train_model)
    assert not trained2 and calls == [1] and history2.train_loss == [1.0]
    torch.testing.assert_close(second.state_dict(), first.state_dict())
