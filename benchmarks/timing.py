"""Side-by-side timing for the benchmarks: the contenders take turns (round-robin), so that a noisy
machine slows them alike and their ratio holds better than their absolute times."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

import torch


def round_robin(
    steps: dict[Hashable, Callable[[], object]], rounds: int, steps_per_turn: int, device: str
) -> dict[Hashable, list[float]]:
    """Seconds per call of each ``steps[key]()``: ``rounds`` turns of ``steps_per_turn`` calls each,
    after one warm-up turn that is not counted; CUDA is synchronised around every turn."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: dict[Hashable, list[float]] = {key: [] for key in steps}
    for round_ in range(rounds + 1):  # round 0 warms up and is not counted
        for key, step in steps.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(steps_per_turn):
                step()
            sync()
            if round_ > 0:
                times[key].append((time.perf_counter() - t0) / steps_per_turn)
    return times
