"""Convolutional autoencoder of Bergmann et al. 2018 (the L2 / SSIM autoencoder baselines).

Encoder: eight convs (4x4 stride 2 halve the size, 3x3 stride 1 keep it) down to 1/16 resolution, then one
conv whose kernel covers the remaining map gives a 1x1 latent code of `latent_dim` values. The decoder
mirrors it with transposed convs. LeakyReLU(0.2) everywhere except the (linear) code and the tanh output.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from i3ad.errors import ConfigError
from i3ad.models.layers import num_parameters

# (output channels at width 32, kernel, stride) of the encoder, as in Bergmann et al. 2018, Table 1.
ENCODER_LAYERS = ((32, 4, 2), (32, 4, 2), (32, 3, 1), (64, 4, 2), (64, 3, 1), (128, 4, 2), (64, 3, 1), (32, 3, 1))
DOWNSAMPLING = 16  # four stride-2 layers


@dataclass
class AutoencoderConfig:
    """Settings of `ConvAutoencoder`: image channels, image size (power of 2 >= 32), code size, width (32 = paper)."""

    channels: int = 3
    image_size: int = 128
    latent_dim: int = 100
    width: int = 32


class ConvAutoencoder(nn.Module):
    """`x (B,C,S,S) in [-1,1] -> x_hat` of the same shape, through a `latent_dim` bottleneck."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        size = cfg.image_size
        if size < 32 or size & (size - 1):
            raise ConfigError(f"AutoencoderConfig.image_size must be a power of 2 >= 32 (32..256 tested), got {size}")
        for name in ("channels", "latent_dim", "width"):
            if getattr(cfg, name) < 1:
                raise ConfigError(f"AutoencoderConfig.{name} must be >= 1, got {getattr(cfg, name)}")
        self.cfg = cfg

        channels = [cfg.channels] + [max(1, n * cfg.width // 32) for n, _, _ in ENCODER_LAYERS]
        steps = [
            (c_in, c_out, k, s)
            for c_in, c_out, (_, k, s) in zip(channels[:-1], channels[1:], ENCODER_LAYERS, strict=True)
        ]
        code_kernel = size // DOWNSAMPLING

        encoder: list[nn.Module] = []
        for c_in, c_out, k, s in steps:
            encoder += [nn.Conv2d(c_in, c_out, k, s, padding=1), nn.LeakyReLU(0.2)]
        encoder.append(nn.Conv2d(channels[-1], cfg.latent_dim, code_kernel))
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [nn.ConvTranspose2d(cfg.latent_dim, channels[-1], code_kernel), nn.LeakyReLU(0.2)]
        for c_in, c_out, k, s in reversed(steps):
            decoder += [nn.ConvTranspose2d(c_out, c_in, k, s, padding=1), nn.LeakyReLU(0.2)]
        decoder[-1] = nn.Tanh()
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: Tensor) -> Tensor:
        """Images (B,C,S,S) -> codes (B, latent_dim)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.cfg.channels, self.cfg.image_size, self.cfg.image_size):
            raise ConfigError(
                f"ConvAutoencoder was built for images ({self.cfg.channels}, {self.cfg.image_size}, "
                f"{self.cfg.image_size}) (AutoencoderConfig.channels / image_size), got a batch {tuple(x.shape)}; "
                "resize the images or build the model for this size"
            )
        return self.encoder(x).flatten(1)

    def decode(self, z: Tensor) -> Tensor:
        """Codes (B, latent_dim) -> images (B,C,S,S) in [-1,1]."""
        return self.decoder(z[:, :, None, None])

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def num_parameters(self) -> int:
        """Number of parameters."""
        return num_parameters(self)
