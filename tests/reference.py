"""The paper's detection loop written straightforwardly: the reference the library's fast path is tested and
benchmarked against (used by tests/test_detect.py and benchmarks/detect_throughput.py).
"""

from __future__ import annotations

import torch

from i3ad.masks import checkerboard_masks
from i3ad.models import InpaintGenerator
from i3ad.scorers import DetectionSettings
from i3ad.ssim import ssim_map


@torch.no_grad()
def naive_iterative_inpainting(
    generator: InpaintGenerator, image: torch.Tensor, settings: DetectionSettings
) -> torch.Tensor:
    """The paper's algorithm written straightforwardly: one image, four separate checkerboard passes,
    then all N iterations with no stop rule. The reference the fast path is measured against.
    """
    device = next(generator.parameters()).device
    x0 = image.unsqueeze(0).to(device)
    _, _, h, w = x0.shape
    boards = torch.from_numpy(checkerboard_masks(h, w, settings.patch_size)).to(device)
    x = torch.zeros_like(x0)
    for board in boards:
        m = board.unsqueeze(0)
        _, fine = generator(x0 * (1 - m), m)
        x += fine * m
    for _ in range(settings.iterations):
        m = (ssim_map(x0, x) < settings.threshold).float().unsqueeze(1)
        _, fine = generator(x0 * (1 - m), m)
        x = fine * m + x0 * (1 - m)
    return x.squeeze(0).cpu()
