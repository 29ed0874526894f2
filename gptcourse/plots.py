"""Matplotlib figures the chapters share (each chapter appends the ones it needs)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch


def attention_heatmap(
    weights: torch.Tensor,
    labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    ax: plt.Axes | None = None,
    title: str | None = None,
    annotate: bool = False,
    cmap: str = "Blues",
) -> plt.Axes:
    """Draw ``(T, S)`` attention weights (or a boolean mask): row = query, column = key.

    ``labels`` name the query rows (and the key columns unless ``key_labels`` is given), e.g. the
    characters of the text; ``annotate`` writes each weight in its cell (for small examples).
    """
    w = torch.as_tensor(weights).detach().float().cpu()
    if w.dim() != 2:
        raise ValueError(f"attention_heatmap needs a (T, S) tensor, got shape {tuple(w.shape)}")
    ax = ax or plt.subplots(figsize=(0.35 * w.size(1) + 2, 0.35 * w.size(0) + 1.5))[1]
    ax.imshow(w, cmap=cmap, vmin=0.0, vmax=max(1e-9, float(w.max())))
    key_labels = labels if key_labels is None else key_labels
    for axis, names, n in ((ax.set_yticks, labels, w.size(0)), (ax.set_xticks, key_labels, w.size(1))):
        if names is not None:
            if len(names) != n:
                raise ValueError(f"{len(names)} labels for {n} rows/columns")
            axis(range(n), [repr(s)[1:-1].replace(" ", "\u2423") for s in names], fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if annotate:
        for i in range(w.size(0)):
            for j in range(w.size(1)):
                ax.text(
                    j,
                    i,
                    f"{w[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if w[i, j] > 0.6 * w.max() else "black",
                )
    if title:
        ax.set_title(title)
    return ax


def sampling_distribution(
    logits: torch.Tensor,
    labels: Sequence[str],
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    ax=None,
    title: str | None = None,
):
    """Bars of the next-token distribution of 1-D ``logits`` before (grey) and after (colour)
    temperature / top-k / top-p, as :func:`gptcourse.generate.filter_logits` applies them;
    ``temperature=0`` shows greedy decoding (all the mass on the arg-max)."""
    from gptcourse.generate import filter_logits

    if logits.dim() != 1 or len(labels) != logits.numel():
        raise ValueError(f"need 1-D logits and one label per logit, got {tuple(logits.shape)} and {len(labels)} labels")
    before = torch.softmax(logits.float(), -1)
    if temperature == 0:
        after = torch.nn.functional.one_hot(logits.argmax(), logits.numel()).float()
    else:
        after = torch.softmax(filter_logits(logits[None].float(), temperature, top_k, top_p)[0], -1)
    ax = ax if ax is not None else plt.gca()
    x = torch.arange(logits.numel())
    ax.bar(x - 0.2, before, width=0.4, color="0.75", label="softmax(logits)")
    steps = [
        f"T={temperature}" if temperature != 1.0 else "",
        f"top-k {top_k}" if top_k else "",
        f"top-p {top_p}" if top_p else "",
    ]
    applied = "greedy (T=0)" if temperature == 0 else ", ".join(step for step in steps if step)
    ax.bar(x + 0.2, after, width=0.4, color="C0", label=f"after {applied}" if applied else "sampled (unchanged)")
    ax.set_xticks(x.tolist(), [repr(s)[1:-1] for s in labels], rotation=90, fontsize=8)
    ax.set_ylabel("probability")
    ax.set_title(title or f"T={temperature}, top_k={top_k}, top_p={top_p}", fontsize=9)
    ax.legend(fontsize=8)
    return ax
