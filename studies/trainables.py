"""What runs inside Ray: the sweep's trial (training or detection, by `config["phase"]`) and the final
evaluation.

Trials only report to Tune (metrics, checkpoints); the driver's Tune callback writes MLflow. They read
training images from the data root, validation images from the object store and models from Tune
storage. Each trial measures its own compute time (inside train / calibrate / evaluate, excluding the
time spent handing results to Tune) and reports it as `time/compute_s`, for the overhead benchmark.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune

from i3ad.calibrate import calibrate_model
from i3ad.checkpoint import read_model_info
from i3ad.evaluate import DetectionResult, evaluate
from i3ad.loading import LoadedModel, load_model
from i3ad.scorers import DetectionSettings, IterationMaps
from i3ad.train import TrainConfig, TrainEvent, train
from studies.curves import CURVE_REPLAYED, PASSES_COMPUTED, CurveStore, curve_digest
from studies.data import ensure_synthetic
from studies.ledger import REPLAYED, finished_result
from studies.methods import METHODS
from studies.search import KEY, READY
from studies.storage import local_or_fetch, model_uri, publish


@dataclass(frozen=True)
class Runtime:
    """Per-trial resources as the trial itself needs to know them."""

    cpus: float
    device: str  # "cpu" or "cuda"

    def apply(self) -> None:
        torch.set_num_threads(max(1, int(self.cpus)))


@dataclass(frozen=True)
class EvalSplit:
    """Decoded images of one split (val or test) of one category."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray

    def writable(self) -> EvalSplit:
        # Arrays from the object store are read-only views; torch wants writable memory.
        return EvalSplit(np.array(self.images), np.array(self.masks), np.array(self.labels))


@dataclass(frozen=True)
class SweepContext:
    """Everything trials share, passed once through the object store (`tune.with_parameters`)."""

    data_root: str
    storage: str  # Tune storage root of the sweep; models are published under it
    runtime: Runtime
    calibration: dict[str, Any]
    detection_base: dict[str, Any]  # DetectionSettings every detection starts from
    objective: str  # e.g. "val/image_auroc_ssim"
    vals: dict[str, EvalSplit]  # model key -> validation split at that model's image size
    synthetic: dict[str, Any] | None = None  # ensure_synthetic kwargs when the data is the built-in set


class Clock:
    """Accumulates compute time, pausing while results are handed to Tune."""

    def __init__(self) -> None:
        self.compute = 0.0
        self.reporting = 0.0
        self._since: float | None = time.perf_counter()

    def pause(self) -> None:
        if self._since is not None:
            self.compute += time.perf_counter() - self._since
            self._since = None

    def report(self, metrics: dict[str, Any], checkpoint: tune.Checkpoint | None = None) -> None:
        self.pause()
        began = time.perf_counter()
        tune.report({**metrics, "time/compute_s": self.compute, "time/report_s": self.reporting}, checkpoint=checkpoint)
        self.reporting += time.perf_counter() - began
        self._since = time.perf_counter()

    def resume(self) -> None:
        """Count time as compute again after a `pause` that no report followed."""
        if self._since is None:
            self._since = time.perf_counter()


def sweep_trial(config: dict[str, Any], context: SweepContext) -> None:
    """The one Tune trainable of a sweep: phase A trains a model, phase B detects with one setting."""
    recorded = finished_result(context.storage, tune.get_context().get_trial_id())
    if recorded is not None:  # finished before the driver was killed; Tune's snapshot missed it (studies/ledger.py)
        tune.report({**recorded, REPLAYED: 1.0})
        return
    context.runtime.apply()
    if config["phase"] == "train":
        train_trial(config, context)
    else:
        detect_trial(config, context)


# ---------------------------------------------------------------- phase A


def train_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Train one model, resuming from Tune's checkpoint if any; calibrate U; publish it to storage."""
    spec = METHODS[config["method"]]
    settings = TrainConfig.from_dict({**config["train"], "method": spec.train_method, "device": context.runtime.device})
    if context.synthetic is not None:
        ensure_synthetic(Path(context.data_root), **context.synthetic)
    folder = Path(tempfile.mkdtemp(prefix=f"i3ad-train-{config['category']}-"))
    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            checkpoint.to_directory(str(folder))
        clock = Clock()

        def on_event(event: TrainEvent) -> None:
            metrics = {f"train/{k}": v for k, v in event.metrics.items()}
            ckpt = tune.Checkpoint.from_directory(str(event.checkpoint)) if event.checkpoint is not None else None
            clock.report({"step": event.step, **metrics}, checkpoint=ckpt)

        result = train(
            settings,
            Path(context.data_root),
            config["category"],
            folder,
            resume=True,
            callback=on_event,
            progress=False,
        )
        final: dict[str, Any] = {"step": result.steps, "train/steps_done": result.steps}
        if spec.calibrate:
            calibration = read_model_info(folder).get("calibration") or _calibrate(
                folder, config["category"], settings, context
            )
            final.update(
                {
                    "calibration/threshold": calibration["threshold"],
                    "calibration/met_tolerance": float(calibration["met_tolerance"]),
                }
            )
        publish(folder, model_uri(context.storage, config[KEY]))
        clock.report({**final, READY: 1.0})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _calibrate(folder: Path, category: str, settings: TrainConfig, context: SweepContext) -> dict[str, Any]:
    """The paper's rule for U on a seeded sample of training normals; saved into model.json's `calibration`."""
    return calibrate_model(
        folder,
        Path(context.data_root),
        category,
        images=context.calibration["images"],
        iterations=context.calibration["iterations"],
        tolerance=context.calibration["tolerance"],
        seed=settings.seed,
        base=DetectionSettings.from_dict(context.detection_base),
        device=context.runtime.device,
    )


# ---------------------------------------------------------------- phase B

_MODELS: dict[tuple[str, str], LoadedModel] = {}  # per worker process: reused actors share loaded models


def cached_model(uri: str, device: str) -> LoadedModel:
    """Load a published model once per worker process (actors are reused across trials)."""
    if (uri, device) not in _MODELS:
        if len(_MODELS) >= 4:
            _MODELS.pop(next(iter(_MODELS)))
        folder = local_or_fetch(uri, Path(tempfile.gettempdir()) / "i3ad-models")
        _MODELS[uri, device] = load_model(folder, device)
    return _MODELS[uri, device]


class MeteredScorer:
    """Wraps a scorer to expose generator passes and detection seconds after each iteration."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.passes = 0
        self.seconds = 0.0

    def iterate(self, images: np.ndarray) -> Iterator[IterationMaps]:
        maps_iter = iter(self.scorer.iterate(images))
        while True:
            began = time.perf_counter()
            try:
                maps = next(maps_iter)
            except StopIteration:
                return
            self.seconds += time.perf_counter() - began
            self.passes = maps.generator_passes
            yield maps


def detection_settings(base: dict[str, Any], chosen: dict[str, Any]) -> DetectionSettings:
    """DetectionSettings from the base settings overridden by the searched values in `chosen`."""
    return DetectionSettings.from_dict(
        {**base, **{k: chosen[k] for k in ("threshold", "patch_size", "iterations") if k in chosen}}
    )


def with_best_map(metrics: dict[str, float]) -> dict[str, float]:
    """Add `image_auroc_best`, the better of the SSIM- and L2-score image AUROCs (the objective
    `val/image_auroc_best`: the map is then chosen on the validation split like every setting).
    """
    return {**metrics, "image_auroc_best": max(metrics["image_auroc_ssim"], metrics["image_auroc_l2"])}


def detect_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Detect on the validation split, reporting metrics after every detection iteration.

    What an earlier trial already recorded for this setting is replayed first (studies/curves.py);
    detection runs only when the record stops short of N and ASHA lets the trial go on.
    """
    began = time.perf_counter()
    settings = detection_settings(context.detection_base, config)
    curves = CurveStore(context.storage, config[KEY], curve_digest(config, context.detection_base))
    recorded, complete = curves.replay(settings.iterations)
    clock = Clock()
    for row in recorded:  # ASHA may stop the trial here, before any generator pass
        clock.report({**row, PASSES_COMPUTED: 0, CURVE_REPLAYED: 1.0, "time/setup_s": time.perf_counter() - began})
    if complete:
        return
    replayed_up_to = recorded[-1]["iteration"] if recorded else -1

    spec = METHODS[config["method"]]
    model = cached_model(model_uri(context.storage, config[KEY]), context.runtime.device)
    val = context.vals[config[KEY]].writable()
    scorer = MeteredScorer(spec.scorer(model, settings, config))
    setup = time.perf_counter() - began
    objective = context.objective.removeprefix("val/")
    best = {"value": -np.inf, "iteration": 0}
    rows: list[dict[str, float]] = []

    def on_iteration(iteration: int, metrics: dict[str, float]) -> None:
        metrics = with_best_map(metrics)
        if metrics[objective] > best["value"]:
            best.update(value=metrics[objective], iteration=iteration)
        rows.append(
            {
                "iteration": iteration,
                **{f"val/{k}": v for k, v in metrics.items()},
                "val/generator_passes": scorer.passes,
                "val/seconds_per_image": scorer.seconds / len(val.labels),
                "val/objective_best": best["value"],
                "val/objective_best_iteration": best["iteration"],
            }
        )
        clock.pause()  # recording the curve is bookkeeping, not detection compute
        curves.save(rows, settings.iterations, finished=False)
        if iteration > replayed_up_to:
            clock.report({**rows[-1], PASSES_COMPUTED: scorer.passes, CURVE_REPLAYED: 0.0, "time/setup_s": setup})
        else:  # replayed already; computed again only to reach the iterations after it
            clock.resume()

    evaluate(scorer, val.images, val.masks, val.labels, settings, on_iteration=on_iteration, include_pro=False)
    curves.save(rows, settings.iterations, finished=True)


# ---------------------------------------------------------------- final evaluation


@dataclass
class FinalOutcome:
    """The chosen settings evaluated once on val (for PRO and a consistency check) and on test."""

    val: dict[str, Any]
    test: DetectionResult
    seconds: float = 0.0


def final_evaluate(
    uri: str,
    method: str,
    settings: DetectionSettings,
    val: EvalSplit,
    test: EvalSplit,
    runtime: Runtime,
    params: dict[str, Any] | None = None,
) -> FinalOutcome:
    """Evaluate the chosen settings on val and, once, on the held-out test split (PRO included).

    `params` are the chosen settings as searched (e.g. the projection's lam / step / iterations).
    """
    began = time.perf_counter()
    runtime.apply()
    spec = METHODS[method]
    model = cached_model(uri, runtime.device)
    val, test = val.writable(), test.writable()
    params = {**asdict(settings), **(params or {})}
    val_result = evaluate(spec.scorer(model, settings, params), val.images, val.masks, val.labels, settings)
    test_result = evaluate(spec.scorer(model, settings, params), test.images, test.masks, test.labels, settings)
    report = {k: v for k, v in val_result.report.items() if k != "per_iteration"}
    return FinalOutcome(val=report, test=test_result, seconds=time.perf_counter() - began)
