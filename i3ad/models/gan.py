"""The GAN baselines' networks (AnoGAN, f-AnoGAN, AEGAN), built from I3AD's own blocks.

The paper runs its GAN baselines on "the same network as I3AD, the only difference being whether input
images are masked". A latent-code GAN cannot take the inpainting generator as it is (its input is an
image, not a code), so the pieces are cut from it:

    generator   z (latent_dim) -> linear -> (4c, S/16, S/16) -> up x2 to S/4 -> the coarse stage's decoder
                (conv, conv, up, conv, up, conv; gated, ELU) -> plain 3x3 conv -> tanh
    encoder     image -> the coarse stage's encoder (5x5 conv, down, conv, down, conv, conv; gated) to S/4
                -> two more gated downsamplings to S/16 -> linear -> z
    discriminator  I3AD's SN-PatchGAN, given an all-zero mask (nothing is masked); its activations after
                `FEATURE_BLOCKS` blocks (1/16 resolution) are the features of the L_D term

`c = width // 2` as in `InpaintGenerator`. The side S must be a multiple of 16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from i3ad.errors import ConfigError
from i3ad.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from i3ad.models.layers import conv, down, gated_stack, num_parameters, up

DOWNSAMPLING = 16
FEATURE_BLOCKS = 4  # discriminator blocks behind the L_D features: 1/16 resolution keeps a coarse map


@dataclass
class GanConfig:
    """Settings of `GanNetwork`: image channels and side, code size, base width, whether it has an encoder."""

    channels: int = 3
    image_size: int = 128
    latent_dim: int = 100
    width: int = 16
    encoder: bool = True


class LatentGenerator(nn.Module):
    """`z (B, latent_dim) -> image (B, C, S, S)` in [-1, 1]."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        c = cfg.width // 2
        self.base = cfg.image_size // DOWNSAMPLING
        self.project = nn.Linear(cfg.latent_dim, 4 * c * self.base * self.base)
        self.body = gated_stack(4 * c, [
            up(4 * c), up(4 * c),
            conv(4 * c), conv(4 * c), up(2 * c), conv(2 * c), up(c), conv(c // 2),
        ])  # fmt: skip
        self.out = nn.Conv2d(c // 2, cfg.channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.project(z).view(len(z), -1, self.base, self.base)
        return torch.tanh(self.out(self.body(F.elu(x))))


class LatentEncoder(nn.Module):
    """`image (B, C, S, S) -> z (B, latent_dim)`."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        c = cfg.width // 2
        self.body = gated_stack(cfg.channels, [
            conv(c, 5), down(2 * c), conv(2 * c), down(4 * c), conv(4 * c), conv(4 * c),
            down(4 * c), down(4 * c),
        ])  # fmt: skip
        side = cfg.image_size // DOWNSAMPLING
        self.out = nn.Linear(4 * c * side * side, cfg.latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x).flatten(1))


class GanNetwork(nn.Module):
    """Generator, optional encoder and discriminator of one GAN baseline, saved and loaded as one module."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        size = cfg.image_size
        if size < DOWNSAMPLING or size % DOWNSAMPLING:
            raise ConfigError(
                f"the GAN baselines need an image (or crop) size that is a multiple of {DOWNSAMPLING}, got {size}; "
                "change image_size or crop_size"
            )
        if cfg.width < 4 or cfg.latent_dim < 1 or cfg.channels < 1:
            raise ConfigError(f"GanConfig needs width >= 4, latent_dim >= 1 and channels >= 1, got {cfg}")
        self.cfg = cfg
        self.generator = LatentGenerator(cfg)
        self.encoder = LatentEncoder(cfg) if cfg.encoder else None
        self.discriminator = PatchDiscriminator(DiscriminatorConfig(channels=cfg.channels, width=cfg.width))

    def critic(self, images: Tensor) -> Tensor:
        """Per-patch realness scores of unmasked images (the discriminator's mask input is all zero)."""
        return self.discriminator(images, images.new_zeros(len(images), 1, *images.shape[2:]))

    def features(self, images: Tensor) -> Tensor:
        """The discriminator's activations after `FEATURE_BLOCKS` blocks, (B, K, S/16, S/16)."""
        x = torch.cat([images, images.new_zeros(len(images), 1, *images.shape[2:])], dim=1)
        return self.discriminator.layers[: 2 * FEATURE_BLOCKS](x)

    def reconstruct(self, images: Tensor) -> Tensor:
        """G(E(x)): one pass through the encoder and the generator."""
        if self.encoder is None:
            raise ConfigError("this GAN has no encoder (AnoGAN searches its codes at test time instead)")
        return self.generator(self.encoder(images))

    def num_parameters(self) -> int:
        """Number of parameters."""
        return num_parameters(self)


def feature_distance_map(network: GanNetwork, images: Tensor, reconstructions: Tensor) -> Tensor:
    """The L_D map: squared discriminator-feature difference (channel mean), upsampled to (B, H, W)."""
    diff = (network.features(images) - network.features(reconstructions)).pow(2).mean(dim=1, keepdim=True)
    return F.interpolate(diff, size=images.shape[2:], mode="bilinear", align_corners=False)[:, 0]
