"""Per-pixel Gaussian SSIM maps and the two anomaly maps (``1 - SSIM`` and squared L2).

The filter is pytorch_msssim's own 1-D Gaussian window applied separably
(``pytorch_msssim.ssim.gaussian_filter``), so the valid region of :func:`ssim_map` reproduces
``pytorch_msssim.ssim`` exactly. Inputs are reflect-padded by ``win_size // 2`` first so that the
map has the same spatial size as the images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_msssim.ssim import _fspecial_gauss_1d, gaussian_filter
from torch import Tensor

K1 = 0.01
K2 = 0.03


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() != 4:
        raise ValueError(f"images must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")


def ssim_map(x: Tensor, y: Tensor, data_range: float = 2.0, win_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-pixel SSIM of ``x`` and ``y`` (B, C, H, W), averaged over channels -> (B, H, W).

    Gaussian window ``win_size`` x ``win_size`` with std ``sigma``; K1 = 0.01, K2 = 0.03,
    alpha = beta = gamma = 1; ``data_range`` is max - min of the value range (2 for [-1, 1]).
    Border pixels see a reflect-padded neighbourhood (replicate when the image is too small to
    reflect). Always computed in float32, also under autocast.
    """
    _check_pair(x, y)
    if win_size % 2 != 1:
        raise ValueError(f"win_size must be odd, got {win_size}")
    pad = win_size // 2
    channels, height, width = x.shape[1:]
    # Half precision loses too much in E[x^2] - mu^2, so autocast is switched off here.
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        y = y.float()
        # Reflect padding needs pad < size along every padded dimension.
        mode = "reflect" if min(height, width) > pad else "replicate"
        x = F.pad(x, (pad, pad, pad, pad), mode=mode)
        y = F.pad(y, (pad, pad, pad, pad), mode=mode)

        # The five moments are filtered in one depthwise call (one 1-D kernel per channel, as
        # pytorch_msssim.ssim has it): the same per-channel arithmetic as five calls, at a fraction of
        # the dispatch cost, which matters inside the detection loop.
        moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)
        win = _fspecial_gauss_1d(win_size, sigma).repeat(5 * channels, 1, 1, 1).to(x.device)
        mu_x, mu_y, e_xx, e_yy, e_xy = gaussian_filter(moments, win).split(channels, dim=1)
        mu_x2 = mu_x.pow(2)
        mu_y2 = mu_y.pow(2)
        mu_xy = mu_x * mu_y
        var_x = e_xx - mu_x2
        var_y = e_yy - mu_y2
        cov_xy = e_xy - mu_xy

        c1 = (K1 * data_range) ** 2
        c2 = (K2 * data_range) ** 2
        cs = (2 * cov_xy + c2) / (var_x + var_y + c2)
        ssim = ((2 * mu_xy + c1) / (mu_x2 + mu_y2 + c1)) * cs
    return ssim.mean(dim=1)


def ssim_anomaly_map(x: Tensor, y: Tensor, data_range: float = 2.0) -> Tensor:
    """``1 - SSIM`` per pixel, (B, H, W), in [0, 2]; larger = more anomalous.

    SSIM lies in [-1, 1] in exact arithmetic; the clamp only removes float round-off
    (e.g. 1 - 1.0000001 for identical patches).
    """
    return (1.0 - ssim_map(x, y, data_range=data_range)).clamp_(0.0, 2.0)


def l2_anomaly_map(x: Tensor, y: Tensor) -> Tensor:
    """Squared difference averaged over channels, (B, H, W), float32.

    On the method's [-1, 1] image scale, so values lie in [0, 4] (4x the value on a [0, 1] scale).
    """
    _check_pair(x, y)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return (x.float() - y.float()).pow(2).mean(dim=1)
