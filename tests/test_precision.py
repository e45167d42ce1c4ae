"""CPU precision, layout and compile settings: run-time bf16 detection, bf16 detection and training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import i3ad.precision
from i3ad.checkpoint import read_model_info
from i3ad.errors import ConfigError
from i3ad.loading import load_model
from i3ad.precision import CPU_BF16_ENV, _cpu_flags, compute_dtype
from i3ad.scorers import DetectionSettings, IterativeInpainter
from i3ad.train import TrainConfig, read_train_log, train

from .conftest import tiny_config

CPU = torch.device("cpu")


def test_auto_means_bf16_only_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DetectionSettings().cpu_precision == TrainConfig().cpu_precision == "fp32"  # bf16 is opt-in (closing-16)
    monkeypatch.setattr(i3ad.precision, "cpu_has_bf16", lambda: False)
    assert compute_dtype(CPU, "auto") is None
    assert compute_dtype(CPU, "bf16") is torch.bfloat16
    monkeypatch.setattr(i3ad.precision, "cpu_has_bf16", lambda: True)
    assert compute_dtype(CPU, "auto") is torch.bfloat16
    assert compute_dtype(CPU, "fp32") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert compute_dtype(torch.device("cuda"), "fp32") is torch.float16  # the GPU keeps its AMP path
    assert compute_dtype(torch.device("cuda"), "bf16", amp=False) is None


def test_cpu_flags_are_read_and_the_environment_overrides_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\n\nflags\t: other\n")
    assert {"avx512_bf16", "avx2"} <= _cpu_flags(cpuinfo) and "other" not in _cpu_flags(cpuinfo)
    assert _cpu_flags(tmp_path / "missing") == frozenset()
    for value, expected in (("1", True), ("0", False)):
        monkeypatch.setenv(CPU_BF16_ENV, value)
        i3ad.precision.cpu_has_bf16.cache_clear()
        assert i3ad.precision.cpu_has_bf16() is expected
    i3ad.precision.cpu_has_bf16.cache_clear()


def test_bad_precision_layout_and_compile_settings_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="cpu_precision 'fp16' is unknown; choose one of auto, fp32, bf16"):
        TrainConfig(cpu_precision="fp16")
    with pytest.raises(ConfigError, match="cpu_precision 'half' is unknown"):
        DetectionSettings(cpu_precision="half")
    with pytest.raises(ConfigError, match="channels_last must be true or false"):
        TrainConfig(channels_last="yes")
    with pytest.raises(ConfigError, match="compile 'fast' is unknown"):
        TrainConfig(compile="fast")


def test_bf16_detection_agrees_with_fp32_and_keeps_maps_in_fp32(tiny_model: Path, tiny_data: Path) -> None:
    from i3ad.data import MVTecCategory, load_test_set

    model = load_model(tiny_model, "cpu")
    category = MVTecCategory(tiny_data, "carpet")
    images = torch.from_numpy(load_test_set(category, category.test_items(), 32).images[:4])
    runs = {}
    for precision in ("fp32", "bf16"):
        settings = DetectionSettings(threshold=0.5, patch_size=4, iterations=2, cpu_precision=precision)
        inpainter = IterativeInpainter(model.module, settings)
        assert inpainter.dtype == (torch.bfloat16 if precision == "bf16" else None)
        runs[precision] = list(inpainter.iterate(images))
    for fp32, bf16 in zip(runs["fp32"], runs["bf16"], strict=True):
        assert bf16.ssim.dtype == np.float32 and bf16.l2.dtype == np.float32
        assert np.abs(bf16.ssim - fp32.ssim).mean() < 0.05  # bf16 rounding, not a different reconstruction


def test_bf16_channels_last_training_runs_and_resumes_in_fp32(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    train(tiny_config(steps=3, cpu_precision="bf16", channels_last=True), tiny_data, "carpet", out, progress=False)
    assert read_model_info(out)["train_config"]["cpu_precision"] == "bf16"
    assert all(np.isfinite(r["loss_g"]) for r in read_train_log(out))
    # How a step runs may change on resume, like the device: the model being trained is the same.
    result = train(tiny_config(steps=4), tiny_data, "carpet", out, resume=True, progress=False)
    assert result.resumed_from == 3 and result.steps == 4
