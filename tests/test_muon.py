"""Muon: the Newton–Schulz band and direction, the optimiser's checks, configure_muon's partition of
a GPT, training with Muon+AdamW, and a bit-exact resume from the combined state_dict."""

from __future__ import annotations

import pytest
import torch

from gptcourse.model import GPT, GPTConfig
from gptcourse.muon import NS_COEFFICIENTS, Muon, MuonAdamW, configure_muon, newton_schulz, step_all, zero_all

# Rectangular Gaussians (wide and tall): their smallest singular value stays well away from zero,
# so 5 steps bring every singular value into the band. A square Gaussian has singular values near
# 0, which 5 steps cannot lift (that is the iteration's trade-off; see test_square_needs_more_steps).
SHAPES = [(32, 128), (128, 32), (48, 96), (96, 48), (16, 256), (200, 64)]
BAND = (0.68, 1.14)  # measured (float32): 0.6818 to 1.1344, the interval p(s) maps into itself


def _cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().flatten(), y.double().flatten()
    return (x @ y / (x.norm() * y.norm())).item()


def _polar(G: torch.Tensor) -> torch.Tensor:
    """The exact orthogonalisation U Vᵀ, from the SVD G = U S Vᵀ."""
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U @ Vh


def test_coefficients_band_is_invariant():
    a, b, c = NS_COEFFICIENTS
    s = torch.linspace(0.01, 1.0, 10001, dtype=torch.float64)
    for _ in range(5):
        s = a * s + b * s**3 + c * s**5
    assert BAND[0] <= s.min().item() and s.max().item() <= BAND[1]
    # not exactly 1: the coefficients trade convergence for speed
    assert s.min().item() < 0.7 and s.max().item() > 1.1


@pytest.mark.parametrize("shape", SHAPES)
def test_newton_schulz_band_and_direction(shape):
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        G = torch.randn(*shape, generator=g)
        X = newton_schulz(G)
        assert X.shape == G.shape and X.dtype == G.dtype
        s = torch.linalg.svdvals(X.double())
        assert BAND[0] <= s.min().item() and s.max().item() <= BAND[1], (shape, s.min(), s.max())
        assert _cosine(X, _polar(G)) > 0.98


@pytest.mark.parametrize("shape", [(32, 128), (128, 32)])
def test_newton_schulz_bfloat16(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    X = newton_schulz(G, dtype=torch.bfloat16)
    assert X.dtype == torch.float32
    s = torch.linalg.svdvals(X.double())
    assert 0.6 <= s.min().item() and s.max().item() <= 1.2
    assert _cosine(X, _polar(G)) > 0.98


def test_square_needs_more_steps():
    G = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    X = newton_schulz(G)
    assert torch.linalg.svdvals(X.double()).max().item() <= 1.21  # max of p on [0, 1]
    assert _cosine(X, _polar(G)) > 0.97
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    big = S / G.double().norm() > 0.01  # directions whose singular value has left zero
    X_in = U.T @ newton_schulz(G).double() @ Vh.T  # X in G's singular basis: diagonal
    assert torch.allclose(X_in, torch.diag(torch.diagonal(X_in)), atol=1e-4)
    d = torch.diagonal(X_in)[big]
    assert BAND[0] <= d.min().item() and d.max().item() <= BAND[1]


def test_transpose_symmetry_and_scale_invariance():
    G = torch.randn(40, 100, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(newton_schulz(G.T), newton_schulz(G).T, atol=1e-5)
    assert torch.allclose(newton_schulz(123.0 * G), newton_schulz(G), atol=1e-5)
    with pytest.raises(ValueError, match="2-D"):
        newton_schulz(torch.randn(3))


def test_muon_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(8))])
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(2, 3, 4))])
    with pytest.raises(ValueError, match="momentum"):
        Muon([torch.nn.Parameter(torch.zeros(2, 3))], momentum=1.0)


def test_muon_step_is_the_scaled_orthogonalised_momentum():
    g = torch.Generator().manual_seed(3)
    for shape, scale in (((16, 8), 2**0.5), ((8, 16), 1.0)):
        W = torch.nn.Parameter(torch.randn(*shape, generator=g))
        W0 = W.detach().clone()
        grad = torch.randn(*shape, generator=g)
        W.grad = grad.clone()
        opt = Muon([W], lr=0.1, momentum=0.9, nesterov=True)
        opt.step()
        buf = 0.1 * grad  # lerp from zero
        expected = W0 - 0.1 * scale * newton_schulz(0.1 * grad + 0.9 * buf)
        assert torch.allclose(W.detach(), expected, atol=1e-6)
        assert torch.equal(W.grad, grad)  # the gradient is left as it was
        assert torch.allclose(opt.state[W]["momentum_buffer"], buf)


def small_config(**kw) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32), **kw})


def _configs() -> list[GPTConfig]:
    configs = [small_config(), small_config(bias=False)]
    if "tie_embeddings" in GPTConfig.__dataclass_fields__:  # the Part VII switch, when present
        configs.append(small_config(tie_embeddings=False))
    return configs


@pytest.mark.parametrize("config", _configs(), ids=lambda c: f"bias={c.bias}-tied={getattr(c, 'tie_embeddings', True)}")
def test_configure_muon_partitions_the_gpt(config):
    model = GPT(config)
    muon, adamw = configure_muon(model, lr_muon=0.02, lr_adamw=1e-3, weight_decay=0.1)
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    seen = [id(p) for opt in (muon, adamw) for group in opt.param_groups for p in group["params"]]
    assert len(seen) == len(set(seen)), "a parameter is in two groups"
    assert set(seen) == {id(p) for p in model.parameters()}, "a parameter is missing"
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for p in muon.param_groups[0]["params"]}
    assert muon_names and all(n.startswith("transformer.h.") and n.endswith("weight") for n in muon_names)
    assert all(p.ndim == 2 for p in muon.param_groups[0]["params"])
    adamw_names = {names[id(p)] for group in adamw.param_groups for p in group["params"]}
    assert "transformer.wte.weight" in adamw_names
    if model.lm_head.weight is not model.transformer.wte.weight:
        assert "lm_head.weight" in adamw_names
    for group in adamw.param_groups:  # gains and biases undecayed, matrices decayed
        assert group["weight_decay"] == (0.1 if group["params"][0].ndim >= 2 else 0.0)
    assert [g["base_lr"] for opt in (muon, adamw) for g in opt.param_groups] == [0.02, 1e-3, 1e-3]


def _batch(config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.randint(0, config.vocab_size, (8, config.block_size + 1), generator=torch.Generator().manual_seed(0))
    return data[:, :-1], data[:, 1:]


def _train(model: GPT, optimizer: MuonAdamW, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_muon_adamw_lowers_the_loss():
    torch.manual_seed(0)
    config = small_config()
    model = GPT(config)
    x, y = _batch(config)
    losses = _train(model, MuonAdamW(model, lr_muon=0.02, lr_adamw=3e-3, weight_decay=0.0), x, y, 40)
    assert losses[-1] < 0.4 * losses[0], losses  # measured 3.47 -> 0.81; AdamW alone: 2.26


def test_step_all_zero_all():
    torch.manual_seed(0)
    model = GPT(small_config())
    optimizers = configure_muon(model, 0.02, 1e-3, 0.0)
    x, y = _batch(model.config)
    model(x, y)[1].backward()
    before = [p.detach().clone() for p in model.parameters()]
    step_all(optimizers)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    zero_all(optimizers)
    assert all(p.grad is None for p in model.parameters())


def test_state_dict_round_trip_resumes_bit_exactly():
    config = small_config()
    x, y = _batch(config)

    def build() -> tuple[GPT, MuonAdamW]:
        torch.manual_seed(0)
        model = GPT(config)
        return model, MuonAdamW(model, lr_muon=0.02, lr_adamw=3e-3, weight_decay=0.1)

    model, opt = build()
    _train(model, opt, x, y, 5)
    checkpoint = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "optimizer": opt.state_dict()}
    checkpoint = _roundtrip(checkpoint)
    for group in opt.param_groups:  # a schedule moves both optimisers' rates together
        group["lr"] = group["base_lr"] * 0.5
    straight = _train(model, opt, x, y, 5)

    resumed_model, resumed_opt = build()
    _train(resumed_model, resumed_opt, x, y, 2)  # a different state, overwritten by the load
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    for group in resumed_opt.param_groups:
        group["lr"] = group["base_lr"] * 0.5
    resumed = _train(resumed_model, resumed_opt, x, y, 5)

    assert resumed == straight
    for (name, a), b in zip(model.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="optimisers"):
        resumed_opt.load_state_dict({"optimizers": checkpoint["optimizer"]["optimizers"][:1]})


def _roundtrip(obj):
    """Through torch.save / torch.load, as a checkpoint on disk."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_the_trainers_step_drives_muon_adamw():
    """gptcourse.train.train_step (accumulation, clipping, an fp16 GradScaler) takes the wrapper as an optimiser."""
    from gptcourse.train import train_step

    torch.manual_seed(0)
    model = GPT(small_config())
    opt = MuonAdamW(model, lr_muon=0.02, lr_adamw=3e-3, weight_decay=0.1)
    x, y = _batch(model.config)
    for scaler in (None, torch.amp.GradScaler("cpu")):
        losses = [float(train_step(model, opt, x, y, 2, 1.0, None, scaler)) for _ in range(3)]
        assert losses[-1] < losses[0]


def test_the_trainer_trains_with_muon_and_resumes_it_exactly(tmp_path):
    """TrainConfig(optimizer="muon"): the schedule scales both rates, the loss falls, and a run stopped
    half-way resumes from its checkpoint (both optimisers' states) to the same losses."""
    from gptcourse.train import TrainConfig, train

    data = torch.arange(600) % 17  # learnable: each token is the previous one plus 1
    train_data, val_data = data[:540], data[540:]

    def model(seed: int = 0) -> GPT:
        torch.manual_seed(seed)
        return GPT(GPTConfig(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16))

    base = dict(max_steps=6, batch_size=4, lr=1e-2, lr_muon=0.05, warmup_steps=2, eval_interval=3, eval_iters=2)
    config = TrainConfig(**base, optimizer="muon", progress=False, checkpoint_path=str(tmp_path / "a.pt"))
    full = train(model(), train_data, val_data, config)
    assert full.train_loss[-1] < full.train_loss[0]
    assert full.lr[0] == pytest.approx(1e-2 / 2)  # the AdamW rate, warming up; Muon's is 5x it throughout
    config = TrainConfig(**base, optimizer="muon", progress=False, checkpoint_path=str(tmp_path / "b.pt"))
    train(model(), train_data, val_data, config, stop_after=3)
    resumed = train(model(seed=99), train_data, val_data, config)
    assert resumed.train_loss == full.train_loss


def test_the_trainer_names_its_optimisers():
    from gptcourse.train import TrainConfig

    with pytest.raises(ValueError, match="TrainConfig.optimizer must be one of"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="TrainConfig.lr_muon"):
        TrainConfig(optimizer="muon", lr_muon=0.0)
