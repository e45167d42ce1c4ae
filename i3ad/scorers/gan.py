"""The GAN baselines' scorers: AnoGAN's latent search, and one encoder pass for f-AnoGAN and AEGAN.

Both compare each image x with its reconstruction x_hat and yield the two maps every scorer yields:
1 - SSIM(x, x_hat) and the squared error (L2). The L_D term (Deecke et al. 2018; Schlegl et al. 2017)
is the squared difference of the discriminator's features of x and x_hat
(`i3ad.models.gan.feature_distance_map`), a coarse map upsampled to the image.

- **AnoGAN** (`LatentSearchScorer`): for each image, a code z (starting at 0, the prior's mean) is
  moved by Adam steps to lower mean((x - G(z))^2) + lam * mean(L_D map); x_hat = G(z). Settings are a
  `ProjectionSettings` (the same four knobs as the `+proj` projection: `iterations` = Adam steps, `step`
  = Adam's learning rate, `lam` = the L_D weight, `every` = steps between two yielded maps). Each step
  is one forward and one backward pass through the generator and the discriminator.
- **f-AnoGAN, AEGAN** (`EncoderScorer`): x_hat = G(E(x)), one pass.
- **L2 + L_D** (`FeatureScorer`, the `+ld` methods): as `EncoderScorer`, but the L2 slot holds
  L2 + lam * L_D, so the score is offered as a test-time method on the same trained model (the way
  `+proj` is), compared in its own column, and lam is searched in phase B. The SSIM slot is unchanged.

Images larger than the model are scored tile by tile, as the autoencoders do.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..device import amp_dtype, autocast
from ..models import GanNetwork, feature_distance_map
from ..ssim import ssim_map
from .base import BATCH_SIZE, IterationMaps, as_tensor, from_tiles, to_tiles
from .projection import ProjectionSettings

# AnoGAN's search by default: 500 steps as the paper, Schlegl et al.'s lambda = 0.1, yielded every 50 steps.
ANOGAN_SEARCH = ProjectionSettings(iterations=500, lam=0.1, step=0.05, every=50)
LD_WEIGHT = ProjectionSettings(lam=1.0)  # the `+ld` methods' default weight of L_D (only `lam` is used)


def _maps(x0: torch.Tensor, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return (1.0 - ssim_map(x0, x)).numpy(), (x0 - x).pow(2).mean(dim=1).numpy()


def search_objective(network: GanNetwork, z: torch.Tensor, x: torch.Tensor, lam: float) -> torch.Tensor:
    """AnoGAN's per-image objective, (B,): mean squared residual + lam * mean L_D map."""
    fake = network.generator(z)
    residual = (x - fake).pow(2).flatten(1).mean(1)
    if lam == 0:
        return residual
    return residual + lam * feature_distance_map(network, x, fake).flatten(1).mean(1)


class LatentSearchScorer:
    """AnoGAN: the code of each tile is searched by Adam steps; maps after every `every` steps."""

    def __init__(
        self,
        network: GanNetwork,
        patch_size: int,
        settings: ProjectionSettings | None = None,
        batch_size: int = BATCH_SIZE,
        device: torch.device | None = None,
    ) -> None:
        # Only the codes are optimised; frozen parameters keep autograd from building their gradients.
        self.network = network.eval().requires_grad_(False)
        self.patch_size = patch_size
        self.settings = settings or ANOGAN_SEARCH
        self.batch_size = batch_size
        self.device = device or next(network.parameters()).device

    def _search(self, tiles: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (step, reconstructions, objective) of one batch of tiles after every `every` steps."""
        s = self.settings
        x = tiles.to(self.device)
        z = torch.zeros(len(x), self.network.cfg.latent_dim, device=self.device, requires_grad=True)
        optimiser = torch.optim.Adam([z], lr=s.step)
        for step in range(1, s.iterations + 1):
            with torch.enable_grad():
                objective = search_objective(self.network, z, x, s.lam)
                optimiser.zero_grad(set_to_none=True)
                objective.sum().backward()  # per-image objectives: the codes do not interact
            optimiser.step()
            if step % s.every == 0 or step == s.iterations:
                with torch.no_grad():
                    yield step, self.network.generator(z).cpu(), objective.detach().cpu()

    def iterate(self, images: np.ndarray | torch.Tensor) -> Iterator[IterationMaps]:
        """Maps after steps every, 2 * every, ..., and always after the last one.

        Batches of tiles are searched side by side (one generator per batch), so every yield covers all images.
        """
        x0 = as_tensor(images)
        tiles = to_tiles(x0, self.patch_size)
        searches = [self._search(tiles[i : i + self.batch_size]) for i in range(0, len(tiles), self.batch_size)]
        previous = x0
        for results in zip(*searches, strict=True):
            step = results[0][0]
            x = from_tiles(torch.cat([r[1] for r in results]), x0.shape)
            self.objective = torch.cat([r[2] for r in results])
            changed = int((x != previous).flatten(1).any(1).sum())
            previous = self.reconstruction = x
            yield IterationMaps(step, *_maps(x0, x), changed, step * len(tiles))


class EncoderScorer:
    """f-AnoGAN and AEGAN: x_hat = G(E(x)) in one pass, tile by tile."""

    def __init__(
        self,
        network: GanNetwork,
        patch_size: int,
        batch_size: int = BATCH_SIZE,
        device: torch.device | None = None,
    ) -> None:
        self.network = network.eval()
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.device = device or next(network.parameters()).device
        self.dtype = amp_dtype(self.device)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstructions (N, C, H, W) and L_D maps (N, H, W) of images, tile by tile."""
        tiles = to_tiles(images, self.patch_size)
        out = torch.empty_like(tiles)
        feature_maps = torch.empty(len(tiles), *tiles.shape[2:])
        for start in range(0, len(tiles), self.batch_size):
            batch = tiles[start : start + self.batch_size].to(self.device)
            with autocast(self.device, self.dtype):
                fake = self.network.reconstruct(batch)
                distance = feature_distance_map(self.network, batch, fake)
            out[start : start + self.batch_size] = fake.float().cpu()
            feature_maps[start : start + self.batch_size] = distance.float().cpu()
        n, _, h, w = images.shape
        return from_tiles(out, images.shape), from_tiles(feature_maps[:, None], (n, 1, h, w))[:, 0]

    def iterate(self, images: np.ndarray | torch.Tensor) -> Iterator[IterationMaps]:
        x0 = as_tensor(images)
        x, self.feature_maps = self.reconstruct(x0)
        self.reconstruction = x
        ssim, l2 = _maps(x0, x)
        yield IterationMaps(0, ssim, self.l2_map(l2), len(x0), len(x0))

    def l2_map(self, l2: np.ndarray) -> np.ndarray:
        """What the L2 slot holds: the squared error."""
        return l2


class FeatureScorer(EncoderScorer):
    """The L2 + L_D score of f-AnoGAN / AEGAN: the L2 slot holds L2 + lam * L_D."""

    def __init__(
        self,
        network: GanNetwork,
        patch_size: int,
        settings: ProjectionSettings | None = None,
        batch_size: int = BATCH_SIZE,
        device: torch.device | None = None,
    ) -> None:
        super().__init__(network, patch_size, batch_size, device)
        self.lam = (settings or LD_WEIGHT).lam

    def l2_map(self, l2: np.ndarray) -> np.ndarray:
        return l2 + self.lam * self.feature_maps.numpy()
