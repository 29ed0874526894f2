"""gptcourse.hardware: the size follows GPTCOURSE_SIZE or the hardware; bad values are named; GPU peaks
follow the datasheets."""

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
    assert hardware.get_size() == ("gpu" if torch.cuda.is_available() else "cpu")


def test_bad_size_is_named(monkeypatch):
    monkeypatch.setenv(hardware.SIZE_ENV, "huge")
    with pytest.raises(ValueError, match="GPTCOURSE_SIZE='huge'.*smoke, cpu, gpu"):
        hardware.get_size()


def test_setup_prints_device_and_size(monkeypatch, capsys):
    monkeypatch.setenv(hardware.SIZE_ENV, "smoke")
    device, size = hardware.setup(seed=0)
    out = capsys.readouterr().out
    assert size == "smoke" and "size: smoke" in out and "device:" in out
    assert device in ("cuda", "mps", "cpu")
    a = torch.rand(3)
    hardware.setup(seed=0)
    assert torch.equal(a, torch.rand(3))


def test_peak_flops_follow_the_datasheets():
    assert hardware.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert hardware.peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert hardware.peak_flops("NVIDIA A100-SXM4-40GB", "bf16") == 312e12
    assert hardware.peak_flops("Tesla T4", "fp16") == 65e12
    assert hardware.peak_flops("Tesla T4", "fp32") == 8.1e12
    assert hardware.peak_flops("Apple M2", "bf16") is None
