"""Iterative energy-based projection (Dehaene et al., ICLR 2020) on a trained autoencoder: the `+proj` baselines.

Starting at the test image x_0, gradient steps on the *input* lower the energy

    E(x) = L_rec(x, f(x)) + lam * |x - x_0|_1

where f is the trained autoencoder and L_rec its own training loss, summed over the image (L2: squared
error over all channels and pixels; SSIM: 1 - SSIM per pixel, channel mean). Each step is Dehaene's
reconstruction-error-weighted gradient step

    x_{t+1} = clip(x_t - step * grad_x E(x_t) * (x_t - f(x_t))^2, -1, 1)

(element-wise; the weight is not differentiated). Pixels the autoencoder already reproduces barely move,
pixels it cannot reproduce (likely defects) move towards what it can: the image is projected onto the
autoencoder's normal manifold while keeping its high frequencies, which the bottleneck would blur. The
anomaly maps compare x_0 with the projection x_t: 1 - SSIM(x_0, x_t) and the squared difference.

Defaults, on our [-1, 1] image scale (Dehaene et al. work on [0, 1]; errors here are twice as large):
- `step = 0.05`, Dehaene's alpha. For the L2 energy the weighted step on a pixel with residual e is
  about 2 * step * e^3: a defect pixel with e = 1 moves by 0.1 per iteration, a normal pixel with
  e = 0.1 by 1e-4, and the update cannot overshoot the reconstruction while e^2 < 1 / (2 * step) = 10.
- `lam = 0.1`: the L1 pull towards x_0 balances the L2 push where 2 e = lam, so pixels whose residual is
  under ~0.05 (2.5% of the range) are held at x_0. The same lam acts on the SSIM energy, whose per-pixel
  gradients have a different scale; the sweep searches lam and step per method.
- `iterations = 50`: with the weighting above, defect pixels converge within a few tens of steps.
Each iteration is one forward and one backward pass through the autoencoder, over all tiles.

Images larger than the autoencoder's patch are projected tile by tile (the energy is a sum over
non-overlapping tiles, so this is exact); the maps are computed on the reassembled images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from ..checks import check_float, check_int, check_types
from ..errors import ConfigError
from ..models import ConvAutoencoder
from ..ssim import ssim_map
from .base import BATCH_SIZE, IterationMaps, as_tensor, from_tiles, to_tiles

LOSSES = ("l2", "ssim")


@dataclass
class ProjectionSettings:
    """Test-time settings of the projection; `every` = iterations between two yielded (evaluated) maps."""

    iterations: int = 50
    lam: float = 0.1
    step: float = 0.05
    every: int = 5

    def __post_init__(self) -> None:
        check_types(type(self), self, section="projection")
        check_int(self.iterations, "iterations", 1, 100_000, section="projection")
        check_float(self.lam, "lam", 0.0, 1e6, section="projection")
        check_float(self.step, "step", 0.0, 1e3, section="projection", low_open=True)
        check_int(self.every, "every", 1, 100_000, section="projection")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProjectionSettings:
        """Build from a dict, ignoring keys that are not projection settings."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})


def reconstruction_loss(x: torch.Tensor, reconstruction: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-image reconstruction loss summed over the image, (B,): squared error or 1 - SSIM."""
    if loss == "l2":
        return (x - reconstruction).pow(2).flatten(1).sum(1)
    return (1.0 - ssim_map(x, reconstruction)).flatten(1).sum(1)


def _energy(x: torch.Tensor, reconstruction: torch.Tensor, x0: torch.Tensor, loss: str, lam: float) -> torch.Tensor:
    return reconstruction_loss(x, reconstruction, loss) + lam * (x - x0).abs().flatten(1).sum(1)


def projection_energy(model: ConvAutoencoder, x: torch.Tensor, x0: torch.Tensor, loss: str, lam: float) -> torch.Tensor:
    """E(x) = L_rec(x, f(x)) + lam * |x - x0|_1 per image, (B,)."""
    return _energy(x, model(x), x0, loss, lam)


def projection_step(
    model: ConvAutoencoder, x: torch.Tensor, x0: torch.Tensor, loss: str, lam: float, step: float
) -> torch.Tensor:
    """One reconstruction-error-weighted gradient step on E; returns the new x (detached, in [-1, 1])."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        reconstruction = model(x)
        (grad,) = torch.autograd.grad(_energy(x, reconstruction, x0, loss, lam).sum(), x)
    weight = (x.detach() - reconstruction.detach()).pow(2)
    return (x.detach() - step * grad * weight).clamp_(-1.0, 1.0)


class ProjectionScorer:
    """The `+proj` scorer: yields maps of x_0 against the projection after every `every` iterations."""

    def __init__(
        self,
        model: ConvAutoencoder,
        loss: str,
        patch_size: int,
        settings: ProjectionSettings | None = None,
        batch_size: int = BATCH_SIZE,
        device: torch.device | None = None,
    ) -> None:
        if loss not in LOSSES:
            raise ConfigError(f"projection loss {loss!r} is unknown; choose one of {', '.join(LOSSES)}")
        # Only the input is optimised; frozen parameters keep autograd from building their gradients.
        self.model = model.eval().requires_grad_(False)
        self.loss = loss
        self.patch_size = patch_size
        self.settings = settings or ProjectionSettings()
        self.batch_size = batch_size  # autoencoder tiles per forward/backward pass
        self.device = device or next(model.parameters()).device

    def project(self, tiles0: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
        """One projection iteration over all tiles (CPU tensors), in device batches."""
        s, b = self.settings, self.batch_size
        out = torch.empty_like(tiles)
        for start in range(0, len(tiles), b):
            x0 = tiles0[start : start + b].to(self.device)
            x = tiles[start : start + b].to(self.device)
            out[start : start + b] = projection_step(self.model, x, x0, self.loss, s.lam, s.step).cpu()
        return out

    def iterate(self, images: np.ndarray | torch.Tensor) -> Iterator[IterationMaps]:
        """Yield the maps after iterations every, 2 * every, ..., and always after the last one.

        When the generator is exhausted, `self.reconstruction` holds the projected images x_T.
        """
        x0 = as_tensor(images)
        tiles0 = to_tiles(x0, self.patch_size)
        tiles = tiles0.clone()
        previous = x0
        for iteration in range(1, self.settings.iterations + 1):
            tiles = self.project(tiles0, tiles)
            if iteration % self.settings.every and iteration != self.settings.iterations:
                continue
            x = from_tiles(tiles, x0.shape)
            changed = int((x != previous).flatten(1).any(1).sum())
            previous = self.reconstruction = x
            yield IterationMaps(
                iteration,
                (1.0 - ssim_map(x0, x)).numpy(),
                (x0 - x).pow(2).mean(dim=1).numpy(),
                changed,
                iteration * len(tiles),
            )
