"""The trainer: schedule, decay groups, clipping, accumulation, precision, checkpoints with exact
resume, MFU bookkeeping and DistributedDataParallel on CPU (gloo, 2 processes)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from gptcourse import train as T
from gptcourse.model import GPT, GPTConfig
from gptcourse.train import History, TrainConfig, lr_at, train, train_step


def tiny_model(seed: int = 0, dropout: float = 0.0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=dropout))


def tiny_data(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.randint(0, 17, (n,), generator=torch.Generator().manual_seed(seed))
    return data[: n * 9 // 10], data[n * 9 // 10 :]


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=6, batch_size=4, lr=1e-2, warmup_steps=2, eval_interval=3, eval_iters=2, progress=False)
    return TrainConfig(**{**base, **kw})


def test_lr_schedule_warms_up_linearly_from_step_0_then_decays_by_cosine_to_min_lr():
    c = TrainConfig(max_steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert [lr_at(s, c) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_at(9, c) == pytest.approx(1.0) and lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(55, c) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, c) == pytest.approx(0.1) and lr_at(500, c) == pytest.approx(0.1)
    after = [lr_at(s, c) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert lr_at(100, TrainConfig(max_steps=100, lr=2.0)) == pytest.approx(0.2)  # min_lr None -> lr / 10


@pytest.mark.parametrize(
    "kw",
    [
        dict(max_steps=0),
        dict(batch_size=-1),
        dict(lr=0.0),
        dict(warmup_steps=-1),
        dict(min_lr=2.0),
        dict(grad_clip=-1.0),
        dict(grad_accum_steps=0),
        dict(precision="fp8"),
        dict(eval_iters=1.5),
    ],
)
def test_train_config_rejects_bad_values_naming_the_field(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name if name != "min_lr" else "min_lr"):
        TrainConfig(**kw)


def test_only_2d_parameters_are_weight_decayed():
    model = tiny_model()
    opt = T.configure_optimizer(model, 1e-3, 0.1)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert {id(p) for p in plain["params"]} == {
        id(p) for n, p in model.named_parameters() if n.endswith("bias") or ".ln_" in n
    }


def test_accumulated_gradients_equal_the_full_batch_gradient():
    x, y = torch.randint(0, 17, (8, 8)), torch.randint(0, 17, (8, 8))
    params = {}
    for accum in (1, 2, 4):
        model = tiny_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: keep the gradients, not the step
        loss = train_step(model, opt, x, y, accum_steps=accum).item()
        params[accum] = (loss, [p.grad.clone() for p in model.parameters()])
    for accum in (2, 4):
        assert params[accum][0] == pytest.approx(params[1][0], abs=1e-6)
        for g, ref in zip(params[accum][1], params[1][1]):
            torch.testing.assert_close(g, ref, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="micro-batches"):
        train_step(tiny_model(), torch.optim.SGD(tiny_model().parameters(), lr=0.1), x, y, accum_steps=3)


def test_clipping_bounds_the_global_gradient_norm_as_torch_does():
    x, y = torch.randint(0, 17, (4, 8)), torch.randint(0, 17, (4, 8))
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_step(model, opt, x, y, grad_clip=1e-3)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm.item() == pytest.approx(1e-3, rel=1e-4)


def test_grad_accumulation_in_train_matches_a_bigger_batch():
    train_data, val_data = tiny_data()
    big = train(tiny_model(), train_data, val_data, cfg(batch_size=8))
    acc = train(tiny_model(), train_data, val_data, cfg(batch_size=4, grad_accum_steps=2))
    assert acc.train_loss == pytest.approx(big.train_loss, abs=1e-5)
    assert big.train_loss[-1] < big.train_loss[0]


def test_interrupted_and_resumed_run_matches_the_uninterrupted_run_exactly(tmp_path):
    train_data, val_data = tiny_data()
    config = cfg(checkpoint_path=str(tmp_path / "a.pt"))
    full = train(tiny_model(dropout=0.1), train_data, val_data, config)
    config = cfg(checkpoint_path=str(tmp_path / "b.pt"))
    first = train(tiny_model(dropout=0.1), train_data, val_data, config, stop_after=3)
    assert len(first.train_loss) == 3 and os.path.exists(config.checkpoint_path)
    assert not os.path.exists(config.checkpoint_path + ".tmp")
    # a fresh process would build a new, differently initialised model: the checkpoint overrides it
    resumed = train(tiny_model(seed=99, dropout=0.1), train_data, val_data, config)
    assert resumed.train_loss == full.train_loss  # bit-identical, dropout masks included
    assert resumed.eval_val_loss == full.eval_val_loss and resumed.eval_steps == [3, 6]


def test_interruption_by_an_exception_keeps_the_last_checkpoint(tmp_path):
    train_data, val_data = tiny_data()
    config = cfg(checkpoint_path=str(tmp_path / "c.pt"))
    full = train(tiny_model(), train_data, val_data, cfg())

    def crash(step: int, history: History) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(), train_data, val_data, config, callback=crash)
    assert T.load_checkpoint(config.checkpoint_path)["step"] == 3
    assert train(tiny_model(), train_data, val_data, config).train_loss == full.train_loss


def test_resuming_a_different_model_is_refused(tmp_path):
    train_data, val_data = tiny_data()
    config = cfg(checkpoint_path=str(tmp_path / "d.pt"))
    train(tiny_model(), train_data, val_data, config, stop_after=3)
    other = GPT(GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="different model configuration"):
        train(other, train_data, val_data, config)


def test_history_records_throughput_and_stops_at_a_target_val_loss():
    train_data, val_data = tiny_data()
    h = train(tiny_model(), train_data, val_data, cfg(max_steps=9, stop_val_loss=100.0))
    assert h.eval_steps == [3] and len(h.train_loss) == 3  # the first evaluation already reaches 100
    assert h.tokens_per_s[0] > 0 and h.elapsed[0] > 0 and h.mfu == [None]  # CPU: no datasheet peak


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_follows_the_fp32_run(precision):
    train_data, val_data = tiny_data()
    ref = train(tiny_model(), train_data, val_data, cfg())
    h = train(tiny_model(), train_data, val_data, cfg(precision=precision))
    assert h.train_loss == pytest.approx(ref.train_loss, abs=0.05) and h.train_loss != ref.train_loss


def test_precision_auto_and_autocast():
    assert T.resolve_precision("auto", "cpu") == "fp32"
    assert T.resolve_precision("fp16", "cpu") == "fp16"
    with pytest.raises(ValueError, match="precision"):
        T.resolve_precision("half", "cpu")
    with T.autocast_context("cpu", "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_flops_per_token_matches_pytorchs_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from gptcourse.attention import attention, causal_mask

    L, T_, C = 2, 32, 32
    model = GPT(GPTConfig(vocab_size=64, block_size=T_, n_layer=L, n_head=2, n_embd=C, pos="none", bias=False))
    x = torch.randint(0, 64, (2, T_))
    with FlopCounterMode(display=False) as counter:
        model(x, x)[1].backward()
    matmuls = counter.get_total_flops() / x.numel()  # the counter skips CPU's fused attention kernel
    q, k, v = (torch.randn(2, 2, T_, C // 2, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        attention(q, k, v, causal_mask(T_)).sum().backward()  # written-out attention: plain matmuls
    per_layer = counter.get_total_flops() / (2 * T_)
    assert T.flops_per_token(model) == pytest.approx(matmuls + L * per_layer, rel=0.01)


@pytest.mark.parametrize("ffn", ["mlp", "moe"])
def test_flops_per_token_and_mfu_count_the_active_parameters_by_hand(ffn, monkeypatch):
    V, T_, C, L, E, k = 17, 8, 16, 2, 4, 1
    model = GPT(
        GPTConfig(
            vocab_size=V, block_size=T_, n_layer=L, n_head=2, n_embd=C, bias=False, ffn=ffn, n_expert=E, expert_top_k=k
        )
    )
    mlp = 8 * C * C  # C -> 4C -> C, no biases
    # per layer: 2 LayerNorm gains, q k v and the output projection, then the MLP or the router
    # and E expert MLPs; plus token and position embeddings (tied with the output) and ln_f
    layer = 2 * C + 4 * C * C + (mlp if ffn == "mlp" else C * E + E * mlp)
    total = V * C + T_ * C + L * layer + C
    assert model.num_params() == total
    active = total if ffn == "mlp" else total - L * (E - k) * mlp  # a token visits k of the E experts
    flops = 6 * active + 12 * L * T_ * C
    assert T.flops_per_token(model) == flops
    # MFU = tokens/s * FLOPs per token / peak FLOP/s; pretend this CPU is a GPU with a 1 TFLOP/s datasheet
    monkeypatch.setattr(T, "peak_flops", lambda name, precision: 1e12)
    h = train(model, *tiny_data(), cfg())
    assert h.mfu == pytest.approx([tokens_per_s * flops / 1e12 for tokens_per_s in h.tokens_per_s], rel=1e-12)


def _ddp_worker(rank: int, world: int, init: str, out: str, train_data, val_data) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        h = train(tiny_model(), train_data, val_data, cfg(batch_size=4))
        torch.save(h.train_loss, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_on_two_cpu_processes_equals_one_process_with_twice_the_batch(tmp_path):
    train_data, val_data = tiny_data()
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_ddp_worker, args=(2, init, str(tmp_path / "loss"), train_data, val_data), nprocs=2, join=True)
    losses = [torch.load(tmp_path / f"loss.{r}") for r in range(2)]
    single = train(tiny_model(), train_data, val_data, cfg(batch_size=8))
    assert losses[0] == losses[1]  # every process reports the same (all-reduced) loss
    assert losses[0] == pytest.approx(single.train_loss, abs=1e-5)


def test_compile_trains_the_compiled_model_and_checkpoints_the_plain_one(tmp_path, monkeypatch):
    # the eager backend runs the compile path (wrapping, training through the wrapper, saving the
    # plain model's weights) in seconds; inductor's code generation is the GPU run's business
    compiled = []
    real_compile = torch.compile

    def spy(model, **kw):
        compiled.append(model)
        return real_compile(model, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", spy)
    train_data, val_data = tiny_data()
    eager = train(tiny_model(), train_data, val_data, cfg())
    path = tmp_path / "compiled.pt"
    model = tiny_model()
    history = train(model, train_data, val_data, cfg(compile=True, checkpoint_path=str(path)))
    assert compiled == [model]
    assert history.train_loss == pytest.approx(eager.train_loss, abs=1e-5)
    saved = T.load_checkpoint(path)["model"]
    assert saved.keys() == model.state_dict().keys()  # no "_orig_mod." prefix: it loads into a plain GPT


def test_throughput_counts_the_training_steps_of_each_window_and_not_the_evaluation(monkeypatch):
    # a clock that moves only when the loop works: 0.25 s per training step, 10 s per loss estimate
    clock = [100.0]
    monkeypatch.setattr(T.time, "perf_counter", lambda: clock[0])

    def timed(function, seconds):
        def run(*args, **kw):
            clock[0] += seconds
            return function(*args, **kw)

        return run

    monkeypatch.setattr(T, "train_step", timed(T.train_step, 0.25))
    monkeypatch.setattr(T, "estimate_loss", timed(T.estimate_loss, 10.0))
    h = train(tiny_model(), *tiny_data(), cfg(max_steps=6, eval_interval=3))
    tokens_per_step = 4 * 8  # batch_size x block_size
    assert h.tokens_per_s == pytest.approx([3 * tokens_per_step / 0.75] * 2)  # 128 tokens/s in each window
    assert h.elapsed == pytest.approx([0.75 + 20, 2 * (0.75 + 20)])  # wall time includes the evaluations
