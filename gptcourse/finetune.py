"""GPT-1 fine-tuning: a labelled task, the input transformation, a classifier head, ``L3 = L2 + λ·L1``.

Radford et al. (2018) pre-train a language model, then fine-tune all of it on a labelled task with
one new linear layer ``W_y`` on the final hidden state of the last token:

* **input transformation**: the task's text(s) are wrapped in special tokens, ``<s> text <e>``
  for one text and ``<s> text1 <$> text2 <e>`` for two; the model learns new embeddings for them;
* **head**: ``P(y | x) = softmax(h_l^m W_y)`` where ``h_l^m`` is the hidden state at the extract
  token ``<e>`` (the last position of the input);
* **objective**: ``L3 = L2 + λ·L1``, the task's cross-entropy ``L2`` plus the language-modelling
  loss ``L1`` on the same inputs (the paper uses ``λ = 0.5``); ``λ = 0`` fine-tunes on ``L2`` only.

The course's task, built offline from Tiny Shakespeare: *which of the N most frequent speakers
(by number of lines) says these two consecutive lines?* The split is by speech, fixed and
documented in :func:`build_speaker_task`: the lines of one speech are either all in training or
all held out, so no held-out line has a neighbour in training. :func:`pretraining_text` removes
the held-out speeches from the pre-training text, because the raw text names each speaker right
before their lines: pre-training on it would leak the held-out labels.

The hidden states before ``lm_head`` come from a forward hook (:func:`hidden_and_logits`), so the
:class:`~gptcourse.model.GPT` itself is used unchanged.

:func:`pretrained_speaker_lm` is the language model that Chapter 14 and its sweep
(``experiments/ch14_finetune.py``) fine-tune: the course's ``shakespeare-char`` recipe on the
pre-training text, trained once and cached under :func:`gptcourse.run.checkpoint_dir`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from gptcourse import run
from gptcourse.data import train_val_split
from gptcourse.loops import evaluating, optimizer_step
from gptcourse.model import GPT, GPTConfig
from gptcourse.tokenizers import CharTokenizer
from gptcourse.train import History, TrainConfig, configure_optimizer, train

SPECIAL_TOKENS = ("<s>", "<$>", "<e>")  # start, delimiter, extract (the names of the paper's Figure 1)
TASK_BLOCK_SIZE = 96  # <s> line <$> line <e>: 86 tokens for the median pair, 98 at the 90th percentile


# --------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class Speech:
    """One turn of the play: its speaker, its lines, and its index among the text's blocks."""

    speaker: str
    lines: tuple[str, ...]
    block: int


@dataclass(frozen=True)
class Example:
    """A labelled example: one or more texts (joined by the delimiter) and a class index."""

    texts: tuple[str, ...]
    label: int


@dataclass
class SpeakerTask:
    """The speaker-identification task: class names, training and held-out examples."""

    speakers: list[str]
    train: list[Example]
    val: list[Example]
    heldout_blocks: set[int] = field(default_factory=set)  # text blocks whose lines are held out

    def counts(self, split: str) -> list[int]:
        """How many examples of each class ``split`` ("train" or "val") has."""
        labels = Counter(e.label for e in getattr(self, split))
        return [labels[i] for i in range(len(self.speakers))]


def speeches(text: str) -> list[Speech]:
    """The speeches of Tiny Shakespeare: blocks separated by a blank line whose first line is
    ``NAME:``. Blocks that are not speeches are skipped (their index still counts)."""
    out = []
    for i, block in enumerate(text.split("\n\n")):
        lines = block.strip("\n").split("\n")
        if len(lines) >= 2 and lines[0].endswith(":"):
            out.append(Speech(lines[0][:-1], tuple(lines[1:]), i))
    return out


def build_speaker_task(text: str, n_speakers: int = 4, val_fraction: float = 0.2) -> SpeakerTask:
    """Which of the ``n_speakers`` speakers with the most lines says a pair of consecutive lines?

    The split is by speech and fixed: going through each speaker's speeches in order, a speech is
    held out when that keeps the speaker's held-out lines at most ``val_fraction`` of the lines
    seen so far (rounding half a speech up); every other speech trains. Held-out examples are the
    non-overlapping pairs of consecutive lines of a held-out speech; training examples are all
    pairs (overlapping: line 1+2, 2+3, ...). Labels are ordered by number of lines, most first.
    """
    if n_speakers < 2:
        raise ValueError(f"n_speakers must be >= 2, got {n_speakers}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    all_speeches = speeches(text)
    lines = Counter()
    for s in all_speeches:
        lines[s.speaker] += len(s.lines)
    if len(lines) < n_speakers:
        raise ValueError(f"the text has {len(lines)} speakers, fewer than n_speakers={n_speakers}")
    speakers = [name for name, _ in lines.most_common(n_speakers)]
    label = {name: i for i, name in enumerate(speakers)}
    task = SpeakerTask(speakers, [], [])
    seen, held = Counter(), Counter()
    for s in all_speeches:
        if s.speaker not in label:
            continue
        n = len(s.lines)
        seen[s.speaker] += n
        heldout = held[s.speaker] + n / 2 <= val_fraction * seen[s.speaker]
        if heldout:
            held[s.speaker] += n
            task.heldout_blocks.add(s.block)
        stride, split = (2, task.val) if heldout else (1, task.train)
        for i in range(0, n - 1, stride):
            split.append(Example((s.lines[i], s.lines[i + 1]), label[s.speaker]))
    return task


def pretraining_text(text: str, task: SpeakerTask) -> str:
    """``text`` without the held-out speeches (their lines and their speaker names)."""
    blocks = text.split("\n\n")
    return "\n\n".join(b for i, b in enumerate(blocks) if i not in task.heldout_blocks)


# --------------------------------------------------------------------------- input transformation


class TaskTokenizer:
    """A :class:`CharTokenizer` plus the three special tokens, appended after its vocabulary."""

    def __init__(self, base: CharTokenizer):
        self.base = base
        self.start, self.delim, self.extract = (base.vocab_size + i for i in range(len(SPECIAL_TOKENS)))

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size + len(SPECIAL_TOKENS)

    def transform(self, texts: tuple[str, ...] | list[str], max_len: int | None = None) -> list[int]:
        """``<s> text1 <$> text2 ... <e>`` as ids. With ``max_len``, every text is cut to an equal
        share of the room so that the extract token always stays last."""
        if not texts:
            raise ValueError("transform needs at least one text")
        ids = [self.base.encode(t) for t in texts]
        if max_len is not None:
            room = max_len - len(texts) - 1  # one start/delimiter per text, one extract
            if room < len(texts):
                raise ValueError(f"max_len={max_len} leaves no room for {len(texts)} texts")
            ids = [t[: room // len(texts)] for t in ids]
        out = [self.start]
        for i, t in enumerate(ids):
            out += ([self.delim] if i else []) + t
        return out + [self.extract]

    def decode(self, ids: list[int]) -> str:
        names = dict(zip((self.start, self.delim, self.extract), SPECIAL_TOKENS))
        return "".join(names.get(i) or self.base.decode([i]) for i in ids)


def collate(
    examples: list[Example], tokenizer: TaskTokenizer, block_size: int, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch: ``idx`` ``(B, T)`` right-padded with the extract id, ``extract_pos`` ``(B,)`` (the
    index of each row's extract token) and ``labels`` ``(B,)``. Right padding is safe with a causal
    model: no real position can attend to the padding after it."""
    seqs = [tokenizer.transform(e.texts, block_size) for e in examples]
    T = max(map(len, seqs))
    idx = torch.full((len(seqs), T), tokenizer.extract, dtype=torch.long)
    for b, s in enumerate(seqs):
        idx[b, : len(s)] = torch.tensor(s)
    extract_pos = torch.tensor([len(s) - 1 for s in seqs])
    labels = torch.tensor([e.label for e in examples])
    return idx.to(device), extract_pos.to(device), labels.to(device)


def lm_targets(idx: torch.Tensor, extract_pos: torch.Tensor) -> torch.Tensor:
    """Next-token targets ``(B, T)`` for the auxiliary loss ``L1`` on the task's inputs: ``idx``
    shifted left, ``-1`` (ignored) from the extract token on (nothing real follows it)."""
    targets = torch.full_like(idx, -1)
    targets[:, :-1] = idx[:, 1:]
    positions = torch.arange(idx.size(1), device=idx.device)
    return targets.masked_fill(positions[None, :] >= extract_pos[:, None], -1)


# --------------------------------------------------------------------------- pre-training


@dataclass
class SpeakerLM:
    """The pre-trained language model of the speaker task (see :func:`pretrained_speaker_lm`)."""

    model: GPT  # in eval mode, on the device asked for
    history: History  # what its training run measured
    train_ids: torch.Tensor  # (N,) the first 90% of the pre-training text's ids: what it trained on
    val_ids: torch.Tensor  # (M,) the last 10%: held out, for gptcourse.loops.heldout_loss
    path: Path  # the checkpoint it was loaded from or saved to
    trained: bool  # True when no checkpoint existed and it was trained just now


def speaker_lm_config(tokenizer: TaskTokenizer, size: str, block_size: int = TASK_BLOCK_SIZE) -> GPTConfig:
    """The course's ``shakespeare-char`` model at ``size`` (cpu: 4 layers, 4 heads, 128 wide), with
    the task's vocabulary (the characters and the three special tokens) and ``block_size``."""
    model_kwargs, _ = run.preset("shakespeare-char", size)
    return GPTConfig(**{**model_kwargs, "vocab_size": tokenizer.vocab_size, "block_size": block_size})


def pretrained_speaker_lm(
    text: str,
    task: SpeakerTask,
    tokenizer: TaskTokenizer,
    size: str,
    device: str = "cpu",
    block_size: int = TASK_BLOCK_SIZE,
) -> SpeakerLM:
    """The language model fine-tuned in Chapter 14, trained once on ``pretraining_text(text, task)``.

    Model and recipe are the course's ``shakespeare-char`` preset at ``size`` (cpu: 3000 steps of 32
    windows, lr 2e-3 -> 2e-4, warmup 100, weight decay 0.1, beta2 0.99), with the task's vocabulary
    and ``block_size``; it trains on the first 90% of the pre-training text's ids (the last 10% is
    its held-out split) and starts from the weights ``torch.manual_seed(recipe seed)`` gives. The
    held-out speeches of ``task`` are never in its data. The checkpoint
    ``run.checkpoint_dir() / "speaker-lm-{size}-{digest}.pt"`` is named by a digest of the model
    config, the training config and a hash of the pre-training text: any change trains it again.
    """
    pre_text = pretraining_text(text, task)
    ids = torch.tensor(tokenizer.base.encode(pre_text), dtype=torch.long)
    train_ids, val_ids = train_val_split(ids)
    config = speaker_lm_config(tokenizer, size, block_size)
    train_config = TrainConfig(**run.preset("shakespeare-char", size)[1])
    text_hash = hashlib.sha256(pre_text.encode()).hexdigest()
    digest = run.config_digest(config.to_dict(), dataclasses.asdict(train_config), text_hash)
    path = run.checkpoint_dir() / f"speaker-lm-{size}-{digest}.pt"
    torch.manual_seed(train_config.seed)
    model = GPT(config)

    def train_model() -> History:
        print(f"no checkpoint at {path}: pre-training the speaker LM at the {size} size on {device}")
        return train(model, train_ids, val_ids, train_config, device)

    history, trained = run.load_or_train(path, model, train_model)
    return SpeakerLM(model.to(device).eval(), history, train_ids, val_ids, path, trained)


# --------------------------------------------------------------------------- the model and the loss


def hidden_and_logits(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden (B, T, C), lm_logits (B, T, V))``: the final hidden states (the input of
    ``lm_head``) captured by a forward hook during one ordinary forward pass."""
    captured = []
    handle = model.lm_head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    try:
        logits, _ = model(idx)
    finally:
        handle.remove()
    return captured[0], logits


def classifier_logits(hidden: torch.Tensor, extract_pos: torch.Tensor, head: nn.Linear) -> torch.Tensor:
    """The classification head: ``h_l^m W_y``, the hidden state at each row's extract token
    through the linear layer. ``hidden`` ``(B, T, C)``, ``extract_pos`` ``(B,)`` -> ``(B, K)``."""
    h = hidden[torch.arange(hidden.size(0), device=hidden.device), extract_pos]  # (B, C)
    return head(h)


def combined_loss(
    class_logits: torch.Tensor, labels: torch.Tensor, lm_logits: torch.Tensor, targets: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L3, L2, L1)`` with ``L3 = L2 + lam * L1``: ``L2`` the cross-entropy of ``class_logits``
    ``(B, K)`` against ``labels`` ``(B,)``, ``L1`` the mean next-token cross-entropy of
    ``lm_logits`` ``(B, T, V)`` against ``targets`` ``(B, T)`` (``-1`` ignored)."""
    if lam < 0:
        raise ValueError(f"lam (λ) must be >= 0, got {lam}")
    l2 = F.cross_entropy(class_logits, labels)
    l1 = F.cross_entropy(lm_logits.reshape(-1, lm_logits.size(-1)), targets.reshape(-1), ignore_index=-1)
    return l2 + lam * l1, l2, l1


class GPTClassifier(nn.Module):
    """A :class:`GPT` with a linear head ``W_y`` (no bias, as in the paper) on the extract token."""

    def __init__(self, gpt: GPT, n_classes: int):
        super().__init__()
        self.gpt = gpt
        self.head = nn.Linear(gpt.config.n_embd, n_classes, bias=False)
        nn.init.normal_(self.head.weight, std=0.02)

    @property
    def config(self):
        return self.gpt.config

    def forward(self, idx: torch.Tensor, extract_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(class_logits (B, K), lm_logits (B, T, V))``."""
        hidden, lm_logits = hidden_and_logits(self.gpt, idx)
        return classifier_logits(hidden, extract_pos, self.head), lm_logits


# --------------------------------------------------------------------------- fine-tuning


@dataclass
class FinetuneHistory:
    """Per step: ``L3``, ``L2``, ``L1``; every ``eval_every`` steps and at the end: held-out accuracy
    and ``L2`` (``eval_steps`` says after which steps); ``val_accuracy``/``val_task_loss`` are the final ones."""

    loss: list[float] = field(default_factory=list)
    task_loss: list[float] = field(default_factory=list)
    lm_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    eval_task_loss: list[float] = field(default_factory=list)
    val_accuracy: float = float("nan")
    val_task_loss: float = float("nan")


def evaluate(
    model: GPTClassifier, examples: list[Example], tokenizer: TaskTokenizer, batch_size: int = 64, device: str = "cpu"
) -> tuple[float, float]:
    """``(accuracy, mean L2)`` of ``model`` on ``examples``."""
    correct, loss = 0, 0.0
    with evaluating(model):
        for i in range(0, len(examples), batch_size):
            idx, pos, labels = collate(examples[i : i + batch_size], tokenizer, model.config.block_size, device)
            logits, _ = model(idx, pos)
            correct += (logits.argmax(-1) == labels).sum().item()
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
    return correct / len(examples), loss / len(examples)


def lr_scale(step: int, steps: int, warmup_steps: int) -> float:
    """GPT-1's schedule as a factor of the peak learning rate at ``step`` (0-based): a linear warmup
    over ``warmup_steps`` steps, then a linear decay that reaches 0 after the last of ``steps`` steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return (steps - step) / max(1, steps - warmup_steps)


def finetune_step(
    model: GPTClassifier,
    optimizer: torch.optim.Optimizer,
    idx: torch.Tensor,
    extract_pos: torch.Tensor,
    labels: torch.Tensor,
    lam: float,
    grad_clip: float = 1.0,
) -> tuple[float, float, float]:
    """One update of all of ``model`` on a batch from :func:`collate` (``idx`` ``(B, T)``,
    ``extract_pos`` and ``labels`` ``(B,)``) with ``L3 = L2 + lam·L1``; returns ``(L3, L2, L1)``."""
    class_logits, lm_logits = model(idx, extract_pos)
    l3, l2, l1 = combined_loss(class_logits, labels, lm_logits, lm_targets(idx, extract_pos), lam)
    optimizer.zero_grad(set_to_none=True)
    l3.backward()
    optimizer_step(model, optimizer, grad_clip=grad_clip)
    return l3.item(), l2.item(), l1.item()


def finetune(
    model: GPTClassifier,
    task: SpeakerTask,
    tokenizer: TaskTokenizer,
    lam: float = 0.5,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 3e-4,
    warmup_steps: int = 20,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    eval_every: int = 0,
    weight_decay: float = 0.01,
) -> FinetuneHistory:
    """Fine-tune all of ``model`` on ``task.train`` with ``L3 = L2 + lam·L1`` (AdamW with
    ``weight_decay`` on the matrices, :func:`lr_scale`'s warmup and linear decay to 0, as in GPT-1;
    batches drawn without replacement by ``random.Random(seed)``), then measure accuracy on
    ``task.val``; with ``eval_every > 0``, also after every ``eval_every`` steps (the learning curve)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    model.to(device).train()
    optimizer = configure_optimizer(model, lr, weight_decay=weight_decay)
    rng = random.Random(seed)
    history = FinetuneHistory()
    for step in tqdm(range(steps), disable=not progress, desc=f"fine-tuning (λ={lam})"):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_scale(step, steps, warmup_steps)
        idx, pos, labels = collate(rng.sample(task.train, batch_size), tokenizer, model.config.block_size, device)
        l3, l2, l1 = finetune_step(model, optimizer, idx, pos, labels, lam)
        history.loss.append(l3)
        history.task_loss.append(l2)
        history.lm_loss.append(l1)
        if (eval_every > 0 and (step + 1) % eval_every == 0) or step + 1 == steps:
            accuracy, task_loss = evaluate(model, task.val, tokenizer, device=device)
            history.eval_steps.append(step + 1)
            history.eval_accuracy.append(accuracy)
            history.eval_task_loss.append(task_loss)
    history.val_accuracy, history.val_task_loss = history.eval_accuracy[-1], history.eval_task_loss[-1]
    return history
