"""How well the inpainter fills holes, measured on training normals held out from training.

A fixed set of free-form holes (seeded, independent of the training stream) is cut into a few held-out
normal images. The generator's hole error is set next to two fills that learn nothing, computed once on
the same holes: each image's mean colour of its known pixels, and a classical biharmonic fill (the
least-squares smooth continuation of the known pixels, as `skimage.restoration.inpaint_biharmonic`). A
generator that does not beat the mean-colour fill has learned no more than the image's average colour,
and iterative inpainting cannot then tell texture from defect.

Errors are mean absolute differences over hole pixels and channels in grey levels (0..255); SSIM is the
mean of the per-pixel SSIM map over the hole pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import spsolve

from .masks import random_training_mask
from .ssim import ssim_map

PROBE_SEED = 1_000_003  # the probe's holes; apart from the training seed so both streams stay independent
MASKS_PER_IMAGE = 2
GREY = 255.0 / 2.0  # [-1, 1] -> grey levels


def holdout_indices(n_images: int, holdout: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: the last `holdout` images are held out, at least one image is kept to train."""
    holdout = max(0, min(holdout, n_images - 1))
    return np.arange(n_images - holdout), np.arange(n_images - holdout, n_images)


def mean_fill(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Every hole pixel set to its image's mean colour over the known pixels (per channel)."""
    known = 1.0 - masks
    mean = (images * known).sum(axis=(2, 3), keepdims=True) / np.maximum(known.sum(axis=(2, 3), keepdims=True), 1.0)
    return images * known + mean * masks


def _laplacian(height: int, width: int) -> sparse.csr_matrix:
    """The 5-point graph Laplacian of an `height` x `width` grid (no neighbours past the border)."""

    def path(n: int) -> sparse.csr_matrix:
        off = np.ones(n - 1)
        degree = np.r_[1.0, 2.0 * np.ones(n - 2), 1.0] if n > 1 else np.zeros(1)
        return sparse.diags([degree, -off, -off], [0, -1, 1], format="csr")

    return (
        sparse.kron(sparse.identity(height), path(width)) + sparse.kron(path(height), sparse.identity(width))
    ).tocsr()


def biharmonic_fill(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Fill the holes with the smoothest continuation of the known pixels: minimise |L x|^2 over the hole pixels.

    `images` (N, C, H, W), `masks` (N, 1, H, W) with 1 = hole. L is the grid Laplacian, so the fill solves the
    biharmonic equation inside the holes with the known pixels as boundary values.
    """
    n, channels, height, width = images.shape
    laplacian = _laplacian(height, width)
    system = (laplacian.T @ laplacian).tocsr()
    out = images.astype(np.float64).copy()
    for i in range(n):
        hole = masks[i, 0].ravel() > 0.5
        if not hole.any() or hole.all():
            continue
        a_hh = system[hole][:, hole].tocsc()
        a_hk = system[hole][:, ~hole]
        for c in range(channels):
            flat = out[i, c].ravel()
            flat[hole] = spsolve(a_hh, -(a_hk @ flat[~hole]))
            out[i, c] = flat.reshape(height, width)
    return out.astype(images.dtype)


def _hole_errors(filled: torch.Tensor, images: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    hole = masks.sum()
    l1 = float(((filled - images).abs().mean(dim=1, keepdim=True) * masks).sum() / hole * GREY)
    ssim = float((ssim_map(filled, images) * masks[:, 0]).sum() / hole)
    return {"l1": l1, "ssim": ssim}


@dataclass
class HoleProbe:
    """Held-out normals with fixed holes and the two reference fills' errors on them."""

    images: torch.Tensor  # (N, C, H, W) in [-1, 1]
    masks: torch.Tensor  # (N, 1, H, W), 1 = hole
    references: dict[str, dict[str, float]]  # "mean_fill" / "biharmonic" -> {"l1", "ssim"}
    held_out: int  # images (each cut with several masks)

    @classmethod
    def build(cls, held_out: torch.Tensor, masks_per_image: int = MASKS_PER_IMAGE) -> HoleProbe:
        """Cut `masks_per_image` seeded training-style holes into each held-out image (N, C, H, W)."""
        rng = np.random.default_rng(PROBE_SEED)
        _, _, height, width = held_out.shape
        images = held_out.repeat_interleave(masks_per_image, dim=0).float()
        masks = torch.from_numpy(np.stack([random_training_mask(height, width, rng) for _ in range(len(images))]))
        array, mask_array = images.numpy(), masks.numpy()
        references = {
            "mean_fill": _hole_errors(torch.from_numpy(mean_fill(array, mask_array)), images, masks),
            "biharmonic": _hole_errors(torch.from_numpy(biharmonic_fill(array, mask_array)), images, masks),
        }
        return cls(images, masks, references, len(held_out))

    @torch.no_grad()
    def measure(self, generator: torch.nn.Module) -> dict[str, float]:
        """The generator's hole error next to the references, as flat train-log metrics."""
        device = next(generator.parameters()).device
        was_training = generator.training
        generator.eval()
        try:
            images, masks = self.images.to(device), self.masks.to(device)
            _, fine = generator(images * (1 - masks), masks)
            filled = (fine.float() * masks + images * (1 - masks)).cpu()
        finally:
            generator.train(was_training)
        own = _hole_errors(filled, self.images, self.masks)
        return {
            "hole_l1": own["l1"],
            "hole_ssim": own["ssim"],
            "hole_l1_mean_fill": self.references["mean_fill"]["l1"],
            "hole_l1_biharmonic": self.references["biharmonic"]["l1"],
            "hole_ssim_mean_fill": self.references["mean_fill"]["ssim"],
            "hole_ssim_biharmonic": self.references["biharmonic"]["ssim"],
        }


def inpainter_summary(metrics: dict[str, float], step: int, images: int, holes: int) -> dict[str, Any]:
    """model.json's `inpainter` entry from the last `HoleProbe.measure` metrics."""
    mean = metrics["hole_l1_mean_fill"]
    return {
        "step": step,
        "hole_l1": round(metrics["hole_l1"], 4),
        "hole_ssim": round(metrics["hole_ssim"], 4),
        "mean_fill_l1": round(mean, 4),
        "biharmonic_l1": round(metrics["hole_l1_biharmonic"], 4),
        "mean_fill_ssim": round(metrics["hole_ssim_mean_fill"], 4),
        "biharmonic_ssim": round(metrics["hole_ssim_biharmonic"], 4),
        "gain_over_mean_fill": round(1.0 - metrics["hole_l1"] / mean, 4) if mean > 0 else 0.0,
        "beats_mean_fill": bool(metrics["hole_l1"] < mean),
        "held_out_images": images,
        "holes": holes,
        "units": "grey levels (0..255), mean over hole pixels and channels",
    }


def describe(inpainter: dict[str, Any]) -> str:
    """One summary line: `inpainter: hole L1 8.1, mean fill 21.1, biharmonic 12.3 (grey levels)` plus a flag."""
    line = (
        f"inpainter: hole L1 {inpainter['hole_l1']:.1f}, mean fill {inpainter['mean_fill_l1']:.1f}, "
        f"biharmonic {inpainter['biharmonic_l1']:.1f} (grey levels, {inpainter['held_out_images']} held-out normals)"
    )
    if not inpainter["beats_mean_fill"]:
        line += "  ! does not beat the mean-colour fill: it has learned no texture"
    return line
