"""Named runs and the command line: the presets, their data, and ``python -m gptcourse.run``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gptcourse import run


def test_presets_and_the_command_line(shakespeare, capsys, monkeypatch):
    with pytest.raises(ValueError, match="unknown preset"):
        run.preset("shakespeare-word", "cpu")
    model_kw, train_kw = run.preset("shakespeare-char", "gpu")  # nanoGPT's char config
    assert (model_kw["n_layer"], model_kw["n_head"], model_kw["n_embd"], model_kw["block_size"],
            train_kw["batch_size"]) == (6, 6, 384, 256, 64)
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
