"""Evaluation metrics: image AUROC, pixel AUROC and the MVTec AD per-region overlap (PRO).

All functions take NumPy arrays (or anything ``np.asarray`` accepts, e.g. CPU tensors or lists)
and raise ``ValueError`` on input they cannot score; the caller decides what to do about it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from sklearn.metrics import roc_auc_score, roc_curve

Reduction = Literal["max", "mean"]

# 8-connectivity, as the official MVTec AD evaluation code (scipy label, 3x3 ones structure).
_STRUCTURE = np.ones((3, 3), dtype=int)


def _binary_labels(labels: ArrayLike, what: str) -> np.ndarray:
    labels = np.asarray(labels).ravel()
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{what} labels must be 0 (normal) or 1 (anomalous), got values {np.unique(labels)[:10]}")
        labels = labels.astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        present = "anomalous" if n_pos else "normal"
        raise ValueError(f"{what} needs both normal and anomalous samples, but all {labels.size} are {present}")
    return labels


def _finite_scores(scores: ArrayLike, what: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float32).ravel()
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise ValueError(f"{what} scores contain NaN or Inf ({bad} values)")
    return scores


def _check_maps(gt_masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt_masks).astype(bool, copy=False)
    am = np.asarray(maps, dtype=np.float32)
    if gt.shape != am.shape:
        raise ValueError(
            f"ground-truth masks and anomaly maps must have the same shape, got masks {gt.shape} and maps {am.shape}"
        )
    if gt.ndim != 3:
        raise ValueError(f"masks and maps must be (N, H, W), got shape {gt.shape}")
    return gt, am


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve of per-image ``scores`` against ``labels`` (1 = anomalous)."""
    labels = _binary_labels(labels, "image AUROC")
    scores = _finite_scores(scores, "image")
    if labels.shape != scores.shape:
        raise ValueError(f"got {labels.size} labels but {scores.size} scores")
    return float(roc_auc_score(labels, scores))


def roc_curve_points(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of the ROC curve (for plots)."""
    labels = _binary_labels(labels, "ROC curve")
    scores = _finite_scores(scores, "ROC")
    if labels.shape != scores.shape:
        raise ValueError(f"got {labels.size} labels but {scores.size} scores")
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr


def pixel_auroc(gt_masks: ArrayLike, maps: ArrayLike) -> float:
    """AUROC over all pixels of all images: ``gt_masks`` (N, H, W) bool, ``maps`` (N, H, W)."""
    gt, am = _check_maps(gt_masks, maps)
    labels = _binary_labels(gt, "pixel AUROC")
    return float(roc_auc_score(labels.ravel(), _finite_scores(am, "pixel").ravel()))


def pro_curve(gt_masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The exact PRO curve: (fpr, pro), one point per distinct score, increasing in FPR.

    At threshold ``t`` a pixel is positive if its score >= t. FPR is taken over all defect-free
    pixels of all images; PRO is the mean over all connected ground-truth regions (8-connected,
    per image) of the fraction of the region's pixels that are positive. As in the official
    MVTec AD ``compute_pro``, the curve starts at (0, 0) and ends at (1, 1).
    """
    gt, am = _check_maps(gt_masks, maps)
    scores = _finite_scores(am, "pixel")

    # Global region ids: 0 = normal, regions of image i follow those of images < i.
    regions = np.zeros(gt.shape, dtype=np.int64)
    n_regions = 0
    for i, mask in enumerate(gt):
        if mask.any():
            labeled, n = ndimage.label(mask, structure=_STRUCTURE)
            regions[i] = np.where(labeled > 0, labeled + n_regions, 0)
            n_regions += n
    if n_regions == 0:
        raise ValueError("PRO needs at least one ground-truth defect region, but all masks are empty")
    regions = regions.ravel()
    normal = regions == 0
    n_normal = int(normal.sum())
    if n_normal == 0:
        raise ValueError("PRO needs defect-free pixels to measure false positives, but every pixel is a defect")

    # Each pixel's contribution once it turns positive: 1/n_normal to the FPR if normal,
    # 1/(n_regions * region_size) to the PRO if in a region.
    sizes = np.bincount(regions, minlength=n_regions + 1).astype(np.float64)
    pro_weight = np.zeros(n_regions + 1, dtype=np.float64)
    pro_weight[1:] = 1.0 / (n_regions * sizes[1:])

    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    fpr = np.cumsum(normal[order], dtype=np.int64) / n_normal
    pro = np.cumsum(pro_weight[regions[order]])
    # Tied scores form one threshold: keep the last point of each run of equal scores.
    keep = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    fpr = np.minimum(fpr[keep], 1.0)
    pro = np.minimum(pro[keep], 1.0)
    return np.concatenate(([0.0], fpr, [1.0])), np.concatenate(([0.0], pro, [1.0]))


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under (x, y) for x in [0, x_max]; y at x_max linearly interpolated.

    ``x`` must be non-decreasing and span ``x_max`` (as in MVTec's ``generic_util.trapezoid``).
    """
    inside = x <= x_max
    area = float(np.sum(0.5 * (y[inside][1:] + y[inside][:-1]) * np.diff(x[inside])))
    last = int(np.count_nonzero(inside)) - 1
    if x[last] < x_max:
        x0, y0, x1, y1 = x[last], y[last], x[last + 1], y[last + 1]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at) * (x_max - x0)
    return area


def pro_score(
    gt_masks: ArrayLike,
    maps: ArrayLike,
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
) -> float:
    """Normalized area under the PRO curve for FPR in [0, ``fpr_limit``]; 1.0 = perfect.

    ``gt_masks`` (N, H, W) bool, ``maps`` (N, H, W), larger = more anomalous. The curve is
    :func:`pro_curve` (every distinct score is a threshold), integrated with the trapezoidal rule
    and divided by ``fpr_limit``. With ``num_thresholds`` set, only that many equally spaced
    thresholds between the smallest and the largest score are used (a coarser, cheaper curve).
    A constant map scores ``fpr_limit / 2`` (the straight line from (0, 0) to (1, 1)).
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if num_thresholds is not None:
        if num_thresholds < 1:
            raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")
        maps = _quantize(np.asarray(maps, dtype=np.float32), num_thresholds)
    fpr, pro = pro_curve(gt_masks, maps)
    return _trapezoid_to(fpr, pro, fpr_limit) / fpr_limit


def _quantize(maps: np.ndarray, num_thresholds: int) -> np.ndarray:
    """Round each score down to the nearest of ``num_thresholds`` equally spaced thresholds.

    A pixel is >= threshold t_k exactly when its rounded score is, so the exact curve of the
    rounded maps is the curve evaluated at those thresholds.
    """
    finite = _finite_scores(maps, "pixel")
    thresholds = np.linspace(finite.min(), finite.max(), num_thresholds, dtype=np.float64)
    idx = np.searchsorted(thresholds, maps.astype(np.float64), side="right") - 1
    return thresholds[np.clip(idx, 0, num_thresholds - 1)]


def image_scores(maps: ArrayLike, reduction: Reduction = "max", border: int = 0) -> np.ndarray:
    """One anomaly score per image from maps (N, H, W).

    ``"max"`` = the map's maximum, ``"mean"`` = the map's mean, both over the map without a frame of
    ``border`` pixels (padded windows and convolutions make the border error-prone on normal images too;
    see docs/inpainter.md). A border that would leave no pixel is ignored (the whole map is scored).
    """
    am = np.asarray(maps, dtype=np.float32)
    if am.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {am.shape}")
    if border < 0:
        raise ValueError(f"border must be >= 0 pixels, got {border}")
    if border and 2 * border < min(am.shape[1:]):
        am = am[:, border:-border, border:-border]
    if reduction == "max":
        return am.max(axis=(1, 2))
    if reduction == "mean":
        return am.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
    raise ValueError(f"reduction must be 'max' or 'mean', got {reduction!r}")


def summarize(
    labels: ArrayLike,
    gt_masks: ArrayLike,
    maps_ssim: ArrayLike,
    maps_l2: ArrayLike,
    reduction: Reduction = "max",
    include_pro: bool = True,
) -> dict[str, float]:
    """All metrics for the SSIM and the L2 maps of one test set.

    Keys: ``image_auroc_{ssim,l2}``, ``pixel_auroc_{ssim,l2}`` and, unless ``include_pro`` is
    False, ``pro_{ssim,l2}``. Image scores come from :func:`image_scores` with ``reduction``.
    """
    out: dict[str, float] = {}
    for name, maps in (("ssim", maps_ssim), ("l2", maps_l2)):
        out[f"image_auroc_{name}"] = image_auroc(labels, image_scores(maps, reduction))
    for name, maps in (("ssim", maps_ssim), ("l2", maps_l2)):
        out[f"pixel_auroc_{name}"] = pixel_auroc(gt_masks, maps)
    if include_pro:
        for name, maps in (("ssim", maps_ssim), ("l2", maps_l2)):
            out[f"pro_{name}"] = pro_score(gt_masks, maps)
    return out
