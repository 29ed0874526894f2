"""Sampling text from a model one token at a time.

``temperature=0`` is greedy decoding (always the arg-max: deterministic). Otherwise logits are
divided by the temperature, optionally restricted to the ``top_k`` most likely tokens and/or to the
smallest set whose probability reaches ``top_p``, renormalised, and sampled.
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


@torch.no_grad()
def generate(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend ``idx`` ``(B, T)`` by ``max_new_tokens`` sampled tokens; returns ``(B, T + max_new_tokens)``.

    With ``use_cache`` the keys and values of earlier positions are kept (a :class:`KVCache`), so each
    step feeds the model one token instead of the whole context. When the context would exceed the
    model's ``block_size``, it is cropped to the last ``block_size`` tokens (and the cache rebuilt).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
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
        logits = logits[:, -1, :]
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
            next_id = torch.multinomial(probs, num_samples=1, generator=generator)
        idx = torch.cat([idx, next_id], dim=1)
    model.train(was_training)
    return idx
