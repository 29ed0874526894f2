"""Which device a notebook runs on, at which size, and how fast that device can compute.

Every notebook that trains runs the same code at three sizes:

* ``smoke``: seconds on a CPU; the test command forces it (``GPTCOURSE_SIZE=smoke``);
* ``cpu``: minutes on a laptop;
* ``gpu``: the full size, for a Colab T4 or a data-centre GPU.

The device is the best one available (CUDA, then Apple's MPS, then the CPU) unless
``GPTCOURSE_DEVICE`` forces one (``cpu``, ``mps`` or ``cuda``; e.g. ``GPTCOURSE_DEVICE=cpu`` on a Mac
whose MPS results differ from the CPU's). Unless ``GPTCOURSE_SIZE`` forces one, the size follows
the device: CUDA -> ``gpu``, anything else (CPU, Apple MPS) -> ``cpu``. Notebooks call :func:`setup`
once, which prints the device (and whether it was forced) and the size so that a reader can tell
which run produced the outputs they are looking at.

:data:`PEAK_FLOPS` holds the datasheet peaks of common GPUs, the denominator of the trainer's model
FLOPs utilisation (MFU).
"""

from __future__ import annotations

import os
import random
from typing import TypeVar

import torch

from gptcourse import __version__

SIZES = ("smoke", "cpu", "gpu")
SIZE_ENV = "GPTCOURSE_SIZE"
DEVICES = ("cuda", "mps", "cpu")
DEVICE_ENV = "GPTCOURSE_DEVICE"
# set by `python -m gptcourse.outputs` to the commit it executes, so the device line names the code that ran
COMMIT_ENV = "GPTCOURSE_COMMIT"

T = TypeVar("T")


def _available(device: str) -> bool:
    if device == "cuda":
        return torch.cuda.is_available()
    if device == "mps":
        return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return device == "cpu"


def forced_device() -> str | None:
    """The device ``$GPTCOURSE_DEVICE`` forces, or ``None`` when it is unset.

    Raises ``ValueError`` for a value that is not a device, and ``RuntimeError`` for a device this
    machine does not have (asking for ``cuda`` without a CUDA GPU never falls back silently)."""
    forced = os.environ.get(DEVICE_ENV, "").strip().lower()
    if not forced:
        return None
    if forced not in DEVICES:
        raise ValueError(f"{DEVICE_ENV}={forced!r} is not a device; use one of {', '.join(DEVICES)}")
    if not _available(forced):
        what = {"cuda": "no CUDA GPU is available", "mps": "Apple's MPS is not available"}[forced]
        raise RuntimeError(
            f"{DEVICE_ENV}={forced} but {what} to this PyTorch ({torch.__version__}); "
            f"unset {DEVICE_ENV} to use the best device there is, or set it to cpu"
        )
    return forced


def get_device() -> str:
    """``$GPTCOURSE_DEVICE`` when set (see :func:`forced_device`), else the best available device:
    ``"cuda"``, then ``"mps"``, then ``"cpu"``."""
    forced = forced_device()
    if forced:
        return forced
    for device in DEVICES:
        if _available(device):
            return device
    return "cpu"


def get_size() -> str:
    """The run size: ``$GPTCOURSE_SIZE`` when set, else ``"gpu"`` on CUDA and ``"cpu"`` otherwise
    (the device of :func:`get_device`, so ``GPTCOURSE_DEVICE=cpu`` on a GPU machine runs the cpu size)."""
    forced = os.environ.get(SIZE_ENV, "").strip().lower()
    if forced:
        if forced not in SIZES:
            raise ValueError(f"{SIZE_ENV}={forced!r} is not a size; use one of {', '.join(SIZES)}")
        return forced
    return "gpu" if get_device() == "cuda" else "cpu"


def sized(smoke: T, cpu: T, gpu: T) -> T:
    """Pick the value for the current size, e.g. ``steps = sized(smoke=20, cpu=2000, gpu=5000)``."""
    return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[get_size()]


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (CPU and every GPU)."""
    random.seed(seed)
    torch.manual_seed(seed)


def describe() -> str:
    """One line naming the device, the size, the torch version and the course package's version
    (with the commit, when ``$GPTCOURSE_COMMIT`` names one), e.g. for a notebook's output.

    The device says when ``$GPTCOURSE_DEVICE`` forced it, and on Apple's MPS how to use the CPU
    instead (MPS results can differ from the CPU's: see the setup page)."""
    device = get_device()
    name = torch.cuda.get_device_name() if device == "cuda" else device
    if forced_device():
        name += f" (forced by {DEVICE_ENV})"
    elif device == "mps":
        name += f" (Apple GPU; {DEVICE_ENV}=cpu forces the CPU)"
    threads = torch.get_num_threads()
    commit = os.environ.get(COMMIT_ENV, "").strip()
    course = f"gptcourse {__version__}" + (f" @ {commit}" if commit else "")
    cpu = f"{threads} CPU thread" + ("" if threads == 1 else "s")
    return f"device: {name} | size: {get_size()} | torch {torch.__version__} | {cpu} | {course}"


def setup(seed: int = 1337) -> tuple[str, str]:
    """Seed, print :func:`describe`, and return ``(device, size)``. The first cell of a notebook."""
    seed_everything(seed)
    print(describe())
    return get_device(), get_size()


# Dense (no sparsity) peak tensor-core throughput from NVIDIA's datasheets, in FLOP/s, for the
# precision used in training. H100 SXM: 989 TFLOPS bf16/fp16 (H100 datasheet; the PCIe card is
# 756); H200: 989 (same GH100 compute); A100: 312 bf16/fp16 (A100 datasheet); L4: 121 bf16
# (242 with sparsity); A10G / A10: 125 bf16 (A10 datasheet); T4: 65 fp16 (T4 datasheet);
# V100: 125 fp16 (V100 SXM2 datasheet). fp32 runs use the matching non-tensor-core figures.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"half": 756e12, "fp32": 51e12},
    "H100": {"half": 989e12, "fp32": 67e12},
    "H200": {"half": 989e12, "fp32": 67e12},
    "A100": {"half": 312e12, "fp32": 19.5e12},
    "L4": {"half": 121e12, "fp32": 30.3e12},
    "A10": {"half": 125e12, "fp32": 31.2e12},
    "T4": {"half": 65e12, "fp32": 8.1e12},
    "V100": {"half": 125e12, "fp32": 15.7e12},
}


def peak_flops(device_name: str, precision: str) -> float | None:
    """The datasheet peak FLOP/s of a GPU named like ``torch.cuda.get_device_name()`` (e.g.
    ``"NVIDIA H100 80GB HBM3"``) at ``precision`` (``"bf16"``, ``"fp16"`` or ``"fp32"``);
    ``None`` when the device is not in :data:`PEAK_FLOPS` (CPUs, Apple GPUs)."""
    kind = "fp32" if precision == "fp32" else "half"
    for name, peaks in PEAK_FLOPS.items():  # "H100 PCIe" is listed before "H100" on purpose
        if all(part in device_name for part in name.split()):
            return peaks[kind]
    return None
