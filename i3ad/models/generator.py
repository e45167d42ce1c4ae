"""Coarse-to-fine gated-convolution inpainting generator (DeepFill v2, Yu et al. 2019) with self-attention.

As in I3AD, DeepFill's contextual attention is replaced by SAGAN self-attention (Zhang et al. 2018), which
suits the fine, irregular masks met during detection. `width` is DeepFill v2's `cnum`: 48 is the
published size (about 4.1M parameters), 16 a CPU-friendly one. As in DeepFill v2, a gated layer of
`cnum` convolution outputs keeps `cnum / 2` feature channels (the other half are gates), so the feature
maps below are multiples of `width // 2`.

    stage 1 (coarse): [masked image, ones, mask] -> 5x5 conv -> down x2 (1/4 res) -> dilated convs 2,4,8,16
                      -> up x2 -> conv -> tanh
    stage 2 (refine): [coarse pasted into the holes, ones, mask] -> two encoders to 1/4 res:
                        a dilated-conv branch and a self-attention branch; concatenated -> up x2 -> tanh
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from i3ad.errors import ConfigError
from i3ad.models.layers import SelfAttention, conv, down, gated_stack, num_parameters, up

DILATIONS = (2, 4, 8, 16)


@dataclass
class GeneratorConfig:
    """Settings of `InpaintGenerator`: image channels (1 or 3), base width, self-attention on or off."""

    channels: int = 3
    width: int = 16
    attention: bool = True
    # Channels of the last gated layer before each output conv: DeepFill v2's `width // 4` (False) leaves
    # 2 channels at width 8, too few to carry texture; True keeps `width // 2`. False is the default here so
    # model folders saved before the option load as they were trained; training sets it (TrainConfig).
    wide_output: bool = False

    @classmethod
    def small(cls, channels: int = 3) -> GeneratorConfig:
        """Width 16: trains on a CPU in minutes on small images."""
        return cls(channels=channels, width=16)

    @classmethod
    def deepfill(cls, channels: int = 3) -> GeneratorConfig:
        """Width 48: the DeepFill v2 size, meant for a GPU."""
        return cls(channels=channels, width=48)


class InpaintGenerator(nn.Module):
    """Fills the holes (`mask == 1`) of an image from its known pixels; see the module docstring."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        if cfg.channels < 1:
            raise ConfigError(f"GeneratorConfig.channels must be >= 1 (1 grayscale, 3 RGB), got {cfg.channels}")
        if cfg.width < 4:
            raise ConfigError(f"GeneratorConfig.width must be >= 4, got {cfg.width}; 16 (small) or 48 (DeepFill v2)")
        self.cfg = cfg
        c = cfg.width // 2  # feature channels of the first layer
        in_channels = cfg.channels + 2  # image, ones (lets the convs tell the zero padding from black pixels), mask
        dilated = [conv(4 * c, dilation=d) for d in DILATIONS]
        last = c if cfg.wide_output else c // 2

        self.coarse = gated_stack(in_channels, [
            conv(c, 5), down(2 * c), conv(2 * c), down(4 * c), conv(4 * c), conv(4 * c),
            *dilated,
            conv(4 * c), conv(4 * c), up(2 * c), conv(2 * c), up(c), conv(last),
        ])  # fmt: skip
        # Output convs are plain, not gated, as in DeepFill v2's code: a gate would pull the colours to 0.
        self.coarse_out = nn.Conv2d(last, cfg.channels, 3, padding=1)

        self.refine_dilated = gated_stack(in_channels, [
            conv(c, 5), down(c), conv(2 * c), down(2 * c), conv(4 * c), conv(4 * c),
            *dilated,
        ])  # fmt: skip
        self.refine_attention_in = gated_stack(in_channels, [
            conv(c, 5), down(c), conv(2 * c), down(4 * c), conv(4 * c), conv(4 * c),
        ])  # fmt: skip
        # At 1/4 resolution a 128 x 128 input gives 32 x 32 = 1024 positions; SelfAttention pools maps above
        # 64 x 64 positions (inputs above 256 x 256) before attending, so memory stays bounded.
        self.attention = SelfAttention(4 * c) if cfg.attention else nn.Identity()
        self.refine_attention_out = gated_stack(4 * c, [conv(4 * c), conv(4 * c)])
        self.refine_decoder = gated_stack(8 * c, [
            conv(4 * c), conv(4 * c), up(2 * c), conv(2 * c), up(c), conv(last),
        ])  # fmt: skip
        self.refine_out = nn.Conv2d(last, cfg.channels, 3, padding=1)

    def forward(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """`image` (B,C,H,W) in [-1,1], `mask` (B,1,H,W) with 1 = hole -> (coarse, fine), both (B,C,H,W) in [-1,1].

        Hole pixels of `image` are never looked at. H and W must be divisible by 4.
        """
        self._check_inputs(image, mask)
        ones = torch.ones_like(mask)
        known = image * (1 - mask)

        x = self.coarse(torch.cat([known, ones, mask], dim=1))
        coarse = torch.tanh(self.coarse_out(x))

        x = torch.cat([coarse * mask + known, ones, mask], dim=1)
        hallucinated = self.refine_dilated(x)
        attended = self.refine_attention_out(self.attention(self.refine_attention_in(x)))
        x = self.refine_decoder(torch.cat([hallucinated, attended], dim=1))
        fine = torch.tanh(self.refine_out(x))
        return coarse, fine

    def inpaint(self, image: Tensor, mask: Tensor) -> Tensor:
        """The refined prediction in the holes, `image` unchanged elsewhere."""
        _, fine = self(image, mask)
        return fine * mask + image * (1 - mask)

    def num_parameters(self) -> int:
        """Number of parameters."""
        return num_parameters(self)

    def _check_inputs(self, image: Tensor, mask: Tensor) -> None:
        if image.dim() != 4 or image.shape[1] != self.cfg.channels:
            raise ValueError(f"expected image (B, {self.cfg.channels}, H, W), got {tuple(image.shape)}")
        b, _, h, w = image.shape
        if tuple(mask.shape) != (b, 1, h, w):
            raise ValueError(f"expected mask ({b}, 1, {h}, {w}), got {tuple(mask.shape)}")
        if h % 4 or w % 4:
            raise ConfigError(
                f"InpaintGenerator needs height and width divisible by 4 (it downsamples twice), got {h}x{w}; "
                f"set the image size / crop size to a multiple of 4, e.g. {max(4, h // 4 * 4)}x{max(4, w // 4 * 4)}"
            )
