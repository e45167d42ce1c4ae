"""Is one final run ahead of another beyond the noise? The rule `tracking.compare` and `tracking.promote` share.

Two runs scored on the same held-out images (the same `images_sha256` in their `final/test_scores.json`)
are compared image by image: the paired bootstrap interval of the difference of their image AUROCs
(`i3ad.intervals.paired_difference`) must lie above `margin`. Runs scored on different images, and
metrics without per-image scores (pixel AUROC, PRO), are compared by their own intervals: the leader's
lower bound must clear the other's upper bound by `margin`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.exceptions import MlflowException

from i3ad.intervals import Interval, paired_difference

SCORES_ARTIFACT = "final/test_scores.json"  # written by the sweep's final step (studies/final.py)


@dataclass(frozen=True)
class Evidence:
    """How far `a` is ahead of `b` on a metric, and whether that lead is beyond the noise."""

    metric: str
    difference: float  # a - b
    interval: Interval | None  # of the difference (paired) or None (judged by the two runs' own intervals)
    paired: bool
    ahead: bool  # a is ahead of b beyond the interval (and the margin)
    reason: str


def metric_value(run: Run, key: str) -> float | None:
    """A run's metric, None when absent or NaN."""
    value = run.data.metrics.get(key)
    return None if value is None or math.isnan(value) else float(value)


def run_interval(run: Run, metric: str) -> Interval | None:
    """The run's 95% interval of `metric` (`<metric>_ci_low` / `_ci_high`), if it logged one."""
    low, high = metric_value(run, f"{metric}_ci_low"), metric_value(run, f"{metric}_ci_high")
    return None if low is None or high is None else Interval(low, high)


def load_scores(client: MlflowClient, run: Run, cache: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A final run's per-image held-out scores, or None for runs that did not log them."""
    run_id = run.info.run_id
    if cache is not None and run_id in cache:
        return cache[run_id]
    try:
        with tempfile.TemporaryDirectory() as folder, _quiet_downloads():
            path = client.download_artifacts(run_id, SCORES_ARTIFACT, folder)
            scores = json.loads(Path(path).read_text())
    except (MlflowException, OSError, json.JSONDecodeError):
        scores = None
    if cache is not None:
        cache[run_id] = scores
    return scores


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No MLflow download bar per small JSON file (they would drown a comparison table)."""
    key = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _per_image(scores: dict[str, Any], metric: str) -> np.ndarray | None:
    """The per-image scores behind an image-AUROC metric (`test/objective` = the run's chosen map)."""
    name = metric.removeprefix("test/")
    if name == "objective":
        anomaly_map = scores.get("map")
    elif name.startswith("image_auroc_"):
        anomaly_map = name.removeprefix("image_auroc_")
    else:
        return None
    values = (scores.get("scores") or {}).get(anomaly_map)
    return None if values is None else np.asarray(values, dtype=np.float64)


def weigh(
    client: MlflowClient,
    a: Run,
    b: Run,
    metric: str,
    margin: float = 0.0,
    cache: dict[str, Any] | None = None,
) -> Evidence:
    """Whether run `a` is ahead of run `b` on `metric` beyond the noise (and by more than `margin`)."""
    value_a, value_b = metric_value(a, metric), metric_value(b, metric)
    if value_a is None or value_b is None:
        missing = a if value_a is None else b
        return Evidence(metric, math.nan, None, False, False, f"run {missing.info.run_id[:8]} has no {metric}")
    difference = value_a - value_b
    scores_a, scores_b = load_scores(client, a, cache), load_scores(client, b, cache)
    if scores_a and scores_b and scores_a.get("images_sha256") == scores_b.get("images_sha256"):
        per_a, per_b = _per_image(scores_a, metric), _per_image(scores_b, metric)
        if per_a is not None and per_b is not None:
            interval = paired_difference(scores_a["labels"], per_a, per_b)
            ahead = interval.low > margin
            reason = (
                f"{metric} {value_a:.4f} vs {value_b:.4f}: difference {difference:+.4f}, paired 95% interval "
                f"{interval} on the same {len(per_a)} held-out images"
            )
            return Evidence(metric, difference, interval, True, ahead, reason)
    own_a, own_b = run_interval(a, metric), run_interval(b, metric)
    if own_a is None or own_b is None:
        ahead = difference > margin
        reason = f"{metric} {value_a:.4f} vs {value_b:.4f}: no interval logged, raw values compared"
        return Evidence(metric, difference, None, False, ahead, reason)
    ahead = own_a.low - own_b.high > margin
    reason = (
        f"{metric} {value_a:.4f} {own_a} vs {value_b:.4f} {own_b}: not scored on the same images, so the "
        "intervals must not overlap"
    )
    return Evidence(metric, difference, None, False, ahead, reason)
