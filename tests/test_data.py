"""gptcourse.data: checksummed download and cache, the data-dir override, clear errors, batches."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

import pytest
import torch

from gptcourse import data

TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"


@pytest.fixture
def fake_corpus(tmp_path, monkeypatch):
    """A registered corpus served from a local file:// URL, with the cache in tmp_path."""
    source = tmp_path / "source.txt"
    source.write_bytes(TEXT)
    corpus = data.Corpus("tiny.txt", source.as_uri(), hashlib.sha256(TEXT).hexdigest())
    monkeypatch.setitem(data.CORPORA, "tiny", corpus)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    return corpus


def test_downloads_verifies_and_caches(fake_corpus, tmp_path):
    assert data.load_text("tiny") == TEXT.decode()
    cached = tmp_path / "cache" / "gptcourse" / "tiny.txt"
    assert cached.read_bytes() == TEXT
    Path(fake_corpus.url.removeprefix("file://")).unlink()  # the cache is used from now on
    assert data.load_text("tiny") == TEXT.decode()


def test_corrupted_cache_is_replaced(fake_corpus, tmp_path):
    cached = tmp_path / "cache" / "gptcourse" / "tiny.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated dow")
    assert data.load_text("tiny") == TEXT.decode()
    assert cached.read_bytes() == TEXT


def test_bad_checksum_download_is_not_saved(fake_corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(data.CORPORA, "tiny", data.Corpus("tiny.txt", fake_corpus.url, "0" * 64))
    with pytest.raises(data.DataUnavailableError, match="sha256"):
        data.load_text("tiny")
    assert list((tmp_path / "cache" / "gptcourse").iterdir()) == []


def test_offline_error_says_what_to_download_and_where(fake_corpus, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    with pytest.raises(data.DataUnavailableError) as err:
        data.load_text("tiny")
    message = str(err.value)
    assert fake_corpus.url in message and str(tmp_path / "cache" / "gptcourse" / "tiny.txt") in message
    assert data.DATA_DIR_ENV in message


def test_data_dir_override_never_downloads(fake_corpus, tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(folder))
    with pytest.raises(data.DataUnavailableError, match="does not exist"):
        data.load_text("tiny")
    (folder / "tiny.txt").write_bytes(b"edited")
    with pytest.raises(data.DataUnavailableError, match="sha256"):
        data.load_text("tiny")
    (folder / "tiny.txt").write_bytes(TEXT)
    assert data.load_text("tiny") == TEXT.decode()


def test_unknown_corpus():
    with pytest.raises(ValueError, match="unknown corpus 'nope'.*tinyshakespeare"):
        data.load_text("nope")


def test_tinyshakespeare(shakespeare):
    assert len(shakespeare) == 1_115_394 and shakespeare.startswith("First Citizen:")


def test_split_keeps_order():
    train, val = data.train_val_split(torch.arange(10), 0.9)
    assert train.tolist() == list(range(9)) and val.tolist() == [9]
    with pytest.raises(ValueError):
        data.train_val_split(torch.arange(10), 1.0)


def test_get_batch_targets_are_inputs_shifted_by_one():
    tokens = torch.arange(100)
    x, y = data.get_batch(tokens, block_size=8, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.long
    assert torch.equal(y, x + 1)  # consecutive ids: the next token is always id + 1
    again, _ = data.get_batch(tokens, 8, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_get_batch_rejects_short_or_2d_data():
    with pytest.raises(ValueError, match="block_size"):
        data.get_batch(torch.arange(8), block_size=8, batch_size=1)
    with pytest.raises(ValueError, match="1-D"):
        data.get_batch(torch.zeros(2, 50, dtype=torch.long), block_size=8, batch_size=1)
