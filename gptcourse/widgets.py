"""ipywidgets explorers for the chapters. Widgets are static in the online book, so every chapter
shows a plain matplotlib figure beside each one."""

from __future__ import annotations

import torch


def baby_gpt_explorer(
    snapshots: list[torch.Tensor], losses: list[float] | None = None, seen: torch.Tensor | None = None
):
    """A slider over training steps that redraws the baby GPT's Markov chain.

    ``snapshots[i]`` is the ``(8, 2)`` next-bit probability table after ``i`` steps (as returned
    by :func:`gptcourse.babygpt.train_baby_gpt`); ``losses[i - 1]`` is the loss of step ``i``.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from gptcourse.babygpt import draw_chain

    if not snapshots:
        raise ValueError("baby_gpt_explorer needs at least one snapshot")
    out = widgets.Output()

    def show(step: int) -> None:
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(7, 4))
            title = f"after {step} steps" + (f" (loss {losses[step - 1]:.3f})" if losses and step else "")
            draw_chain(snapshots[step], ax=ax, title=title, seen=seen)
            plt.show()

    slider = widgets.IntSlider(value=0, min=0, max=len(snapshots) - 1, description="step", continuous_update=False)
    play = widgets.Play(value=0, min=0, max=len(snapshots) - 1, interval=300)
    widgets.jslink((play, "value"), (slider, "value"))
    slider.observe(lambda change: show(change["new"]), names="value")
    show(0)
    return widgets.VBox([widgets.HBox([play, slider]), out])


def attention_explorer(model: torch.nn.Module, encode, decode, text: str, max_len: int = 48):
    """Type a text, pick a layer and a head (or their mean): see where each position looks.

    ``encode(str) -> list[int]`` and ``decode(list[int]) -> str`` are the model's tokenizer; the text
    is cut to its last ``min(max_len, block_size)`` tokens. The heatmap is
    :func:`gptcourse.plots.attention_heatmap` of :func:`gptcourse.attention.attention_maps`.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from gptcourse.attention import attention_maps
    from gptcourse.plots import attention_heatmap

    n_layer, n_head = model.config.n_layer, model.config.n_head
    max_len = min(max_len, model.config.block_size)
    device = next(model.parameters()).device
    box = widgets.Text(value=text, description="text", layout=widgets.Layout(width="60%"), continuous_update=False)
    layer = widgets.IntSlider(value=0, min=0, max=n_layer - 1, description="layer", continuous_update=False)
    head = widgets.Dropdown(options=[("mean", -1)] + [(str(h), h) for h in range(n_head)], value=0, description="head")
    out = widgets.Output()

    def show(_=None) -> None:
        ids = encode(box.value)[-max_len:]
        with out:
            out.clear_output(wait=True)
            if not ids:
                print("type some text")
                return
            maps = attention_maps(model, torch.tensor([ids], device=device))[layer.value][0]
            w = maps.mean(0) if head.value < 0 else maps[head.value]
            labels = [decode([i]) for i in ids]
            attention_heatmap(w, labels, title=f"layer {layer.value}, head {head.options[head.index][0]}")
            plt.show()

    for w in (box, layer, head):
        w.observe(show, names="value")
    show()
    return widgets.VBox([box, widgets.HBox([layer, head]), out])


def sampling_explorer(logits: torch.Tensor, labels: list[str]):
    """Sliders for temperature, top-k and top-p over one next-token distribution (1-D ``logits``,
    one label per token): redraws :func:`gptcourse.plots.sampling_distribution`."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from gptcourse.plots import sampling_distribution

    out = widgets.Output()
    temperature = widgets.FloatSlider(
        value=1.0, min=0.0, max=3.0, step=0.05, description="temperature", continuous_update=False
    )
    top_k = widgets.IntSlider(
        value=logits.numel(), min=1, max=logits.numel(), description="top-k", continuous_update=False
    )
    top_p = widgets.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top-p", continuous_update=False)

    def show(_=None) -> None:
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(9, 3))
            sampling_distribution(logits, labels, temperature.value, top_k.value, top_p.value, ax=ax)
            plt.show()

    for w in (temperature, top_k, top_p):
        w.observe(show, names="value")
    show()
    return widgets.VBox([widgets.HBox([temperature, top_k, top_p]), out])
