"""Tokenizers: text <-> lists of integer ids.

* :class:`CharTokenizer`: one id per distinct character of a training text (Chapter 1, Chapter 3).
* :func:`gpt2_encoding`: GPT-2's 50,257-token byte-pair encoding, through tiktoken.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import tiktoken


class CharTokenizer:
    """A character-level tokenizer whose vocabulary is the sorted set of characters of ``text``."""

    def __init__(self, text: str):
        if not isinstance(text, str) or not text:
            raise ValueError("CharTokenizer needs a non-empty string to build its vocabulary from")
        self.chars: list[str] = sorted(set(text))
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """The id of every character of ``text``; an unknown character raises ``ValueError``."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        try:
            return [self.stoi[c] for c in text]
        except KeyError as err:
            c = err.args[0]
            pos = text.index(c)
            raise ValueError(
                f"character {c!r} (U+{ord(c):04X}) at position {pos} is not in this tokenizer's "
                f"vocabulary of {self.vocab_size} characters"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; an id outside ``[0, vocab_size)`` raises ``ValueError``."""
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is out of range for a vocabulary of {self.vocab_size}")
        return "".join(self.chars[i] for i in ids)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def gpt2_encoding(name: str = "gpt2") -> tiktoken.Encoding:
    """tiktoken's encoding ``name`` (``"gpt2"``: 50,257 tokens). Needs the network the first time,
    or ``TIKTOKEN_CACHE_DIR`` pointing at a folder that holds tiktoken's cache files."""
    return tiktoken.get_encoding(name)


def decode_tokens(encoding: tiktoken.Encoding, ids: Sequence[int]) -> list[str]:
    """Each id of ``ids`` as the text of its token (bytes shown with replacement if not UTF-8)."""
    return [encoding.decode_single_token_bytes(i).decode("utf-8", errors="replace") for i in ids]
