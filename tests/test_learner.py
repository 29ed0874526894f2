"""The learner's modules: saved in the work folder, imported afresh, and replaced by the package's
version (saying so) when absent, unfinished or broken."""

from __future__ import annotations

import sys

import pytest

from gptcourse import learner


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.setenv(learner.WORK_ENV, str(tmp_path))
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield learner.learner_dir(quiet=True)
    learner._forget_learner_modules()


def fallback():
    """The package's version, in these tests."""


def test_the_work_folder_is_the_environment_variable_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv(learner.WORK_ENV, str(tmp_path / "w"))
    assert learner.work_dir() == tmp_path / "w"
    monkeypatch.delenv(learner.WORK_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert learner.work_dir() == tmp_path / "gptcourse-work"


def test_learner_dir_creates_the_folder_and_says_where(work, capsys):
    assert learner.learner_dir() == work and work.is_dir()
    assert str(work) in capsys.readouterr().out


def test_load_imports_the_newest_version_of_the_file(work):
    (work / "piece.py").write_text("VALUE = 1\n")
    assert learner.load("piece").VALUE == 1
    (work / "piece.py").write_text("VALUE = 2\n")  # the %%writefile cell ran again
    assert learner.load("piece").VALUE == 2


def test_load_names_the_missing_file(work):
    with pytest.raises(FileNotFoundError, match="writefile"):
        learner.load("absent")


def test_use_prefers_the_learners_finished_module(work, capsys):
    (work / "piece.py").write_text("def f():\n    return 'mine'\n")
    assert learner.use("piece", "f", fallback)() == "mine"
    assert "using yours" in capsys.readouterr().out


def test_learner_modules_use_each_other(work):
    (work / "low.py").write_text("def f():\n    return 'low'\n")
    (work / "high.py").write_text(
        "from gptcourse.learner import use\n\ndef g():\n    return use('low', 'f', None, quiet=True)() + '+high'\n"
    )
    assert learner.load("high").g() == "low+high"


@pytest.mark.parametrize(
    "source, why",
    [
        (None, "not found"),
        ("def f():\n    raise NotImplementedError()\n", "not finished"),
        ("def f(:\n", "does not import: SyntaxError"),
        ("def g():\n    return 1\n", "does not import: AttributeError"),
    ],
    ids=["absent", "unfinished", "broken", "no such name"],
)
def test_use_falls_back_to_the_package_and_says_why(work, capsys, source, why):
    if source is not None:
        (work / "piece.py").write_text(source)
    assert learner.use("piece", "f", fallback, lab="Lab 99") is fallback
    out = capsys.readouterr().out
    assert "using the package's" in out and why in out and "test_learner.fallback" in out
    if source is None:
        assert "Lab 99 writes it" in out
