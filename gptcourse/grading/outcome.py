"""Outcome grading: the held-out loss of a model the learner trained, measured by the grader.

The capstone is graded by what the learner's model does, not by what their notebook reports. The
grader holds a held-out text the learner's kernel never sees. It cuts the text into windows of
``context + 1`` characters laid end to end; the kernel receives only the first ``context``
characters of each window, runs the learner's model (built by the learner's own code from their
checkpoint, loaded with ``weights_only=True``) and returns the logits at each window's **last
position**; the grader scores those against the character it kept back.

Two properties follow from that layout:

* a model that peeks ahead (a broken causal mask) gains nothing: at the last position there is
  nothing ahead to peek at;
* the kernel cannot look the answers up: windows do not overlap, so no window's input holds
  another window's target, and the grader applies ``log_softmax`` itself, so whatever numbers come
  back are scored as a distribution.

The text must be new to the learners (a model that memorised it, or a table of the public text, would
score well): Tiny Shakespeare's own validation split is fine for practice, not for grading.

The submission is the notebook plus one checkpoint, written by :func:`save_submission`: the
model's config and weights, and the source of the learner's own modules (``learner/gpt.py`` and the
files it uses) as text, so that the grader's fresh machine runs the learner's model code
(:func:`restore_modules`) rather than the package's fallback. All of it loads with
``weights_only=True``: tensors, dicts and strings, nothing that runs on load.

Learner side: :func:`save_submission`. Kernel side (in the grader's sandbox): :func:`restore_modules`,
:func:`load_submission`, :func:`last_position_logits`, :func:`collect_outcome`. Grader side:
:func:`heldout_windows`, :func:`heldout_loss`, :func:`award`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MIME = "application/vnd.gptcourse.outcome+json"
MODULES = ("attention", "block", "gpt", "train")  # the learner's files a capstone model is built from
_MODULE_FILE = re.compile(r"\w+\.py")


@dataclasses.dataclass(frozen=True)
class Target:
    """Points for a held-out loss at or below ``max_loss`` nats per character."""

    name: str
    max_loss: float
    points: float


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a lab's trained model is graded: its targets, the scoring context, what the kernel loads.

    ``builder`` names the learner's function ``(config: dict) -> nn.Module`` that builds their
    model from the checkpoint's ``"config"``; ``checkpoint`` is the file the submission carries."""

    targets: tuple[Target, ...]
    context: int = 128
    max_windows: int = 4000
    checkpoint: str = "capstone.pt"
    builder: str = "build_model"


def vocabulary(corpus: str = "tinyshakespeare") -> list[str]:
    """The characters the capstone's models read: :class:`~gptcourse.tokenizers.CharTokenizer`'s
    vocabulary of ``corpus`` (Tiny Shakespeare's 65)."""
    from gptcourse.data import load_text
    from gptcourse.tokenizers import CharTokenizer

    return CharTokenizer(load_text(corpus)).chars


def encode_heldout(text: str, chars: Sequence[str]) -> torch.Tensor:
    """The ids of ``text`` in the character vocabulary ``chars`` (sorted, as
    :class:`gptcourse.tokenizers.CharTokenizer` builds it); a character outside it is a clear error."""
    stoi = {c: i for i, c in enumerate(chars)}
    unknown = sorted(set(text) - stoi.keys())
    if unknown:
        raise ValueError(
            f"the held-out text has {len(unknown)} character(s) outside the model's vocabulary "
            f"({''.join(unknown)[:20]!r}): clean it to the course's character set first"
        )
    return torch.tensor([stoi[c] for c in text], dtype=torch.long)


def heldout_windows(
    ids: torch.Tensor, context: int, max_windows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut 1-D ``ids`` into non-overlapping windows of ``context + 1``: ``(inputs (N, context),
    targets (N,))``, the targets being each window's last id (the kernel gets only the inputs)."""
    if ids.dim() != 1:
        raise ValueError(f"held-out ids must be 1-D, got shape {tuple(ids.shape)}")
    n = ids.numel() // (context + 1)
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the held-out text ({ids.numel()} ids) is shorter than one window of {context + 1}")
    windows = ids[: n * (context + 1)].view(n, context + 1)
    return windows[:, :-1].contiguous(), windows[:, -1].contiguous()


def heldout_loss(logits: Any, targets: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of the cross-entropy (nats) of ``logits`` ``(N, V)`` (any numbers:
    they are normalised here) against ``targets`` ``(N,)``."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    if logits.dim() != 2 or logits.size(0) != targets.numel():
        raise ValueError(f"expected logits of shape ({targets.numel()}, vocab), got {tuple(logits.shape)}")
    if logits.size(1) <= int(targets.max()):
        raise ValueError(f"the logits cover {logits.size(1)} tokens, but a target id is {int(targets.max())}")
    if not torch.isfinite(logits).all():
        raise ValueError("the logits hold NaN or infinite values")
    nll = F.cross_entropy(logits, targets, reduction="none")
    return nll.mean().item(), (nll.std().item() / math.sqrt(nll.numel()) if nll.numel() > 1 else float("nan"))


def award(loss: float, targets: Sequence[Target]) -> list[tuple[Target, float]]:
    """Each target with the points ``loss`` earns on it (all or nothing)."""
    return [(t, t.points if loss <= t.max_loss else 0.0) for t in targets]


def save_submission(path: str | Path, config: dict, model: nn.Module, modules: Sequence[str] = MODULES) -> Path:
    """Save the capstone's submission to ``path``: ``{"config", "model", "code"}``, the weights of
    ``model`` and the text of each of the learner's ``modules`` that exists (written atomically)."""
    from gptcourse.learner import learner_dir
    from gptcourse.train import save_checkpoint

    folder = learner_dir(quiet=True)
    code = {f"{m}.py": (folder / f"{m}.py").read_text() for m in modules if (folder / f"{m}.py").is_file()}
    path = Path(path)
    save_checkpoint(path, {"config": dict(config), "model": model.state_dict(), "code": code})
    print(f"saved {path}: weights, config and your module(s) {', '.join(sorted(code)) or '(none)'}")
    return path


def restore_modules(checkpoint: str | Path) -> list[str]:
    """Write the learner's module sources kept in ``checkpoint`` into this machine's learner folder
    (the grader's fresh sandbox), so that the notebook's cells import the learner's own code."""
    from gptcourse.learner import learner_dir

    path = Path(checkpoint)
    if not path.is_file():
        print(f"no checkpoint at {path}: nothing to restore")
        return []
    code = torch.load(path, map_location="cpu", weights_only=True).get("code", {})
    folder = learner_dir(quiet=True)
    written = []
    for name, text in sorted(code.items()):
        if _MODULE_FILE.fullmatch(name) and isinstance(text, str):  # a plain file name: nothing outside the folder
            (folder / name).write_text(text)
            written.append(name)
    print(f"restored your module(s) from the checkpoint: {', '.join(written) or '(none)'}")
    return written


def load_submission(path: str | Path, build: Callable[[dict], nn.Module]) -> nn.Module:
    """The learner's model: ``build(config)`` from a checkpoint ``{"config": dict, "model": state_dict}``
    read with ``weights_only=True`` (a checkpoint cannot run code), weights loaded strictly, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: save one with torch.save({{'config': ..., 'model': ...}})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not {"config", "model"} <= state.keys():
        raise ValueError(f"{path} must hold a dict with 'config' (a dict) and 'model' (a state_dict)")
    model = build(dict(state["config"]))
    model.load_state_dict(state["model"])
    return model.eval()


@torch.no_grad()
def last_position_logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``(N, V)`` logits of ``model`` at the last position of each row of ``inputs`` ``(N, T)``, the
    rows cropped to the model's ``block_size`` when it has one. ``model(x)`` may return the logits or
    a tuple whose first item they are (the course's GPT returns ``(logits, loss)``)."""
    block_size = getattr(getattr(model, "config", None), "block_size", None)
    if block_size is not None:
        inputs = inputs[:, -block_size:]
    out = []
    for start in range(0, inputs.size(0), batch_size):
        logits = model(inputs[start : start + batch_size])
        logits = logits[0] if isinstance(logits, tuple) else logits
        out.append(logits[:, -1].float())
    return torch.cat(out)


def collect_outcome(inputs_path: str, checkpoint: str, builder: str, nonce: int) -> None:
    """In the learner's kernel: build their model with the notebook's ``builder`` function from
    ``checkpoint``, run it on the windows in ``inputs_path`` and display the last-position logits."""
    from IPython import get_ipython
    from IPython.display import display

    namespace = get_ipython().user_ns
    reply: dict[str, Any] = {"nonce": nonce}
    try:
        if builder not in namespace:
            raise NameError(f"{builder} is not defined (run the cell that defines it)")
        model = load_submission(checkpoint, namespace[builder])
        inputs = torch.load(inputs_path, weights_only=True)
        reply["logits"] = [[round(v, 4) for v in row] for row in last_position_logits(model, inputs).tolist()]
    except Exception as err:  # the learner's code failed: the grader reports why, with no points
        reply["error"] = f"{type(err).__name__}: {err}"
    print(f"collected the held-out logits of your model ({'error' if 'error' in reply else 'ok'})")
    display({MIME: reply}, raw=True)
