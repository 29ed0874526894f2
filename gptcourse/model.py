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

from gptcourse.attention import KVCache, MultiHeadAttention, sparse_mask
from gptcourse.moe import MoE

NORMS = ("pre", "post")
POSITIONS = ("learned", "sinusoidal", "none")
# "local" and "strided": every layer uses that sparse pattern (gptcourse.attention.SPARSE_PATTERNS);
# "alternating": GPT-3's dense and locally banded layers in turn (even layers dense, odd local).
ATTENTIONS = ("dense", "local", "strided", "alternating")
FFNS = ("mlp", "moe")


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
    expert_hidden: int | None = None  # ffn == "moe": inner width of each expert MLP; None = 4 * n_embd
    capacity_factor: float | None = None  # ffn == "moe": None = no limit; else drop tokens over capacity
    moe_aux_weight: float = 0.01  # ffn == "moe": alpha of the load-balancing loss (Switch Transformer)
    attn_window: int = 128  # keys a "local" layer sees (itself included); also "alternating"
    attn_stride: int = 32  # the stride of "strided" layers (about sqrt(block_size) is the usual choice)

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
            if self.capacity_factor is not None and not (isinstance(self.capacity_factor, (int, float))
                                                         and self.capacity_factor > 0):
                raise ValueError(f"GPTConfig.capacity_factor must be None or > 0, got {self.capacity_factor!r}")
            if not isinstance(self.moe_aux_weight, (int, float)) or self.moe_aux_weight < 0:
                raise ValueError(f"GPTConfig.moe_aux_weight must be >= 0, got {self.moe_aux_weight!r}")
            if self.expert_hidden is not None and (not isinstance(self.expert_hidden, int)
                                                   or isinstance(self.expert_hidden, bool) or self.expert_hidden < 1):
                raise ValueError(f"GPTConfig.expert_hidden must be None or a positive integer, got {self.expert_hidden!r}")
        if self.attention != "dense":
            for name in ("attn_window", "attn_stride"):
                value = getattr(self, name)
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")

    def layer_attention(self, layer: int) -> str:
        """The attention pattern of block ``layer``: ``"dense"``, ``"local"`` or ``"strided"``."""
        if self.attention == "alternating":
            return "dense" if layer % 2 == 0 else "local"
        return self.attention

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
    """The position-wise feed-forward network: ``C -> 4C -> GELU (tanh approximation) -> C``.

    ``hidden`` overrides the inner width ``4C`` (mixture-of-experts layers use it for narrower experts).
    """

    def __init__(self, config: GPTConfig, hidden: int | None = None):
        super().__init__()
        hidden = 4 * config.n_embd if hidden is None else hidden
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
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
        self.mlp = MoE(config) if config.ffn == "moe" else MLP(config)
        self.layer = layer
        self.pattern = config.layer_attention(layer)
        self.window, self.stride = config.attn_window, config.attn_stride

    def attn_mask(self, T: int, cache: KVCache | None, device: torch.device) -> torch.Tensor | None:
        """This layer's ``(T, S)`` sparse mask (None for dense layers, which use the causal kernel).
        With a cache holding ``S - T`` earlier positions, the rows are those of positions ``S-T .. S``."""
        if self.pattern == "dense":
            return None
        past = 0 if cache is None or cache.keys[self.layer] is None else cache.keys[self.layer].size(2)
        return sparse_mask(self.pattern, T, past + T, window=self.window, stride=self.stride, device=device)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``(B, T, C) -> (B, T, C)``."""
        mask = self.attn_mask(x.size(1), cache, x.device)
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), cache, mask)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, cache, mask))
        return self.ln_2(x + self.mlp(x))


class GPT(nn.Module):
    """A decoder-only Transformer: ``h0 = U We + Wp``, ``n_layer`` blocks, ``softmax(h_n We^T)``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.aux_loss: torch.Tensor | None = None  # the MoE load-balancing loss of the last forward
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

    @classmethod
    def from_hf(cls, hf_model) -> GPT:
        """Build a :class:`GPT` holding the weights of a ``transformers`` ``GPT2LMHeadModel``.

        HF's GPT-2 stores its projections as ``Conv1D`` modules whose weight is ``(in, out)``, the
        transpose of ``nn.Linear``'s ``(out, in)``; those four matrices per block are transposed.
        """
        hf_config = getattr(hf_model, "config", None)
        if getattr(hf_config, "model_type", None) != "gpt2" or not hasattr(hf_model, "transformer"):
            raise TypeError(f"GPT.from_hf expects a transformers GPT2LMHeadModel, got {type(hf_model).__name__}")
        unsupported = {
            "activation_function": (hf_config.activation_function, ("gelu_new", "gelu_pytorch_tanh")),
            "scale_attn_weights": (hf_config.scale_attn_weights, (True,)),
            "scale_attn_by_inverse_layer_idx": (hf_config.scale_attn_by_inverse_layer_idx, (False,)),
            "n_inner": (hf_config.n_inner, (None, 4 * hf_config.n_embd)),
            "layer_norm_epsilon": (hf_config.layer_norm_epsilon, (1e-5,)),
        }
        for name, (value, allowed) in unsupported.items():
            if value not in allowed:
                raise ValueError(f"GPT.from_hf supports HF GPT-2 configs with {name} in {allowed}, got {value!r}")
        config = GPTConfig(vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions,
                           n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd,
                           dropout=0.0, bias=True, norm="pre", final_norm=True)
        model = cls(config)
        hf_state = hf_model.state_dict()
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        with torch.no_grad():
            for name, param in model.state_dict().items():
                if name == "lm_head.weight":
                    continue  # tied to transformer.wte.weight, copied there
                source = hf_state[name]
                if name.endswith(transposed):
                    source = source.t()
                if source.shape != param.shape:
                    raise ValueError(f"{name}: HF shape {tuple(source.shape)} does not fit {tuple(param.shape)}")
                param.copy_(source)
        return model.eval()

    @classmethod
    def from_pretrained(cls, name: str = "gpt2") -> GPT:
        """Download OpenAI's GPT-2 weights (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``) from
        the Hugging Face Hub and convert them with :meth:`GPT.from_hf`. Needs internet and ``transformers``."""
        names = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
        if name not in names:
            raise ValueError(f"GPT.from_pretrained knows {names}, got {name!r}")
        try:
            from transformers import GPT2LMHeadModel
        except ImportError as err:
            raise ImportError("GPT.from_pretrained needs the transformers package: pip install transformers") from err
        try:
            hf_model = GPT2LMHeadModel.from_pretrained(name)
        except OSError as err:
            raise OSError(f"could not download {name!r} from the Hugging Face Hub (is there internet access?): "
                          f"{err}") from err
        return cls.from_hf(hf_model)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx`` is ``(B, T)`` token ids; returns ``(logits (B, T, vocab_size), loss or None)``.

        ``targets`` ``(B, T)`` gives the mean cross-entropy (``-1`` marks positions to ignore).
        With ``cache``, ``idx`` holds only the new tokens and positions continue from the cache.

        With ``ffn="moe"``, ``self.aux_loss`` holds the load-balancing loss of this pass (the mean
        over MoE layers; ``moe_aux_weight`` when routing is uniform). In training mode it is added
        to the returned loss; in eval mode the loss is the cross-entropy alone, comparable with a
        dense model's. ``self.aux_loss`` is None for a dense feed-forward.
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
        self.aux_loss = None
        if self.config.ffn == "moe":
            self.aux_loss = torch.stack([block.mlp.aux_loss for block in self.transformer.h]).mean()
            if loss is not None and self.training:
                loss = loss + self.aux_loss
        return logits, loss


# --- parameter counting and the published configurations ---------------------------------------

def count_params(config: GPTConfig) -> int:
    """The parameter count of ``GPT(config)`` from the formula, without building the model.

    With ``C = n_embd`` and ``hd = C / n_head`` (a LayerNorm holds ``2C`` with bias, else ``C``):
    token embedding ``V C`` (shared with the output layer: tied, counted once), learned positions
    ``block_size C``, and per block: attention ``C (n_head + 2 n_kv_head) hd + C^2`` (+ biases),
    MLP ``8 C^2`` (+ biases), two LayerNorms. For multi-head attention a block is ``12 C^2 + 13 C``.
    """
    if config.ffn != "mlp":
        raise ValueError(f"count_params has no formula for GPTConfig.ffn={config.ffn!r}")
    C, bias = config.n_embd, int(config.bias)
    hd = C // config.n_head
    qkv = (config.n_head + 2 * config.kv_heads) * hd  # width of the fused c_attn output
    layer_norm = C * (1 + bias)
    attn = C * qkv + bias * qkv + C * C + bias * C
    mlp = C * 4 * C + bias * 4 * C + 4 * C * C + bias * C
    block = attn + mlp + 2 * layer_norm
    embeddings = config.vocab_size * C + (config.block_size * C if config.pos == "learned" else 0)
    return embeddings + config.n_layer * block + (layer_norm if config.final_norm else 0)


# Published configurations. GPT-1 (Radford et al. 2018): post-LN, no final LayerNorm, plain init,
# 512 positions, a 40,478-token BPE vocabulary. GPT-2 (2019) changed exactly the switches below.
# GPT-3 175B (2020) is GPT-2 scaled up (its alternating sparse layers do not change the count).
_GPT1 = dict(vocab_size=40478, block_size=512, n_layer=12, n_head=12, n_embd=768,
             norm="post", final_norm=False, scale_residual_init=False)
_GPT2 = dict(vocab_size=50257, block_size=1024, norm="pre", final_norm=True, scale_residual_init=True)
PRESETS: dict[str, dict] = {
    "gpt1": _GPT1,
    "gpt2": dict(_GPT2, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(_GPT2, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(_GPT2, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(_GPT2, n_layer=48, n_head=25, n_embd=1600),
    "gpt3": dict(_GPT2, block_size=2048, n_layer=96, n_head=96, n_embd=12288),
}
# the sizes the papers and model cards quote, for comparison with count_params
PUBLISHED_PARAMS: dict[str, str] = {
    "gpt1": "117M", "gpt2": "124M", "gpt2-medium": "355M", "gpt2-large": "774M", "gpt2-xl": "1.5B",
    "gpt3": "175B",
}


def preset_config(name: str, **overrides) -> GPTConfig:
    """A fresh :class:`GPTConfig` for a published model (see ``PRESETS``), with optional overrides,
    e.g. ``preset_config("gpt2", n_layer=2)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return GPTConfig(**{**PRESETS[name], **overrides})
