"""Exercise specs for Lab 11 (sparse attention masks, saved as ``learner/sparse.py``), against
:mod:`gptcourse.attention`: ``local_mask``, ``strided_mask``, ``fixed_mask`` (boolean ``(T, S)``
masks, True = may attend; with ``S > T`` the rows are the last ``T`` of ``S`` positions, a KV
cache), ``sparse_mask`` (the pattern by name, also checked inside the package's sparse GPT, with
and without a cache) and ``attended_pairs`` (a mask's cost)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gptcourse.attention import attended_pairs, causal_mask, fixed_mask, local_mask, sparse_mask, strided_mask
from gptcourse.grading.spec import Case, Misconception, Spec, close, randint, seeded
from gptcourse.model import GPT, GPTConfig

FORBIDDEN = (
    "gptcourse.attention.local_mask",
    "gptcourse.attention.strided_mask",
    "gptcourse.attention.fixed_mask",
    "gptcourse.attention.sparse_mask",
    "gptcourse.attention.attended_pairs",
)
Mask = Callable[..., torch.Tensor]
CH = "Chapter 12"


def mask_cases(param: str) -> Callable[[torch.Generator], list[Case]]:
    """Cases ``(T, value)`` or ``(T, value, S)`` for a mask whose size parameter is ``param``."""

    def cases(g: torch.Generator) -> list[Case]:
        fixed = [
            Case(f"T = 8, {param} 3", (8, 3)),
            Case(f"a single position (T = 1, {param} 1)", (1, 1)),
            Case(f"{param} 1", (6, 1)),
            Case(f"{param} larger than T", (5, 9)),
            Case(f"{param} equal to T", (8, 8)),
            Case("the last 3 of S = 10 positions", (3, 2, 10)),
            Case("one new query after 11 cached keys (S = 12)", (1, 4, 12)),
            Case("S = T given explicitly", (7, 3, 7)),
        ]
        for i in range(4):
            T = randint(g, 2, 40)
            fixed.append(Case(f"random sizes {i + 1}", (T, randint(g, 1, T + 3))))
            fixed.append(Case(f"random sizes with S > T {i + 1}", (T, randint(g, 1, 10), T + randint(g, 1, 20))))
        return fixed

    return cases


def _distances(T: int, S: int | None, last_rows: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T, 1)`` absolute query positions and ``(1, S)`` key positions."""
    S = T if S is None else S
    i = torch.arange(S - T, S) if last_rows else torch.arange(T)
    return i[:, None], torch.arange(S)[None, :]


def mask_compare(got: Any, expected: Any, case: Case) -> str | None:
    """Exactly equal, of the same dtype; the first wrong entry is described as a query, a key and
    their distance."""
    if not isinstance(got, torch.Tensor):
        return f"returned a {type(got).__name__}, expected a boolean tensor of shape {tuple(expected.shape)}"
    if got.dtype != expected.dtype:
        return f"returned dtype {got.dtype}, expected {expected.dtype} (True = may attend)"
    if got.shape != expected.shape:
        return f"returned shape {tuple(got.shape)}, expected {tuple(expected.shape)}: (T, S), queries by keys"
    if torch.equal(got, expected):
        return None
    T, S = expected.shape
    i, j = (int(v) for v in torch.nonzero(got != expected)[0])
    pos = S - T + i
    verb = "may attend" if bool(expected[i, j]) else "must not attend"
    return f"is wrong at row {i}, column {j}: the query at position {pos} {verb} to key {j} (distance {pos - j})"


# --- Step 1: the local band -------------------------------------------------------------------------


def _local(T: int, window: int, S: int | None = None, device=None, causal=True, last_rows=True, extra=0):
    i, j = _distances(T, S, last_rows)
    d = i - j
    return ((d >= 0) if causal else (d > -window)) & (d < window + extra)


LOCAL_MASK = Spec(
    id="lab11.local_mask",
    points=2,
    name="local_mask",
    reference=lambda T, w, S=None, device=None: local_mask(T, w, S),
    cases=mask_cases("window"),
    compare=mask_compare,
    forbidden=FORBIDDEN,
    hint="the query in row r sits at absolute position i = S - T + r; it sees key j when 0 <= i - j < window "
    f"(itself and the window - 1 positions before it); a boolean (T, S) tensor ({CH}, 'The local band')",
    misconceptions=(
        Misconception(
            "rows are the first T positions",
            lambda T, w, S=None, device=None: _local(T, w, S, last_rows=False),
            "with S > T the rows are the LAST T positions (the new queries after the cached ones): row r is the "
            f"query at absolute position S - T + r, as in causal_mask ({CH}, 'The local band')",
        ),
        Misconception(
            "not causal",
            lambda T, w, S=None, device=None: _local(T, w, S, causal=False),
            "a query must never see a later key (j > i): that leaks the future; the band lies only behind the "
            f"query ({CH}, 'The local band')",
        ),
        Misconception(
            "one key too many",
            lambda T, w, S=None, device=None: _local(T, w, S, extra=1),
            "the window counts the query itself: it sees itself and the window - 1 keys before it, so distances "
            f"0 .. window - 1 ({CH}, 'The local band')",
        ),
        Misconception(
            "the query does not see itself",
            lambda T, w, S=None, device=None: _local(T, w, S) & (_distances(T, S)[0] != _distances(T, S)[1]),
            "every pattern lets a query attend to itself (distance 0): with window 1 that is all it sees, and a "
            f"row with no key at all would give attention nothing to average ({CH}, 'The local band')",
        ),
        Misconception(
            "float mask",
            lambda T, w, S=None, device=None: local_mask(T, w, S).float(),
            "return a boolean mask (dtype torch.bool): a float mask is ADDED to the scores by "
            f"scaled_dot_product_attention, so 1.0 and 0.0 would mask nothing ({CH}, 'The local band')",
        ),
        Misconception(
            "mask inverted",
            lambda T, w, S=None, device=None: ~local_mask(T, w, S),
            "True means 'may attend' (the convention of F.scaled_dot_product_attention): the keys in the band are "
            f"the True ones ({CH}, 'The local band')",
        ),
    ),
)


# --- Step 2: the strided pattern --------------------------------------------------------------------


def _strided(T, stride, S=None, device=None, band=True, strides=True, causal=True, last_rows=True, key_multiples=False):
    i, j = _distances(T, S, last_rows)
    d = i - j
    multiple = (j % stride == 0) if key_multiples else (d % stride == 0)
    allowed = ((d < stride) & (d > -stride) if band else torch.zeros_like(d, dtype=torch.bool)) | (
        multiple if strides else torch.zeros_like(d, dtype=torch.bool)
    )
    return allowed & (d >= 0) if causal else allowed


STRIDED_MASK = Spec(
    id="lab11.strided_mask",
    points=2,
    name="strided_mask",
    reference=lambda T, s, S=None, device=None: strided_mask(T, s, S),
    cases=mask_cases("stride"),
    compare=mask_compare,
    forbidden=FORBIDDEN,
    hint="the query at absolute position i = S - T + r sees key j when i - j >= 0 and either i - j < stride "
    f"(the band) or i - j is a multiple of stride (the strides) ({CH}, 'The strided pattern')",
    misconceptions=(
        Misconception(
            "rows are the first T positions",
            lambda T, s, S=None, device=None: _strided(T, s, S, last_rows=False),
            "with S > T the rows are the LAST T positions (the new queries after the cached ones): row r is the "
            f"query at absolute position S - T + r ({CH}, 'The strided pattern')",
        ),
        Misconception(
            "not causal",
            lambda T, s, S=None, device=None: _strided(T, s, S, causal=False),
            "a query must never see a later key (j > i): a negative distance can be a multiple of the stride "
            f"too; both the band and the strides look backwards only ({CH}, 'The strided pattern')",
        ),
        Misconception(
            "band missing",
            lambda T, s, S=None, device=None: _strided(T, s, S, band=False),
            "besides every stride-th key back, the query also sees the last stride positions (0 <= i - j < "
            f"stride): the local head of the pattern ({CH}, 'The strided pattern')",
        ),
        Misconception(
            "strides missing",
            lambda T, s, S=None, device=None: _strided(T, s, S, strides=False),
            "besides the band, the query sees every earlier key a multiple of stride back ((i - j) mod stride "
            f"= 0): the strided head of the pattern ({CH}, 'The strided pattern')",
        ),
        Misconception(
            "key positions that are multiples of stride",
            lambda T, s, S=None, device=None: _strided(T, s, S, key_multiples=True),
            "the strides are counted back from each query: its distance i - j is a multiple of stride, not the "
            f"key's position j (that is the fixed pattern's idea) ({CH}, 'The strided pattern')",
        ),
        Misconception(
            "float mask",
            lambda T, s, S=None, device=None: strided_mask(T, s, S).float(),
            "return a boolean mask (dtype torch.bool): comparisons already give booleans; combine them with & "
            f"and | ({CH}, 'The strided pattern')",
        ),
    ),
)


# --- Step 3: the fixed pattern ----------------------------------------------------------------------


def fixed_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("T = 12, stride 4", (12, 4)),
        Case("stride 4, 2 summary positions", (12, 4, None, None, 2)),
        Case("summary = stride (dense causal)", (9, 3, None, None, 3)),
        Case("stride 1", (5, 1)),
        Case("stride larger than T", (5, 8)),
        Case("T not a multiple of stride", (11, 4)),
        Case("the last 3 of S = 13 positions", (3, 4, 13)),
        Case("one new query after 10 cached keys (S = 11)", (1, 3, 11)),
    ]
    for i in range(4):
        T = randint(g, 2, 40)
        stride = randint(g, 1, 10)
        S = T + randint(g, 0, 20)
        cases.append(Case(f"random sizes {i + 1}", (T, stride, S, None, randint(g, 1, stride))))
    return cases


def _fixed(T, stride, S=None, device=None, summary=1, last_rows=True, causal=True, first=False, own=True):
    i, j = _distances(T, S, last_rows)
    column = (j % stride < summary) if first else (j % stride >= stride - summary)
    allowed = ((j // stride == i // stride) if own else torch.zeros_like(j, dtype=torch.bool)) | column
    return allowed & (j <= i) if causal else allowed


FIXED_MASK = Spec(
    id="lab11.fixed_mask",
    points=2,
    name="fixed_mask",
    reference=lambda T, s, S=None, device=None, summary=1: fixed_mask(T, s, S, summary=summary),
    cases=fixed_cases,
    compare=mask_compare,
    forbidden=FORBIDDEN,
    hint="the query at absolute position i sees key j <= i when both lie in the same block of stride positions "
    f"(j // stride == i // stride) or j is one of the last summary positions of its block ({CH}, 'The fixed pattern')",
    misconceptions=(
        Misconception(
            "summary columns at the start of each block",
            lambda T, s, S=None, device=None, summary=1: _fixed(T, s, S, summary=summary, first=True),
            "the summary positions are the LAST ones of each block (j mod stride >= stride - summary): only "
            f"they have seen the whole block, so they can summarise it ({CH}, 'The fixed pattern')",
        ),
        Misconception(
            "not causal",
            lambda T, s, S=None, device=None, summary=1: _fixed(T, s, S, summary=summary, causal=False),
            "the pattern stays causal: a query sees neither the rest of its own block nor the summaries of later "
            f"blocks (j <= i always) ({CH}, 'The fixed pattern')",
        ),
        Misconception(
            "rows are the first T positions",
            lambda T, s, S=None, device=None, summary=1: _fixed(T, s, S, summary=summary, last_rows=False),
            "with S > T the rows are the LAST T positions: the blocks are counted from absolute position 0, so "
            f"the query of row r is at S - T + r ({CH}, 'The fixed pattern')",
        ),
        Misconception(
            "own block missing",
            lambda T, s, S=None, device=None, summary=1: _fixed(T, s, S, summary=summary, own=False),
            "besides the summaries, a query sees every earlier key of its own block: the first head of the "
            f"fixed pattern ({CH}, 'The fixed pattern')",
        ),
        Misconception(
            "summary ignored",
            lambda T, s, S=None, device=None, summary=1: fixed_mask(T, s, S),
            "summary is the number of positions at the end of each block that every later query sees, not "
            f"always 1 ({CH}, 'The fixed pattern')",
        ),
    ),
)


# --- Step 4: a pattern by name, and inside the sparse GPT -------------------------------------------


PATTERNS = ("dense", "local", "strided", "fixed")


def sparse_cases(g: torch.Generator) -> list[Case]:
    cases = [Case(f"{p!r}, T = 10, window 3, stride 4", (p, 10), {"window": 3, "stride": 4}) for p in PATTERNS]
    cases += [Case(f"{p!r}, the last 3 of S = 12", (p, 3, 12), {"window": 4, "stride": 3}) for p in PATTERNS]
    cases.append(Case("'local' with the defaults (window 1)", ("local", 6)))
    cases.append(Case("'fixed' with window 2 and stride 5 (window unused)", ("fixed", 12), {"window": 2, "stride": 5}))
    for n in range(4):
        T = randint(g, 1, 30)
        kw = {"window": randint(g, 1, 8), "stride": randint(g, 1, 8)}
        cases.append(Case(f"random {PATTERNS[n]!r}", (PATTERNS[n], T, T + randint(g, 0, 10)), kw))
    return cases


def _sparse(mistake: str) -> Mask:
    def answer(pattern, T, S=None, *, window=1, stride=1, device=None):
        if pattern == "dense":
            S_ = T if S is None else S
            return torch.ones(T, S_, dtype=torch.bool) if mistake == "dense is all True" else causal_mask(T, S)
        if pattern == "local":
            return local_mask(T, stride if mistake == "window and stride swapped" else window, S)
        if pattern == "strided":
            return strided_mask(T, window if mistake == "window and stride swapped" else stride, S)
        if pattern == "fixed":
            if mistake == "fixed uses the window":
                return fixed_mask(T, window, S)
            return strided_mask(T, stride, S) if mistake == "fixed is the strided pattern" else fixed_mask(T, stride, S)
        raise ValueError(pattern)

    return answer


SPARSE_HINTS = {
    "dense is all True": "'dense' is full CAUSAL attention, not every key: every pattern, dense included, hides the "
    f"future ({CH}, 'GPT-3's alternation as a configuration switch')",
    "window and stride swapped": "'local' takes its band width from window; 'strided' and 'fixed' take stride "
    f"({CH}, 'GPT-3's alternation as a configuration switch')",
    "fixed uses the window": "the fixed pattern's block length is stride (window is the local band only) "
    f"({CH}, 'The fixed pattern')",
    "fixed is the strided pattern": "'fixed' is its own pattern: blocks and their summary columns, not the band "
    f"plus every stride-th key ({CH}, 'The fixed pattern')",
}


def _unknown_raises(answer: Mask, case: Case) -> Any:
    """The mask of the case; or what is wrong if an unknown pattern name does not raise ValueError."""
    result = answer(*case.args, **case.kwargs)
    try:
        answer("banded", 4, window=2, stride=2)
    except ValueError:
        return result
    except Exception as err:  # noqa: BLE001 - reported to the learner
        return f"an unknown pattern name raised {type(err).__name__}, expected ValueError"
    return "an unknown pattern name ('banded') returned a mask, expected ValueError"


def _sparse_compare(got: Any, expected: Any, case: Case) -> str | None:
    if isinstance(got, str) or isinstance(expected, str):
        return None if got == expected else (got if isinstance(got, str) else "raised no ValueError as expected")
    return mask_compare(got, expected, case)


def _reference_sparse(pattern, T, S=None, *, window=1, stride=1, device=None):
    return sparse_mask(pattern, T, S, window=window, stride=stride)


SPARSE_MASK = Spec(
    id="lab11.sparse_mask",
    points=2,
    name="sparse_mask",
    reference=_reference_sparse,
    cases=sparse_cases,
    run=_unknown_raises,
    compare=_sparse_compare,
    forbidden=FORBIDDEN,
    hint="'dense' is causal_mask; 'local' uses window; 'strided' and 'fixed' use stride; any other name raises "
    f"ValueError ({CH}, 'GPT-3's alternation as a configuration switch')",
    misconceptions=(
        *(Misconception(n, _sparse(n), h) for n, h in SPARSE_HINTS.items()),
        Misconception(
            "unknown names not rejected",
            lambda pattern, T, S=None, *, window=1, stride=1, device=None: (
                sparse_mask(pattern, T, S, window=window, stride=stride) if pattern in PATTERNS else causal_mask(T, S)
            ),
            "a misspelt pattern must raise ValueError, not fall back silently to dense attention "
            f"({CH}, 'GPT-3's alternation as a configuration switch')",
        ),
    ),
)


def gpt_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, attention: str, window: int, stride: int, T: int, new: int) -> Case:
        seed = int(torch.randint(2**31, (1,), generator=g))
        return Case(label, (attention, window, stride, T, new, seed))

    return [
        case("'alternating' (dense, local, ...), window 3", "alternating", 3, 4, 12, 0),
        case("'local', window 1 (each token sees itself only)", "local", 1, 4, 9, 0),
        case("'strided', stride 3", "strided", 3, 3, 13, 0),
        case("'fixed', stride 4", "fixed", 3, 4, 14, 0),
        case("'alternating' with a KV cache: 10 tokens, then 3 more", "alternating", 3, 4, 10, 3),
        case("'fixed' with a KV cache: 9 tokens, then 4 more", "fixed", 3, 4, 9, 4),
        case("'strided' with a KV cache: one token at a time", "strided", 3, 3, 8, 1),
    ]


def run_gpt(answer: Mask, case: Case) -> Any:
    """A small sparse GPT whose masks come from ``answer`` (in place of the package's
    ``sparse_mask``); the logits of a forward pass, and with a cache the logits of the new tokens."""
    attention, window, stride, T, new, seed = case.args
    g = torch.Generator().manual_seed(seed)
    cfg = GPTConfig(
        vocab_size=37, block_size=32, n_layer=4, n_head=2, n_embd=16, attention=attention,
        attn_window=window, attn_stride=stride, dropout=0.0,
    )  # fmt: skip
    with seeded(g):
        model = GPT(cfg).eval()

    def masks(T_: int, S_: int, device: Any) -> list[torch.Tensor | None]:
        patterns = [cfg.layer_attention(layer) for layer in range(cfg.n_layer)]
        built = {p: answer(p, T_, S_, window=window, stride=stride, device=device) for p in set(patterns) - {"dense"}}
        return [built.get(p) for p in patterns]

    model.attention_masks = masks  # the learner's masks, the package's attention
    idx = torch.randint(cfg.vocab_size, (2, T + new), generator=g)
    with torch.no_grad():
        if not new:
            return {"logits": model(idx)[0]}
        from gptcourse.attention import KVCache

        cache = KVCache(cfg.n_layer)
        out = [model(idx[:, :T], cache=cache)[0]]
        step = 1 if new == 1 else new
        for start in range(T, T + new, step):
            out.append(model(idx[:, start : start + step], cache=cache)[0])
        return {"logits with the cache": torch.cat(out, dim=1), "logits without": model(idx)[0]}


def _gpt_mistake(name: str) -> Mask:
    def answer(pattern, T, S=None, *, window=1, stride=1, device=None):
        if name == "cache offset ignored":
            base = {"local": _local, "strided": _strided, "fixed": _fixed}[pattern]
            return base(T, window if pattern == "local" else stride, S, last_rows=False)
        if name == "window off by one" and pattern == "local":
            return _local(T, window, S, extra=1)
        if name == "not causal":
            base = {"local": _local, "strided": _strided, "fixed": _fixed}[pattern]
            return base(T, window if pattern == "local" else stride, S, causal=False)
        return sparse_mask(pattern, T, S, window=window, stride=stride)

    return answer


SPARSE_GPT = Spec(
    id="lab11.sparse_gpt",
    points=2,
    name="sparse_mask",
    reference=_reference_sparse,
    cases=gpt_cases,
    run=run_gpt,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=FORBIDDEN,
    hint="GPT.attention_masks asks sparse_mask(pattern, T, S, window=, stride=, device=) for T new queries that "
    f"are the last of S positions; your masks must match the package's there too ({CH}, 'GPT-3's alternation as a "
    "configuration switch')",
    misconceptions=(
        Misconception(
            "cache offset ignored",
            _gpt_mistake("cache offset ignored"),
            "with a KV cache the T new tokens are the LAST of S positions: a mask aligned at the start gives the "
            f"new tokens the pattern of the first ones, so cached and full runs disagree ({CH}, 'The local band')",
        ),
        Misconception(
            "window off by one",
            _gpt_mistake("window off by one"),
            "attn_window counts the query itself: a local layer sees window positions, distances 0 .. window - 1 "
            f"({CH}, 'The local band')",
        ),
        Misconception(
            "not causal",
            _gpt_mistake("not causal"),
            "a sparse layer that lets a token see later ones leaks the future into the prediction: every pattern "
            f"is causal ({CH}, 'The strided pattern')",
        ),
    ),
)


# --- Step 5: the cost -------------------------------------------------------------------------------


def pairs_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("the causal mask, the last 6 of S = 8", (causal_mask(6, 8),)),
        Case("local_mask(8, 3)", (local_mask(8, 3),)),
        Case("strided_mask(3, 2, S=10) (a cache)", (strided_mask(3, 2, 10),)),
        Case("fixed_mask(12, 4)", (fixed_mask(12, 4),)),
        Case("a single pair", (torch.ones(1, 1, dtype=torch.bool),)),
    ]
    for i in range(2):
        T = randint(g, 2, 30)
        cases.append(Case(f"random mask {i + 1}", (torch.rand(T, T + 3, generator=g) < 0.4,)))
    return cases


def _pairs_compare(got: Any, expected: Any, case: Case) -> str | None:
    if type(got) is not type(expected):
        return f"returned a {type(got).__name__}, expected a Python {type(expected).__name__}"
    same = torch.equal(got, expected) if isinstance(got, torch.Tensor) else got == expected
    return None if same else f"returned {got}, expected {expected}"


ATTENDED_PAIRS = Spec(
    id="lab11.attended_pairs",
    points=1,
    name="attended_pairs",
    reference=attended_pairs,
    cases=pairs_cases,
    compare=_pairs_compare,
    forbidden=FORBIDDEN,
    hint=f"the cost is the number of True entries: each is one query-key dot product ({CH}, 'What it costs as the "
    "context grows')",
    misconceptions=(
        Misconception(
            "every entry counted",
            lambda mask: int(mask.numel()),
            "a sparse mask still has T x S entries; the cost is only the pairs it allows (the True ones) "
            f"({CH}, 'What it costs as the context grows')",
        ),
        Misconception(
            "the masked-out pairs counted",
            lambda mask: int((~mask).sum()),
            f"True means 'may attend': count the True entries ({CH}, 'What it costs as the context grows')",
        ),
        Misconception(
            "a tensor returned",
            lambda mask: mask.sum(),
            "return a Python int (int(...)), so the counts can be printed, divided and plotted "
            f"({CH}, 'What it costs as the context grows')",
        ),
        Misconception(
            "the dense formula",
            lambda mask: mask.size(0) * (mask.size(0) + 1) // 2,
            "T (T + 1) / 2 is the cost of dense causal attention over T positions only: count the pairs the "
            f"mask you are given allows ({CH}, 'What it costs as the context grows')",
        ),
    ),
)

SPECS = (LOCAL_MASK, STRIDED_MASK, FIXED_MASK, SPARSE_MASK, SPARSE_GPT, ATTENDED_PAIRS)
