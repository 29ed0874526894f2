"""Exercise specs for Lab 10 (sampling): ``temperature_probs(logits, temperature)``,
``top_k_probs(logits, k)``, ``top_p_probs(logits, p)`` and ``sample(logits, temperature, top_k,
top_p, generator)``, against :func:`gptcourse.generate.filter_logits`.

The three filters return distributions and are compared value by value. The sampler is judged as
a distribution too: its driver draws :data:`DRAWS` tokens from every row of the case's logits with
one seeded generator, and :func:`compare_draws` fails on any token the reference never draws (one
of probability 0 after the filters), then on any frequency more than :data:`Z` standard errors
from the reference's. Two correct samplers draw different tokens from the same generator, so
draws are never compared one by one. Case logits keep every token the filters leave at a
probability of at least :data:`FLOOR`, so that the reference draws each of them too, and keep the
top-p boundary clear of every cumulative probability, so that rounding cannot move a token across it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from gptcourse.generate import filter_logits
from gptcourse.grading.spec import AnswerError, Case, Misconception, Spec, close

DRAWS = 3000  # tokens drawn from each row of a sampling case
Z = 6.0  # standard errors a frequency may differ by: a correct sampler fails about once in 10^6 checks
FLOOR = 0.01  # smallest probability a case leaves a kept token: DRAWS * FLOOR draws expected
MARGIN = 1e-3  # smallest distance of a cumulative probability from top_p in a case
FORBIDDEN = ("gptcourse.generate.filter_logits",)

_close = close(atol=1e-5, rtol=1e-4)


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """An int in ``[low, high]``."""
    return int(torch.randint(low, high + 1, (), generator=g))


def _filtered(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """The reference's ``(B, V)`` distribution; temperature 0 is one-hot on the arg-max."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.size(-1)).float()
    return torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)


def _clear(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> bool:
    """Whether no two logits of a row (nearly) tie and the top-p boundary is clear of every
    cumulative probability: then every correct implementation keeps the same tokens."""
    ordered = logits.sort(dim=-1, descending=True).values
    if (ordered[:, :-1] - ordered[:, 1:]).min() < 1e-3:
        return False
    if top_p is None or top_p >= 1.0:
        return True
    before_top_p = filter_logits(logits, temperature, top_k) if temperature else logits
    probs = torch.softmax(before_top_p, dim=-1).sort(dim=-1, descending=True).values.double()
    before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
    return bool(((before - top_p).abs()[probs > 1e-5] >= MARGIN).all())


def _logits(g: torch.Generator, B: int, V: int, scale: float, top_p: float | None = None) -> torch.Tensor:
    """Random ``(B, V)`` logits that are :func:`_clear` for ``top_p`` (drawn again until they are)."""
    while True:
        logits = torch.randn(B, V, generator=g) * scale
        if _clear(logits, 1.0, None, top_p):
            return logits


def compare_probs(got: Any, expected: Any, case: Case) -> str | None:
    """Value by value, after saying so when a row does not sum to what the expected one sums to (1)."""
    if (
        isinstance(got, torch.Tensor)
        and isinstance(expected, torch.Tensor)
        and got.shape == expected.shape
        and got.is_floating_point()
        and got.dim() > 0
    ):
        sums, want = got.double().sum(-1), expected.double().sum(-1)
        off = ~torch.isclose(sums, want, atol=1e-4, equal_nan=True)
        if off.any():
            b = tuple(int(i) for i in off.nonzero()[0])
            return f"row {b[0] if len(b) == 1 else b} sums to {float(sums[b]):.4g}: a distribution sums to 1"
    return _close(got, expected, case)


# --- Exercise 1: temperature ------------------------------------------------------------------------------


def temperature_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("temperature 0: greedy", (_logits(g, 3, 8, 2.0), 0.0)),
        Case("temperature 1: the plain softmax", (_logits(g, 3, 8, 2.0), 1.0)),
        Case("a low temperature sharpens", (_logits(g, 2, 10, 2.0), 0.3)),
        Case("a high temperature flattens", (_logits(g, 2, 10, 2.0), 2.5)),
        Case("a single row", (_logits(g, 1, 6, 2.0), 0.7)),
    ]
    for i in range(3):
        B, V = _randint(g, 1, 4), _randint(g, 5, 60)
        t = float(f"{_uniform(g, 0.05, 5.0):.3g}")
        cases.append(Case(f"random temperature {i + 1}", (_logits(g, B, V, _uniform(g, 0.5, 4.0)), t)))
    return cases


def reference_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return _filtered(logits, temperature, None, None)


def _one_hot_or(probs: Callable[[torch.Tensor, float], torch.Tensor]) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """Temperature 0 handled right, everything else by ``probs`` (a misconception)."""

    def temperature_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
        return reference_temperature(logits, 0.0) if temperature == 0 else probs(logits, temperature)

    return temperature_probs


TEMPERATURE = Spec(
    id="lab10.temperature",
    points=2,
    name="temperature_probs",
    reference=reference_temperature,
    cases=temperature_cases,
    compare=compare_probs,
    forbidden=FORBIDDEN,
    hint="divide the logits by the temperature, then softmax over the vocabulary (the last dimension); "
    "temperature 0 is the limit: all the probability on each row's arg-max",
    misconceptions=(
        Misconception(
            "temperature multiplies",
            lambda logits, t: torch.softmax(logits * t, dim=-1),
            "the logits are divided by the temperature: a temperature below 1 makes them larger, "
            "which sharpens the distribution",
        ),
        Misconception(
            "temperature 0 divided by",
            lambda logits, t: torch.softmax(logits / t, dim=-1),
            "dividing by a temperature of 0 gives infinities and NaN: temperature 0 is greedy "
            "decoding, a one-hot row on the arg-max",
        ),
        Misconception(
            "arg-max index for temperature 0",
            lambda logits, t: logits.argmax(-1) if t == 0 else torch.softmax(logits / t, dim=-1),
            "with temperature 0 still return a (B, V) distribution: 1 at each row's arg-max, 0 elsewhere",
        ),
        Misconception(
            "no softmax",
            _one_hot_or(lambda logits, t: logits / t),
            "return probabilities: after dividing by the temperature, softmax over the vocabulary",
        ),
        Misconception(
            "softmax over the batch",
            _one_hot_or(lambda logits, t: torch.softmax(logits / t, dim=0)),
            "each row is one distribution over the vocabulary: normalise along the last dimension (V), "
            "not across the rows",
        ),
    ),
)


# --- Exercise 2: top-k ------------------------------------------------------------------------------------


def top_k_cases(g: torch.Generator) -> list[Case]:
    cases = [
        Case("k = 2", (_logits(g, 3, 10, 2.0), 2)),
        Case("k = 1: the arg-max only", (_logits(g, 3, 10, 2.0), 1)),
        Case("k = V: nothing removed", (_logits(g, 2, 7, 2.0), 7)),
        Case("k larger than the vocabulary", (_logits(g, 2, 6, 2.0), 9)),
        Case("a single row", (_logits(g, 1, 12, 2.0), 4)),
    ]
    for i in range(3):
        B, V = _randint(g, 1, 4), _randint(g, 5, 60)
        cases.append(Case(f"random k {i + 1}", (_logits(g, B, V, _uniform(g, 0.5, 4.0)), _randint(g, 1, V))))
    return cases


def reference_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    return _filtered(logits, 1.0, k, None)


def _top_k(
    keep_kth: bool = True, renormalise: bool = True, largest: bool = True, fill: float = float("-inf")
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Top-k with one piece changed (a misconception)."""

    def top_k_probs(logits: torch.Tensor, k: int) -> torch.Tensor:
        kth = torch.topk(logits, min(k, logits.size(-1)), dim=-1, largest=largest).values[..., -1:]
        removed = (logits < kth if keep_kth else logits <= kth) if largest else logits > kth
        if not renormalise:
            return torch.softmax(logits, dim=-1).masked_fill(removed, 0.0)
        return torch.softmax(logits.masked_fill(removed, fill), dim=-1)

    return top_k_probs


TOP_K = Spec(
    id="lab10.top_k",
    points=2,
    name="top_k_probs",
    reference=reference_top_k,
    cases=top_k_cases,
    compare=compare_probs,
    forbidden=FORBIDDEN,
    hint="keep each row's k largest logits (all of them when k >= V), give the others -inf, then softmax: "
    "the kept tokens share all the probability",
    misconceptions=(
        Misconception(
            "the k-th largest removed too",
            _top_k(keep_kth=False),
            "keep k tokens: the k-th largest logit itself stays; only logits smaller than it go",
        ),
        Misconception(
            "not renormalised",
            _top_k(renormalise=False),
            "after removing tokens the kept ones must share all the probability: filter the logits "
            "first, then softmax (or divide by the kept total)",
        ),
        Misconception(
            "the k smallest kept", _top_k(largest=False), "keep the k most likely tokens: the k largest logits"
        ),
        Misconception(
            "removed logits set to 0",
            _top_k(fill=0.0),
            "a removed logit of 0 still gets probability exp(0) > 0: removed logits must be -inf",
        ),
    ),
)


# --- Exercise 3: top-p ------------------------------------------------------------------------------------


def top_p_cases(g: torch.Generator) -> list[Case]:
    peaked = _logits(g, 2, 8, 1.0)
    peaked[:, 0] += 6.0  # one token holds most of the mass
    cases = [
        Case("p = 0.5", (_logits(g, 3, 10, 0.5, top_p=0.5), 0.5)),
        Case("p = 0.9", (_logits(g, 3, 10, 2.0, top_p=0.9), 0.9)),
        Case("p tiny: only the most likely token", (_logits(g, 2, 8, 2.0), 1e-3)),
        Case("p = 1: nothing removed", (_logits(g, 2, 8, 1.5), 1.0)),
        Case("the most likely token alone reaches p", (peaked, 0.6)),
    ]
    for i in range(3):
        B, V, p = _randint(g, 1, 4), _randint(g, 5, 60), float(f"{_uniform(g, 0.05, 0.99):.3g}")
        cases.append(Case(f"random p {i + 1}", (_logits(g, B, V, _uniform(g, 0.5, 4.0), top_p=p), p)))
    return cases


def reference_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    return _filtered(logits, 1.0, None, p)


def _top_p(
    crossing_kept: bool = True,
    renormalise: bool = True,
    sort: bool = True,
    unsort: bool = True,
    descending: bool = True,
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """Top-p with one piece changed (a misconception)."""

    def top_p_probs(logits: torch.Tensor, p: float) -> torch.Tensor:
        probs = torch.softmax(logits, dim=-1)
        if sort:
            ordered, order = torch.sort(probs, descending=descending, dim=-1)
        else:
            ordered, order = probs, torch.arange(probs.size(-1)).expand_as(probs)
        cumulative = ordered.cumsum(-1)
        drop = cumulative - ordered >= p if crossing_kept else cumulative > p
        drop[..., 0] = False  # the first token always stays
        if unsort:
            drop = drop.scatter(-1, order, drop)
        kept = probs.masked_fill(drop, 0.0)
        return kept / kept.sum(-1, keepdim=True) if renormalise else kept

    return top_p_probs


TOP_P = Spec(
    id="lab10.top_p",
    points=2,
    name="top_p_probs",
    reference=reference_top_p,
    cases=top_p_cases,
    compare=compare_probs,
    forbidden=FORBIDDEN,
    hint="sort each row's probabilities from the most likely down, keep the smallest prefix whose total reaches p "
    "(the most likely token always stays), give the rest probability 0 and renormalise (Chapter 11)",
    misconceptions=(
        Misconception(
            "top_p ignored",
            lambda logits, p: torch.softmax(logits, dim=-1),
            "p < 1 removes the unlikely tail: keep only the smallest set of most likely tokens whose "
            "total probability reaches p",
        ),
        Misconception(
            "the token that crosses p removed",
            _top_p(crossing_kept=False),
            "keep the smallest prefix whose total reaches p: the token that takes the total past p stays "
            "(a token goes only when the tokens ranked above it already reach p)",
        ),
        Misconception(
            "not renormalised",
            _top_p(renormalise=False),
            "after removing the tail, divide the kept probabilities by their total so that each row sums to 1",
        ),
        Misconception(
            "cumulative sum in vocabulary order",
            _top_p(sort=False, unsort=False),
            "the nucleus is made of the most likely tokens: sort by probability, most likely first, before adding up",
        ),
        Misconception(
            "mask left in sorted order",
            _top_p(unsort=False),
            "the keep/remove decision is made in sorted order: map it back to the tokens' own positions "
            "(the permutation the sort returned) before applying it",
        ),
        Misconception(
            "least likely first",
            _top_p(descending=False),
            "sort from the most likely token down: the nucleus keeps the head of the distribution",
        ),
    ),
)


# --- Exercise 4: the sampler ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Seed:
    """Case input for ``sample``: the seed of the ``torch.Generator`` the driver passes."""

    seed: int

    def __repr__(self) -> str:
        return f"Generator(seed={self.seed})"

    def make(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


# a row whose cumulative probabilities (0.41, 0.67, 0.82, 0.91 at T = 1; 0.51, 0.81 within its top 3) keep
# away from the top-p values of the cases below, and the same row permuted
_ROW = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5])
_ROWS = torch.stack([_ROW, _ROW[torch.tensor([3, 0, 5, 1, 4, 2])]])


def _sampling_logits(
    g: torch.Generator, B: int, V: int, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """Random ``(B, V)`` logits, scaled down until every token has probability >= FLOOR at
    ``min(temperature, 1)``, and :func:`_clear` for these settings (drawn again until they are)."""
    while True:
        logits = torch.randn(B, V, generator=g)
        while torch.softmax(logits / min(temperature, 1.0), dim=-1).min() < FLOOR:
            logits = logits * 0.8
        if _clear(logits, temperature, top_k, top_p):
            return logits


def sample_cases(g: torch.Generator) -> list[Case]:
    """``(logits (B, V), temperature, top_k, top_p, Seed)``; the driver repeats each row DRAWS times."""

    def seed() -> Seed:
        return Seed(int(torch.randint(2**31, (), generator=g)))

    each = f"{DRAWS} draws per row"
    cases = [
        Case(f"temperature 0: greedy ({each})", (_sampling_logits(g, 3, 8, 1.0, None, None), 0.0, None, None, seed())),
        Case(
            f"temperature 1, no filter ({each})", (_sampling_logits(g, 2, 8, 1.0, None, None), 1.0, None, None, seed())
        ),
        Case(f"temperature 0.5 sharpens ({each})", (_ROWS / 2, 0.5, None, None, seed())),
        Case(f"top-k 3 ({each})", (_sampling_logits(g, 2, 8, 0.7, 3, None), 0.7, 3, None, seed())),
        Case(f"temperature 2 then top-p 0.6 ({each})", (_ROWS.clone(), 2.0, None, 0.6, seed())),
        Case(f"top-k 3 then top-p 0.8 ({each})", (_ROWS.clone(), 1.0, 3, 0.8, seed())),
    ]
    for i in range(2):
        t = float(f"{_uniform(g, 0.5, 1.5):.2g}")
        V = _randint(g, 5, 10)
        k = _randint(g, 2, V - 1) if _randint(g, 0, 1) else None
        p = float(f"{_uniform(g, 0.5, 0.95):.2g}") if _randint(g, 0, 1) else None
        cases.append(
            Case(
                f"random {i + 1}: temperature {t:g}, top_k {k}, top_p {p} ({each})",
                (_sampling_logits(g, 2, V, t, k, p), t, k, p, seed()),
            )
        )
    return cases


def reference_sample(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator
) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    return torch.multinomial(_filtered(logits, temperature, top_k, top_p), 1, generator=generator)


def run_sample(answer: Callable[..., Any], case: Case) -> dict[str, Any]:
    """Draw DRAWS tokens from every row of the case's logits (one call, the rows repeated) and
    return the returned shape and the ``(B, V)`` counts of each row's draws."""
    logits, temperature, top_k, top_p, seed = case.args
    B, V = logits.shape
    tokens = answer(logits.repeat(DRAWS, 1), temperature, top_k, top_p, seed.make())
    if not isinstance(tokens, torch.Tensor):
        raise AnswerError(f"sample returned a {type(tokens).__name__}; return a tensor of token ids")
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise AnswerError(f"sample returned dtype {tokens.dtype}; token ids are integers (torch.long)")
    if tokens.numel() != DRAWS * B:
        raise AnswerError(
            f"sample returned {tokens.numel()} token ids for {DRAWS * B} rows of logits; draw one token per row"
        )
    ids = tokens.reshape(DRAWS, B).long()  # row n * B + b of the repeated logits is row b
    if ids.min() < 0 or ids.max() >= V:
        raise AnswerError(
            f"sample returned token id {int(ids.max() if ids.max() >= V else ids.min())}, "
            f"outside the vocabulary 0 .. {V - 1}"
        )
    counts = torch.zeros(B, V, dtype=torch.long).scatter_add_(1, ids.t(), torch.ones(B, DRAWS, dtype=torch.long))
    return {"shape": tuple(tokens.shape), "counts": counts}


def compare_draws(got: Any, expected: Any, case: Case) -> str | None:
    """The shape; then no draw of a token the expected sampler never drew (probability 0); then each
    token's frequency within Z standard errors (of the difference of two samples) of the expected one."""
    counts, got_counts = expected["counts"], got.get("counts") if isinstance(got, dict) else None
    if not (
        isinstance(got_counts, torch.Tensor) and got_counts.shape == counts.shape and not got_counts.is_floating_point()
    ):
        return "returned a malformed output (not the shape and the counts of its draws)"
    if got.get("shape") != expected["shape"]:
        return f"returned shape {got.get('shape')}, expected {expected['shape']}: one token id per row, in a column"
    cg, ce = got["counts"].double(), counts.double()
    never = (ce == 0) & (cg > 0)
    if never.any():
        b, v = (int(i) for i in never.nonzero()[0])
        return (
            f"drew token {v} of row {b} {int(cg[b, v])} times in {DRAWS} draws, a token the filters give probability 0"
        )
    ng, ne = cg.sum(-1, keepdim=True).clamp(min=1), ce.sum(-1, keepdim=True)
    fg, fe = cg / ng, ce / ne
    pooled = (cg + ce) / (ng + ne)
    excess = (fg - fe).abs() - Z * (pooled * (1 - pooled) * (1 / ng + 1 / ne)).sqrt() - 1 / ne
    if (excess > 0).any():
        b, v = (int(i) for i in torch.unravel_index(excess.argmax(), excess.shape))
        return (
            f"drew token {v} of row {b} {fg[b, v]:.1%} of the time in {DRAWS} draws, "
            f"the reference {fe[b, v]:.1%} (more than {Z:g} standard errors apart)"
        )
    return None


def _sampler(
    greedy: bool = False,
    temperature_used: bool = True,
    zero_is_greedy: bool = True,
    top_k_used: bool = True,
    top_p_used: bool = True,
    flat: bool = False,
    order: str = "tkp",
) -> Callable[..., torch.Tensor]:
    """The reference sampler with one piece changed (a misconception); ``order`` is the order of
    temperature (t), top-k (k) and top-p (p)."""

    def sample(
        logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator
    ) -> torch.Tensor:
        if greedy or (temperature == 0 and zero_is_greedy):
            tokens = logits.argmax(-1, keepdim=True)
        else:
            t = temperature if temperature_used and temperature > 0 else 1.0
            for step in order:
                if step == "t":
                    logits = logits / t
                elif step == "k" and top_k is not None and top_k_used:
                    logits = filter_logits(logits, top_k=top_k)
                elif step == "p" and top_p is not None and top_p_used:
                    logits = filter_logits(logits, top_p=top_p)
            tokens = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        return tokens.squeeze(-1) if flat else tokens

    return sample


SAMPLE = Spec(
    id="lab10.sample",
    points=3,
    name="sample",
    reference=reference_sample,
    cases=sample_cases,
    run=run_sample,
    compare=compare_draws,
    forbidden=FORBIDDEN,
    hint="temperature 0 is the arg-max; otherwise divide by the temperature, apply top-k, then top-p, softmax, "
    "and draw one token per row with torch.multinomial, passing the generator",
    misconceptions=(
        Misconception(
            "one token per row, not in a column",
            _sampler(flat=True),
            "return shape (B, 1), one token id per row in a column (the shape torch.multinomial returns): "
            "generate appends it to the (B, T) context along the last dimension",
        ),
        Misconception(
            "always greedy",
            _sampler(greedy=True),
            "only temperature 0 is greedy: otherwise draw a token at random from the filtered distribution",
        ),
        Misconception(
            "temperature 0 sampled",
            _sampler(zero_is_greedy=False),
            "temperature 0 means greedy decoding: return each row's arg-max without drawing",
        ),
        Misconception(
            "top-p before temperature",
            _sampler(order="kpt"),
            "apply the filters in the order generate uses: divide by the temperature first, so that "
            "top-p measures the tempered distribution's mass",
        ),
        Misconception(
            "temperature ignored",
            _sampler(temperature_used=False),
            "divide the logits by the temperature before the filters and the softmax",
        ),
        Misconception(
            "top-p before top-k",
            _sampler(order="tpk"),
            "top-k comes before top-p: the nucleus is measured on the distribution that top-k left, renormalised",
        ),
        Misconception(
            "top_k ignored",
            _sampler(top_k_used=False),
            "when top_k is given, only the k most likely tokens may be drawn",
        ),
        Misconception(
            "top_p ignored",
            _sampler(top_p_used=False),
            "when top_p is given, only the nucleus (the smallest set of most likely tokens whose total "
            "reaches top_p) may be drawn",
        ),
    ),
)

SPECS = (TEMPERATURE, TOP_K, TOP_P, SAMPLE)
