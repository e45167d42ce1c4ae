"""The "share of peak" yardstick shared by the throughput benchmarks.

FLOPs are counted by `torch.utils.flop_counter` (convolutions, matrix products and their backward; 2 FLOPs
per multiply-add); the peak is a dense 3x3 convolution (128 -> 128 channels, 32 x 32, batch 32 by default)
of the same dtype, timed in the same process, so both numbers see the same CPU, threads and load.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of one call of `run` (convolutions and matrix products, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of `repeats` calls of `run` after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - began)
    return float(np.median(seconds))


def dense_conv_flops_per_second(dtype: torch.dtype, repeats: int = 3, batch: int = 32, channels: int = 128) -> float:
    """FLOP/s of a dense 3x3 convolution (`channels` -> `channels`, 32 x 32, stride 1) in `dtype`."""
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, 32, 32, generator=rng).to(dtype)
    w = torch.randn(channels, channels, 3, 3, generator=rng).to(dtype)
    flops = 2 * batch * channels * channels * 9 * 32 * 32
    with torch.no_grad():
        return flops / median_seconds(lambda: F.conv2d(x, w, padding=1), repeats)


def share_line(what: str, flops: float, seconds: float, peak: float, dtype: torch.dtype) -> str:
    """One printed line: achieved GFLOP/s, the same-dtype dense-conv GFLOP/s and their ratio."""
    achieved = flops / seconds
    return (
        f"{what}: {flops / 1e9:.3f} GFLOP in {seconds * 1000:.1f} ms = {achieved / 1e9:.1f} GFLOP/s; dense "
        f"{DTYPE_NAMES.get(dtype, dtype)} conv here {peak / 1e9:.1f} GFLOP/s; share of peak {achieved / peak:.0%}"
    )
