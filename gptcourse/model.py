"""The GPT model: one configuration dataclass, a block, and the model.

Every variant the course discusses is a :class:`GPTConfig` switch on the same classes: LayerNorm
placement (``norm``), key/value heads (``n_kv_head``), position embeddings (``pos``), the final
LayerNorm and the scaled residual init (GPT-1 had neither), dense or sparse ``attention``, and the
feed-forward kind (``ffn``). Parameter names follow GPT-2 / nanoGPT so that real weights load.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcourse.attention import KVCache, MultiHeadAttention

NORMS = ("pre", "post")
POSITIONS = ("learned", "sinusoidal", "none")
ATTENTIONS = ("dense",)
FFNS = ("mlp",)


@dataclass
class GPTConfig:
    """Hyper-parameters of a GPT. The defaults are GPT-2 small (124M parameters)."""

    vocab_size: int = 50257
    block_size: int = 1024  # the longest context the model can read
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int | None = None  # None: = n_head (multi-head); 1: multi-query; else grouped-query
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms (GPT-2: True)
    norm: str = "pre"  # "pre" (GPT-2) or "post" (GPT-1, the original Transformer)
    pos: str = "learned"  # "learned" (GPT), "sinusoidal" (original Transformer) or "none"
    final_norm: bool = True  # a LayerNorm after the last block (added by GPT-2)
    scale_residual_init: bool = True  # residual projections init with std 0.02/sqrt(2*n_layer) (GPT-2)
    attention: str = "dense"
    ffn: str = "mlp"
    n_expert: int = 8  # used when ffn == "moe"
    expert_top_k: int = 2  # used when ffn == "moe"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None:
            if not isinstance(self.n_kv_head, int) or self.n_kv_head < 1 or self.n_head % self.n_kv_head:
                raise ValueError(f"GPTConfig.n_kv_head must divide n_head ({self.n_head}), got {self.n_kv_head!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        for name, allowed in (("norm", NORMS), ("pos", POSITIONS), ("attention", ATTENTIONS), ("ffn", FFNS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.ffn == "moe":
            if not isinstance(self.n_expert, int) or self.n_expert < 2:
                raise ValueError(f"GPTConfig.n_expert must be an integer >= 2, got {self.n_expert!r}")
            if not isinstance(self.expert_top_k, int) or not 1 <= self.expert_top_k <= self.n_expert:
                raise ValueError(f"GPTConfig.expert_top_k must be in [1, n_expert={self.n_expert}], "
                                 f"got {self.expert_top_k!r}")

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads actually used."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_positions(T: int, C: int) -> torch.Tensor:
    """``(T, C)`` fixed position codes of the original Transformer:
    ``PE[t, 2i] = sin(t / 10000^(2i/C))`` and ``PE[t, 2i+1] = cos(t / 10000^(2i/C))``."""
    t = torch.arange(T, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, C, 2, dtype=torch.float32) / C)
    pe = torch.zeros(T, C)
    pe[:, 0::2] = torch.sin(t * freq)
    pe[:, 1::2] = torch.cos(t * freq)[:, : C // 2]
    return pe


class MLP(nn.Module):
    """The position-wise feed-forward network: ``C -> 4C -> GELU (tanh approximation) -> C``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C) -> (B, T, C)``."""
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """One Transformer block: attention then MLP, each in a residual branch with a LayerNorm.

    ``norm="pre"`` (GPT-2): ``x + f(LN(x))``, the residual stream is never normalised.
    ``norm="post"`` (GPT-1): ``LN(x + f(x))``, every block normalises the stream.
    """

    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = MultiHeadAttention(config.n_embd, config.n_head, config.n_kv_head, config.dropout,
                                       config.bias, layer=layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``(B, T, C) -> (B, T, C)``."""
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), cache)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, cache))
        return self.ln_2(x + self.mlp(x))


class GPT(nn.Module):
    """A decoder-only Transformer: ``h0 = U We + Wp``, ``n_layer`` blocks, ``softmax(h_n We^T)``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, layer=i) for i in range(config.n_layer)]),
        ))
        if config.pos == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos == "sinusoidal":
            self.register_buffer("pos_code", sinusoidal_positions(config.block_size, config.n_embd),
                                 persistent=False)
        if config.final_norm:
            self.transformer["ln_f"] = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the output layer reads the token embedding matrix (We^T)
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        if config.scale_residual_init:
            # each block adds two residual branches; keep the stream's variance from growing with depth
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """The number of trainable parameters; the tied embedding/output matrix is counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx`` is ``(B, T)`` token ids; returns ``(logits (B, T, vocab_size), loss or None)``.

        ``targets`` ``(B, T)`` gives the mean cross-entropy (``-1`` marks positions to ignore).
        With ``cache``, ``idx`` holds only the new tokens and positions continue from the cache.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        B, T = idx.shape
        start = len(cache) if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size="
                             f"{self.config.block_size}; crop the context to its last "
                             f"{self.config.block_size} tokens")
        x = self.transformer.wte(idx)  # (B, T, C)
        if self.config.pos == "learned":
            x = x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device))
        elif self.config.pos == "sinusoidal":
            x = x + self.pos_code[start : start + T]
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache)
        if self.config.final_norm:
            x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss
