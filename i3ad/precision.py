"""How a step runs on the CPU: bf16 where the cores have it, memory layout, and torch.compile.

bf16 is fast on a CPU only where the cores have bf16 instructions (`avx512_bf16`, `amx_bf16`); elsewhere
oneDNN emulates it: on this project's AVX2 build machine a dense 3x3 conv ran at 0.3-0.4 GFLOP/s in bf16
against 8-33 GFLOP/s in fp32 on a shared machine (benchmarks/train_throughput.py prints both). So
`cpu_precision="auto"` picks bf16 only where the CPU reports those flags and fp32 elsewhere; "fp32" (the
default, until bf16 is shown harmless on a CPU that has it) and "bf16" force either. On CUDA the GPU's own
mixed-precision path (`device.amp_dtype`, the `amp` setting) applies unchanged.

Under bf16 autocast the convolutions and matrix products run in bf16 while losses, SSIM maps and scores
are computed in fp32 (callers cast outputs with `.float()` before them). bf16 needs no gradient scaler.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import torch
from torch import nn

from .checks import check_str
from .device import amp_dtype
from .errors import ConfigError

CPU_PRECISIONS = ("auto", "fp32", "bf16")
CPU_BF16_ENV = "I3AD_CPU_BF16"  # "0" or "1": override the run-time check (see `cpu_has_bf16`)
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names of native bf16 arithmetic


def check_cpu_precision(value: object, name: str = "cpu_precision") -> None:
    """`value` is one of `CPU_PRECISIONS`."""
    check_str(value, name)
    if value not in CPU_PRECISIONS:
        raise ConfigError(f"{name} {value!r} is unknown; choose one of {', '.join(CPU_PRECISIONS)}")


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags the (first) CPU reports; empty where /proc/cpuinfo does not exist."""
    try:
        with cpuinfo.open() as lines:
            for line in lines:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); checked once per process.

    Only Linux reports the flags; elsewhere (macOS, Windows) the answer is False and "auto" means fp32.
    The environment variable `I3AD_CPU_BF16=0` or `=1` overrides the check (the tests pin it to 0, so
    "auto" means fp32 on every machine they run on, Ray workers included).
    """
    override = os.environ.get(CPU_BF16_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1"
    if not sys.platform.startswith("linux") or not torch.backends.mkldnn.is_available():
        return False
    return bool(_cpu_flags() & BF16_CPU_FLAGS)


def compute_dtype(device: torch.device, cpu_precision: str = "auto", amp: bool = True) -> torch.dtype | None:
    """The autocast dtype for a step on `device`, or None for plain fp32.

    CPU: bf16 when `cpu_precision` is "bf16", or "auto" on a CPU with native bf16. CUDA: `amp_dtype` (bf16 or
    fp16 when `amp`). Other devices: fp32.
    """
    if device.type == "cpu":
        if cpu_precision == "bf16" or (cpu_precision == "auto" and cpu_has_bf16()):
            return torch.bfloat16
        return None
    return amp_dtype(device, amp)


def memory_format(channels_last: bool) -> torch.memory_format:
    """`torch.channels_last` when asked for, else the default contiguous layout."""
    return torch.channels_last if channels_last else torch.contiguous_format


def to_layout(tensors: tuple[torch.Tensor, ...], channels_last: bool) -> tuple[torch.Tensor, ...]:
    """`tensors` (4-d) in channels_last layout when asked for; unchanged otherwise."""
    if not channels_last:
        return tensors
    return tuple(t.contiguous(memory_format=torch.channels_last) for t in tensors)


def prepare_module(module: nn.Module, channels_last: bool = False, compile_backend: str | None = None) -> nn.Module:
    """Put `module` in channels_last layout and/or compile it in place (`nn.Module.compile`), as asked.

    In place, so `state_dict()` keys and checkpoints are unchanged (a `torch.compile` wrapper would
    prefix every key with `_orig_mod.`); checkpoints are written contiguous either way.
    """
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if compile_backend is not None:
        module.compile(backend=compile_backend)
    return module
