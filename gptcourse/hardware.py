"""Which device a notebook runs on, and at which size.

Every notebook that trains runs the same code at three sizes:

* ``smoke``: seconds on a CPU; the test command forces it (``GPTCOURSE_SIZE=smoke``);
* ``cpu``: minutes on a laptop;
* ``gpu``: the full size, for a Colab T4 or a data-centre GPU.

Unless ``GPTCOURSE_SIZE`` forces one, the size follows the hardware: CUDA -> ``gpu``, anything
else (CPU, Apple MPS) -> ``cpu``. Notebooks call :func:`setup` once, which prints the device and
the size so that a reader can tell which run produced the outputs they are looking at.
"""

from __future__ import annotations

import os
import random
from typing import TypeVar

import torch

SIZES = ("smoke", "cpu", "gpu")
SIZE_ENV = "GPTCOURSE_SIZE"

T = TypeVar("T")


def get_device() -> str:
    """The best available device: ``"cuda"``, then ``"mps"``, then ``"cpu"``."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def get_size() -> str:
    """The run size: ``$GPTCOURSE_SIZE`` when set, else ``"gpu"`` on CUDA and ``"cpu"`` otherwise."""
    forced = os.environ.get(SIZE_ENV, "").strip().lower()
    if forced:
        if forced not in SIZES:
            raise ValueError(f"{SIZE_ENV}={forced!r} is not a size; use one of {', '.join(SIZES)}")
        return forced
    return "gpu" if torch.cuda.is_available() else "cpu"


def sized(smoke: T, cpu: T, gpu: T) -> T:
    """Pick the value for the current size, e.g. ``steps = sized(smoke=20, cpu=2000, gpu=5000)``."""
    return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[get_size()]


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (CPU and every GPU)."""
    random.seed(seed)
    torch.manual_seed(seed)


def describe() -> str:
    """One line naming the device, the size and the torch version, e.g. for a notebook's output."""
    device = get_device()
    name = torch.cuda.get_device_name() if device == "cuda" else device
    threads = torch.get_num_threads()
    return f"device: {name} | size: {get_size()} | torch {torch.__version__} | {threads} CPU threads"


def setup(seed: int = 1337) -> tuple[str, str]:
    """Seed, print :func:`describe`, and return ``(device, size)``. The first cell of a notebook."""
    seed_everything(seed)
    print(describe())
    return get_device(), get_size()
