"""mypy passes on the core modules (the files listed under ``[tool.mypy]`` in pyproject.toml).

A test rather than a step of ``make test`` of its own: under pytest-xdist it runs beside the
notebooks instead of before them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_passes_on_the_core_modules():
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
