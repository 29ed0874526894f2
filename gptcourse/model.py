"""The GPT model: one configuration dataclass, a block, and the model.

Every variant the course discusses is a :class:`GPTConfig` switch on the same classes: LayerNorm
placement (``norm``), key/value heads (``n_kv_head``), position embeddings (``pos``), the final
LayerNorm and the scaled residual init (GPT-1 had neither), dense or sparse ``attention``, and the
feed-forward kind (``ffn``). Each switch picks a component once, at construction (a block class, a
position module, ``nn.Identity`` for a missing final LayerNorm); ``forward`` does not branch on
the configuration. Parameter names follow GPT-2 / nanoGPT so that real weights load.

The modern recipe (Part VII) adds switches that are off by default, so GPT-2's configuration,
parameters and seeded outputs are unchanged: rotary positions (``pos="rope"``, ``rope_base``),
the normalisation layer (``norm_type``: ``"layernorm"`` or ``"rmsnorm"``; ``norm`` already names
its placement), an RMSNorm over each head's queries and keys (``qk_norm``), the feed-forward's
kind (``mlp``: ``"gelu"``, ``"swiglu"`` or ``"relu2"``), an output layer of its own
(``tie_embeddings=False``), soft-capped logits (``logit_softcap``) and a per-layer pattern of
sliding-window and global layers (``window_pattern``, whose KV cache :func:`kv_cache_bytes` sizes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcourse.attention import KVCache, LayerCache, MultiHeadAttention, sparse_mask
from gptcourse.layers import MLPS, NoPositions, SinusoidalPositions, SoftCap, make_mlp, make_norm, swiglu_hidden
from gptcourse.moe import MoE

NORMS = ("pre", "post")
POSITIONS = ("learned", "sinusoidal", "none", "rope")
NORM_TYPES = ("layernorm", "rmsnorm")
# "local", "strided" and "fixed": every layer uses that sparse pattern (gptcourse.attention.SPARSE_PATTERNS);
# "alternating": GPT-3's dense and locally banded layers in turn (even layers dense, odd local).
ATTENTIONS = ("dense", "local", "strided", "fixed", "alternating")
FFNS = ("mlp", "moe")
MLP_KINDS = tuple(MLPS)  # GPTConfig.mlp: "gelu" (GPT-2), "swiglu" (Llama), "relu2" (Primer, nanochat)


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
    pos: str = "learned"  # "learned" (GPT), "sinusoidal" (original Transformer), "none" or "rope" (rotary)
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
    attn_stride: int = 32  # the stride of "strided" layers, the block of "fixed" ones (about sqrt(block_size))
    # Part VII, the modern recipe (left out of to_dict() at their defaults: see MODERN_DEFAULTS)
    rope_base: float = 10000.0  # pos == "rope": the base of the rotary frequencies (RoFormer)
    norm_type: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama, nanochat): ln_1, ln_2, ln_f
    qk_norm: bool = False  # an RMSNorm over each head's queries and keys before the dot product
    mlp: str = "gelu"  # the dense feed-forward: "gelu", "swiglu" (~equal params), "relu2" (MoE: "gelu" only)
    tie_embeddings: bool = True  # False: lm_head has its own weight (init like GPT-2's matrices)
    logit_softcap: float | None = None  # logits = cap * tanh(logits / cap) (Gemma 2); None = no cap
    window_pattern: str | None = None  # e.g. "SSSL": per layer, S = local (attn_window), L = global; repeated

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
        for name, allowed in (
            ("norm", NORMS),
            ("pos", POSITIONS),
            ("attention", ATTENTIONS),
            ("ffn", FFNS),
            ("norm_type", NORM_TYPES),
            ("mlp", MLP_KINDS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.ffn == "moe":
            if not isinstance(self.n_expert, int) or self.n_expert < 2:
                raise ValueError(f"GPTConfig.n_expert must be an integer >= 2, got {self.n_expert!r}")
            if not isinstance(self.expert_top_k, int) or not 1 <= self.expert_top_k <= self.n_expert:
                raise ValueError(
                    f"GPTConfig.expert_top_k must be in [1, n_expert={self.n_expert}], got {self.expert_top_k!r}"
                )
            if self.capacity_factor is not None and not (
                isinstance(self.capacity_factor, (int, float)) and self.capacity_factor > 0
            ):
                raise ValueError(f"GPTConfig.capacity_factor must be None or > 0, got {self.capacity_factor!r}")
            if not isinstance(self.moe_aux_weight, (int, float)) or self.moe_aux_weight < 0:
                raise ValueError(f"GPTConfig.moe_aux_weight must be >= 0, got {self.moe_aux_weight!r}")
            if self.expert_hidden is not None and (
                not isinstance(self.expert_hidden, int)
                or isinstance(self.expert_hidden, bool)
                or self.expert_hidden < 1
            ):
                raise ValueError(
                    f"GPTConfig.expert_hidden must be None or a positive integer, got {self.expert_hidden!r}"
                )
        if self.ffn == "moe" and self.mlp != "gelu":
            raise ValueError(
                f"GPTConfig.mlp={self.mlp!r} is for the dense feed-forward: ffn='moe' builds GELU experts "
                f"(gptcourse.moe.MoE), so use mlp='gelu' with it"
            )
        for name in ("qk_norm", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}")
        cap = self.logit_softcap
        if cap is not None and (not isinstance(cap, (int, float)) or isinstance(cap, bool) or not cap > 0):
            raise ValueError(f"GPTConfig.logit_softcap must be None or a number > 0, got {cap!r}")
        if self.window_pattern is not None:
            wp = self.window_pattern
            if not isinstance(wp, str) or not wp or set(wp) - {"S", "L"}:
                raise ValueError(
                    f"GPTConfig.window_pattern must be None or a non-empty string of 'S' (sliding window) "
                    f"and 'L' (global) characters, e.g. 'SSSL', got {wp!r}"
                )
            if self.attention != "dense":
                raise ValueError(
                    f"GPTConfig.window_pattern chooses each layer's attention itself: it needs "
                    f"attention='dense', got attention={self.attention!r}"
                )
        if self.pos == "rope":
            if (self.n_embd // self.n_head) % 2:
                raise ValueError(
                    f"GPTConfig.pos='rope' needs an even head size n_embd // n_head, got "
                    f"{self.n_embd} // {self.n_head} = {self.n_embd // self.n_head}"
                )
            if (
                not isinstance(self.rope_base, (int, float))
                or isinstance(self.rope_base, bool)
                or not self.rope_base > 1
            ):
                raise ValueError(f"GPTConfig.rope_base must be a number > 1, got {self.rope_base!r}")
        if self.attention != "dense" or self.window_pattern is not None:
            for name in ("attn_window", "attn_stride"):
                value = getattr(self, name)
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")

    def layer_attention(self, layer: int) -> str:
        """The attention pattern of block ``layer``: ``"dense"``, ``"local"``, ``"strided"`` or ``"fixed"``.

        With a ``window_pattern`` layer ``i`` reads character ``i % len(pattern)``: ``"S"`` is
        ``"local"`` (a sliding window of ``attn_window`` keys), ``"L"`` is ``"dense"`` (global causal);
        ``"LS"`` is GPT-3's ``attention="alternating"``."""
        if self.window_pattern is not None:
            return "local" if self.window_pattern[layer % len(self.window_pattern)] == "S" else "dense"
        if self.attention == "alternating":
            return "dense" if layer % 2 == 0 else "local"
        return self.attention

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads actually used."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    def to_dict(self) -> dict:
        """The fields as a dict (``GPTConfig(**d)`` rebuilds the config). The Part VII fields are
        left out while they hold their defaults (:data:`MODERN_DEFAULTS`), so that the dict, and the
        digests and checkpoints made from it, of every earlier configuration stay what they were."""
        d = asdict(self)
        for name, default in MODERN_DEFAULTS.items():
            if d[name] == default:
                del d[name]
        return d


MODERN_FIELDS = ("rope_base", "norm_type", "qk_norm", "mlp", "tie_embeddings", "logit_softcap", "window_pattern")
MODERN_DEFAULTS = {f.name: f.default for f in fields(GPTConfig) if f.name in MODERN_FIELDS}
"""The fields added for the modern recipe (Part VII) and their defaults, read from ``GPTConfig``:
``to_dict`` omits them at these values."""


def config_of(model: nn.Module) -> GPTConfig:
    """The :class:`GPTConfig` of ``model`` (a :class:`GPT`, a chapter's own copy of one, or either
    wrapped by ``torch.compile``): what the trainer and the sampler read besides the forward.
    Raises ``TypeError`` for a module without one, naming it."""
    config = getattr(model, "config", None)
    if not isinstance(config, GPTConfig):
        raise TypeError(f"{type(model).__name__} has no GPTConfig in .config: the trainer and the sampler need one")
    return config


class Block(nn.Module):
    """One pre-LN Transformer block (GPT-2): ``x + attn(LN(x))``, then ``x + ffn(LN(x))``.

    The residual stream itself is never normalised. The feed-forward is an :class:`MLP`, or a
    mixture of experts (``ffn="moe"``) whose load-balancing loss the block passes up.
    :func:`make_block` builds the block class that ``config.norm`` names.
    """

    norm = "pre"  # the GPTConfig.norm this class implements

    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.norm != self.norm:
            raise ValueError(
                f"{type(self).__name__} is the norm={self.norm!r} block, but GPTConfig.norm is "
                f"{config.norm!r}; build blocks with make_block(config)"
            )
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = MultiHeadAttention(
            config.n_embd,
            config.n_head,
            config.n_kv_head,
            config.dropout,
            config.bias,
            rope_base=config.rope_base if config.pos == "rope" else None,
            max_len=config.block_size,
            qk_norm=config.qk_norm,
        )
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MoE(config) if config.ffn == "moe" else make_mlp(config)

    def ffn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The feed-forward sub-layer and its auxiliary loss (None for a plain MLP)."""
        out = self.mlp(x)
        return out if isinstance(self.mlp, MoE) else (out, None)

    def forward(
        self, x: torch.Tensor, cache: LayerCache | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, T, C) -> ((B, T, C), auxiliary loss or None)``; ``cache`` and ``mask`` go to attention."""
        x = x + self.attn(self.ln_1(x), cache, mask)
        y, aux = self.ffn(self.ln_2(x))
        return x + y, aux


class PostNormBlock(Block):
    """One post-LN Transformer block (GPT-1, the original Transformer): ``LN(x + attn(x))``, then
    ``LN(x + ffn(x))``: every block normalises the stream. The same parameters as :class:`Block`."""

    norm = "post"

    def forward(
        self, x: torch.Tensor, cache: LayerCache | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.ln_1(x + self.attn(x, cache, mask))
        y, aux = self.ffn(x)
        return self.ln_2(x + y), aux


def make_block(config: GPTConfig) -> Block:
    """The block ``config.norm`` asks for: :class:`Block` (``"pre"``) or :class:`PostNormBlock` (``"post"``)."""
    return Block(config) if config.norm == "pre" else PostNormBlock(config)


def positions(config: GPTConfig) -> nn.Module:
    """The position module ``config.pos`` asks for: ``(T,)`` positions -> ``(T, C)`` vectors to add
    (nothing for ``"rope"``: the rotation happens to queries and keys inside attention)."""
    if config.pos == "learned":
        return nn.Embedding(config.block_size, config.n_embd)
    if config.pos == "sinusoidal":
        return SinusoidalPositions(config.block_size, config.n_embd)
    return NoPositions()


class Trunk(nn.ModuleDict):
    """GPT-2's ``transformer``: a ``ModuleDict`` whose keys make the parameter names
    (``transformer.wte.weight``, ``transformer.h.0.attn.c_attn.weight``, ...) that GPT-2's weights and
    every chapter's equality check load. The annotations only tell a type checker what each key holds."""

    wte: nn.Embedding  # token embedding, tied to the output layer (unless tie_embeddings=False)
    drop: nn.Dropout
    h: nn.ModuleList  # the blocks
    wpe: nn.Module  # the positions module (``positions(config)``)
    ln_f: nn.Module  # the final LayerNorm, or nn.Identity without one


class GPT(nn.Module):
    """A decoder-only Transformer: ``h0 = U We + Wp``, ``n_layer`` blocks, ``softmax(h_n We^T)``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.aux_loss: torch.Tensor | None = None  # the MoE load-balancing loss of the last forward
        # the order of registration is the order of the random init below: keep it, or every seeded
        # result of the course (chapters, tests) changes
        wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.transformer = Trunk(
            dict(
                wte=wte,
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([make_block(config) for _ in range(config.n_layer)]),
                wpe=positions(config),
                ln_f=make_norm(config, config.n_embd) if config.final_norm else nn.Identity(),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # weight tying: the output layer reads the token embedding matrix (We^T)
            self.lm_head.weight = wte.weight
        # an untied head keeps its own weight, drawn below like every Linear (N(0, 0.02), after the blocks)
        # the logits' soft cap (Gemma 2), or none; no parameters, no random numbers
        self.softcap = nn.Identity() if config.logit_softcap is None else SoftCap(config.logit_softcap)
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
        """The number of trainable parameters; a tied embedding/output matrix is counted once."""
        return sum(p.numel() for p in self.parameters())

    def attention_masks(self, T: int, S: int, device: torch.device) -> list[torch.Tensor | None]:
        """Each layer's ``(T, S)`` attention mask for ``T`` queries that are the last of ``S``
        positions: None for dense layers (causal), else the sparse pattern's mask, built once per
        pattern and shared by the layers that use it."""
        c = self.config
        patterns = [c.layer_attention(layer) for layer in range(c.n_layer)]
        masks = {
            p: sparse_mask(p, T, S, window=c.attn_window, stride=c.attn_stride, device=device)
            for p in set(patterns) - {"dense"}
        }
        return [masks.get(p) for p in patterns]

    @classmethod
    def from_hf(cls, hf_model) -> GPT:
        """Build a :class:`GPT` holding the weights of a ``transformers`` ``GPT2LMHeadModel``.

        HF's GPT-2 stores its projections as ``Conv1D`` modules whose weight is ``(in, out)``, the
        transpose of ``nn.Linear``'s ``(out, in)``; those four matrices per block are transposed.
        """
        hf_config = getattr(hf_model, "config", None)
        if (
            hf_config is None
            or getattr(hf_config, "model_type", None) != "gpt2"
            or not hasattr(hf_model, "transformer")
        ):
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
        config = GPTConfig(
            vocab_size=hf_config.vocab_size,
            block_size=hf_config.n_positions,
            n_layer=hf_config.n_layer,
            n_head=hf_config.n_head,
            n_embd=hf_config.n_embd,
            dropout=0.0,
            bias=True,
            norm="pre",
            final_norm=True,
        )
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
            raise OSError(
                f"could not download {name!r} from the Hugging Face Hub (is there internet access?): {err}"
            ) from err
        return cls.from_hf(hf_model)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx`` is ``(B, T)`` token ids; returns ``(logits (B, T, vocab_size), loss or None)``.

        ``targets`` ``(B, T)`` gives the mean cross-entropy (``-1`` marks positions to ignore).
        With ``cache``, ``idx`` holds only the new tokens and positions continue from the cache.
        ``last_only`` computes the logits of the last position only, ``(B, 1, vocab_size)`` (what
        sampling needs; it saves the output layer's work on every other position).

        With ``ffn="moe"``, ``self.aux_loss`` holds the load-balancing loss of this pass (the mean
        over MoE layers; ``moe_aux_weight`` when routing is uniform). In training mode it is added
        to the returned loss; in eval mode the loss is the cross-entropy alone, comparable with a
        dense model's. ``self.aux_loss`` is None for a dense feed-forward.
        """
        start, T = self._check_input(idx, cache)
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        masks = self.attention_masks(T, start + T, idx.device)
        aux_losses = []
        for i, (block, mask) in enumerate(zip(self.transformer.h, masks)):
            x, aux = block(x, None if cache is None else cache.layer(i), mask)
            if aux is not None:
                aux_losses.append(aux)
        x = self.transformer.ln_f(x)
        logits = self.softcap(self.lm_head(x[:, -1:] if last_only else x))  # capped before loss and sampling
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        self.aux_loss = torch.stack(aux_losses).mean() if aux_losses else None
        if loss is not None and self.aux_loss is not None and self.training:
            loss = loss + self.aux_loss
        return logits, loss

    def _check_input(self, idx: torch.Tensor, cache: KVCache | None) -> tuple[int, int]:
        """``(first position, T)`` of ``idx`` ``(B, T)``; raises when it is not ``(B, T)`` or too long."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        start, T = (0 if cache is None else len(cache)), idx.size(1)
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of length {start + T} is longer than block_size="
                f"{self.config.block_size}; crop the context to its last "
                f"{self.config.block_size} tokens"
            )
        return start, T


# --- parameter counting and the published configurations ---------------------------------------


def count_params(config: GPTConfig) -> int:
    """The parameter count of ``GPT(config)`` from the formula, without building the model.

    With ``C = n_embd`` and ``hd = C / n_head`` (a LayerNorm holds ``2C`` with bias, else ``C``;
    an RMSNorm ``C``): token embedding ``V C`` (shared with the output layer: tied, counted once;
    another ``V C`` for an untied head),
    learned positions ``block_size C`` (RoPE and the sinusoids have none), and per block: attention
    ``C (n_head + 2 n_kv_head) hd + C^2`` (+ biases, + ``2 hd`` gains with ``qk_norm``), MLP
    ``8 C^2`` (+ biases; ReLU² the same; SwiGLU ``3 C h'`` with ``h' = swiglu_hidden(4C)``, + ``2h' + C``
    biases), two norms. For multi-head attention a block is ``12 C^2 + 13 C``.
    """
    if config.ffn != "mlp":
        raise ValueError(f"count_params has no formula for GPTConfig.ffn={config.ffn!r}")
    C, bias = config.n_embd, int(config.bias)
    hd = C // config.n_head
    qkv = (config.n_head + 2 * config.kv_heads) * hd  # width of the fused c_attn output
    layer_norm = C * (1 + bias) if config.norm_type == "layernorm" else C
    attn = C * qkv + bias * qkv + C * C + bias * C + (2 * hd if config.qk_norm else 0)
    if config.mlp == "swiglu":
        h = swiglu_hidden(4 * C)
        mlp = 2 * (C * h + bias * h) + h * C + bias * C
    else:  # "gelu" and "relu2": C -> 4C -> C
        mlp = C * 4 * C + bias * 4 * C + 4 * C * C + bias * C
    block = attn + mlp + 2 * layer_norm
    embeddings = config.vocab_size * C + (config.block_size * C if config.pos == "learned" else 0)
    if not config.tie_embeddings:
        embeddings += config.vocab_size * C  # lm_head.weight of its own
    return embeddings + config.n_layer * block + (layer_norm if config.final_norm else 0)


def kv_cache_bytes(config: GPTConfig, T: int, dtype_bytes: int = 2, batch_size: int = 1) -> int:
    """The bytes of keys and values a cache holding ``T`` positions needs, per ``batch_size`` sequences.

    Per layer ``2 (keys, values) * n_kv_head * hd * positions * dtype_bytes``: a global layer keeps
    all ``T`` positions, a sliding-window (``"local"``) layer only its last ``attn_window`` (a query
    never reads further back), so ``window_pattern="SSSL"`` needs about a quarter of the global
    cache when ``T >> attn_window``. Strided and fixed layers keep all ``T`` (their patterns reach
    back to the start). :class:`gptcourse.attention.KVCache` itself does not truncate (it stores
    every position in every layer, :meth:`~gptcourse.attention.KVCache.nbytes`): this is what a
    windowed (ring-buffer) cache would hold, the saving the pattern makes possible.
    """
    if not isinstance(T, int) or isinstance(T, bool) or T < 0:
        raise ValueError(f"T must be a non-negative integer (cached positions), got {T!r}")
    per_position = 2 * config.kv_heads * (config.n_embd // config.n_head) * dtype_bytes * batch_size
    positions = sum(
        min(T, config.attn_window) if config.layer_attention(layer) == "local" else T for layer in range(config.n_layer)
    )
    return per_position * positions


# Published configurations. GPT-1 (Radford et al. 2018): post-LN, no final LayerNorm, plain init,
# 512 positions, a 40,478-token BPE vocabulary. GPT-2 (2019) changed exactly the switches below.
# GPT-3 175B (2020) is GPT-2 scaled up (its alternating sparse layers do not change the count).
_GPT1 = dict(
    vocab_size=40478,
    block_size=512,
    n_layer=12,
    n_head=12,
    n_embd=768,
    norm="post",
    final_norm=False,
    scale_residual_init=False,
)
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
    "gpt1": "117M",
    "gpt2": "124M",
    "gpt2-medium": "355M",
    "gpt2-large": "774M",
    "gpt2-xl": "1.5B",
    "gpt3": "175B",
}


def preset_config(name: str, **overrides) -> GPTConfig:
    """A fresh :class:`GPTConfig` for a published model (see ``PRESETS``), with optional overrides,
    e.g. ``preset_config("gpt2", n_layer=2)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return GPTConfig(**{**PRESETS[name], **overrides})
