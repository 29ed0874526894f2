"""Tokenizers: text <-> lists of integer ids.

* :class:`CharTokenizer`: one id per distinct character of a training text (Chapter 1, Chapter 3).
* :class:`BPETokenizer`: byte-level byte-pair encoding (Chapter 2, Lab 2): ``train`` on a text,
  ``encode``/``decode``, and ``from_tiktoken("gpt2")``, GPT-2's merges recovered from tiktoken's
  ranks and applied by this module's own Python merge loop (same ids as tiktoken, far slower).
* :func:`gpt2_encoding`: GPT-2's 50,257-token byte-pair encoding, through tiktoken.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet

import regex
import tiktoken
from tqdm.auto import tqdm


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


# --------------------------------------------------------------------------------------------
# Byte-pair encoding (Chapter 2, Lab 2), in the style of Karpathy's minbpe.
# --------------------------------------------------------------------------------------------

# GPT-2's pre-split: contractions, runs of letters, of digits, of other symbols (each with at most
# one leading space), and whitespace. Merges never cross these chunks, so " the" and "the" are
# learned once each and a merge never glues a word to the punctuation after it. The string is
# tiktoken's spelling of GPT-2's pattern (possessive quantifiers, same splits), so the chunks
# match tiktoken's exactly.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def get_stats(
    ids: Sequence[int], counts: dict[tuple[int, int], int] | None = None, weight: int = 1
) -> dict[tuple[int, int], int]:
    """How often each adjacent pair occurs in ``ids`` (added, ``weight`` times, into ``counts``)."""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: Sequence[int], pair: tuple[int, int], idx: int) -> list[int]:
    """``ids`` with every occurrence of ``pair`` (left to right, non-overlapping) replaced by ``idx``."""
    out, i, n = [], 0, len(ids)
    while i < n:
        if i < n - 1 and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _utf8(text: str) -> bytes:
    # A lone surrogate (e.g. "\ud800") has no UTF-8 form; like tiktoken, encode it as U+FFFD.
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


class BPETokenizer:
    """A byte-level byte-pair-encoding tokenizer: text -> UTF-8 bytes -> repeated pair merges.

    * ``merges``: ``{(id_a, id_b): new_id}`` in the order they were learned; a lower ``new_id``
      was learned earlier and is applied first when encoding.
    * ``vocab``: ``{id: bytes}``, every token's bytes.
    * ``byte_ids``: the id of each of the 256 single bytes (``byte_ids[b]``); ``b`` itself for a
      tokenizer trained here, GPT-2's own order for :meth:`from_tiktoken`.
    * ``special_tokens``: ``{"<|endoftext|>": id}``, never produced by merges; ``encode`` emits
      them only for strings named in ``allowed_special``.

    ``BPETokenizer().train(text, vocab_size)`` learns merges from ``text``;
    ``BPETokenizer.from_tiktoken("gpt2")`` recovers GPT-2's merges from tiktoken's ranks. Either
    way, :meth:`encode` runs this class's own Python merge loop.
    """

    def __init__(self, pattern: str | None = GPT2_SPLIT_PATTERN):
        self.pattern = pattern  # None: no pre-split (the whole text is one chunk)
        self._compiled = regex.compile(pattern) if pattern is not None else None
        self.merges: dict[tuple[int, int], int] = {}
        self.byte_ids: list[int] = list(range(256))
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        self.special_tokens: dict[str, int] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self.special_tokens)

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={sorted(self.special_tokens)})"
        )

    # -- training -----------------------------------------------------------------------------

    def _chunks(self, text: str) -> list[str]:
        return self._compiled.findall(text) if self._compiled is not None else [text]

    def train(self, text: str, vocab_size: int, verbose: bool = False) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges from ``text``: count adjacent pairs, merge the most
        frequent into a new token, repeat. Returns ``self``. Also records ``self.train_tokens``,
        the number of tokens ``text`` takes after each merge (index 0: before any merge)."""
        if not isinstance(text, str):
            raise TypeError(f"train takes a str, got {type(text).__name__}")
        if not isinstance(vocab_size, int) or vocab_size < 256:
            raise ValueError(
                f"vocab_size must be an integer >= 256 (the 256 byte tokens come first), got {vocab_size!r}"
            )
        # A chunk that occurs 1,000 times is counted once with weight 1,000: same counts, far less
        # work. After a merge only the chunks that held the pair are recounted.
        chunk_counts = Counter(self._chunks(text))
        chunks = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
        weights = list(chunk_counts.values())
        stats: dict[tuple[int, int], int] = {}
        where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> chunks that (may) hold it
        for c, (ids, w) in enumerate(zip(chunks, weights)):
            get_stats(ids, stats, w)
            for pair in zip(ids, ids[1:]):
                where[pair].add(c)
        self.merges, self.byte_ids = {}, list(range(256))
        self.vocab = {i: bytes([i]) for i in range(256)}
        self.train_tokens = [sum(len(ids) * w for ids, w in zip(chunks, weights))]
        for idx in tqdm(range(256, vocab_size), desc="BPE merges", disable=not verbose):
            if not stats:
                break  # every chunk is a single token: nothing left to merge
            pair = max(stats, key=stats.__getitem__)
            saved = 0
            for c in where.pop(pair):
                ids, w = chunks[c], weights[c]
                new = merge(ids, pair, idx)
                if len(new) == len(ids):
                    continue  # an earlier merge already took this chunk's copy of the pair
                for p in zip(ids, ids[1:]):
                    stats[p] -= w
                for p in zip(new, new[1:]):
                    stats[p] = stats.get(p, 0) + w
                    where[p].add(c)
                for p in zip(ids, ids[1:]):
                    if stats.get(p) == 0:
                        del stats[p]
                chunks[c] = new
                saved += (len(ids) - len(new)) * w
            self.merges[pair] = idx
            self.vocab[idx] = self.vocab[pair[0]] + self.vocab[pair[1]]
            self.train_tokens.append(self.train_tokens[-1] - saved)
        return self

    def register_special_tokens(self, special_tokens: dict[str, int]) -> None:
        """Add special tokens (e.g. ``{"<|endoftext|>": 50256}``) with ids outside the merges."""
        for name, idx in special_tokens.items():
            if idx in self.vocab:
                raise ValueError(f"special token {name!r} has id {idx}, which a byte or merge already uses")
        self.special_tokens.update(special_tokens)

    # -- GPT-2 through its tiktoken ranks -------------------------------------------------------

    @classmethod
    def from_tiktoken(cls, name: str = "gpt2") -> BPETokenizer:
        """GPT-2's tokenizer with merges recovered from tiktoken's ranks (tiktoken stores only
        ``{token bytes: rank}``). For each multi-byte token in rank order, BPE on its bytes with
        the merges of lower rank leaves exactly two parts: those two parts are its merge."""
        enc = gpt2_encoding(name)
        ranks: dict[bytes, int] = enc._mergeable_ranks  # noqa: SLF001 (tiktoken has no public getter)
        tok = cls(enc._pat_str)  # noqa: SLF001
        tok.byte_ids = [ranks[bytes([b])] for b in range(256)]
        tok.vocab = {rank: token for token, rank in ranks.items()}
        tok.merges = {}
        for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
            if len(token) == 1:
                continue
            left, right = _bpe_bytes(ranks, token, max_rank=rank)
            tok.merges[(ranks[left], ranks[right])] = rank
        tok.register_special_tokens({s: enc.encode_single_token(s) for s in enc.special_tokens_set})
        return tok

    # -- encoding and decoding ------------------------------------------------------------------

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        ids = [self.byte_ids[b] for b in chunk]
        while len(ids) >= 2:
            # the pair that was learned first (lowest new id) is merged first
            pair = min(zip(ids, ids[1:]), key=lambda p: self.merges.get(p, float("inf")))
            if pair not in self.merges:
                break  # no pair of this chunk can be merged any more
            ids = merge(ids, pair, self.merges[pair])
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text``, treating special-token strings as ordinary text.

        The pre-split chunks repeat (a word, its space, a line break), and a chunk's merges depend
        on that chunk alone, so each distinct chunk is merged once per call and looked up after
        (``benchmarks/bpe_encode.py`` measures the gain). The cache lives only for this call: it can
        never hold ids from merges that a later :meth:`train` replaced."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        ids: list[int] = []
        cache: dict[str, list[int]] = {}
        for chunk in self._chunks(text):
            if chunk not in cache:
                cache[chunk] = self._encode_chunk(_utf8(chunk))
            ids.extend(cache[chunk])
        return ids

    def encode(
        self,
        text: str,
        allowed_special: str | AbstractSet[str] = frozenset(),
        disallowed_special: str | AbstractSet[str] = "all",
    ) -> list[int]:
        """Token ids of ``text``, as tiktoken's ``encode``: a special token's string becomes its
        id only when listed in ``allowed_special`` (or ``"all"``); a special string that is not
        allowed raises ``ValueError`` unless ``disallowed_special=()`` (then it is plain text)."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(
                f"allowed_special names {sorted(unknown)}, which are not special tokens of "
                f"this tokenizer ({sorted(self.special_tokens)})"
            )
        disallowed = set(self.special_tokens) - allowed if disallowed_special == "all" else set(disallowed_special)
        for special in disallowed:
            if special in text:
                raise ValueError(
                    f"the text contains the special token {special!r}; pass allowed_special={{{special!r}}} "
                    f"to encode it as a special token, or disallowed_special=() to encode it as plain text"
                )
        if not allowed:
            return self.encode_ordinary(text)
        # split on the allowed special strings (kept by the capture group), encode the rest normally
        splitter = "(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")"
        ids: list[int] = []
        for part in regex.split(splitter, text):
            if part in allowed:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``. Bytes that are not valid UTF-8 on their own (half a character)
        become U+FFFD, as in tiktoken; an unknown id raises ``ValueError``."""
        inverse_special = {idx: s.encode("utf-8") for s, idx in self.special_tokens.items()}
        parts = []
        for i in ids:
            i = int(i)
            if i in self.vocab:
                parts.append(self.vocab[i])
            elif i in inverse_special:
                parts.append(inverse_special[i])
            else:
                raise ValueError(f"id {i} is out of range: this tokenizer has ids 0..{self.vocab_size - 1}")
        return b"".join(parts).decode("utf-8", errors="replace")


def _bpe_bytes(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Run tiktoken-style BPE on ``token`` with only the tokens of rank < ``max_rank``."""
    parts = [bytes([b]) for b in token]
    while True:
        best_i, best_rank = None, None
        for i, pair in enumerate(zip(parts, parts[1:])):
            rank = ranks.get(pair[0] + pair[1])
            if rank is not None and rank < max_rank and (best_rank is None or rank < best_rank):
                best_i, best_rank = i, rank
        if best_i is None:
            break
        parts = parts[:best_i] + [parts[best_i] + parts[best_i + 1]] + parts[best_i + 2 :]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} does not split into two lower-rank tokens: {parts}")
    return parts
