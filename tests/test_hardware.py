"""gptcourse.hardware: the device follows GPTCOURSE_DEVICE or the hardware, the size GPTCOURSE_SIZE or the
device; bad values are named; the device line says when the device was forced; GPU peaks follow the datasheets."""

from __future__ import annotations

import pytest
import torch

from gptcourse import hardware


@pytest.mark.parametrize("size", hardware.SIZES)
def test_forced_size(monkeypatch, size):
    monkeypatch.setenv(hardware.SIZE_ENV, size)
    assert hardware.get_size() == size
    assert hardware.sized(smoke=1, cpu=2, gpu=3) == {"smoke": 1, "cpu": 2, "gpu": 3}[size]


def test_size_follows_hardware(monkeypatch):
    monkeypatch.delenv(hardware.SIZE_ENV, raising=False)
    monkeypatch.delenv(hardware.DEVICE_ENV, raising=False)
    assert hardware.get_size() == ("gpu" if torch.cuda.is_available() else "cpu")


def test_bad_size_is_named(monkeypatch):
    monkeypatch.setenv(hardware.SIZE_ENV, "huge")
    with pytest.raises(ValueError, match="GPTCOURSE_SIZE='huge'.*smoke, cpu, gpu"):
        hardware.get_size()


def test_setup_prints_device_and_size(monkeypatch, capsys):
    monkeypatch.setenv(hardware.SIZE_ENV, "smoke")
    monkeypatch.delenv(hardware.DEVICE_ENV, raising=False)
    device, size = hardware.setup(seed=0)
    out = capsys.readouterr().out
    assert size == "smoke" and "size: smoke" in out and "device:" in out
    assert device in ("cuda", "mps", "cpu")
    a = torch.rand(3)
    hardware.setup(seed=0)
    assert torch.equal(a, torch.rand(3))


def _machine(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(("cuda", "mps"), [(True, False), (False, True), (False, False), (True, True)])
def test_forced_cpu_wins_on_any_machine(monkeypatch, capsys, cuda, mps):
    _machine(monkeypatch, cuda, mps)
    monkeypatch.delenv(hardware.SIZE_ENV, raising=False)
    monkeypatch.setenv(hardware.DEVICE_ENV, " CPU ")  # case and spaces as a shell may leave them
    assert hardware.get_device() == "cpu"
    assert hardware.get_size() == "cpu"  # the size follows the forced device: no gpu size on the CPU
    assert hardware.setup(seed=0) == ("cpu", "cpu")
    line = capsys.readouterr().out
    assert line.startswith("device: cpu (forced by GPTCOURSE_DEVICE) | size: cpu |")


def test_unforced_device_is_the_best_available(monkeypatch, capsys):
    monkeypatch.delenv(hardware.DEVICE_ENV, raising=False)
    monkeypatch.setenv(hardware.SIZE_ENV, "smoke")
    _machine(monkeypatch, cuda=False, mps=True)  # an Apple laptop
    assert hardware.get_device() == "mps"
    hardware.setup(seed=0)
    line = capsys.readouterr().out
    assert line.startswith("device: mps (Apple GPU; GPTCOURSE_DEVICE=cpu forces the CPU) | size: smoke |")
    assert "forced" not in line
    _machine(monkeypatch, cuda=False, mps=False)
    assert hardware.get_device() == "cpu" and hardware.describe().startswith("device: cpu | size: smoke |")
    monkeypatch.setenv(hardware.DEVICE_ENV, "")  # set but empty: not forced
    assert hardware.get_device() == "cpu" and hardware.forced_device() is None


def test_forced_mps_on_a_mac(monkeypatch):
    _machine(monkeypatch, cuda=False, mps=True)
    monkeypatch.delenv(hardware.SIZE_ENV, raising=False)
    monkeypatch.setenv(hardware.DEVICE_ENV, "mps")
    assert hardware.get_device() == "mps" and hardware.get_size() == "cpu"
    assert "device: mps (forced by GPTCOURSE_DEVICE) | size: cpu" in hardware.describe()


def test_bad_device_is_named(monkeypatch):
    monkeypatch.setenv(hardware.DEVICE_ENV, "gpu")
    with pytest.raises(ValueError, match=r"GPTCOURSE_DEVICE='gpu' is not a device; use one of cuda, mps, cpu"):
        hardware.get_device()
    with pytest.raises(ValueError, match="GPTCOURSE_DEVICE"):
        hardware.setup(seed=0)  # the notebook's first cell stops with the message, not later with a torch error


@pytest.mark.parametrize(
    ("device", "cuda", "mps", "what"),
    [("cuda", False, True, "no CUDA GPU is available"), ("mps", True, False, "Apple's MPS is not available")],
)
def test_unavailable_forced_device_is_an_error(monkeypatch, device, cuda, mps, what):
    _machine(monkeypatch, cuda, mps)
    monkeypatch.delenv(hardware.SIZE_ENV, raising=False)
    monkeypatch.setenv(hardware.DEVICE_ENV, device)
    with pytest.raises(RuntimeError, match=rf"GPTCOURSE_DEVICE={device} but {what}.*set it to cpu"):
        hardware.get_device()
    with pytest.raises(RuntimeError, match="GPTCOURSE_DEVICE"):
        hardware.get_size()  # never a silent gpu or cpu size for a device that is not there


def test_peak_flops_follow_the_datasheets():
    assert hardware.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert hardware.peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert hardware.peak_flops("NVIDIA A100-SXM4-40GB", "bf16") == 312e12
    assert hardware.peak_flops("Tesla T4", "fp16") == 65e12
    assert hardware.peak_flops("Tesla T4", "fp32") == 8.1e12
    assert hardware.peak_flops("Apple M2", "bf16") is None
