"""Sampling text from a model one token at a time.

``temperature=0`` is greedy decoding (always the arg-max: deterministic). Otherwise logits are
divided by the temperature, optionally restricted to the ``top_k`` most likely tokens and/or to the
smallest set whose probability reaches ``top_p``, renormalised, and sampled.

``repetition_penalty`` (CTRL, Keskar et al. 2019) makes tokens already in the context less
likely before anything else: a positive logit is divided by the penalty, a negative one
multiplied by it (so both move down); 1.0 turns it off.
"""

from __future__ import annotations

import torch

from gptcourse.attention import KVCache


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
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


@torch.no_grad()
def generate(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None, repetition_penalty: float = 1.0) -> torch.Tensor:
    """Extend ``idx`` ``(B, T)`` by ``max_new_tokens`` sampled tokens; returns ``(B, T + max_new_tokens)``.

    With ``use_cache`` the keys and values of earlier positions are kept (a :class:`KVCache`), so each
    step feeds the model one token instead of the whole context. When the context would exceed the
    model's ``block_size``, it is cropped to the last ``block_size`` tokens (and the cache rebuilt).
    ``repetition_penalty`` applies to every token of the (cropped) context, prompt included.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    if idx.dim() != 2 or idx.dtype != torch.long:
        raise ValueError(f"idx must be a (B, T) tensor of int64 token ids, got {tuple(idx.shape)} {idx.dtype}")
    was_training = model.training
    model.eval()
    block_size = model.config.block_size
    cache = None
    for _ in range(max_new_tokens):
        if use_cache and cache is not None and len(cache) < block_size:
            logits, _ = model(idx[:, -1:], cache=cache)
        else:
            context = idx[:, -block_size:]
            cache = KVCache(model.config.n_layer) if use_cache else None
            logits, _ = model(context, cache=cache)
        logits = apply_repetition_penalty(logits[:, -1, :].float(), idx[:, -block_size:], repetition_penalty)
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
            next_id = torch.multinomial(probs, num_samples=1, generator=generator)
        idx = torch.cat([idx, next_id], dim=1)
    model.train(was_training)
    return idx
