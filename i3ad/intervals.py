"""95% bootstrap intervals for image AUROC, pixel AUROC and PRO, and paired differences between two detectors.

Images are resampled with replacement within each label (stratified: every resample keeps the split's
numbers of normal and anomalous images), with `scipy.stats.bootstrap` (BCa). Pixel metrics resample
images, not pixels: a resample is a vector of per-image counts, and each metric is written as a
function of those counts, so no resample re-sorts the pixels. For that, pixel scores are binned into
`PIXEL_BINS` (PRO: `PRO_BINS`) quantile bins (pixels in one bin count as ties); the point estimates
reported next to the interval stay the exact ones from `i3ad.metrics`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from scipy.stats import bootstrap

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
PIXEL_BINS = 2048
PRO_BINS = 512  # the PRO curve per resample is a (resamples x bins) array: fewer bins keep it cheap
WIDE = 0.2  # an interval wider than this cannot resolve the differences a study looks for

# A statistic of image weights: (B, n) resample counts -> (B,) values.
WeightedStatistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval."""

    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low

    def excludes(self, value: float) -> bool:
        """Whether `value` lies outside the interval."""
        return not self.low <= value <= self.high

    def __str__(self) -> str:
        return f"[{self.low:.2f}, {self.high:.2f}]"


def _labels(labels: ArrayLike) -> np.ndarray:
    labels = np.asarray(labels).astype(bool).ravel()
    if labels.all() or not labels.any():
        raise ValueError("a bootstrap interval needs normal and anomalous images")
    return labels


def stratified_bootstrap(
    labels: ArrayLike,
    statistic: WeightedStatistic,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Interval:
    """Interval of `statistic(weights)` over image resamples drawn within each label (BCa, percentile fallback)."""
    labels = _labels(labels)
    n = labels.size
    index = np.arange(n)

    def on_indices(normal: np.ndarray, anomalous: np.ndarray, axis: int = -1) -> np.ndarray:
        batch = np.broadcast_shapes(normal.shape[:-1], anomalous.shape[:-1])
        parts = [np.broadcast_to(part, batch + part.shape[-1:]) for part in (normal, anomalous)]
        picked = np.concatenate(parts, axis=-1).astype(np.int64)
        flat = picked.reshape(-1, picked.shape[-1])
        weights = np.zeros((flat.shape[0], n))
        np.add.at(weights, (np.repeat(np.arange(flat.shape[0]), flat.shape[1]), flat.ravel()), 1.0)
        return statistic(weights).reshape(batch)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate distribution (e.g. AUROC 1.0 everywhere) is handled below
        result = bootstrap(
            (index[~labels], index[labels]),
            on_indices,
            n_resamples=resamples,
            confidence_level=confidence,
            method="BCa",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):
        values = result.bootstrap_distribution
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high))


def _pairs(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(n, n) matrix: 1 where image i is anomalous, j normal and i scores higher; 0.5 on ties; else 0."""
    higher = (scores[:, None] > scores[None, :]) + 0.5 * (scores[:, None] == scores[None, :])
    return higher * (labels[:, None] & ~labels[None, :])


def _weighted_auroc(pairs: np.ndarray, labels: np.ndarray) -> WeightedStatistic:
    def statistic(weights: np.ndarray) -> np.ndarray:
        wins = np.einsum("bi,ij,bj->b", weights, pairs, weights)
        return wins / ((weights @ labels) * (weights @ ~labels))

    return statistic


def image_auroc_interval(labels: ArrayLike, scores: ArrayLike, **options) -> Interval:
    """Bootstrap interval of the image AUROC of `scores` (one per image) against `labels` (1 = anomalous)."""
    labels = _labels(labels)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    return stratified_bootstrap(labels, _weighted_auroc(_pairs(labels, scores), labels), **options)


def paired_difference(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, **options) -> Interval:
    """Bootstrap interval of AUROC(a) - AUROC(b), both scored on the same images (the same resamples for both)."""
    labels = _labels(labels)
    auroc_a = _weighted_auroc(_pairs(labels, np.asarray(scores_a, dtype=np.float64).ravel()), labels)
    auroc_b = _weighted_auroc(_pairs(labels, np.asarray(scores_b, dtype=np.float64).ravel()), labels)
    return stratified_bootstrap(labels, lambda weights: auroc_a(weights) - auroc_b(weights), **options)


def _bins(maps: np.ndarray, bins: int) -> tuple[np.ndarray, int]:
    """Each pixel's quantile bin (0 = lowest scores) and the number of bins."""
    flat = maps.ravel()
    edges = np.unique(np.quantile(flat, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, maps, side="right"), len(edges) + 1


def pixel_auroc_interval(labels: ArrayLike, gt_masks: ArrayLike, maps: ArrayLike, **options) -> Interval:
    """Bootstrap interval of the pixel AUROC, resampling images (a resampled image brings all its pixels)."""
    gt = np.asarray(gt_masks).astype(bool)
    binned, nbins = _bins(np.asarray(maps, dtype=np.float32), PIXEL_BINS)
    n = len(gt)
    positive = np.stack([np.bincount(binned[i][gt[i]], minlength=nbins) for i in range(n)]).astype(np.float64)
    negative = np.stack([np.bincount(binned[i][~gt[i]], minlength=nbins) for i in range(n)]).astype(np.float64)
    below = np.cumsum(negative, axis=1) - negative  # negatives in lower bins
    wins = positive @ (below + 0.5 * negative).T  # (n, n): image i's defect pixels against image j's normal ones
    pos_count, neg_count = positive.sum(axis=1), negative.sum(axis=1)

    def statistic(weights: np.ndarray) -> np.ndarray:
        return np.einsum("bi,ij,bj->b", weights, wins, weights) / ((weights @ pos_count) * (weights @ neg_count))

    return stratified_bootstrap(labels, statistic, **options)


def pro_interval(
    labels: ArrayLike, gt_masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3, **options
) -> Interval:
    """Bootstrap interval of the normalised PRO area up to `fpr_limit`, resampling images."""
    gt = np.asarray(gt_masks).astype(bool)
    binned, nbins = _bins(np.asarray(maps, dtype=np.float32), PRO_BINS)
    n = len(gt)
    # Per image and threshold bin k (a pixel is positive when its bin >= k): normal pixels above, and the
    # sum over the image's defect regions of the share of the region above.
    normal_above = np.zeros((n, nbins + 1))
    region_share_above = np.zeros((n, nbins + 1))
    regions = np.zeros(n)
    for i in range(n):
        normal_above[i, :nbins] = np.cumsum(np.bincount(binned[i][~gt[i]], minlength=nbins)[::-1])[::-1]
        labeled, count = ndimage.label(gt[i], structure=np.ones((3, 3), dtype=int))
        regions[i] = count
        for region in range(1, count + 1):
            inside = binned[i][labeled == region]
            counts = np.bincount(inside, minlength=nbins)[::-1]
            region_share_above[i, :nbins] += np.cumsum(counts)[::-1] / inside.size
    normal_total = normal_above[:, 0]
    # Thresholds from the highest bin down: the curve runs from (0, 0) to (1, 1).
    normal_above, region_share_above = normal_above[:, ::-1], region_share_above[:, ::-1]

    def statistic(weights: np.ndarray) -> np.ndarray:
        fpr = (weights @ normal_above) / (weights @ normal_total)[:, None]
        pro = (weights @ region_share_above) / (weights @ regions)[:, None]
        return areas_to(fpr, pro, fpr_limit) / fpr_limit

    return stratified_bootstrap(labels, statistic, **options)


def areas_to(x: np.ndarray, y: np.ndarray, x_max: float) -> np.ndarray:
    """Trapezoidal area under each row's curve (x, y) for x in [0, x_max]; rows non-decreasing in x, ending at 1.

    The segment that crosses `x_max` counts up to it, with y interpolated linearly (as `i3ad.metrics`).
    """
    inside = x[:, 1:] <= x_max
    area = np.sum(np.where(inside, 0.5 * (y[:, 1:] + y[:, :-1]) * np.diff(x, axis=1), 0.0), axis=1)
    last = np.count_nonzero(x <= x_max, axis=1) - 1  # the last point at or before x_max
    rows = np.arange(len(x))
    after = np.minimum(last + 1, x.shape[1] - 1)
    x0, y0, x1, y1 = x[rows, last], y[rows, last], x[rows, after], y[rows, after]
    crossing = (x0 < x_max) & (x1 > x0)
    y_at = y0 + (y1 - y0) * (x_max - x0) / np.where(crossing, x1 - x0, 1.0)
    return area + np.where(crossing, 0.5 * (y0 + y_at) * (x_max - x0), 0.0)


def describe(value: float, interval: Interval | None) -> str:
    """`0.907 [0.78, 0.98]`, or the bare value when there is no interval."""
    return f"{value:.3f}" if interval is None else f"{value:.3f} {interval}"
