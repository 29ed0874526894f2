"""Exercise specs for Lab 8 (the whole GPT class, saved as ``learner/gpt.py``, and the parameter
formula), against :class:`gptcourse.model.GPT` and :func:`gptcourse.model.count_params`.

* ``lab08.init``: ``GPT(config)``'s structure (parameter names and shapes, the ``transformer``
  ModuleDict, the tied head, ``num_params()``) and its initialisation statistics (mean and std of
  every parameter, compared within sampling error, so the draws need not be the package's);
* ``lab08.forward``: the forward pass with the package model's weights loaded: logits, loss
  (targets ``-1`` ignored), ``aux_loss``, dropout in training mode with the same seed, and the
  gradients of the loss;
* ``lab08.cache``: positions continued from a KV cache, ``last_only``, and the ValueErrors;
* ``lab08.count_params``: the formula, exactly, GPT-2 small's 124,439,808 first.

Models are small (a few thousand parameters) except the init cases, whose matrices are large
enough for their standard deviations to be measured."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptcourse.attention import KVCache
from gptcourse.grading.spec import (
    AnswerError,
    Case,
    Misconception,
    Spec,
    close,
    exact,
    load_reference_weights,
    randomize_,
    seeded,
)
from gptcourse.model import GPT, GPTConfig, count_params

# the package's GPT may not stand in for the learner's: building on it, or calling its forward,
# would pass without writing anything (its attention_masks may be used, as the lab says)
GPT_FORBIDDEN = (
    "gptcourse.model.GPT.__init__",
    "gptcourse.model.GPT._init_weights",
    "gptcourse.model.GPT.num_params",
    "gptcourse.model.GPT.forward",
    "gptcourse.model.GPT._check_input",
)


def _seed(g: torch.Generator) -> int:
    return int(torch.randint(2**31, (1,), generator=g))


def _int(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (1,), generator=g))


def _config(**kw: Any) -> GPTConfig:
    sizes = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8)
    return GPTConfig(**{**sizes, **kw})


class _Weights(dict):
    """A state dict that describes itself in a line (a failure message names the case's arguments)."""

    def __repr__(self) -> str:
        return f"<the weights of a package GPT: {len(self)} tensors>"


def _state(g: torch.Generator, config: GPTConfig) -> dict[str, torch.Tensor]:
    """The parameters of a package GPT with random weights (norm gains near 1, not 1): the tied
    matrix appears once, as ``transformer.wte.weight`` (what ``named_parameters`` lists)."""
    with seeded(g):
        model = GPT(config)
    randomize_(model, g)
    return _Weights({k: v.detach().clone() for k, v in model.named_parameters()})


def _build(answer: Callable[..., Any], config: GPTConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    model = answer(config)
    load_reference_weights(model, state, "your GPT")
    return model


def _forward(model: nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    out = model(*args, **kwargs)
    if not isinstance(out, tuple) or len(out) != 2:
        raise AnswerError(f"your GPT's forward returned {type(out).__name__}, expected a pair (logits, loss)")
    return out


_NO_AUX = "no attribute aux_loss"


def _aux(model: nn.Module) -> Any:
    aux = getattr(model, "aux_loss", _NO_AUX)
    return aux.detach() if isinstance(aux, torch.Tensor) else aux


# --- Step 1: structure and initialisation ----------------------------------------------------------------


def init_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, **kw: Any) -> Case:
        return Case(label, (GPTConfig(**kw), _seed(g)))

    # matrices of thousands of numbers, so that a std is measured to a few percent
    big = dict(vocab_size=256, block_size=32, n_head=4, n_embd=64)
    cases = [
        case("GPT-2-like: pre-LN, 2 blocks (residual std 0.02/sqrt(4))", n_layer=2, **big),
        case("4 blocks (residual std 0.02/sqrt(8))", n_layer=4, **big),
        case(
            "GPT-1-like: post-LN, no final LayerNorm, scale_residual_init=False",
            n_layer=2,
            norm="post",
            final_norm=False,
            scale_residual_init=False,
            **big,
        ),
        case(
            "bias=False, sinusoidal positions, 1 kv head", n_layer=2, bias=False, pos="sinusoidal", n_kv_head=1, **big
        ),
        case("pos='none' (no position parameters)", n_layer=1, pos="none", **big),
        case(
            "a mixture of experts (ffn='moe')",
            vocab_size=64,
            block_size=16,
            n_layer=2,
            n_head=2,
            n_embd=32,
            ffn="moe",
            n_expert=4,
            expert_top_k=2,
        ),
    ]
    for i in range(2):
        n_head = (1, 2, 4)[_int(g, 0, 3)]
        bias, final_norm, scale = (bool(b) for b in torch.rand(3, generator=g) < 0.5)
        cases.append(
            case(
                f"random {i + 1}: bias={bias}, final_norm={final_norm}, scale_residual_init={scale}",
                vocab_size=_int(g, 100, 300),
                block_size=_int(g, 16, 40),
                n_layer=_int(g, 1, 4),
                n_head=n_head,
                n_embd=n_head * _int(g, 8, 17),
                bias=bias,
                final_norm=final_norm,
                scale_residual_init=scale,
                norm=("pre", "post")[_int(g, 0, 2)],
            )
        )
    return cases


def run_init(answer: Callable[..., Any], case: Case) -> Any:
    """Build ``answer(config)`` under a fixed seed; its structure, ``num_params()`` and, per
    parameter, the mean and the (biased) std of its initial values."""
    config, seed = case.args
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = answer(config)
    if not isinstance(model, nn.Module):
        raise AnswerError(f"GPT(config) returned a {type(model).__name__}, not an nn.Module")
    transformer = getattr(model, "transformer", None)
    head = getattr(model, "lm_head", None)
    wte = transformer["wte"] if isinstance(transformer, nn.ModuleDict) and "wte" in transformer else None
    params = dict(model.named_parameters())
    n = model.num_params() if hasattr(model, "num_params") else "no num_params method"
    with torch.no_grad():
        stats = {k: (p.mean().item(), p.std(unbiased=False).item()) for k, p in params.items()}
    return {
        "self.config is the config given": getattr(model, "config", None) is config,
        "transformer is an nn.ModuleDict": isinstance(transformer, nn.ModuleDict),
        "transformer's keys": sorted(transformer.keys()) if isinstance(transformer, nn.ModuleDict) else [],
        "parameter names and shapes": {k: list(p.shape) for k, p in params.items()},
        "lm_head.weight is transformer.wte.weight": head is not None
        and wte is not None
        and getattr(head, "weight", None) is getattr(wte, "weight", 0),
        "num_params()": n,
        "aux_loss before any forward": getattr(model, "aux_loss", _NO_AUX),
        "init (mean, std)": stats,
    }


def compare_init(got: Any, expected: Any, case: Case) -> str | None:
    """Everything exact but the statistics, which must agree within sampling error: for ``N``
    numbers of std ``s``, ``8 s / sqrt(N)``, over 5 standard errors of either difference (so an exact 0
    or 1 must be exact)."""
    if not isinstance(got, dict) or set(got) != set(expected):
        return exact()(got, expected, case)
    plain = {k: v for k, v in expected.items() if k != "init (mean, std)"}
    wrong = exact()({k: got[k] for k in plain}, plain, case)
    if wrong:
        return wrong
    shapes, stats, theirs = (
        expected["parameter names and shapes"],
        expected["init (mean, std)"],
        got["init (mean, std)"],
    )
    for name, (mean, std) in stats.items():
        m, s = theirs[name]
        tol = 8 * std / math.sqrt(math.prod(shapes[name])) + 1e-6
        if abs(m - mean) > tol or abs(s - std) > tol:
            return (
                f"starts {name} with mean {m:.4g} and std {s:.4g}; expected mean {mean:.4g} and std {std:.4g} "
                "(within sampling error)"
            )
    return None


def _init_variant(mistake: str) -> type[nn.Module]:
    """The package's GPT with one known mistake in its construction."""

    class Wrong(GPT):
        def __init__(self, config: GPTConfig):
            super().__init__(config)
            L, flag = config.n_layer, config.scale_residual_init
            with torch.no_grad():
                if mistake == "untied head":
                    self.lm_head.weight = nn.Parameter(self.transformer.wte.weight.detach().clone())
                if mistake == "final LayerNorm built without final_norm" and not config.final_norm:
                    self.transformer["ln_f"] = nn.LayerNorm(config.n_embd, bias=config.bias)
                for module in self.modules():
                    if mistake == "PyTorch's default init" and isinstance(module, (nn.Linear, nn.Embedding)):
                        module.reset_parameters()
                    if mistake == "biases left at PyTorch's default" and isinstance(module, nn.Linear):
                        if module.bias is not None:
                            bound = 1 / math.sqrt(module.in_features)
                            nn.init.uniform_(module.bias, -bound, bound)
                for name, p in self.named_parameters():
                    if not name.endswith("c_proj.weight"):
                        continue
                    if mistake == "residual projections not scaled":
                        nn.init.normal_(p, std=0.02)
                    elif mistake == "residual scale 1/sqrt(n_layer)" and flag:
                        nn.init.normal_(p, std=0.02 / math.sqrt(L))
                    elif mistake == "scaled without scale_residual_init" and not flag:
                        nn.init.normal_(p, std=0.02 / math.sqrt(2 * L))

        def num_params(self) -> int:
            n = sum(p.numel() for p in self.parameters())
            if mistake == "tied matrix counted twice":
                n += self.lm_head.weight.numel()
            return n

    return Wrong


INIT_HINTS = {
    "untied head": "tie the head to the embedding: lm_head's weight must be the very Parameter of transformer.wte "
    "(assign it, do not copy it), so that the model has one V x C matrix (Chapter 8, Tied weights share memory)",
    "tied matrix counted twice": "num_params counts each tensor once: the tied matrix is used twice but is one "
    "Parameter (parameters() lists it once; adding up the state_dict counts it twice)",
    "residual projections not scaled": "with config.scale_residual_init, every c_proj.weight (attention's and the "
    "MLP's) starts at std 0.02/sqrt(2 n_layer): two residual branches per block (Chapter 8, the init)",
    "residual scale 1/sqrt(n_layer)": "the residual std divides by sqrt(2 n_layer), not sqrt(n_layer): each block "
    "adds two branches to the stream",
    "scaled without scale_residual_init": "the scaled residual init is a switch: with scale_residual_init=False "
    "(GPT-1) every weight starts at std 0.02",
    "PyTorch's default init": "every nn.Linear and nn.Embedding weight starts from N(0, 0.02^2), not PyTorch's "
    "defaults (an Embedding's default is N(0, 1)): visit every submodule once",
    "biases left at PyTorch's default": "every Linear bias starts at zero (PyTorch's default draws them at random)",
    "final LayerNorm built without final_norm": "with config.final_norm=False (GPT-1) there is no final LayerNorm: "
    "ln_f is an nn.Identity, which has no parameters",
}

INIT = Spec(
    id="lab08.init",
    points=3,
    name="GPT",
    reference=GPT,
    cases=init_cases,
    run=run_init,
    compare=compare_init,
    forbidden=GPT_FORBIDDEN,
    hint="self.transformer is an nn.ModuleDict of wte, drop, h, wpe and ln_f, registered before lm_head; blocks from "
    "make_block, positions from positions(config); the init of Step 1; num_params counts parameters() once each",
    misconceptions=tuple(Misconception(n, _init_variant(n), h) for n, h in INIT_HINTS.items()),
)


# --- Step 2: the forward pass, the loss and the gradients -----------------------------------------------


def forward_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, config: GPTConfig, B: int, T: int, mode: str = "eval", ignore: bool = False) -> Case:
        idx = torch.randint(config.vocab_size, (B, T), generator=g)
        targets = None
        if mode != "no targets":
            targets = torch.randint(config.vocab_size, (B, T), generator=g)
            if ignore:
                targets[torch.rand(B, T, generator=g) < 0.4] = -1
                targets[0, 0], targets[-1, -1] = -1, 0  # at least one of each
        return Case(label, (config, _state(g, config), idx, targets, mode, _seed(g)))

    moe = dict(ffn="moe", n_expert=4, expert_top_k=2)
    cases = [
        case("GPT-2-like: pre-LN, final LayerNorm, 2 blocks", _config(), 2, 6),
        case("GPT-1-like: post-LN, no final LayerNorm", _config(norm="post", final_norm=False), 2, 6),
        case("no targets: the loss is None", _config(), 2, 5, mode="no targets"),
        case("targets with -1 (positions to ignore)", _config(), 3, 6, ignore=True),
        case(
            "bias=False, sinusoidal positions, 2 of 4 kv heads",
            _config(bias=False, pos="sinusoidal", n_head=4, n_kv_head=2),
            2,
            5,
        ),
        case("pos='none' and T = block_size", _config(pos="none"), 2, 8),
        case("dropout=0.2 in training mode (the same seed)", _config(dropout=0.2), 2, 6, mode="train"),
        case("a mixture of experts in training mode: aux loss added", _config(**moe), 1, 4, mode="train"),
        case("a mixture of experts in eval mode: cross-entropy alone", _config(**moe), 1, 4),
        case("alternating dense and local layers (window 2)", _config(attention="alternating", attn_window=2), 2, 7),
    ]
    for i in range(2):
        n_head = (1, 2, 4)[_int(g, 0, 3)]
        config = _config(
            vocab_size=_int(g, 5, 30),
            block_size=_int(g, 4, 12),
            n_layer=_int(g, 1, 4),
            n_head=n_head,
            n_embd=n_head * _int(g, 2, 5),
            norm=("pre", "post")[i],
            final_norm=i == 0,
        )
        cases.append(
            case(f"random model {i + 1}", config, _int(g, 1, 4), _int(g, 1, config.block_size + 1), ignore=True)
        )
    return cases


def run_forward(answer: Callable[..., Any], case: Case) -> Any:
    """Build ``answer(config)``, load the package model's weights, run ``forward(idx, targets)``
    (dropout draws seeded), backpropagate the loss; logits, loss, ``aux_loss`` and gradients."""
    config, state, idx, targets, mode, seed = case.args
    model = _build(answer, config, state)
    model.train(mode == "train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        logits, loss = _forward(model, idx, targets)
    out: dict[str, Any] = {"logits": logits.detach(), "loss": None if loss is None else loss.detach()}
    out["aux_loss"] = _aux(model)
    if isinstance(loss, torch.Tensor):
        loss.backward()
        out["gradients"] = {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}
    return out


def _forward_variant(mistake: str) -> type[nn.Module]:
    """The package's GPT whose forward has one known mistake."""

    class Wrong(GPT):
        def forward(self, idx: torch.Tensor, targets: Any = None, cache: Any = None, last_only: bool = False) -> Any:
            t = self.transformer
            start, T = self._check_input(idx, cache)
            x = t.wte(idx) + t.wpe(torch.arange(start, start + T))
            x = x if mistake == "no dropout on the embeddings" else t.drop(x)
            masks = self.attention_masks(T, start + T, idx.device)
            if mistake == "sparse masks not passed to the blocks":
                masks = [None] * len(masks)
            aux_losses = []
            for i, (block, mask) in enumerate(zip(t.h, masks)):
                x, aux = block(x, None if cache is None else cache.layer(i), mask)
                if aux is not None:
                    aux_losses.append(aux)
            if mistake != "final LayerNorm skipped":
                x = t.ln_f(x)
            logits = self.lm_head(x)
            loss = None
            if targets is not None:
                flat, labels = logits.view(-1, logits.size(-1)), targets.reshape(-1)
                if mistake == "-1 targets counted in the mean":
                    loss = F.cross_entropy(flat, labels, ignore_index=-1, reduction="sum") / labels.numel()
                else:
                    loss = F.cross_entropy(flat, labels, ignore_index=-1)
            if aux_losses:
                stacked = torch.stack(aux_losses)
                self.aux_loss = stacked.sum() if mistake == "aux losses summed over layers" else stacked.mean()
            else:
                self.aux_loss = None
            add = self.training or mistake == "aux loss added in eval mode"
            if loss is not None and self.aux_loss is not None and add:
                loss = loss + self.aux_loss
            return logits, loss

    return Wrong


FORWARD_HINTS = {
    "final LayerNorm skipped": "the last block's output goes through transformer.ln_f before the head (an "
    "nn.Identity when config.final_norm is False, so forward need not branch)",
    "-1 targets counted in the mean": "the loss is the mean over the positions whose target is not -1: ignored "
    "positions count neither in the sum nor in the number divided by (cross_entropy's ignore_index)",
    "no dropout on the embeddings": "transformer.drop acts on the sum of token and position embeddings, before the "
    "first block (the training-mode case draws the same random numbers as the package's)",
    "aux losses summed over layers": "self.aux_loss is the mean of the blocks' auxiliary losses, not their sum",
    "aux loss added in eval mode": "the auxiliary loss is added to the returned loss only in training mode; in eval "
    "mode the loss is the cross-entropy alone (self.aux_loss still holds it)",
    "sparse masks not passed to the blocks": "each block gets its layer's attention mask (None for dense layers, "
    "the sparse pattern's (T, S) mask for the others) as its third argument",
}

FORWARD = Spec(
    id="lab08.forward",
    points=4,
    name="GPT",
    reference=GPT,
    cases=forward_cases,
    run=run_forward,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=GPT_FORBIDDEN,
    hint="Step 2's list: dropout on the sum of token and position embeddings, every block with its layer's cache and "
    "mask, the final LayerNorm, the tied head; the mean cross-entropy over targets that are not -1; aux_loss the "
    "mean of the blocks' aux losses, added to the loss in training mode",
    misconceptions=tuple(Misconception(n, _forward_variant(n), h) for n, h in FORWARD_HINTS.items()),
)


# --- Step 3: the cache, last_only and the errors ----------------------------------------------------------


def cache_cases(g: torch.Generator) -> list[Case]:
    def case(label: str, config: GPTConfig, B: int, how: str, steps: tuple[int, ...], **kw: Any) -> Case:
        T = sum(steps)
        idx = torch.randint(config.vocab_size, (B, T), generator=g)
        return Case(label, (config, _state(g, config), idx, how, steps), kw)

    gqa = _config(pos="sinusoidal", n_head=4, n_kv_head=2, block_size=10)
    cases = [
        case("a cache: 5 positions, then 1, then 1", _config(), 2, "cache", (5, 1, 1)),
        case("last_only: (B, 1, V), the last position's logits", _config(), 3, "last_only", (6,)),
        case(
            "a cache with last_only: a prompt of 3, then 1 token at a time",
            _config(),
            2,
            "cache last_only",
            (3, 1, 1, 1),
        ),
        case("a cache, sinusoidal positions, 2 of 4 kv heads: 4, then 3", gqa, 2, "cache", (4, 3)),
        case(
            "a cache on alternating sparse layers (window 2): 4, then 1, then 2",
            _config(attention="alternating", attn_window=2),
            1,
            "cache",
            (4, 1, 2),
        ),
        case("T > block_size: a ValueError naming block_size", _config(), 1, "error", (9,)),
        case("len(cache) + T > block_size (T alone fits): a ValueError", _config(), 1, "error", (5, 4)),
        case("idx of shape (T,): a ValueError", _config(), 1, "error 1-d", (4,)),
        case("idx of shape (B, T, 1): a ValueError", _config(), 2, "error 3-d", (4,)),
        case("exactly block_size with a cache (6, then 2): allowed", _config(), 2, "error", (6, 2)),
    ]
    for i in range(2):
        config = _config(block_size=_int(g, 6, 12), n_layer=_int(g, 1, 4), norm=("pre", "post")[i])
        first = _int(g, 1, config.block_size - 2)
        cases.append(case(f"random cache {i + 1}", config, _int(g, 1, 4), "cache", (first, 1, _int(g, 1, 3))))
    return cases


def run_cache(answer: Callable[..., Any], case: Case) -> Any:
    """Feed ``idx`` in the chunks ``steps`` (a fresh ``KVCache`` when there is more than one);
    the logits of each call, or, for the error cases, which exception the last call raised."""
    config, state, idx, how, steps = case.args
    model = _build(answer, config, state).eval()
    cache = KVCache(config.n_layer) if len(steps) > 1 else None
    last_only = how == "cache last_only" or how == "last_only"
    outputs = []
    with torch.no_grad():
        start = 0
        for i, n in enumerate(steps):
            chunk = idx[:, start : start + n]
            start += n
            if how == "error 1-d":
                chunk = chunk[0]
            elif how == "error 3-d":
                chunk = chunk[..., None]
            if how.startswith("error") and i == len(steps) - 1:
                try:
                    logits, _ = _forward(model, chunk, cache=cache)
                except NotImplementedError:
                    raise
                except AnswerError:
                    raise
                except Exception as err:
                    raised = {"raises": type(err).__name__}
                    if how == "error":
                        raised["the message names block_size"] = "block_size" in str(err)
                    return raised
                return {"raises": None, "logits": logits}
            logits, _ = (
                _forward(model, chunk, cache=cache, last_only=True)
                if last_only
                else _forward(model, chunk, cache=cache)
            )
            outputs.append(logits)
    return {"logits of each call": outputs, "positions cached": None if cache is None else len(cache)}


def _cache_variant(mistake: str) -> type[nn.Module]:
    """The package's GPT with one known mistake in its cache, ``last_only`` or input checks."""

    class Wrong(GPT):
        def _check_input(self, idx: torch.Tensor, cache: Any) -> tuple[int, int]:
            start = 0 if cache is None else len(cache)
            if mistake == "no check of idx's dimensions":
                if start + idx.size(1) > self.config.block_size:
                    raise ValueError(f"a sequence of {start + idx.size(1)} is longer than block_size")
                return start, idx.size(1)
            if mistake == "full context rejected (>= instead of >)":
                if idx.dim() != 2:
                    raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
                if start + idx.size(1) >= self.config.block_size:
                    raise ValueError(f"a sequence of {start + idx.size(1)} is too long for block_size")
                return start, idx.size(1)
            return super()._check_input(idx, cache)

        def forward(self, idx: torch.Tensor, targets: Any = None, cache: Any = None, last_only: bool = False) -> Any:
            t = self.transformer
            if mistake == "length check ignores the cache":
                start, T = super()._check_input(idx, None)
                start = 0 if cache is None else len(cache)
            elif mistake == "AssertionError, not ValueError":
                try:
                    start, T = self._check_input(idx, cache)
                except ValueError as err:
                    raise AssertionError(str(err)) from None
            else:
                start, T = self._check_input(idx, cache)
            first = 0 if mistake == "positions not offset by the cache" else start
            x = t.drop(t.wte(idx) + t.wpe(torch.arange(first, first + T)))
            for i, (block, mask) in enumerate(zip(t.h, self.attention_masks(T, start + T, idx.device))):
                layer = None if cache is None or mistake == "cache not passed to the blocks" else cache.layer(i)
                x, _ = block(x, layer, mask)
            x = t.ln_f(x)
            if last_only and mistake == "last_only keeps the first position":
                x = x[:, :1]
            elif last_only and mistake != "last_only ignored":
                x = x[:, -1:]
            return self.lm_head(x), None

    return Wrong


CACHE_HINTS = {
    "positions not offset by the cache": "with a cache, idx holds only the new tokens: their positions continue "
    "from len(cache), they do not restart at 0",
    "cache not passed to the blocks": "block i gets cache.layer(i), the keys and values of its own layer, so that "
    "the new tokens attend to the cached ones",
    "last_only ignored": "last_only=True returns the logits of the last position only, shape (B, 1, V)",
    "last_only keeps the first position": "last_only keeps the last position of the sequence (the one whose next "
    "token is sampled), as a (B, 1, V) tensor",
    "length check ignores the cache": "the length to check is len(cache) + T: the cached positions count against "
    "block_size too",
    "AssertionError, not ValueError": "raise a ValueError (an assert disappears under python -O, and callers catch "
    "ValueError)",
    "no check of idx's dimensions": "idx must be (B, T): raise a ValueError that says so for any other number of "
    "dimensions, before using it",
    "full context rejected (>= instead of >)": "a sequence of exactly block_size positions (cache included) fits: "
    "only a longer one is an error",
}

CACHE = Spec(
    id="lab08.cache",
    points=3,
    name="GPT",
    reference=GPT,
    cases=cache_cases,
    run=run_cache,
    compare=close(atol=1e-5, rtol=1e-4),
    forbidden=GPT_FORBIDDEN,
    hint="positions start at len(cache); block i reads and extends cache.layer(i); last_only keeps the last "
    "position; a ValueError (naming block_size) when len(cache) + T > block_size, another when idx is not (B, T)",
    misconceptions=tuple(Misconception(n, _cache_variant(n), h) for n, h in CACHE_HINTS.items()),
)


# --- Step 4: counting parameters --------------------------------------------------------------------------


def count_cases(g: torch.Generator) -> list[Case]:
    small = {"vocab_size": 100, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 16}
    cases = [
        Case("GPT-2 small (124,439,808)", (GPTConfig(),)),
        Case(
            "GPT-1: no final LayerNorm", (GPTConfig(vocab_size=40478, block_size=512, norm="post", final_norm=False),)
        ),
        Case("no biases (bias=False)", (GPTConfig(**small, bias=False),)),
        Case("no position embedding (pos='none')", (GPTConfig(**small, pos="none"),)),
        Case("sinusoidal positions (no parameters)", (GPTConfig(**small, pos="sinusoidal"),)),
        Case("grouped-query: 2 kv heads", (GPTConfig(**small, n_kv_head=2),)),
        Case("multi-query: 1 kv head", (GPTConfig(**small, n_kv_head=1),)),
        Case("ffn='moe': a ValueError (no formula here)", (GPTConfig(**small, ffn="moe"),)),
    ]
    for i in range(5):
        n_head = (1, 2, 3, 4, 6, 8)[_int(g, 0, 6)]
        divisors = [d for d in range(1, n_head + 1) if n_head % d == 0]
        vocab_size, block_size, n_layer, width = (_int(g, lo, hi) for lo, hi in ((2, 1000), (1, 513), (1, 13), (1, 17)))
        n_kv_head = divisors[_int(g, 0, len(divisors))]
        bias, final_norm = (bool(b) for b in torch.rand(2, generator=g) < 0.5)
        pos = ("learned", "none")[_int(g, 0, 2)]
        config = GPTConfig(
            vocab_size=vocab_size,
            block_size=block_size,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_head * width,
            n_kv_head=n_kv_head,
            bias=bias,
            final_norm=final_norm,
            pos=pos,
        )
        cases.append(
            Case(
                f"random {i + 1}: bias={bias}, final_norm={final_norm}, pos={pos!r}, {n_kv_head} of {n_head} kv heads",
                (config,),
            )
        )
    return cases


def run_count(answer: Callable[..., Any], case: Case) -> Any:
    """``answer(config)``; for a mixture of experts, which exception it raised."""
    (config,) = case.args
    if config.ffn != "moe":
        return answer(config)
    try:
        n = answer(config)
    except NotImplementedError:
        raise
    except Exception as err:
        return {"raises": type(err).__name__}
    return {"raises": None, "returned": n}


def _count(mistake: str) -> Callable[[GPTConfig], int]:
    """``count_params`` with one known mistake (``mistake`` names it)."""

    def count(config: GPTConfig) -> int:
        if config.ffn == "moe" and mistake != "experts counted as one MLP":
            raise ValueError("no formula for a mixture of experts")
        C = config.n_embd
        b = 1 if config.bias or mistake == "biases always counted" else 0
        kv = config.n_head if mistake == "keys and values as wide as the queries" else config.kv_heads
        qkv = (config.n_head + 2 * kv) * (C // config.n_head)
        ln = C + b * C
        mlp = 4 * C * C + b * 4 * C + (0 if mistake == "one MLP layer" else 4 * C * C + b * C)
        total = config.vocab_size * C * (2 if mistake == "output layer counted again" else 1)
        total += config.n_layer * (C * qkv + b * qkv + C * C + b * C + mlp + 2 * ln)
        if mistake == "positions always counted" or (config.pos == "learned" and mistake != "positions forgotten"):
            total += config.block_size * C
        if mistake == "final LayerNorm always counted" or (
            config.final_norm and mistake != "final LayerNorm forgotten"
        ):
            total += ln
        return total

    return count


COUNT_HINTS = {
    "output layer counted again": "the output layer is tied to the token embedding, one V x C matrix: count it once",
    "positions forgotten": "count the learned position embedding, block_size x C, when config.pos is 'learned'",
    "positions always counted": "only learned positions are parameters: pos='none' has none and sinusoidal codes "
    "are computed, not learned",
    "final LayerNorm always counted": "the final LayerNorm exists only when config.final_norm (GPT-1 has none)",
    "final LayerNorm forgotten": "count the final LayerNorm (C gains, and C shifts with bias) when config.final_norm",
    "biases always counted": "with bias=False no Linear layer has a bias and no LayerNorm a shift",
    "keys and values as wide as the queries": "c_attn has (n_head + 2 n_kv) head_dim outputs with n_kv = "
    "config.kv_heads: keys and values have fewer heads than queries in GQA",
    "one MLP layer": "the MLP has two Linear layers, C -> 4C and 4C -> C",
    "experts counted as one MLP": "a mixture of experts has a router and n_expert MLPs: this formula does not cover "
    "it, so count_params raises a ValueError for ffn='moe', as the package's does",
}


def compare_count(got: Any, expected: Any, case: Case) -> str | None:
    """Exactly equal, with both counts written out in full (a float format would hide a small difference)."""
    if isinstance(expected, int) and isinstance(got, int) and not isinstance(got, bool) and got != expected:
        return f"returned {got:,}, expected {expected:,} (off by {got - expected:+,})"
    return exact()(got, expected, case)


COUNT_PARAMS = Spec(
    id="lab08.count_params",
    points=3,
    name="count_params",
    reference=count_params,
    cases=count_cases,
    run=run_count,
    compare=compare_count,
    forbidden=("gptcourse.model.count_params", "gptcourse.model.GPT"),
    hint="go through Step 4's list term by term: embeddings, then per block c_attn, c_proj, the MLP's two layers "
    "and two LayerNorms (biases and shifts only with config.bias), then the final LayerNorm; return an int",
    misconceptions=tuple(Misconception(name, _count(name), hint) for name, hint in COUNT_HINTS.items()),
)

SPECS = (INIT, FORWARD, CACHE, COUNT_PARAMS)
