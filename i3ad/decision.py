"""Decisions from scores: an operating threshold chosen on validation normals, and a normalised score.

A detector's raw score (e.g. the mean of an SSIM anomaly map) has no meaning of its own: 0.48 may be normal on one
category and anomalous on another. The operating point turns it into a decision:

- **Rule** (`DecisionRule`): the threshold is the score that at most `target_fpr` of the validation *normal*
  images exceed (default 5%: the `1 - target_fpr` quantile of their scores, taken at an observed score, so on
  the validation normals the rate of false alarms is at most `target_fpr`). Validation normals only: the held-out
  split is never used to choose it.
- **Normalised score**: 0 at the median validation normal, 1 at the threshold;
  `(score - median) / (threshold - median)`. Above 1 is `anomalous`, at or below 1 is `normal`.

Like a calibrated U, the operating point is *learned* (from data), not a setting; `DecisionRule` is its setting.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .checks import check_float
from .errors import ConfigError

DEFAULT_TARGET_FPR = 0.05
LABELS = ("normal", "anomalous")


@dataclass(frozen=True)
class DecisionRule:
    """How the operating threshold is chosen: the rate of validation normals allowed above it."""

    target_fpr: float = DEFAULT_TARGET_FPR

    def __post_init__(self) -> None:
        check_float(self.target_fpr, "decision.target_fpr", 0.0, 0.5)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DecisionRule:
        unknown = set(values) - {"target_fpr"}
        if unknown:
            raise ConfigError(f"decision has unknown key(s) {sorted(unknown)}; known: target_fpr")
        return cls(**values)


@dataclass(frozen=True)
class OperatingPoint:
    """A learned decision threshold on one map's image score, and the normalisation that puts it at 1."""

    threshold: float
    median_normal: float  # the normalisation's 0
    target_fpr: float
    val_fpr: float  # the rate of validation normals above the threshold (<= target_fpr)
    normals: int  # validation normal images it was chosen on
    map: str = "ssim"
    rule: str = "val-normal-fpr"

    def __post_init__(self) -> None:
        for name in ("threshold", "median_normal", "target_fpr", "val_fpr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"operating point {name} must be a finite number, got {value!r}")

    @property
    def scale(self) -> float:
        return max(self.threshold - self.median_normal, 1e-12)

    def normalise(self, scores: np.ndarray) -> np.ndarray:
        """0 at the median validation normal, 1 at the threshold."""
        return (np.asarray(scores, dtype=np.float64) - self.median_normal) / self.scale

    def labels(self, scores: np.ndarray) -> list[str]:
        """`anomalous` above the threshold, else `normal`."""
        return [LABELS[int(s > self.threshold)] for s in np.asarray(scores, dtype=np.float64)]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> OperatingPoint:
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"operating point {values!r} does not match this i3ad version ({exc})") from exc


def choose_operating_point(normal_scores: np.ndarray, rule: DecisionRule, anomaly_map: str = "ssim") -> OperatingPoint:
    """The operating point of `rule` on the image scores of validation normal images."""
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())
    if scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ConfigError("an operating point needs the finite scores of at least one validation normal image")
    # the smallest observed score with at most target_fpr of the normals above it
    allowed = math.floor(rule.target_fpr * scores.size + 1e-9)
    threshold = float(scores[scores.size - 1 - allowed])
    return OperatingPoint(
        threshold=threshold,
        median_normal=float(np.median(scores)),
        target_fpr=rule.target_fpr,
        val_fpr=float(np.mean(scores > threshold)),
        normals=int(scores.size),
        map=anomaly_map,
    )
