"""Benchmark 4 (needs CUDA): wall time to validation loss <= 1.47 at the GPU size, and MFU.

The ``shakespeare-char`` preset at its gpu size is nanoGPT's character config (6 layers, 6 heads,
384 wide, block 256, batch 64, dropout 0.2, lr 1e-3, 5000 steps), here with bf16 autocast (fp16
+ a gradient scaler on GPUs without bf16), fused AdamW, fused attention (SDPA) and, by default,
``torch.compile``. The clock includes compilation and evaluations; the run stops at the first
evaluation whose validation loss is <= the target. MFU uses the datasheet peak of the device
(``gptcourse.hardware.PEAK_FLOPS``). nanoGPT reports val 1.4697 after about 3 minutes on an A100.

    python benchmarks/gpu_time_to_loss.py            # refuses to run without a CUDA GPU
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=1.47)
    parser.add_argument("--budget", type=float, default=60.0, help="goal in seconds")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--eval-iters", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmark 4 needs a CUDA GPU (torch.cuda.is_available() is False); nothing was run", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    t0 = time.perf_counter()

    from gptcourse.hardware import peak_flops
    from gptcourse.model import GPT, GPTConfig
    from gptcourse.run import prepare_data, preset
    from gptcourse.train import TrainConfig, resolve_precision, train

    model_kw, train_kw = preset("shakespeare-char", "gpu")
    train_kw.update(eval_iters=args.eval_iters, compile=not args.no_compile)
    train_ids, val_ids, tokenizer = prepare_data("shakespeare-char")
    torch.manual_seed(1337)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **model_kw))
    config = TrainConfig(**train_kw, stop_val_loss=args.target, progress=False)
    history = train(model, train_ids, val_ids, config, "cuda")
    total = time.perf_counter() - t0
    name = torch.cuda.get_device_name()
    precision = resolve_precision(config.precision, "cuda")
    peak = peak_flops(name, precision)
    print(
        f"device: {name} | precision {precision} | peak {'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}"
        f" | compile {config.compile} | torch {torch.__version__} | {model.num_params() / 1e6:.2f}M parameters"
    )
    print(f"{'step':>5} {'train':>7} {'val':>7} {'seconds':>8} {'tokens/s':>10} {'MFU':>6}")
    for i, step in enumerate(history.eval_steps):
        mfu = history.mfu[i]
        print(
            f"{step:>5} {history.eval_train_loss[i]:>7.4f} {history.eval_val_loss[i]:>7.4f} "
            f"{history.elapsed[i]:>8.1f} {history.tokens_per_s[i]:>10.0f} "
            f"{'n/a' if mfu is None else f'{100 * mfu:.1f}%':>6}"
        )
    reached = history.eval_val_loss[-1] <= args.target
    verdict = (
        f"reached val {history.eval_val_loss[-1]:.4f} <= {args.target} at step {history.eval_steps[-1]}"
        if reached
        else f"did NOT reach {args.target} (best val {min(history.eval_val_loss):.4f})"
    )
    print(f"{verdict} | wall time {total:.1f} s (goal <= {args.budget:.0f} s; nanoGPT: ~3 min on an A100)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
