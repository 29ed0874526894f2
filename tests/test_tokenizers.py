"""Tokenizers: CharTokenizer, the course's BPE (trained here, and GPT-2's merges recovered from
tiktoken) against tiktoken itself, round trips on random unicode, and bad input."""

from __future__ import annotations

import random

import pytest

from gptcourse.grading.lab02 import SAMPLE_TEXTS, random_unicode
from gptcourse.tokenizers import GPT2_SPLIT_PATTERN, BPETokenizer, CharTokenizer, get_stats, merge

# ---------------------------------------------------------------- CharTokenizer


def test_char_tokenizer_round_trip_and_vocab():
    tok = CharTokenizer("hello world")
    assert tok.chars == sorted(set("hello world")) and tok.vocab_size == 8
    ids = tok.encode("low hello")
    assert ids == [tok.stoi[c] for c in "low hello"]
    assert tok.decode(ids) == "low hello"


def test_char_tokenizer_unknown_character_is_named():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match=r"'z'.*U\+007A.*position 2"):
        tok.encode("abz")


def test_char_tokenizer_bad_input():
    with pytest.raises(ValueError):
        CharTokenizer("")
    tok = CharTokenizer("abc")
    with pytest.raises(TypeError, match="str"):
        tok.encode(["a"])
    with pytest.raises(ValueError, match="id 3 is out of range"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="id -1"):
        tok.decode([-1])


# ---------------------------------------------------------------- the BPE building blocks


def test_get_stats_counts_overlapping_pairs():
    assert get_stats([1, 1, 1, 2]) == {(1, 1): 2, (1, 2): 1}
    assert get_stats([5]) == {} and get_stats([]) == {}
    assert get_stats([1, 2], {(1, 2): 3}, weight=2) == {(1, 2): 5}


def test_merge_is_left_to_right_and_non_overlapping():
    assert merge([1, 1, 1], (1, 1), 9) == [9, 1]
    assert merge([1, 1, 1, 1], (1, 1), 9) == [9, 9]
    assert merge([1, 2, 3, 1, 2], (1, 2), 7) == [7, 3, 7]
    assert merge([], (1, 2), 7) == []


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(shakespeare) -> BPETokenizer:
    return BPETokenizer().train(shakespeare[:50_000], 256 + 100)


def test_training_learns_the_most_frequent_pair_at_every_step():
    # replay the merges naively (recount everything) to check the incremental counting
    rng = random.Random(0)
    text = " ".join(rng.choice(["the", "then", "hat", "that", "a", "cat", "🙂", "猫"]) for _ in range(400))
    tok = BPETokenizer().train(text, 256 + 30)
    chunks = [list(c.encode("utf-8")) for c in tok._chunks(text)]
    for step, (pair, idx) in enumerate(tok.merges.items()):
        stats: dict = {}
        for ids in chunks:
            get_stats(ids, stats)
        assert idx == 256 + step
        assert stats[pair] == max(stats.values()), f"merge {step} {pair} is not a most frequent pair"
        chunks = [merge(ids, pair, idx) for ids in chunks]
        assert tok.train_tokens[step + 1] == sum(map(len, chunks))
    assert tok.vocab[256] == tok.vocab[list(tok.merges)[0][0]] + tok.vocab[list(tok.merges)[0][1]]


def test_trained_tokenizer_compresses_and_respects_the_pre_split(trained, shakespeare):
    heldout = shakespeare[-5_000:]
    ids = trained.encode(heldout)
    assert max(ids) < trained.vocab_size == 356
    assert len(heldout.encode("utf-8")) / len(ids) > 1.5  # merges do compress held-out text
    assert len(trained.encode(shakespeare[:50_000])) == trained.train_tokens[-1]
    # no merge crosses a chunk boundary: no token has a letter followed by a space
    assert not [
        t
        for t in trained.vocab.values()
        if any(a.isalpha() and b == " " for a, b in zip(t.decode("latin-1"), t.decode("latin-1")[1:]))
    ]


def test_encode_merges_each_distinct_chunk_once_per_call(monkeypatch):
    tok = BPETokenizer().train("the cat the hat the cat " * 20, 256 + 10)
    text = "the cat the cat the hat"  # chunks: the, ␣cat, ␣the, ␣cat, ␣the, ␣hat
    expected = [i for chunk in tok._chunks(text) for i in tok._encode_chunk(chunk.encode("utf-8"))]
    calls = []
    real = tok._encode_chunk
    monkeypatch.setattr(tok, "_encode_chunk", lambda chunk: calls.append(chunk) or real(chunk))
    assert tok.encode(text) == expected
    assert sorted(calls) == sorted({b"the", b" cat", b" the", b" hat"})  # 4 distinct of 6 chunks
    tok.encode(text)
    assert len(calls) == 8  # the cache lives for one call: a second call merges again


def test_training_without_a_pattern_and_running_out_of_pairs():
    tok = BPETokenizer(pattern=None).train("aaaa", 1000)
    assert len(tok.merges) == 2  # aa, then aaaa: then the text is one token
    assert tok.encode("aaaa") == [257] and tok.decode([257]) == "aaaa"
    assert tok.encode("aaaaa") == [257, 97]


@pytest.mark.parametrize("seed", range(5))
def test_trained_round_trip_on_random_unicode(trained, seed):
    rng = random.Random(seed)
    for _ in range(20):
        text = random_unicode(rng, rng.randint(0, 60))
        assert trained.decode(trained.encode(text)) == text


# ---------------------------------------------------------------- GPT-2 through tiktoken's ranks


@pytest.fixture(scope="module")
def gpt2_bpe(gpt2_enc) -> BPETokenizer:
    return BPETokenizer.from_tiktoken("gpt2")


def test_recovered_gpt2_has_tiktokens_vocabulary(gpt2_bpe, gpt2_enc):
    assert gpt2_bpe.vocab_size == gpt2_enc.n_vocab == 50_257
    assert len(gpt2_bpe.merges) == 50_000
    assert gpt2_bpe.special_tokens == {"<|endoftext|>": 50256}
    assert gpt2_bpe.pattern == GPT2_SPLIT_PATTERN
    # each merge's two parts concatenate to the token it makes
    for (a, b), idx in list(gpt2_bpe.merges.items())[::997]:
        assert gpt2_bpe.vocab[a] + gpt2_bpe.vocab[b] == gpt2_bpe.vocab[idx] == gpt2_enc.decode_single_token_bytes(idx)


CORPUS = SAMPLE_TEXTS + [
    "",
    " ",
    "          \n\n\n\t\t  x  \n",
    "hello\n\n\nworld   \n",
    "'s 've 're 'll 'd 'm 't I'm DON'T you'RE",
    "1234567890 9999999999999 3.141592653589793 1/3 ½ ١٢٣ ٣",
    "x=1;y=2\r\nif x>y:return{x:y}",
    '<html><body class="main">Hello &amp; goodbye</body></html>',
    "SolidGoldMagikarp  petertodd ' davidjl",
    "繁體中文與简体中文混合，包括標點符號。🙂 emoji 👨‍👩‍👧‍👦 family",
    "\u200b zero width \ufeff bom \u00a0 nbsp \u3000 ideographic space",
]


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_recovered_gpt2_encodes_exactly_as_tiktoken(gpt2_bpe, gpt2_enc, text):
    ids = gpt2_bpe.encode(text)
    assert ids == gpt2_enc.encode(text)
    assert gpt2_bpe.decode(ids) == text


def test_recovered_gpt2_on_shakespeare(gpt2_bpe, gpt2_enc, shakespeare):
    text = shakespeare[100_000:110_000]
    assert gpt2_bpe.encode(text) == gpt2_enc.encode(text)


@pytest.mark.parametrize("seed", range(5))
def test_recovered_gpt2_on_random_unicode(gpt2_bpe, gpt2_enc, seed):
    rng = random.Random(seed)
    for _ in range(20):
        text = random_unicode(rng, rng.randint(1, 50))
        ids = gpt2_bpe.encode(text)
        assert ids == gpt2_enc.encode(text), text
        assert gpt2_bpe.decode(ids) == text


def test_lone_surrogates_and_partial_characters_as_tiktoken(gpt2_bpe, gpt2_enc):
    assert gpt2_bpe.encode("a\ud800b") == gpt2_enc.encode("a\ud800b")
    llama = gpt2_enc.encode("🦙")
    assert len(llama) == 3  # 4 UTF-8 bytes, split over 3 tokens: the first is half a character
    assert gpt2_bpe.decode(llama[:1]) == gpt2_enc.decode(llama[:1]) == "\ufffd"


def test_special_tokens_only_when_allowed(gpt2_bpe, gpt2_enc):
    text = "end of one<|endoftext|>start of the next"
    with pytest.raises(ValueError, match="allowed_special"):
        gpt2_bpe.encode(text)
    for allowed in ("all", {"<|endoftext|>"}):
        ids = gpt2_bpe.encode(text, allowed_special=allowed)
        assert ids == gpt2_enc.encode(text, allowed_special=allowed) and 50256 in ids
        assert gpt2_bpe.decode(ids) == text
    plain = gpt2_bpe.encode(text, disallowed_special=())
    assert plain == gpt2_enc.encode(text, disallowed_special=()) and 50256 not in plain
    assert gpt2_bpe.encode_ordinary(text) == plain
    with pytest.raises(ValueError, match="not special tokens"):
        gpt2_bpe.encode("x", allowed_special={"<|im_start|>"})


def test_register_special_tokens_on_a_trained_tokenizer():
    tok = BPETokenizer().train("abab abab", 258)
    tok.register_special_tokens({"<|sep|>": 258})
    assert tok.vocab_size == 259
    ids = tok.encode("ab<|sep|>ab", allowed_special="all")
    assert 258 in ids and tok.decode(ids) == "ab<|sep|>ab"
    with pytest.raises(ValueError, match="already uses"):
        tok.register_special_tokens({"<|bad|>": 256})


# ---------------------------------------------------------------- bad input


def test_bpe_bad_input():
    tok = BPETokenizer().train("hello hello", 260)
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")
    with pytest.raises(TypeError, match="str"):
        tok.encode(None)
    with pytest.raises(TypeError, match="str"):
        BPETokenizer().train(["a"], 300)
    with pytest.raises(ValueError, match=">= 256"):
        BPETokenizer().train("hello", 255)
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([260])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
