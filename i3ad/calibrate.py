"""Calibrating I3AD's threshold U by the paper's rule on normal training images.

The result is what calibration *learned*; it is saved as model.json's `calibration` (its `threshold` is
the calibrated U) and never overwrites the chosen settings (`detection`); `i3ad.loading.detection_settings`
layers the two.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import update_model_info
from .checks import check_float, check_int
from .data import MVTecCategory, load_image
from .errors import ConfigError
from .loading import load_model
from .models import InpaintGenerator
from .scorers import DetectionSettings, IterativeInpainter, as_tensor
from .scorers.iterative import MAX_ITERATIONS

CALIBRATION_THRESHOLDS = tuple(round(0.10 + 0.05 * i, 2) for i in range(9))  # 0.10 .. 0.50
# The paper: "L1 reconstruction errors less than the order of 10" after 10 iterations, in grey levels (0..255).
CALIBRATION_TOLERANCE = 10.0
CALIBRATION_ITERATIONS = 10
CALIBRATION_IMAGES = 16  # training images sampled per calibration
# Bounds: a tolerance under 0.5 grey levels no non-empty mask meets; 255 is the whole grey range.
CALIBRATION_TOLERANCE_RANGE = (0.5, 255.0)
CALIBRATION_MAX_IMAGES = 100_000
# A U leaves the loop something to do when the normals' final mask is partial: at least MIN_MASKED (an emptied
# mask turns every image back into x0, defects included) and at most MAX_MASKED of their pixels (a full mask
# hides the whole image, and the generator fills it from nothing).
MIN_MASKED, MAX_MASKED = 0.005, 0.5


def check_calibration(images: int, iterations: int, tolerance: float) -> None:
    """Type and range of the calibration settings (the sweep's `calibration` section states the same bounds)."""
    check_int(images, "calibration images", 1, CALIBRATION_MAX_IMAGES)
    check_int(iterations, "calibration iterations", 1, MAX_ITERATIONS)
    check_float(tolerance, "calibration tolerance", *CALIBRATION_TOLERANCE_RANGE)


def calibrate_threshold(
    generator: InpaintGenerator,
    images: np.ndarray,
    tolerance: float = CALIBRATION_TOLERANCE,
    thresholds: tuple[float, ...] = CALIBRATION_THRESHOLDS,
    iterations: int = CALIBRATION_ITERATIONS,
    base: DetectionSettings | None = None,
) -> dict[str, Any]:
    """The paper's rule for U, run on normal (training) images.

    For each U on the grid, detection runs `iterations` iterations and the error is the mean absolute
    difference between x0 and x_N in grey levels (0..255, mean over pixels and channels). Normal images
    should end with (almost) nothing masked, i.e. a small error.

    The paper thresholds the anomaly score and takes the *minimal* threshold that keeps normals'
    error small: the most sensitive setting normal images still tolerate. With U a threshold on SSIM
    (`M = SSIM < U`), a larger U masks more, so the same rule picks the *largest* U whose error is at
    most `tolerance`. The error is a mean over all pixels, so a U that empties the normals' masks
    (x_N = x0) meets any tolerance while leaving the loop nothing to do; a U passes only when the
    normals' final mask is also partial (between `MIN_MASKED` and `MAX_MASKED` of their pixels).
    If no U passes (`met_tolerance` False), the partial U with the smallest error is returned, and
    without a partial U the one whose final mask fraction lies nearest that band.

    Each curve point holds `masked`: the fraction of normal pixels masked after each iteration (0..N);
    the result's `masked_per_iteration` is that list at the chosen U.
    """
    base = base or DetectionSettings()
    x0 = as_tensor(images)
    curve = []
    for u in thresholds:
        settings = DetectionSettings(**{**asdict(base), "threshold": u, "iterations": iterations})
        inpainter = IterativeInpainter(generator, settings)
        # SSIM < U, the mask the next iteration would inpaint (maps hold 1 - SSIM)
        masked = [round(float((maps.ssim > 1.0 - u).mean()), 6) for maps in inpainter.iterate(x0)]
        error = float((x0 - inpainter.reconstruction).abs().mean() / 2.0 * 255.0)
        curve.append({"threshold": u, "error": error, "flagged_fraction": masked[-1], "masked": masked})
    chosen, met = choose_threshold(curve, tolerance)
    return {
        "threshold": chosen["threshold"],
        "tolerance": tolerance,
        "iterations": iterations,
        "met_tolerance": met,
        "masked_band": [MIN_MASKED, MAX_MASKED],
        "masked_per_iteration": chosen["masked"],
        "curve": curve,
        "images": int(len(x0)),
    }


def choose_threshold(curve: list[dict[str, Any]], tolerance: float) -> tuple[dict[str, Any], bool]:
    """(the chosen curve point, whether it met the rule): see `calibrate_threshold`.

    Each point needs `threshold`, `error` (grey levels) and `flagged_fraction` (the final mask on normals).
    """
    partial = [p for p in curve if _partial(p["flagged_fraction"])]
    passing = [p for p in partial if p["error"] <= tolerance]
    if passing:
        return max(passing, key=lambda p: p["threshold"]), True
    if partial:
        return min(partial, key=lambda p: (p["error"], p["threshold"])), False
    return min(curve, key=lambda p: (_distance_to_partial(p["flagged_fraction"]), p["threshold"])), False


def _partial(fraction: float) -> bool:
    return MIN_MASKED <= fraction <= MAX_MASKED


def _distance_to_partial(fraction: float) -> float:
    """How far (log ratio) a final mask fraction lies outside [MIN_MASKED, MAX_MASKED]; 0 inside."""
    fraction = max(fraction, 1e-9)
    return max(0.0, float(np.log(MIN_MASKED / fraction)), float(np.log(fraction / MAX_MASKED)))


def calibrate_model(
    folder: Path,
    data_root: Path,
    category: str,
    *,
    images: int = CALIBRATION_IMAGES,
    iterations: int = CALIBRATION_ITERATIONS,
    tolerance: float = CALIBRATION_TOLERANCE,
    seed: int = 0,
    base: DetectionSettings | None = None,
    device: str | torch.device = "auto",
) -> dict[str, Any]:
    """Calibrate U for the I3AD model in `folder` and save the result as model.json's `calibration`.

    Samples `images` training normals of `category` under `data_root` (seeded by `seed`, at the model's
    image size), runs `calibrate_threshold` with `base` as the other detection settings and returns its
    result. Used by `i3ad calibrate` and by the sweep's training trials.
    """
    check_calibration(images, iterations, tolerance)
    folder = Path(folder)
    model = load_model(folder, device)
    if model.method != "i3ad":
        raise ConfigError(f"calibrate sets I3AD's threshold; {folder} holds a {model.method} model")
    data = MVTecCategory(Path(data_root), category)
    paths = data.train_paths()
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(paths), size=min(images, len(paths)), replace=False))
    image_size = model.info["image_size"]
    normals = np.stack([load_image(paths[i], image_size, data.channels) for i in chosen])
    result = calibrate_threshold(model.module, normals, tolerance=tolerance, iterations=iterations, base=base)
    update_model_info(folder, calibration=result)
    return result
