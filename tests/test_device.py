"""Device choice and mixed-precision settings, checked on the CPU."""

from __future__ import annotations

import pytest
import torch

from i3ad.device import amp_dtype, autocast, grad_scaler, resolve_device, seed_everything
from i3ad.errors import ConfigError


def test_auto_picks_cpu_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"


def test_auto_picks_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"


def test_asking_for_a_missing_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no GPU"):
        resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("gpu please")


def test_mixed_precision_only_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    assert amp_dtype(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert amp_dtype(torch.device("cuda")) is torch.bfloat16
    assert amp_dtype(torch.device("cuda"), enabled=False) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert amp_dtype(torch.device("cuda")) is torch.float16


def test_scaler_only_for_float16_and_autocast_noop_on_cpu() -> None:
    assert not grad_scaler(torch.device("cpu"), None).is_enabled()
    with autocast(torch.device("cpu"), None):
        assert (torch.ones(2) * 2).dtype == torch.float32


def test_seeding_repeats_random_draws() -> None:
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))
