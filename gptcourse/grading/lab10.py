"""Exercise specs for Lab 10 (the sampler, saved as ``learner/sampling.py``), against
:mod:`gptcourse.generate`: ``filter_logits``, ``apply_repetition_penalty`` and ``generate``.

* ``lab10.temperature``, ``lab10.top_k``, ``lab10.top_p``: ``filter_logits(logits, temperature,
  top_k, top_p)`` with one control at a time (then combined), and its ValueErrors. Outputs are
  logits, compared as what ``generate`` makes of them: the same tokens removed (``-inf``), then the
  same distribution after a softmax (a constant shift of a row changes nothing);
* ``lab10.repetition``: ``apply_repetition_penalty``, value by value;
* ``lab10.generate``: ``generate(..., use_cache=False)`` on a small package GPT with random weights
  and a seeded ``torch.Generator``: the very tokens of the package's ``generate``, greedy and
  sampled, a prompt longer than ``block_size``, the context's jump past it, the ValueErrors;
* ``lab10.cache``: ``generate(..., use_cache=True)``, with the model wrapped in a recorder of its
  calls: the same tokens, and the same calls (tokens fed, positions cached) as the package's.

Case logits keep the tokens of a row apart and the top-p boundary clear of every cumulative
probability, so that every correct implementation keeps the same tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gptcourse import generate as reference
from gptcourse.attention import KVCache
from gptcourse.grading.spec import AnswerError, Case, Misconception, Spec, close, randint, randomize_, seeded
from gptcourse.model import GPT, GPTConfig

MARGIN = 1e-3  # smallest distance of a cumulative probability from top_p in a case
FORBIDDEN = (
    "gptcourse.generate.filter_logits",
    "gptcourse.generate.apply_repetition_penalty",
    "gptcourse.generate.context_start",
    "gptcourse.generate.generate",
)
CHAPTER = "Chapter 11"
INF = float("-inf")

_close = close(atol=1e-5, rtol=1e-4)


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _raises(label: str) -> bool:
    """Whether a case expects a ValueError (its label says so)."""
    return "ValueError" in label


def _outcome_of_error_case(call: Callable[[], Any]) -> dict[str, Any]:
    """Which exception ``call()`` raised, if any (NotImplementedError passes through)."""
    try:
        call()
    except NotImplementedError:
        raise
    except AnswerError:
        raise
    except Exception as err:
        return {"raises": type(err).__name__}
    return {"raises": None}


def _raise_message(got: Any, expected: dict[str, Any]) -> str | None:
    if isinstance(got, dict) and got.get("raises") == expected["raises"]:
        return None
    theirs = got.get("raises") if isinstance(got, dict) else None
    return f"raised {theirs or 'nothing'}, expected a {expected['raises']}"


# --- filter_logits: cases and comparison ------------------------------------------------------------------


def _clear(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> bool:
    """Whether no two logits of a row (nearly) tie and the top-p boundary is clear of every
    cumulative probability: then every correct implementation keeps the same tokens."""
    ordered = logits.sort(dim=-1, descending=True).values
    if (ordered[:, :-1] - ordered[:, 1:]).min() < 1e-3:
        return False
    if top_p is None or top_p >= 1.0:
        return True
    probs = torch.softmax(reference.filter_logits(logits, temperature, top_k), dim=-1)
    probs = probs.sort(dim=-1, descending=True).values.double()
    before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
    return bool(((before - top_p).abs()[probs > 1e-5] >= MARGIN).all())


def _logits(
    g: torch.Generator,
    B: int,
    V: int,
    scale: float,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    differs: Callable[[torch.Tensor], bool] | None = None,
) -> torch.Tensor:
    """Random ``(B, V)`` logits that are :func:`_clear` for these settings (and, with ``differs``,
    for which it is true), drawn again until they are."""
    while True:
        logits = torch.randn(B, V, generator=g) * scale
        if _clear(logits, temperature, top_k, top_p) and (differs is None or differs(logits)):
            return logits


def run_filter(answer: Callable[..., Any], case: Case) -> Any:
    """``answer(logits, **case.kwargs)``; for a case that expects a ValueError, which it raised."""
    (logits,) = case.args
    if _raises(case.label):
        return _outcome_of_error_case(lambda: answer(logits, **case.kwargs))
    out = answer(logits, **case.kwargs)
    if not isinstance(out, torch.Tensor):
        raise AnswerError(f"filter_logits returned a {type(out).__name__}; return the (B, V) tensor of logits")
    return out


def compare_logits(got: Any, expected: Any, case: Case) -> str | None:
    """The raised error; else the shape, the same tokens removed (-inf), then the same
    distributions after a softmax."""
    if isinstance(expected, dict):
        return _raise_message(got, expected)
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or not got.is_floating_point():
        return _close(got, expected, case)
    if torch.isnan(got).any():
        b, v = (int(i) for i in torch.isnan(got).nonzero()[0])
        return f"returned NaN at index {(b, v)}: logits are numbers, a removed token is -inf"
    removed, got_removed = torch.isneginf(expected), torch.isneginf(got)
    if (removed != got_removed).any():
        b, v = (int(i) for i in (removed != got_removed).nonzero()[0])
        if removed[b, v]:
            return f"keeps token {v} of row {b} (logit {got[b, v].item():.4g}); the reference removes it (-inf)"
        return f"removes token {v} of row {b} (-inf); the reference keeps it (logit {expected[b, v].item():.4g})"
    wrong = _close(torch.softmax(got.double(), -1), torch.softmax(expected.double(), -1), case)
    return None if wrong is None else f"after a softmax {wrong}"


def _filter(mistake: str = "") -> Callable[..., torch.Tensor]:
    """The package's ``filter_logits`` with one known mistake (``mistake`` names it)."""

    def filter_logits(
        logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
    ) -> torch.Tensor:
        original = logits
        if mistake == "a negative temperature accepted":
            if temperature == 0:
                raise ValueError("temperature 0")
        elif mistake != "temperature 0 not rejected" and temperature <= 0:
            raise ValueError("temperature must be > 0")
        if mistake == "temperature multiplies":
            logits = logits * temperature
        elif mistake == "temperature on the probabilities":
            logits = torch.softmax(logits, dim=-1) / temperature
        elif mistake not in ("temperature ignored", "top-p before temperature"):
            logits = logits / temperature
        if top_p is not None and mistake == "top-p before top-k":
            if not 0.0 < top_p <= 1.0:
                raise ValueError("top_p must be in (0, 1]")
            logits = _nucleus(logits, top_p, "")
        if top_k is not None:
            if top_k < 1 and mistake != "top_k < 1 not rejected":
                raise ValueError("top_k must be >= 1")
            k = min(top_k, logits.size(-1))
            if mistake == "ties at the k-th value dropped":
                top = torch.topk(logits, k, dim=-1)
                logits = torch.full_like(logits, INF).scatter(-1, top.indices, top.values)
            else:
                kth = torch.topk(logits, k, dim=-1, largest=mistake != "the k smallest kept").values[..., -1:]
                if mistake == "the k smallest kept":
                    drop = logits > kth
                elif mistake == "the k-th largest removed too":
                    drop = logits <= kth
                else:
                    drop = logits < kth
                base = original if mistake == "top-k filters the logits before the temperature" else logits
                logits = base.masked_fill(drop, 0.0 if mistake == "removed logits set to 0" else INF)
        if top_p is not None and mistake != "top-p before top-k":
            if not 0.0 < top_p <= 1.0 and mistake != "top_p out of range accepted":
                raise ValueError("top_p must be in (0, 1]")
            if mistake == "top-p before temperature":
                kept = _nucleus(logits, top_p, "")
                logits = (logits / temperature).masked_fill(torch.isneginf(kept), INF)
            else:
                logits = _nucleus(logits, top_p, mistake)
        return logits

    return filter_logits


def _nucleus(logits: torch.Tensor, top_p: float, mistake: str) -> torch.Tensor:
    """Top-p of ``logits`` (B, V), with one known mistake or none."""
    probs = torch.softmax(logits, dim=-1)
    if mistake == "cumulative sum in vocabulary order":
        ordered, order = probs, torch.arange(probs.size(-1)).expand_as(probs)
    else:
        ordered, order = torch.sort(probs, descending=True, dim=-1)
    cumulative = ordered.cumsum(-1)
    if mistake == "the token that crosses p removed":
        drop = cumulative > top_p
        drop[..., 0] = False
    else:
        drop = cumulative - ordered >= top_p
    if mistake != "mask left in sorted order":
        drop = drop.scatter(-1, order, drop)
    return logits.masked_fill(drop, INF)


def _filter_spec(id: str, cases: Callable, hint: str, hints: dict[str, str]) -> Spec:
    return Spec(
        id=id,
        points=2,
        name="filter_logits",
        reference=reference.filter_logits,
        cases=cases,
        run=run_filter,
        compare=compare_logits,
        forbidden=FORBIDDEN,
        hint=hint,
        misconceptions=tuple(Misconception(n, _filter(n), h) for n, h in hints.items()),
    )


# --- Exercise 1: temperature ------------------------------------------------------------------------------


def temperature_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, B: int, V: int, t: float) -> Case:
        return Case(label, (_logits(g, B, V, 2.0),), {"temperature": t})

    cases = [
        case("temperature 1: the logits unchanged", 3, 8, 1.0),
        case("temperature 0.3 sharpens", 2, 10, 0.3),
        case("temperature 2.5 flattens", 2, 10, 2.5),
        case("a single row, temperature 0.7", 1, 6, 0.7),
        case("temperature 0: a ValueError (greedy decoding is generate's arg-max)", 2, 6, 0.0),
        case("a negative temperature: a ValueError", 2, 6, -0.5),
    ]
    for i in range(3):
        t = float(f"{_uniform(g, 0.05, 5.0):.3g}")
        cases.append(case(f"random temperature {i + 1}", randint(g, 1, 4), randint(g, 5, 60), t))
    return cases


TEMPERATURE = _filter_spec(
    "lab10.temperature",
    temperature_cases,
    "filter_logits returns logits / temperature (generate takes the softmax), and raises a ValueError "
    f"for temperature <= 0 ({CHAPTER}, Temperature)",
    {
        "temperature multiplies": "the logits are divided by the temperature: a temperature below 1 makes "
        f"them larger, which sharpens the distribution ({CHAPTER}, Temperature)",
        "temperature on the probabilities": "the temperature divides the logits, before any softmax; "
        "filter_logits returns logits (generate takes the softmax after it), not probabilities "
        f"({CHAPTER}, Temperature)",
        "temperature ignored": "the returned logits must be the divided ones: with a temperature other than 1 "
        f"the distribution changes ({CHAPTER}, Temperature)",
        "a negative temperature accepted": "a negative temperature reverses the ranking (the least likely token "
        f"becomes the most likely): only temperature > 0 is valid, raise a ValueError otherwise ({CHAPTER}, "
        "Temperature)",
        "temperature 0 not rejected": "dividing by a temperature of 0 gives infinities: temperature 0 is greedy "
        "decoding, which generate does with an arg-max; filter_logits raises a ValueError for it "
        f"({CHAPTER}, Greedy decoding, and temperature 0)",
    },
)


# --- Exercise 2: top-k ------------------------------------------------------------------------------------

# ties at the k-th value for k = 3: row 0 keeps 2.0, 1.0 and the three 0.5s; row 1 keeps 2.0 and the three 1.0s
_TIED = torch.tensor([[2.0, 0.5, 1.0, 0.5, -1.0, 0.5], [1.0, 1.0, -0.5, 0.0, 2.0, 1.0]])


def top_k_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, logits: torch.Tensor, k: int, t: float = 1.0) -> Case:
        return Case(label, (logits,), {"temperature": t, "top_k": k})

    cases = [
        case("top_k = 2", _logits(g, 3, 10, 2.0), 2),
        case("ties at the k-th value (top_k = 3): all of them kept", _TIED.clone(), 3),
        case("top_k = 1: the arg-max only", _logits(g, 3, 10, 2.0), 1),
        case("top_k = V: nothing removed", _logits(g, 2, 7, 2.0), 7),
        case("top_k larger than the vocabulary: nothing removed", _logits(g, 2, 6, 2.0), 9),
        case("temperature 0.5, then top_k = 3", _logits(g, 2, 8, 2.0), 3, 0.5),
        case("top_k = 0: a ValueError", _logits(g, 2, 6, 2.0), 0),
    ]
    for i in range(3):
        V = randint(g, 5, 60)
        t = float(f"{_uniform(g, 0.3, 3.0):.2g}")
        logits = _logits(g, randint(g, 1, 4), V, _uniform(g, 0.5, 4.0))
        cases.append(case(f"random {i + 1}: temperature {t:g}", logits, randint(g, 1, V - 1), t))
    return cases


TOP_K = _filter_spec(
    "lab10.top_k",
    top_k_cases,
    "after the temperature, every logit below a row's k-th largest becomes -inf (all of them kept when "
    f"top_k >= V); a ValueError for top_k < 1 ({CHAPTER}, Top-k)",
    {
        "the k-th largest removed too": "keep k tokens: the k-th largest logit itself stays; only logits "
        f"smaller than it go ({CHAPTER}, Top-k)",
        "ties at the k-th value dropped": "tokens tied with the k-th largest logit are as likely as it: keep "
        f"every logit that is at least the k-th largest, however many that is ({CHAPTER}, Top-k)",
        "removed logits set to 0": "a removed logit of 0 still gets probability exp(0) after the softmax: a "
        f"removed token's logit is -inf ({CHAPTER}, Top-k)",
        "the k smallest kept": f"top-k keeps the k most likely tokens: the k largest logits ({CHAPTER}, Top-k)",
        "top-k filters the logits before the temperature": "the controls compose: the logits returned are "
        f"the tempered ones, with top-k's -inf on the removed tokens ({CHAPTER}, The sampling loop)",
        "top_k < 1 not rejected": f"top_k must be at least 1: raise a ValueError before filtering ({CHAPTER}, Top-k)",
    },
)


# --- Exercise 3: top-p ------------------------------------------------------------------------------------


def _differs(mistake: str, **kw: Any) -> Callable[[torch.Tensor], bool]:
    """Whether ``mistake`` keeps other tokens on these logits than the reference and than every
    misconception of top-p listed before it (so that the case names it)."""

    def differs(logits: torch.Tensor) -> bool:
        mask = torch.isneginf(_filter(mistake)(logits, **kw))
        others = [reference.filter_logits] + [_filter(m) for m in TOP_P_HINTS if m != mistake][:4]
        return not any(torch.equal(mask, torch.isneginf(other(logits, **kw))) for other in others)

    return differs


def top_p_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, logits: torch.Tensor, p: float, t: float = 1.0, k: int | None = None) -> Case:
        return Case(label, (logits,), {"temperature": t, "top_k": k, "top_p": p})

    peaked = _logits(g, 2, 8, 1.0)
    peaked[:, 0] += 6.0  # one token holds most of the mass
    before_t = dict(temperature=2.0, top_p=0.6)
    before_k = dict(temperature=1.0, top_k=4, top_p=0.7)
    cases = [
        case("top_p = 0.5", _logits(g, 3, 10, 0.5, top_p=0.5), 0.5),
        case("top_p = 0.9", _logits(g, 3, 10, 2.0, top_p=0.9), 0.9),
        case("the most likely token alone reaches p: it alone is kept", peaked, 0.6),
        case("top_p = 0.001: the arg-max only", _logits(g, 2, 8, 2.0, top_p=1e-3), 1e-3),
        case("top_p = 1: nothing removed", _logits(g, 2, 8, 1.5), 1.0),
        case(
            "temperature 2, then top_p = 0.6 (the nucleus of the tempered distribution)",
            _logits(g, 2, 10, 2.0, **before_t, differs=_differs("top-p before temperature", **before_t)),
            0.6,
            2.0,
        ),
        case(
            "top_k = 4, then top_p = 0.7 (the nucleus of the renormalised top 4)",
            _logits(g, 2, 10, 1.0, **before_k, differs=_differs("top-p before top-k", **before_k)),
            0.7,
            k=4,
        ),
        case("top_p = 0: a ValueError", _logits(g, 2, 6, 2.0), 0.0),
        case("top_p = 1.5: a ValueError", _logits(g, 2, 6, 2.0), 1.5),
    ]
    for i in range(3):
        B, V, p = randint(g, 1, 4), randint(g, 5, 60), float(f"{_uniform(g, 0.05, 0.99):.3g}")
        t = float(f"{_uniform(g, 0.5, 2.0):.2g}")
        k = randint(g, 2, V) if randint(g, 0, 1) else None
        logits = _logits(g, B, V, _uniform(g, 0.5, 4.0), temperature=t, top_k=k, top_p=p)
        cases.append(case(f"random {i + 1}: temperature {t:g}, top_k {k}", logits, p, t, k))
    return cases


TOP_P_HINTS = {
    "the token that crosses p removed": "keep the smallest prefix whose total reaches p: the token that "
    "takes the total past p stays (a token goes only when the tokens ranked above it already reach p) "
    f"({CHAPTER}, Top-p)",
    "cumulative sum in vocabulary order": "the nucleus is made of the most likely tokens: sort by "
    f"probability, most likely first, before adding up ({CHAPTER}, Top-p)",
    "mask left in sorted order": "the keep/remove decision is made in sorted order: map it back to the "
    f"tokens' own positions (the permutation the sort returned) before applying it ({CHAPTER}, Top-p)",
    "top-p before temperature": "divide by the temperature first: top-p measures the mass of the tempered "
    f"distribution, the one that is sampled ({CHAPTER}, The sampling loop)",
    "top-p before top-k": "top-k comes before top-p: the nucleus is measured on the distribution that top-k "
    f"left, renormalised ({CHAPTER}, The sampling loop)",
    "top_p out of range accepted": "top_p is a probability mass in (0, 1]: raise a ValueError for any other "
    f"value (0 would remove every token) ({CHAPTER}, Top-p)",
}

TOP_P = _filter_spec(
    "lab10.top_p",
    top_p_cases,
    "after the temperature and top-k, sort the probabilities from the most likely down and keep the "
    "smallest prefix whose total reaches top_p (a token goes when those ranked above it already reach p), "
    f"in the tokens' own order; a ValueError unless 0 < top_p <= 1 ({CHAPTER}, Top-p)",
    TOP_P_HINTS,
)


# --- Exercise 4: the repetition penalty -------------------------------------------------------------------


def repetition_cases(g: torch.Generator) -> list[Case]:
    def context(B: int, V: int, T: int, repeat: bool) -> tuple[torch.Tensor, torch.Tensor]:
        logits = _logits(g, B, V, 2.0)
        idx = torch.stack([torch.randperm(V, generator=g)[:T] for _ in range(B)])
        logits[:, idx[0, 0]], logits[:, idx[0, 1]] = 1.3, -0.9  # a positive and a negative seen logit
        if repeat:
            idx = torch.cat([idx, idx[:, :2]], dim=1)
        return logits, idx

    cases = [
        Case("tokens seen once, with positive and negative logits", (*context(1, 8, 4, False), 1.5)),
        Case("tokens seen twice: penalised once", (*context(1, 8, 3, True), 1.5)),
        Case("two rows, each with its own context", (*context(2, 10, 4, True), 2.0)),
        Case("penalty 1: unchanged", (*context(2, 8, 3, False), 1.0)),
        Case("penalty 0.8 < 1: seen tokens made more likely", (*context(1, 8, 4, False), 0.8)),
        Case("penalty 0: a ValueError", (*context(1, 6, 2, False), 0.0)),
        Case("a negative penalty: a ValueError", (*context(1, 6, 2, False), -1.2)),
    ]
    for i in range(3):
        V = randint(g, 6, 40)
        B, T, p = randint(g, 1, 4), randint(g, 2, V // 2), float(f"{_uniform(g, 1.05, 3.0):.3g}")
        cases.append(Case(f"random {i + 1}", (*context(B, V, T, True), p)))
    return cases


def run_repetition(answer: Callable[..., Any], case: Case) -> Any:
    """``answer(logits, idx, penalty)``; for a case that expects a ValueError, which it raised."""
    if _raises(case.label):
        return _outcome_of_error_case(lambda: answer(*case.args))
    out = answer(*case.args)
    if not isinstance(out, torch.Tensor):
        raise AnswerError(f"apply_repetition_penalty returned a {type(out).__name__}; return the (B, V) logits")
    return out


def compare_penalised(got: Any, expected: Any, case: Case) -> str | None:
    if isinstance(expected, dict):
        return _raise_message(got, expected)
    return _close(got, expected, case)


def _penalty(mistake: str) -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """The package's ``apply_repetition_penalty`` with one known mistake."""

    def apply_repetition_penalty(logits: torch.Tensor, idx: torch.Tensor, penalty: float) -> torch.Tensor:
        if penalty <= 0 and mistake != "penalty <= 0 accepted":
            raise ValueError("penalty must be > 0")
        if mistake == "one row's tokens for every row":
            idx = idx[:1].expand(logits.size(0), -1)
        out = logits.clone()
        if mistake == "penalised per occurrence":
            for b in range(idx.size(0)):
                for t in idx[b].tolist():
                    v = out[b, t]
                    out[b, t] = v / penalty if v > 0 else v * penalty
            return out
        seen = logits.gather(-1, idx)
        if mistake == "CTRL's plain division":
            seen = seen / penalty
        elif mistake == "the sign test inverted":
            seen = torch.where(seen > 0, seen * penalty, seen / penalty)
        else:
            seen = torch.where(seen > 0, seen / penalty, seen * penalty)
        return out.scatter(-1, idx, seen)

    return apply_repetition_penalty


REPETITION_HINTS = {
    "CTRL's plain division": "dividing a negative logit by the penalty moves it towards 0, which makes the token "
    "more likely: divide a positive logit, multiply a negative one, so that both move down "
    f"({CHAPTER}, A repetition penalty)",
    "the sign test inverted": "a positive logit is divided by the penalty and a negative one multiplied by it: "
    f"with a penalty > 1 both become less likely ({CHAPTER}, A repetition penalty)",
    "penalised per occurrence": "a token that occurs several times in the context is penalised once, however "
    f"often it occurs ({CHAPTER}, A repetition penalty)",
    "one row's tokens for every row": "each row of the batch has its own context: penalise row b's logits for "
    f"the tokens of idx[b] only ({CHAPTER}, A repetition penalty)",
    "penalty <= 0 accepted": "a penalty must be > 0 (1 turns it off): raise a ValueError for 0 or a negative "
    f"one ({CHAPTER}, A repetition penalty)",
}

REPETITION = Spec(
    id="lab10.repetition",
    points=2,
    name="apply_repetition_penalty",
    reference=reference.apply_repetition_penalty,
    cases=repetition_cases,
    run=run_repetition,
    compare=compare_penalised,
    forbidden=FORBIDDEN,
    hint="every token that occurs in its row's context, once: l / penalty if l > 0 else l * penalty; the other "
    f"logits unchanged; a ValueError for a penalty <= 0 ({CHAPTER}, A repetition penalty)",
    misconceptions=tuple(Misconception(n, _penalty(n), h) for n, h in REPETITION_HINTS.items()),
)


# --- Exercises 5 and 6: generate, without and with the cache ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class Model:
    """Case input: a small package GPT with random weights, built afresh by each run."""

    config: GPTConfig
    seed: int

    def __repr__(self) -> str:
        c = self.config
        extra = f", dropout={c.dropout:g}" if c.dropout else ""
        return f"GPT(V={c.vocab_size}, block={c.block_size}, L={c.n_layer}{extra})"

    def build(self) -> GPT:
        g = torch.Generator().manual_seed(self.seed)
        with seeded(g):
            model = GPT(self.config)
        return randomize_(model, g, scale=1.0)


@dataclasses.dataclass(frozen=True)
class Seed:
    """Case input: the seed of the ``torch.Generator`` the driver passes."""

    seed: int

    def __repr__(self) -> str:
        return f"Generator(seed={self.seed})"

    def make(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


class _ModelRaised(Exception):
    """The wrapped model raised: the answer called it with an input it rejects."""


class Recorder(nn.Module):
    """A GPT that records, for each call, how many tokens it was fed and how many positions its
    cache held (None: no cache)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, []

    def forward(self, idx: torch.Tensor, targets: Any = None, cache: Any = None, last_only: bool = False) -> Any:
        self.calls.append((int(idx.size(-1)) if idx.dim() else 0, None if cache is None else len(cache)))
        try:
            return self.model(idx, targets, cache=cache, last_only=last_only)
        except ValueError as err:
            raise _ModelRaised(str(err)) from None


def _config(**kw: Any) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16), **kw})


def _seed(g: torch.Generator) -> int:
    return int(torch.randint(2**31, (), generator=g))


def generate_cases(g: torch.Generator) -> list[Case]:
    def case(
        label: str, B: int, T: int, n: int, mode: str = "eval mode", config: GPTConfig | None = None, **kw
    ) -> Case:
        config = config or _config()
        idx = torch.randint(config.vocab_size, (B, T), generator=g)
        return Case(label, (Model(config, _seed(g)), idx, n, Seed(_seed(g)), mode), kw)

    cases = [
        case("greedy (temperature 0)", 1, 3, 5, temperature=0.0),
        case("sampled at temperature 1, a batch of 2", 2, 3, 5),
        case("temperature 0.7, top_k 6, top_p 0.9", 2, 2, 5, temperature=0.7, top_k=6, top_p=0.9),
        case("greedy with repetition_penalty 3 (the prompt counts)", 2, 4, 4, temperature=0.0, repetition_penalty=3.0),
        case(
            "greedy from a model in training mode, dropout 0.5: run in eval mode, its mode restored",
            2,
            3,
            8,
            mode="training mode",
            config=_config(dropout=0.5),
            temperature=0.0,
        ),
        case("a prompt longer than block_size: the model reads its last block_size tokens", 1, 11, 3),
        case("greedy past block_size: the context jumps to its last block_size // 2 tokens", 2, 3, 12, temperature=0.0),
        case(
            "past block_size with repetition_penalty 3 (the last block_size tokens count)",
            2,
            6,
            16,
            config=_config(vocab_size=40),
            temperature=0.0,
            repetition_penalty=3.0,
        ),
        case("sampled past block_size (block_size 6)", 2, 2, 12, config=_config(block_size=6), temperature=1.3),
        case("max_new_tokens 0: the prompt itself", 2, 3, 0),
        case("max_new_tokens -1: a ValueError", 1, 3, -1),
        case("temperature -1: a ValueError", 1, 3, 2, temperature=-1.0),
        case("repetition_penalty 0: a ValueError", 1, 3, 2, repetition_penalty=0.0),
        case("idx of shape (T,): a ValueError", 1, 3, 2, mode="idx 1-d"),
        case("idx of dtype float: a ValueError", 1, 3, 2, mode="idx float"),
    ]
    for i in range(2):
        config = _config(block_size=randint(g, 4, 10), n_layer=randint(g, 1, 3))
        t = float(f"{_uniform(g, 0.5, 1.5):.2g}")
        cases.append(
            case(
                f"random {i + 1}: temperature {t:g}",
                randint(g, 1, 3),
                randint(g, 1, 12),
                10,
                config=config,
                temperature=t,
                top_k=randint(g, 2, 13),
                repetition_penalty=1.5,
            )
        )
    return cases


def cache_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, B: int, T: int, n: int, config: GPTConfig | None = None, **kw) -> Case:
        config = config or _config()
        idx = torch.randint(config.vocab_size, (B, T), generator=g)
        return Case(
            label, (Model(config, _seed(g)), idx, n, Seed(_seed(g)), "calls recorded"), {"use_cache": True, **kw}
        )

    cases = [
        case("greedy: the prompt fed once, then one token per call", 1, 3, 4, temperature=0.0),
        case("sampled with top_k 5 and top_p 0.9, a batch of 2", 2, 2, 5, top_k=5, top_p=0.9),
        case("greedy past block_size: a new cache when the context jumps", 2, 3, 12, temperature=0.0),
        case("sampled past block_size twice (block_size 6)", 1, 2, 14, config=_config(block_size=6)),
        case("a prompt longer than block_size", 1, 10, 5, temperature=0.0),
        case("use_cache=False: the whole context at every call, no cache", 1, 3, 7, use_cache=False),
        case("max_new_tokens 0: no call of the model", 1, 3, 0),
    ]
    for i in range(2):
        config = _config(block_size=randint(g, 4, 10), n_layer=randint(g, 1, 3))
        cases.append(
            case(f"random {i + 1}", randint(g, 1, 3), randint(g, 1, 12), 12, config=config, repetition_penalty=1.5)
        )
    return cases


def run_generate(answer: Callable[..., Any], case: Case) -> Any:
    """Build the case's model and run ``answer(model, idx, max_new_tokens, generator=...,
    use_cache=False, **kwargs)`` (the global generator seeded too, so that a run repeats); the
    tokens and the model's mode afterwards, or, for a case that expects a ValueError, which it raised.
    In mode ``calls recorded`` the model is a :class:`Recorder` and its calls are returned too."""
    spec, idx, n, seed, mode = case.args
    model = spec.build().train(mode == "training mode")
    if mode == "calls recorded":
        model = Recorder(model)
    elif mode == "idx 1-d":
        idx = idx[0]
    elif mode == "idx float":
        idx = idx.float()
    kwargs = {"use_cache": False, **case.kwargs}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed.seed + 1)
        if _raises(case.label):
            return _outcome_of_error_case(lambda: answer(model, idx, n, generator=seed.make(), **kwargs))
        raised = None
        try:
            tokens = answer(model, idx, n, generator=seed.make(), **kwargs)
        except _ModelRaised as err:
            tokens, raised = None, str(err)
    if raised is None:
        if not isinstance(tokens, torch.Tensor):
            raise AnswerError(f"generate returned a {type(tokens).__name__}; return the (B, T + max_new_tokens) ids")
        if tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise AnswerError(f"generate returned dtype {tokens.dtype}; token ids are integers (torch.long)")
    out: dict[str, Any] = {"tokens": tokens}
    if mode == "calls recorded":
        out["calls"] = list(model.calls)
        out["the model raised"] = raised
    else:
        out["model.training after"] = model.training
    return out


def _call_text(call: tuple[int, int | None]) -> str:
    T, cached = call
    return f"{T} token(s) " + ("without a cache" if cached is None else f"with {cached} position(s) cached")


def compare_generated(got: Any, expected: Any, case: Case) -> str | None:
    """The raised error; else the calls of the model (when recorded), then the tokens, then the mode."""
    if "raises" in expected:
        return _raise_message(got, expected)
    if not isinstance(got, dict) or set(got) != set(expected):
        return "returned a malformed output"
    if "calls" in expected:
        mine, theirs = [tuple(c) for c in got["calls"]], expected["calls"]
        for i, (a, b) in enumerate(zip(mine, theirs)):
            if a != b:
                return (
                    f"call {i + 1} of the model fed it {_call_text(a)}; the package's generate feeds it "
                    f"{_call_text(b)} (calls before it: {', '.join(str(c) for c in theirs[:i]) or 'none'}; "
                    "each is (tokens fed, positions cached))"
                )
        if len(mine) != len(theirs):
            return f"called the model {len(mine)} times; the package's generate calls it {len(theirs)} times"
        if got["the model raised"] != expected["the model raised"]:
            if got["the model raised"] is None:
                return "returned tokens where the package's generate makes the model raise"
            return f"made the model raise ValueError: {got['the model raised']}"
        if got["the model raised"] is not None:
            return None
    tokens, want = got["tokens"], expected["tokens"]
    if tokens.shape != want.shape:
        return f"returned shape {tuple(tokens.shape)}, expected {tuple(want.shape)} (the prompt, then the new tokens)"
    T = case.args[1].size(-1)
    if not torch.equal(tokens[:, :T], want[:, :T]):
        return "returned tokens that do not start with the whole prompt (return the prompt, then the new tokens)"
    differ = (tokens != want).nonzero()
    if len(differ):
        b, t = (int(i) for i in differ[0])
        return (
            f"gives new token {t - T + 1} of row {b} as {int(tokens[b, t])}; the package's generate, with the same "
            f"seeded generator, gives {int(want[b, t])}"
        )
    if "model.training after" in expected and got["model.training after"] != expected["model.training after"]:
        return (
            f"leaves the model with training={got['model.training after']}; it was in training mode before "
            "and the package's generate puts it back"
        )
    return None


def _generate(mistake: str = "") -> Callable[..., torch.Tensor]:
    """The package's ``generate`` with one known mistake (``mistake`` names it)."""
    f = reference

    def generate(
        model: nn.Module,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        repetition_penalty: float = 1.0,
    ) -> torch.Tensor:
        if max_new_tokens < 0 and mistake != "no check of max_new_tokens":
            raise ValueError("max_new_tokens must be >= 0")
        if temperature < 0 or repetition_penalty <= 0:
            raise ValueError("temperature must be >= 0 and repetition_penalty > 0")
        if idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError("idx must be (B, T) int64")
        config = model.config
        bs, prompt = config.block_size, idx.size(1)
        use_cache = use_cache and mistake != "use_cache ignored"
        start, cache = max(0, idx.size(1) - bs), None
        was_training = model.training
        model.eval() if mistake != "dropout left on" else None
        try:
            with torch.no_grad():
                for _ in range(max_new_tokens):
                    new_start = f.context_start(start, idx.size(1), bs)
                    if mistake == "nanoGPT's crop at every step":
                        new_start = max(0, idx.size(1) - bs)
                    if new_start != start:
                        start = new_start
                        if mistake == "cache not rebuilt when the context jumps":
                            pass
                        elif mistake == "rebuilt cache fed only the last token" and cache is not None:
                            cache = KVCache(config.n_layer)
                        else:
                            cache = None
                    if mistake == "a fresh cache at every step" and use_cache:
                        cache = None
                    if cache is not None:
                        fed = idx[:, start:] if mistake == "the whole context fed again with the cache" else idx[:, -1:]
                        logits, _ = model(fed, cache=cache, last_only=True)
                    elif mistake == "the prompt fed one token at a time" and use_cache:
                        cache = KVCache(config.n_layer)
                        for t in range(start, idx.size(1)):
                            logits, _ = model(idx[:, t : t + 1], cache=cache, last_only=True)
                    else:
                        cache = KVCache(config.n_layer) if use_cache else None
                        logits, _ = model(idx[:, start:], cache=cache, last_only=True)
                    seen = idx[:, -bs:]
                    if mistake == "the prompt not penalised":
                        seen = idx[:, prompt:]
                    elif mistake == "the penalty on the whole sequence":
                        seen = idx
                    logits = logits[:, -1, :].float()
                    if seen.size(1):
                        logits = f.apply_repetition_penalty(logits, seen, repetition_penalty)
                    if temperature == 0:
                        next_id = logits.argmax(dim=-1, keepdim=True)
                    else:
                        probs = torch.softmax(f.filter_logits(logits, temperature, top_k, top_p), dim=-1)
                        gen = None if mistake == "generator not passed to torch.multinomial" else generator
                        next_id = torch.multinomial(probs, num_samples=1, generator=gen)
                    idx = torch.cat([idx, next_id], dim=1)
        finally:
            if mistake != "the model's mode not restored":
                model.train(was_training)
        return idx

    return generate


GENERATE_HINTS = {
    "no check of max_new_tokens": "a negative max_new_tokens is a mistake of the caller: raise a ValueError "
    f"before generating anything ({CHAPTER}, The sampling loop)",
    "dropout left on": "sample in eval mode: dropout in training mode changes the logits at random "
    f"({CHAPTER}, The sampling loop)",
    "the model's mode not restored": "put the model back in the mode it was in (gptcourse.loops.evaluating "
    f"does both): sampling in the middle of training must not switch dropout off ({CHAPTER}, The sampling loop)",
    "generator not passed to torch.multinomial": "draw with torch.multinomial(probs, 1, generator=generator): "
    f"a seeded generator must reproduce the same text ({CHAPTER}, The sampling loop)",
    "the prompt not penalised": "the repetition penalty counts every token of the last block_size, the "
    f"prompt's included ({CHAPTER}, A repetition penalty)",
    "the penalty on the whole sequence": "the repetition penalty counts the last block_size tokens only, "
    f"not the whole text generated so far ({CHAPTER}, A repetition penalty)",
    "nanoGPT's crop at every step": "the context does not slide one token at a time: when it would pass "
    "block_size it jumps to keep its last block_size // 2 tokens (context_start), and stays there until it "
    f"fills up again ({CHAPTER}, Past block_size)",
}

CACHE_HINTS = {
    "use_cache ignored": "with use_cache=True keep a KVCache: feed the context once, then only the new token "
    f"with the cache ({CHAPTER}, The KV cache)",
    "the whole context fed again with the cache": "with a cache, feed only the token just sampled: the "
    f"earlier positions' keys and values are already in the cache ({CHAPTER}, The cached loop, and the proof)",
    "a fresh cache at every step": "keep the same KVCache from one step to the next: a new one each step "
    f"recomputes the whole context every time ({CHAPTER}, The cached loop, and the proof)",
    "the prompt fed one token at a time": "feed the whole context (the prompt) in one call: the cache fills with "
    f"all its positions at once ({CHAPTER}, The cached loop, and the proof)",
    "cache not rebuilt when the context jumps": "when the context jumps (context_start moves) the cached "
    "positions are numbered from the old start: start a new cache and feed it the new context "
    f"({CHAPTER}, Past block_size)",
    "rebuilt cache fed only the last token": "a new cache is empty: after the context jumps, feed it the "
    f"whole new context, not only the last token ({CHAPTER}, Past block_size)",
}

GENERATE = Spec(
    id="lab10.generate",
    points=3,
    name="generate",
    reference=reference.generate,
    cases=generate_cases,
    run=run_generate,
    compare=compare_generated,
    forbidden=FORBIDDEN,
    hint="each step: the context from context_start, the model's last logits, the repetition penalty on the "
    "last block_size tokens, then the arg-max (temperature 0) or torch.multinomial on the softmax of "
    f"filter_logits with the generator; eval mode, restored after ({CHAPTER}, The sampling loop)",
    misconceptions=tuple(Misconception(n, _generate(n), h) for n, h in GENERATE_HINTS.items()),
)

CACHE = Spec(
    id="lab10.cache",
    points=3,
    name="generate",
    reference=reference.generate,
    cases=cache_cases,
    run=run_generate,
    compare=compare_generated,
    forbidden=FORBIDDEN,
    hint="the first call feeds the context to a new KVCache(n_layer); each later call feeds the last token "
    f"with that cache; when the context jumps, a new cache and the new context ({CHAPTER}, The KV cache)",
    misconceptions=tuple(Misconception(n, _generate(n), h) for n, h in CACHE_HINTS.items()),
)

SPECS = (TEMPERATURE, TOP_K, TOP_P, REPETITION, GENERATE, CACHE)
