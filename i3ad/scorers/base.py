"""What every scorer shares: the per-iteration maps it yields, the protocol, the model it is built from, tiling."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import ConfigError

BATCH_SIZE = 32  # network inputs per forward pass, every scorer's default (DetectionSettings.batch_size)


@dataclass
class IterationMaps:
    """Anomaly maps of every image after one detection iteration."""

    iteration: int
    ssim: np.ndarray  # (N, H, W) 1 - SSIM(x0, x_i)
    l2: np.ndarray  # (N, H, W) squared error, channel mean, on the [-1, 1] scale
    changed: int  # images whose reconstruction changed in this iteration
    generator_passes: int  # generator inputs processed so far (one image under one mask = one pass)


class Scorer(Protocol):
    """Anything that turns images into a sequence of anomaly maps, one entry per iteration."""

    def iterate(self, images: np.ndarray | torch.Tensor) -> Iterator[IterationMaps]: ...


@dataclass
class LoadedModel:
    """A model folder loaded for inference (`i3ad.loading.load_model`): what a scorer is built from."""

    method: str
    module: torch.nn.Module
    info: dict[str, Any]
    device: torch.device


def as_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Images as a float32 (N, C, H, W) tensor; a ConfigError names any other shape."""
    tensor = torch.as_tensor(images, dtype=torch.float32)
    if tensor.ndim != 4:
        raise ConfigError(f"images must be shaped (N, C, H, W), got {tuple(tensor.shape)}")
    return tensor


def to_tiles(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut (N, C, H, W) images into non-overlapping (N * H/p * W/p, C, p, p) tiles, image by image."""
    n, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ConfigError(f"image size {h}x{w} is not a multiple of the autoencoder's patch size {p}")
    tiles = images.unfold(2, p, p).unfold(3, p, p)  # (n, c, h/p, w/p, p, p)
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, p, p)


def from_tiles(tiles: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `to_tiles`: reassemble tiles into images of `shape` (N, C, H, W)."""
    n, c, h, w = shape
    p = tiles.shape[-1]
    out = tiles.reshape(n, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(n, c, h, w)
