"""The autoencoder baselines' scorer: one reconstruction pass, tile by tile for images larger than the model."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..device import amp_dtype, autocast
from ..models import ConvAutoencoder
from ..ssim import ssim_map
from .base import BATCH_SIZE, IterationMaps, as_tensor, from_tiles, to_tiles


class AutoencoderScorer:
    """One-pass reconstruction scoring for the autoencoder baselines (tiles images larger than the model)."""

    def __init__(
        self, model: ConvAutoencoder, patch_size: int, batch_size: int = BATCH_SIZE, device: torch.device | None = None
    ) -> None:
        self.model = model.eval()
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.device = device or next(model.parameters()).device
        self.dtype = amp_dtype(self.device)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruct images, tile by tile when they are larger than the autoencoder's input."""
        tiles = to_tiles(images, self.patch_size)
        out = torch.empty_like(tiles)
        for start in range(0, len(tiles), self.batch_size):
            batch = tiles[start : start + self.batch_size].to(self.device)
            with autocast(self.device, self.dtype):
                out[start : start + self.batch_size] = self.model(batch).float().cpu()
        return from_tiles(out, images.shape)

    def iterate(self, images: np.ndarray | torch.Tensor) -> Iterator[IterationMaps]:
        x0 = as_tensor(images)
        x = self.reconstruct(x0)
        self.reconstruction = x
        yield IterationMaps(0, (1.0 - ssim_map(x0, x)).numpy(), (x0 - x).pow(2).mean(dim=1).numpy(), len(x0), len(x0))
