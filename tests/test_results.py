"""Committed experiment results: read from the checkout, else downloaded at the course's release
ref, else a clear error (never an empty result)."""

from __future__ import annotations

import io
import re
import urllib.error
from pathlib import Path

import nbformat
import pytest
import yaml

from gptcourse import results
from gptcourse.labs import ROOT, release_ref


def test_a_chapter_in_a_subfolder_finds_the_repositorys_file(tmp_path):
    (tmp_path / "experiments" / "results").mkdir(parents=True)
    (tmp_path / "experiments" / "results" / "sweep.txt").write_text("RUN 1\n")
    (tmp_path / "chapters").mkdir()
    assert results.read_results("sweep.txt", start=tmp_path / "chapters") == "RUN 1\n"
    assert results.local_results("other.txt", start=tmp_path / "chapters") is None


def test_the_installed_package_names_the_repository_of_config_yml():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert results.repository_url() == config["repository"]["url"].rstrip("/")


def test_outside_a_checkout_the_file_is_downloaded_at_the_release_ref(tmp_path, monkeypatch):
    asked = []

    def urlopen(url, timeout):
        asked.append(url)
        return io.BytesIO(b"RUN 2\n")

    monkeypatch.setattr(results.urllib.request, "urlopen", urlopen)
    assert results.read_results("ch13_moe_vs_dense.txt", start=tmp_path) == "RUN 2\n"
    assert asked == [
        f"{results.repository_url().replace('https://github.com/', 'https://raw.githubusercontent.com/')}/"
        f"{release_ref()}/experiments/results/ch13_moe_vs_dense.txt"
    ]


def test_offline_and_outside_a_checkout_is_an_error_naming_both_places(tmp_path, monkeypatch):
    def urlopen(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(results.urllib.request, "urlopen", urlopen)
    with pytest.raises(
        FileNotFoundError, match=r"experiments/results/x\.txt is not in this folder.*raw\.github.*no network"
    ):
        results.read_results("x.txt", start=tmp_path)


def test_a_development_version_outside_a_checkout_says_to_use_one(tmp_path, monkeypatch):
    def no_config():
        raise FileNotFoundError(Path("_config.yml"))

    monkeypatch.setattr(results, "release_ref", no_config)
    with pytest.raises(FileNotFoundError, match="development version.*checkout"):
        results.read_results("x.txt", start=tmp_path)


def test_every_results_file_a_chapter_reads_is_committed():
    """The files the chapters read (found in their sources), each in the repository."""
    names = set()
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
        names |= set(re.findall(r'read_results\(\s*"([^"]+)"', code))
        names |= set(re.findall(r'(?:RESULTS =|load_sweep\()\s*"([^"]+\.txt)"', code))
    assert len(names) >= 7, names  # Chapters 3 and 13-17 (Chapter 14 reads two)
    for name in names:
        assert results.local_results(name, start=ROOT / "chapters") is not None, name
