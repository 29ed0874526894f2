"""Every notebook opens in Colab at its own path, installs the course from the same repository, and
agrees with the book's Colab launch button; all three come from ``repository`` in ``_config.yml``.

(The built site's own launch buttons are compared with the badges in tests/test_site.py.)
"""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from gptcourse import __version__, hardware, labs

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
NOTEBOOKS = sorted(p for folder in labs.NOTEBOOK_DIRS for p in (ROOT / folder).glob("*.ipynb"))
BADGE = re.compile(
    r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
    r"\((?P<url>https://colab\.research\.google\.com/github/(?P<repo>[^/]+/[^/]+)/blob/(?P<branch>[^/]+)/(?P<path>[^)]+))\)"
)
INSTALL = re.compile(r'f"gptcourse @ git\+https://github\.com/(?P<repo>[^/@"]+/[^/@"]+)@\{REF\}"')
REF = re.compile(r'^REF = "(?P<ref>[^"]+)"', re.M)


def _repository() -> tuple[str, str]:
    url = CONFIG["repository"]["url"].rstrip("/")
    assert url.startswith("https://github.com/"), (
        f"repository.url {url!r} is not a GitHub URL (Colab opens GitHub paths)"
    )
    return url.removeprefix("https://github.com/"), CONFIG["repository"].get("branch", "main")


def launch_button_url(relpath: str) -> str:
    """The Colab address the book's launch button gives a page (as sphinx-book-theme builds it)."""
    repo, branch = _repository()
    book = (CONFIG["repository"].get("path_to_book") or "").strip("/")
    colab = CONFIG["launch_buttons"]["colab_url"].rstrip("/")
    return f"{colab}/github/{repo}/blob/{branch}/{book + '/' if book else ''}{relpath}"


def _tagged(nb: nbformat.NotebookNode, tag: str) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]


def test_config_has_one_repository_and_a_colab_launch_button():
    repo, branch = _repository()
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", repo) and branch
    assert CONFIG["launch_buttons"]["colab_url"].rstrip("/") == "https://colab.research.google.com"
    # the book is the repository's root, so a page's path is the notebook's path in the repository
    assert not (CONFIG["repository"].get("path_to_book") or "").strip("/")


def test_there_are_notebooks_to_check():
    assert NOTEBOOKS, "no notebooks in chapters/, labs/ or solutions/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.relative_to(ROOT).as_posix() for p in NOTEBOOKS])
def test_badge_install_cell_and_launch_button_agree(path):
    rel = path.relative_to(ROOT).as_posix()
    repo, branch = _repository()
    nb = nbformat.read(path, as_version=4)
    badges, installs, setups, intros = (_tagged(nb, tag) for tag in labs.HEADER_TAGS)
    assert len(badges) == 1 and nb.cells[0] is badges[0], f"{rel}: the first cell must be the one Colab badge"
    assert len(installs) == 1 and installs[0].cell_type == "code", f"{rel}: needs exactly one install cell"
    assert len(setups) == 1 and setups[0].cell_type == "code", f"{rel}: needs exactly one setup cell"
    where = nb.cells.index(installs[0])
    if rel.startswith(("labs/", "solutions/")):
        # a lab says how long it takes and how it is checked before anything runs
        assert len(intros) == 1 and nb.cells[where - 1] is intros[0], f"{rel}: the lab intro must precede the install"
    else:
        assert not intros, f"{rel}: only labs open with the lab intro"
    assert where <= 2 + len(intros), f"{rel}: the install cell must come right after the title"
    assert nb.cells[where + 1] is setups[0], f"{rel}: the setup cell must follow the install cell"

    badge = BADGE.search(badges[0].source)
    assert badge, f"{rel}: the badge cell has no Colab badge link"
    assert (badge["repo"], badge["branch"], badge["path"]) == (repo, branch, rel)
    assert (ROOT / badge["path"]).is_file()
    assert badge["url"] == launch_button_url(rel)

    install_cell = installs[0]
    install = INSTALL.search(install_cell.source)
    assert install, f"{rel}: the install cell does not pip-install the course package from git"
    assert install["repo"] == repo
    ref = REF.search(install_cell.source)
    # a release installs its own tag, a development version the branch (an instructor pins a semester)
    assert ref and ref["ref"] == labs.release_ref(), f"{rel}: the install cell must name the course release"
    assert 'if "google.colab" in sys.modules:' in install_cell.source, f"{rel}: install only when running in Colab"
    pip_lines = [line for line in install_cell.source.splitlines() if "pip" in line]
    assert not any(re.search(r"\btorch\b|--upgrade|\s-U\b|--force", line) for line in pip_lines), (
        f"{rel}: the install must leave Colab's torch alone"
    )
    # the website shows the lesson, not the install; the device line of the setup cell stays visible
    assert labs.BOOK_REMOVE_TAG in install_cell.metadata["tags"], f"{rel}: the install cell must be off the page"
    assert not {"remove-cell", "remove-input", "remove-output", "hide-cell"} & set(setups[0].metadata["tags"])
    assert setups[0].source == "from gptcourse.hardware import setup\ndevice, size = setup()"
    assert not install_cell.outputs, f"{rel}: the install cell prints nothing outside Colab"


def test_the_package_keeps_colabs_torch():
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_spec = re.search(r'"torch([^"]*)"', pyproject)
    assert torch_spec and torch_spec.group(1).startswith(">="), "torch must be a lower bound only"
    assert "<" not in torch_spec.group(1) and "==" not in torch_spec.group(1)


def test_setup_uses_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.delenv(hardware.SIZE_ENV, raising=False)
    monkeypatch.delenv(hardware.DEVICE_ENV, raising=False)  # the hardware decides, not a forced device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.get_device() == "cuda" and hardware.get_size() == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)  # an Apple laptop
    assert hardware.get_device() == "mps" and hardware.get_size() == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert hardware.get_device() == "cpu" and hardware.get_size() == "cpu"


def test_colab_install_cell_runs_pip_only_in_colab(monkeypatch):
    """Run the generator's install cell, outside Colab and then with a fake ``google.colab``."""
    install = labs.header_cells("labs/lab01_ngram.ipynb")[1].source
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, check: calls.append(args))
    exec(install, {})
    assert calls == []  # not in Colab: nothing installed
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(install, {})
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "pip", "install"] and calls[0][-1] == labs.install_spec()
    assert calls[0][-1].endswith(f"@v{__version__}") or ".dev" in __version__


def test_a_release_installs_its_tag_and_a_development_version_the_branch():
    assert labs.release_ref("0.2.0") == "v0.2.0"
    assert labs.release_ref("0.3.0.dev0") == labs.repository()[1] == "main"
    assert labs.install_spec(ref="main").endswith("@main")
