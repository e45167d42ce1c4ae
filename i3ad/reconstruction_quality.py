"""Whether a reconstruction baseline learned the normals: its error on held-out normals next to no-learning fills.

The autoencoders, f-AnoGAN and AEGAN score a test image by how badly they reconstruct it, so their AUROC
means something only when they reconstruct normal images better than a reconstruction that learned
nothing. Two such references are computed once on the held-out training normals (the same slice I3AD's
`HoleProbe` holds out, `holdout_indices`):

- `mean_image`: every image reconstructed as the per-pixel mean of the training images the model saw;
- `mean_colour`: every image reconstructed as its own mean colour (per channel).

A model learned something only when it is below both (`beats_no_learning`): the mean image is the stronger
fill for aligned objects, the mean colour often for textures. Errors are mean absolute differences over
pixels and channels in grey levels (0..255). AnoGAN is not
probed: its reconstruction is a latent search of hundreds of steps per image, too dear for every log step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .inpaint_quality import GREY
from .scorers.base import from_tiles, to_tiles

PROBED_METHODS = ("ae-l2", "ae-ssim", "f-anogan", "aegan")  # every method whose model reconstructs in one pass


def _l1(reconstruction: torch.Tensor, images: torch.Tensor) -> float:
    return float((reconstruction - images).abs().mean() * GREY)


@dataclass
class ReconstructionProbe:
    """Held-out normals and the two no-learning references' errors on them."""

    images: torch.Tensor  # (N, C, H, W) in [-1, 1], cropped to whole model-sized tiles
    references: dict[str, float]  # "mean_image" / "mean_colour" -> L1 in grey levels
    patch: int  # the side of the tiles the model reconstructs (its training crop or image size)

    @classmethod
    def build(cls, held_out: torch.Tensor, training: torch.Tensor, patch: int) -> ReconstructionProbe:
        """`held_out` (N, C, H, W) normals the model never trains on; `training` the images it does."""
        height, width = held_out.shape[2] - held_out.shape[2] % patch, held_out.shape[3] - held_out.shape[3] % patch
        images = held_out[:, :, :height, :width].float()
        mean_image = training[:, :, :height, :width].float().mean(dim=0, keepdim=True).expand_as(images)
        mean_colour = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
        references = {"mean_image": _l1(mean_image, images), "mean_colour": _l1(mean_colour, images)}
        return cls(images, references, patch)

    @torch.no_grad()
    def measure(self, model: torch.nn.Module, reconstruct: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        """`reconstruct(tiles)` runs `model` on (B, C, patch, patch) tiles; its error as flat train-log metrics."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            tiles = to_tiles(self.images, self.patch)
            out = torch.cat([reconstruct(batch.to(device)).float().cpu() for batch in tiles.split(64)])
        finally:
            model.train(was_training)
        return {
            "recon_l1": _l1(from_tiles(out, self.images.shape), self.images),
            "recon_l1_mean_image": self.references["mean_image"],
            "recon_l1_mean_colour": self.references["mean_colour"],
        }


def reconstruction_summary(metrics: dict[str, float], step: int, images: int) -> dict[str, Any]:
    """model.json's `reconstruction` entry from the last `ReconstructionProbe.measure` metrics."""
    own, mean_image = metrics["recon_l1"], metrics["recon_l1_mean_image"]
    return {
        "step": step,
        "recon_l1": round(own, 4),
        "mean_image_l1": round(mean_image, 4),
        "mean_colour_l1": round(metrics["recon_l1_mean_colour"], 4),
        "gain_over_mean_image": round(1.0 - own / mean_image, 4) if mean_image > 0 else 0.0,
        # Learned something: better than both fills, whichever is the stronger one for this category.
        "beats_no_learning": bool(own < min(mean_image, metrics["recon_l1_mean_colour"])),
        "held_out_images": images,
        "units": "grey levels (0..255), mean over pixels and channels",
    }


def describe(entry: dict[str, Any]) -> str:
    """One summary line: `reconstruction: L1 9.2, mean image 12.0, mean colour 15.3 (grey levels)` plus a flag."""
    line = (
        f"reconstruction: L1 {entry['recon_l1']:.1f}, mean image {entry['mean_image_l1']:.1f}, "
        f"mean colour {entry['mean_colour_l1']:.1f} (grey levels, {entry['held_out_images']} held-out normals)"
    )
    if not entry["beats_no_learning"]:
        line += "  ! does not beat the no-learning fills: its AUROC says nothing about the method"
    return line
