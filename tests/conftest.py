"""Shared fixtures. Offline assets (Tiny Shakespeare, tiktoken's GPT-2 files) and optional packages
(``transformers``) are skipped with a clear message when they cannot be had, except under
GPTCOURSE_REQUIRE_DATA=1 (CI), where a test that cannot get them fails: a skipped test proves nothing."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
# the labs save the learner's modules in $GPTCOURSE_WORK (gptcourse.learner): in tests, a fresh folder
# per worker (inherited by the notebooks' kernels), never the developer's own work folder
os.environ["GPTCOURSE_WORK"] = tempfile.mkdtemp(
    prefix=f"gptcourse-work-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-"
)


def _unavailable(
    what: str, err: Exception, fix: str = "set GPTCOURSE_DATA_DIR / TIKTOKEN_CACHE_DIR or go online"
) -> None:
    message = f"{what} is not available ({err})"
    if os.environ.get("GPTCOURSE_REQUIRE_DATA") == "1":
        pytest.fail(message + "; GPTCOURSE_REQUIRE_DATA=1 forbids skipping", pytrace=False)
    pytest.skip(f"{message}; {fix}")


@pytest.fixture(scope="session")
def transformers():
    """Hugging Face ``transformers`` (a test extra): a fixture, not a module-level ``importorskip``, so
    that its absence skips only the tests that compare with it, and fails them under CI."""
    try:
        import transformers
    except ImportError as err:
        _unavailable("the transformers package", err, fix='pip install -e ".[test]"')
    return transformers


@pytest.fixture(scope="session")
def shakespeare() -> str:
    from gptcourse.data import DataUnavailableError, load_text

    try:
        return load_text("tinyshakespeare")
    except DataUnavailableError as err:
        _unavailable("Tiny Shakespeare", err)


@pytest.fixture(scope="session")
def gpt2_enc():
    from gptcourse.tokenizers import gpt2_encoding

    try:
        return gpt2_encoding("gpt2")
    except Exception as err:  # tiktoken raises requests/OSError variants when offline
        _unavailable("tiktoken's gpt2 encoding", err)
