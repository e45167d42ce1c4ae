"""The no-learning reference (`ref-stats`): how far each pixel's local statistics stray from the training normals'.

Every study shows it next to the learned methods, so a table cannot suggest learning where colour or
contrast statistics alone find the defects. "Training" is one pass over the normal images: at every
pixel, the mean and standard deviation (over training images) of two local features in a
`window` x `window` neighbourhood — the local mean (intensity/colour) and the local contrast (standard
deviation). A test pixel's deviation is its largest |z-score| over channels.

The two maps fill the two slots every scorer yields: `l2` carries the local-mean deviation and `ssim`
the local-contrast deviation (SSIM's luminance and contrast terms are exactly these two statistics).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import BATCH_SIZE, IterationMaps, as_tensor

WINDOW = 7
# Per-pixel spreads estimated from a few dozen images can be near zero; a floor of this share of the
# mean spread keeps a single quiet pixel from dominating the map.
SPREAD_FLOOR = 0.1


def local_features(images: torch.Tensor, window: int = WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
    """Local mean and local standard deviation, (N, C, H, W) each, in a reflect-padded `window` square."""
    pad = window // 2
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    mean = F.avg_pool2d(padded, window, stride=1)
    square = F.avg_pool2d(padded * padded, window, stride=1)
    return mean, (square - mean * mean).clamp_min(0).sqrt()


class ReferenceStatistics(nn.Module):
    """Per-pixel mean and spread of the local features over the training normals (buffers, saved as weights)."""

    def __init__(self, channels: int, image_size: int, window: int = WINDOW) -> None:
        super().__init__()
        self.channels, self.image_size, self.window = channels, image_size, window
        shape = (channels, image_size, image_size)
        for name in ("mean_mu", "mean_sd", "contrast_mu", "contrast_sd"):
            self.register_buffer(name, torch.zeros(shape))

    @property
    def config(self) -> dict[str, int]:
        """What `ReferenceStatistics(**config)` rebuilds this module from (model.json's `model_config`)."""
        return {"channels": self.channels, "image_size": self.image_size, "window": self.window}

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> ReferenceStatistics:
        """Set the statistics from normal images (N, C, H, W) in [-1, 1]; returns self."""
        mean, contrast = local_features(images.float(), self.window)
        for name, feature in (("mean", mean), ("contrast", contrast)):
            spread = feature.std(dim=0, unbiased=False)
            floor = SPREAD_FLOOR * spread.mean() + 1e-6
            getattr(self, f"{name}_mu").copy_(feature.mean(dim=0))
            getattr(self, f"{name}_sd").copy_(spread.clamp_min(floor))
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local-mean deviation, local-contrast deviation), (N, H, W) each: the largest |z| over channels."""
        if tuple(images.shape[1:]) != (self.channels, self.image_size, self.image_size):
            raise ValueError(
                f"the reference statistics were fitted on {self.channels}x{self.image_size}x{self.image_size} "
                f"images, got {tuple(images.shape[1:])}; load the images at the model's image size"
            )
        mean, contrast = local_features(images.float(), self.window)
        mean_dev = ((mean - self.mean_mu) / self.mean_sd).abs().amax(dim=1)
        contrast_dev = ((contrast - self.contrast_mu) / self.contrast_sd).abs().amax(dim=1)
        return mean_dev, contrast_dev

    def maps(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """`forward` on NumPy or tensor images, returning NumPy maps."""
        mean_dev, contrast_dev = self(as_tensor(images).to(self.mean_mu.device))
        return mean_dev.cpu().numpy(), contrast_dev.cpu().numpy()


def fit_reference(images: np.ndarray | torch.Tensor, window: int = WINDOW) -> ReferenceStatistics:
    """Fit the reference statistics to normal images (N, C, H, W) in [-1, 1]."""
    tensor = as_tensor(images)
    _, channels, height, width = tensor.shape
    if height != width:
        raise ValueError(f"reference statistics need square images, got {height}x{width}")
    return ReferenceStatistics(channels, height, window).fit(tensor)


class ReferenceScorer:
    """Scores images by their local-statistics deviation in one pass (one "iteration", no search)."""

    def __init__(self, statistics: ReferenceStatistics, batch_size: int = BATCH_SIZE) -> None:
        self.statistics = statistics
        self.batch_size = batch_size

    def iterate(self, images: np.ndarray | torch.Tensor) -> Iterator[IterationMaps]:
        tensor = as_tensor(images)
        means, contrasts = [], []
        for start in range(0, len(tensor), self.batch_size):
            mean_dev, contrast_dev = self.statistics.maps(tensor[start : start + self.batch_size])
            means.append(mean_dev)
            contrasts.append(contrast_dev)
        yield IterationMaps(
            iteration=1,
            ssim=np.concatenate(contrasts).astype(np.float32),
            l2=np.concatenate(means).astype(np.float32),
            changed=len(tensor),
            generator_passes=0,
        )
