"""Sampling text from a model one token at a time.

``temperature=0`` is greedy decoding (always the arg-max: deterministic). Otherwise logits are
divided by the temperature, optionally restricted to the ``top_k`` most likely tokens and/or to the
smallest set whose probability reaches ``top_p``, renormalised, and sampled.

``repetition_penalty`` makes tokens already in the context less likely before anything else.
CTRL (Keskar et al. 2019) introduced it as dividing those tokens' logits by the penalty, which
makes a token with a negative logit *more* likely; this is Hugging Face's sign-aware form
(``RepetitionPenaltyLogitsProcessor``): a positive logit is divided by the penalty, a negative one
multiplied by it, so both move down (Chapter 11 shows the difference); 1.0 turns it off.
"""

from __future__ import annotations

import torch

from gptcourse.attention import KVCache
from gptcourse.loops import evaluating
from gptcourse.model import config_of


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Apply temperature, top-k and top-p to ``(B, V)`` logits; removed tokens get ``-inf``."""
    if temperature <= 0:
        raise ValueError("filter_logits needs temperature > 0 (temperature 0 means greedy: use argmax)")
    logits = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach top_p (the most likely one always stays)
        drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def apply_repetition_penalty(logits: torch.Tensor, idx: torch.Tensor, penalty: float) -> torch.Tensor:
    """``(B, V)`` logits with every token that occurs in ``idx`` ``(B, T)`` penalised once
    (however often it occurs): ``l / penalty`` if ``l > 0`` else ``l * penalty``."""
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
    if penalty == 1.0:
        return logits
    seen = logits.gather(-1, idx)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, idx, seen)


def context_start(start: int, length: int, block_size: int) -> int:
    """Where the model's context begins in a sequence of ``length`` tokens, given that it began at
    ``start``: unchanged while ``length - start <= block_size``; once the context would overflow,
    it jumps forward to keep the last ``block_size // 2`` tokens (at least one).

    Learned absolute positions cannot slide (position 0 must be the context's first token), so a
    cache cannot simply drop its oldest entry; jumping by half a window rebuilds the cache once per
    ``block_size // 2`` new tokens instead of at every token. The price: right after a jump the
    model sees half a window of context, where cropping at every token would give it a full one.
    """
    if length - start <= block_size:
        return start
    return length - max(1, block_size // 2)


def generate(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    repetition_penalty: float = 1.0,
) -> torch.Tensor:
    """Extend ``idx`` ``(B, T)`` by ``max_new_tokens`` sampled tokens; returns ``(B, T + max_new_tokens)``.

    With ``use_cache`` the keys and values of earlier positions are kept (a :class:`KVCache`), so each
    step feeds the model one token instead of the whole context. The model reads at most its
    ``block_size`` last tokens: a longer prompt is cropped to them, and when the context fills up it
    keeps its last half (:func:`context_start`; the cache is rebuilt then, once). With or without
    the cache the model sees the same context, so both give the same tokens.
    ``repetition_penalty`` applies to the last ``block_size`` tokens, prompt included.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    if idx.dim() != 2 or idx.dtype != torch.long:
        raise ValueError(f"idx must be a (B, T) tensor of int64 token ids, got {tuple(idx.shape)} {idx.dtype}")
    config = config_of(model)
    block_size = config.block_size
    start, cache = max(0, idx.size(1) - block_size), None
    with evaluating(model):
        for _ in range(max_new_tokens):
            new_start = context_start(start, idx.size(1), block_size)
            if new_start != start:  # the context moved: its cache must be rebuilt
                start, cache = new_start, None
            if cache is not None:
                logits, _ = model(idx[:, -1:], cache=cache, last_only=True)
            else:
                cache = KVCache(config.n_layer) if use_cache else None
                logits, _ = model(idx[:, start:], cache=cache, last_only=True)
            logits = apply_repetition_penalty(logits[:, -1, :].float(), idx[:, -block_size:], repetition_penalty)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat([idx, next_id], dim=1)
    return idx
