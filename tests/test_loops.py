"""gptcourse.loops: evaluation mode that is always undone, and the optimiser step every loop shares."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gptcourse.loops import evaluating, heldout_loss, optimizer_step
from gptcourse.model import GPT, GPTConfig


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))


def loss_of(model: torch.nn.Module) -> torch.Tensor:
    """A fixed loss: the same batch and the same dropout mask every call."""
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    return model(x).pow(2).mean()


@pytest.mark.parametrize("training", [True, False])
def test_evaluating_turns_dropout_and_gradients_off_and_restores_the_mode(training):
    model = tiny().train(training)
    with evaluating(model):
        assert not model.training and not any(m.training for m in model.modules())
        assert not torch.is_grad_enabled()
        assert not model(torch.randn(2, 4)).requires_grad
    assert model.training == training and all(m.training == training for m in model.modules())
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("training", [True, False])
def test_evaluating_restores_the_mode_after_an_exception(training):
    model = tiny().train(training)
    with pytest.raises(KeyboardInterrupt), evaluating(model):
        raise KeyboardInterrupt
    assert model.training == training and torch.is_grad_enabled()


def test_optimizer_step_clips_the_global_norm_steps_and_leaves_the_gradients():
    model, ref = tiny(), tiny()
    loss_of(model).backward()
    loss_of(ref).backward()
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), float("inf"))  # the norm, nothing clipped
    clip = norm.item() / 4
    before = [p.detach().clone() for p in model.parameters()]
    optimizer_step(model, torch.optim.SGD(model.parameters(), lr=0.1), grad_clip=clip)
    grads = [p.grad for p in model.parameters()]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() == pytest.approx(clip, rel=1e-5)
    for p, b, r in zip(model.parameters(), before, ref.parameters()):
        torch.testing.assert_close(p.grad, r.grad / 4, rtol=1e-5, atol=1e-7)  # clipped = scaled down
        torch.testing.assert_close(p.detach(), b - 0.1 * p.grad)  # SGD stepped with the clipped gradient


def test_optimizer_step_without_clipping_is_a_plain_step():
    model, ref = tiny(), tiny()
    (1e3 * loss_of(model)).backward()  # a large gradient, which clipping would have changed
    (1e3 * loss_of(ref)).backward()
    optimizer_step(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    torch.optim.AdamW(ref.parameters(), lr=1e-2).step()
    for p, r in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, r) and torch.equal(p.grad, r.grad)


def test_optimizer_step_with_a_grad_scaler_unscales_before_clipping_and_updates_the_scale():
    """fp16 training on CPU: the scaled gradients are unscaled, clipped as if unscaled, stepped;
    a step whose gradients overflowed is skipped and the scale halves."""
    model, ref = tiny(), tiny()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    scaler.scale(loss_of(model)).backward()
    loss_of(ref).backward()
    clip = torch.nn.utils.clip_grad_norm_(ref.parameters(), float("inf")).item() / 2
    torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
    torch.optim.SGD(ref.parameters(), lr=0.1).step()
    optimizer_step(model, torch.optim.SGD(model.parameters(), lr=0.1), grad_clip=clip, scaler=scaler)
    for p, r in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, r.grad)
        torch.testing.assert_close(p.detach(), r.detach())
    assert scaler.get_scale() == 2048.0  # a good step grows the scale (every step here: growth_interval=1)

    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(float("inf") * loss_of(model)).backward()
    optimizer_step(model, optimizer, grad_clip=clip, scaler=scaler)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # overflow: no step
    assert scaler.get_scale() == 1024.0


def test_loops_imports_nothing_else_from_the_package():
    """``loops`` sits at the bottom of the package: any module may import it, it imports none of them."""
    code = "import sys, gptcourse.loops; print(sorted(m for m in sys.modules if m.startswith('gptcourse')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['gptcourse', 'gptcourse.loops']"


class _PerPosition(torch.nn.Module):
    """Logits at each position from the last token only (a bigram table), for (B, T) inputs."""

    def __init__(self, vocab_size: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab_size, vocab_size, generator=generator))

    def forward(self, x, y):
        return self.table[x], None


@pytest.mark.parametrize("n", [2, 3, 8, 9, 10, 37, 101])
@pytest.mark.parametrize("block_size", [2, 5, 8])
def test_heldout_loss_scores_every_token_after_the_first_exactly_once(n, block_size):
    # a bigram model's loss on a token does not depend on the window, so any token scored twice,
    # or missed, moves the mean away from the plain mean over all n - 1 pairs
    ids = torch.randint(0, 7, (n,), generator=torch.Generator().manual_seed(n))
    model = _PerPosition(7)
    expected = torch.nn.functional.cross_entropy(model.table[ids[:-1]], ids[1:]).item()
    assert heldout_loss(model, ids, block_size, batch_size=3) == pytest.approx(expected, rel=1e-6)


def test_heldout_loss_of_a_gpt_is_its_loss_on_the_whole_text_when_it_fits_one_window():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8))
    ids = torch.randint(0, 11, (17,), generator=torch.Generator().manual_seed(1))
    _, loss = model(ids[None, :-1], ids[None, 1:])
    assert heldout_loss(model, ids, 16) == pytest.approx(loss.item(), rel=1e-6)
    # with shorter windows the later tokens lose some context, so the number changes
    assert heldout_loss(model, ids, 4) != pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize(
    "ids, block_size", [(torch.tensor([3]), 8), (torch.zeros(2, 5, dtype=torch.long), 8), (torch.arange(10), 1)]
)
def test_heldout_loss_rejects_what_it_cannot_score(ids, block_size):
    with pytest.raises(ValueError):
        heldout_loss(_PerPosition(11), ids, block_size)
