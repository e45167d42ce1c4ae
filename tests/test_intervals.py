"""Bootstrap intervals: nominal coverage, exact point estimates inside, paired differences that find real ones."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from i3ad.intervals import (
    Interval,
    image_auroc_interval,
    paired_difference,
    pixel_auroc_interval,
    pro_interval,
)
from i3ad.metrics import image_auroc, pixel_auroc, pro_score

LABELS = np.r_[np.zeros(12), np.ones(12)].astype(int)


def test_image_interval_covers_the_true_auroc_at_about_the_nominal_rate() -> None:
    # Normal scores shifted by 1 for anomalies: the true AUROC is Phi(1 / sqrt(2)) = 0.760.
    true = norm.cdf(1 / np.sqrt(2))
    rng = np.random.default_rng(0)
    hits = 0
    for k in range(200):
        scores = rng.normal(size=LABELS.size) + LABELS
        hits += not image_auroc_interval(LABELS, scores, seed=k, resamples=1000).excludes(true)
    assert 0.90 <= hits / 200 <= 0.99


def test_interval_holds_the_estimate_and_narrows_with_more_images() -> None:
    rng = np.random.default_rng(1)
    small = rng.normal(size=24) + LABELS
    interval = image_auroc_interval(LABELS, small)
    assert interval.low <= image_auroc(LABELS, small) <= interval.high
    labels = np.repeat(LABELS, 8)
    large = rng.normal(size=labels.size) + labels
    assert image_auroc_interval(labels, large).width < interval.width / 2


def test_perfect_separation_is_degenerate_not_nan() -> None:
    assert image_auroc_interval(LABELS, LABELS * 2.0) == Interval(1.0, 1.0)


def test_same_seed_same_interval() -> None:
    scores = np.random.default_rng(2).normal(size=24) + LABELS
    assert image_auroc_interval(LABELS, scores, seed=3) == image_auroc_interval(LABELS, scores, seed=3)


def test_paired_difference_finds_a_real_difference_and_not_a_null_one() -> None:
    rng = np.random.default_rng(4)
    found = false_alarms = 0
    for k in range(40):
        base = rng.normal(size=LABELS.size)
        strong = base + 2.5 * LABELS
        weak = base + 0.5 * LABELS + rng.normal(scale=0.5, size=LABELS.size)
        found += paired_difference(LABELS, strong, weak, seed=k, resamples=1000).low > 0
        twin = base + 1.0 * LABELS + rng.normal(scale=0.3, size=LABELS.size)
        other = base + 1.0 * LABELS + rng.normal(scale=0.3, size=LABELS.size)
        false_alarms += paired_difference(LABELS, twin, other, seed=k, resamples=1000).excludes(0.0)
    assert found >= 36  # power
    assert false_alarms <= 6  # about 5% expected


def _maps(n_images: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_images // 2), np.ones(n_images // 2)].astype(int)
    gt = np.zeros((n_images, 32, 32), bool)
    gt[labels == 1, 8:16, 10:20] = True
    gt[-1, 24:28, 24:28] = True  # a second region in one image
    maps = rng.normal(size=gt.shape).astype(np.float32) + 1.2 * gt
    return labels, gt, maps


@pytest.mark.parametrize(
    ("metric", "interval_of"), [(pixel_auroc, pixel_auroc_interval), (pro_score, pro_interval)], ids=["pixel", "pro"]
)
def test_pixel_metric_intervals_resample_images(metric, interval_of) -> None:
    labels, gt, maps = _maps(24, seed=5)
    interval = interval_of(labels, gt, maps)
    assert interval.low <= metric(gt, maps) <= interval.high
    assert 0.0 < interval.width < 0.3
    # Four times the images: a narrower interval.
    labels_big, gt_big, maps_big = _maps(96, seed=5)
    assert interval_of(labels_big, gt_big, maps_big).width < interval.width
