"""SN-PatchGAN discriminator (Yu et al. 2019): six spectral-normalised 5x5 stride-2 convs, one score per patch.

Each output score judges one receptive-field patch of the image, so the hinge loss is applied per patch.
A 5x5 stride-2 conv with padding 2 maps size n to ceil(n / 2) and keeps a 1x1 map at 1x1, so any input
of 1 pixel and up runs; inputs of 64 or more keep six real downsamplings (64 -> 1x1, 128 -> 2x2, 256 -> 4x4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from i3ad.errors import ConfigError
from i3ad.models.layers import num_parameters

WIDTH_MULTIPLIERS = (1, 2, 4, 4, 4, 4)


@dataclass
class DiscriminatorConfig:
    """Settings of `PatchDiscriminator`: image channels (1 or 3) and base width."""

    channels: int = 3
    width: int = 16


class PatchDiscriminator(nn.Module):
    """`(image (B,C,H,W), mask (B,1,H,W)) -> (B, K)` per-patch realness scores (unbounded, for a hinge loss)."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        if cfg.channels < 1 or cfg.width < 1:
            raise ConfigError(f"DiscriminatorConfig.channels and .width must be >= 1, got {cfg}")
        self.cfg = cfg
        layers: list[nn.Module] = []
        in_channels = cfg.channels + 1  # image and mask
        for multiplier in WIDTH_MULTIPLIERS:
            out_channels = cfg.width * multiplier
            layers += [spectral_norm(nn.Conv2d(in_channels, out_channels, 5, 2, 2)), nn.LeakyReLU(0.2)]
            in_channels = out_channels
        self.layers = nn.Sequential(*layers)

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        x = self.layers(torch.cat([image, mask], dim=1))
        return x.flatten(1)

    def num_parameters(self) -> int:
        """Number of parameters."""
        return num_parameters(self)
