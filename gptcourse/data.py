"""Corpora: download once with a checksum, cache, split, and sample training batches.

``load_text("tinyshakespeare")`` looks in this order:

1. ``$GPTCOURSE_DATA_DIR/<file>`` when that variable is set (no download is ever attempted then);
2. the cache, ``$XDG_CACHE_HOME/gptcourse`` (``~/.cache/gptcourse``), verified by sha256;
3. the canonical URL, downloaded to a temporary file, verified, then moved into the cache.

A cached file whose checksum is wrong (a broken download, an edit) is discarded and fetched again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

DATA_DIR_ENV = "GPTCOURSE_DATA_DIR"


@dataclass(frozen=True)
class Corpus:
    """A text corpus the course can fetch: where from, under which file name, and its sha256."""

    filename: str
    url: str
    sha256: str


CORPORA: dict[str, Corpus] = {
    "tinyshakespeare": Corpus(
        filename="tinyshakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
}


class DataUnavailableError(RuntimeError):
    """A corpus could not be found locally nor downloaded; the message says how to fix it."""


def cache_dir() -> Path:
    """Where downloads are cached: ``$XDG_CACHE_HOME/gptcourse`` or ``~/.cache/gptcourse``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "gptcourse"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _corpus(name: str) -> Corpus:
    try:
        return CORPORA[name]
    except KeyError:
        raise ValueError(f"unknown corpus {name!r}; known corpora: {', '.join(sorted(CORPORA))}") from None


def _download(corpus: Corpus, dest: Path) -> None:
    """Download to a temporary file beside ``dest``, check the sha256, then move it in atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    os.close(fd)
    try:
        try:
            urllib.request.urlretrieve(corpus.url, tmp)
        except (urllib.error.URLError, OSError) as err:
            raise DataUnavailableError(
                f"could not download {corpus.url} ({err}).\n"
                f"Offline? Download that file on a machine with internet and save it as\n"
                f"  {dest}\n"
                f"or put it in a folder of your choice as {corpus.filename} and set "
                f"{DATA_DIR_ENV} to that folder."
            ) from err
        got = sha256_of(Path(tmp))
        if got != corpus.sha256:
            raise DataUnavailableError(
                f"the download of {corpus.url} has sha256 {got}, expected {corpus.sha256}; "
                "the file was not saved. Try again, or download it by hand."
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def data_path(name: str) -> Path:
    """The verified local path of corpus ``name``, downloading it into the cache if needed."""
    corpus = _corpus(name)
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        path = Path(override) / corpus.filename
        if not path.is_file():
            raise DataUnavailableError(
                f"{DATA_DIR_ENV}={override} but {path} does not exist. Download {corpus.url} "
                f"and save it there as {corpus.filename}, or unset {DATA_DIR_ENV} to download "
                "into the cache automatically."
            )
        if sha256_of(path) != corpus.sha256:
            raise DataUnavailableError(
                f"{path} does not have the expected sha256 {corpus.sha256}; "
                f"replace it with a fresh download of {corpus.url}."
            )
        return path
    path = cache_dir() / corpus.filename
    if path.is_file() and sha256_of(path) == corpus.sha256:
        return path
    # Missing or corrupted: (re)download; a corrupted file is only replaced by a verified one.
    _download(corpus, path)
    return path


def load_text(name: str = "tinyshakespeare") -> str:
    """The text of corpus ``name`` (see the module docstring for where it comes from)."""
    return data_path(name).read_text(encoding="utf-8")


def train_val_split(data: torch.Tensor, train_fraction: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a 1-D tensor of token ids into its first ``train_fraction`` and the rest (no shuffling:
    held-out text must be text the model has never seen, not interleaved lines)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    n = int(train_fraction * len(data))
    return data[:n], data[n:]


def get_batch(
    data: torch.Tensor,
    block_size: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``batch_size`` random windows of ``block_size`` tokens from 1-D ``data``.

    Returns ``(x, y)``, both ``(batch_size, block_size)`` int64, where ``y`` is ``x`` shifted left
    by one: ``y[b, t]`` is the token that follows ``x[b, : t + 1]``.
    """
    if data.dim() != 1:
        raise ValueError(f"data must be a 1-D tensor of token ids, got shape {tuple(data.shape)}")
    if len(data) <= block_size:
        raise ValueError(f"data has {len(data)} tokens, need more than block_size={block_size}")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i : i + block_size] for i in starts]).long()
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in starts]).long()
    if torch.device(device).type == "cuda":
        # pinned memory lets the host-to-device copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
