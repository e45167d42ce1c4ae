"""Metrics over a split: run a scorer on labelled images and report image/pixel AUROC per iteration and PRO."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import DatasetError
from .intervals import CONFIDENCE, Interval, image_auroc_interval, pixel_auroc_interval, pro_interval
from .metrics import image_auroc, image_scores, pixel_auroc, pro_score
from .scorers import DetectionSettings, IterationMaps, Scorer

AUROC_KEYS = ("image_auroc_ssim", "image_auroc_l2", "pixel_auroc_ssim", "pixel_auroc_l2")
PRO_KEYS = ("pro_ssim", "pro_l2")


@dataclass
class DetectionResult:
    """A detection run's report (the REPORT.json content) and its final maps and image scores."""

    report: dict[str, Any]
    ssim_maps: np.ndarray
    l2_maps: np.ndarray
    scores_ssim: np.ndarray
    scores_l2: np.ndarray
    per_iteration_scores: list[dict[str, np.ndarray]] = field(default_factory=list)


def _metrics(
    labels: np.ndarray,
    gt: np.ndarray,
    ssim: np.ndarray,
    l2: np.ndarray,
    reduction: str,
    with_pro: bool,
    border: int = 0,
) -> dict[str, float]:
    values = {
        "image_auroc_ssim": image_auroc(labels, image_scores(ssim, reduction, border)),
        "image_auroc_l2": image_auroc(labels, image_scores(l2, reduction, border)),
        "pixel_auroc_ssim": pixel_auroc(gt, ssim),
        "pixel_auroc_l2": pixel_auroc(gt, l2),
    }
    if with_pro:
        values.update(pro_ssim=pro_score(gt, ssim), pro_l2=pro_score(gt, l2))
    return values


def metric_intervals(
    labels: np.ndarray,
    gt: np.ndarray,
    ssim: np.ndarray,
    l2: np.ndarray,
    reduction: str,
    with_pro: bool,
    border: int = 0,
) -> dict[str, Interval]:
    """95% bootstrap intervals (images resampled within each label) of every metric `_metrics` reports."""
    intervals = {}
    for name, maps in (("ssim", ssim), ("l2", l2)):
        intervals[f"image_auroc_{name}"] = image_auroc_interval(labels, image_scores(maps, reduction, border))
        if gt.any():
            intervals[f"pixel_auroc_{name}"] = pixel_auroc_interval(labels, gt, maps)
            if with_pro:
                intervals[f"pro_{name}"] = pro_interval(labels, gt, maps)
    return intervals


def evaluate(
    scorer: Scorer,
    images: np.ndarray,
    gt_masks: np.ndarray,
    labels: np.ndarray,
    settings: DetectionSettings,
    on_iteration: Callable[[int, dict[str, float]], None] | None = None,
    include_pro: bool = True,
    with_intervals: bool = True,
) -> DetectionResult:
    """Run detection and compute image/pixel AUROC after every iteration and PRO after the last.

    `on_iteration(iteration, metrics)` is called as soon as each iteration's AUROCs are known (used to
    report intermediate results to a scheduler). Needs normal and anomalous images among `labels`.
    With `with_intervals`, the report's `intervals` holds a 95% bootstrap interval of each final metric
    (`i3ad.intervals`; a search's trials skip them).
    """
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise DatasetError(
            "detection metrics need normal and anomalous images; this split has only label(s) "
            f"{np.unique(labels).tolist()}. "
            "Use a larger split (--split all) or a category with defects"
        )
    per_iteration: list[dict[str, float]] = []
    per_iteration_scores: list[dict[str, np.ndarray]] = []
    detect_seconds = 0.0
    began = time.monotonic()
    tick = began
    last: IterationMaps | None = None
    iterations_run = 0
    for maps in scorer.iterate(images):
        detect_seconds += time.monotonic() - tick
        if per_iteration and maps.changed == 0:
            metrics = {k: v for k, v in per_iteration[-1].items() if k != "iteration"}
        else:
            metrics = _metrics(labels, gt_masks, maps.ssim, maps.l2, settings.score, False, settings.border)
        per_iteration.append({"iteration": maps.iteration, **metrics})
        per_iteration_scores.append(
            {
                "ssim": image_scores(maps.ssim, settings.score, settings.border),
                "l2": image_scores(maps.l2, settings.score, settings.border),
            }
        )
        if on_iteration is not None:
            on_iteration(maps.iteration, metrics)
        if maps.changed:
            iterations_run = maps.iteration
        last = maps
        tick = time.monotonic()
    assert last is not None
    final = {k: v for k, v in per_iteration[-1].items() if k != "iteration"}
    if include_pro:
        final.update(pro_ssim=pro_score(gt_masks, last.ssim), pro_l2=pro_score(gt_masks, last.l2))
    interval_seconds = 0.0
    intervals: dict[str, list[float]] = {}
    if with_intervals:
        tick = time.monotonic()
        found = metric_intervals(
            labels, np.asarray(gt_masks), last.ssim, last.l2, settings.score, include_pro, settings.border
        )
        intervals = {key: [round(i.low, 6), round(i.high, 6)] for key, i in found.items()}
        interval_seconds = time.monotonic() - tick
    report = {
        **final,
        "intervals": intervals,
        "confidence": CONFIDENCE,
        "interval_seconds": round(interval_seconds, 4),
        "per_iteration": per_iteration,
        "iterations_run": iterations_run,
        "images": int(len(labels)),
        "anomalous_images": int(labels.sum()),
        "seconds": round(detect_seconds, 4),
        "images_per_second": round(len(labels) / detect_seconds, 4) if detect_seconds > 0 else None,
        "total_seconds": round(time.monotonic() - began, 4),
        "generator_passes": int(last.generator_passes),
        "settings": asdict(settings),
    }
    return DetectionResult(
        report=report,
        ssim_maps=last.ssim,
        l2_maps=last.l2,
        scores_ssim=per_iteration_scores[-1]["ssim"],
        scores_l2=per_iteration_scores[-1]["l2"],
        per_iteration_scores=per_iteration_scores,
    )
