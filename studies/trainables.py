"""What runs inside Ray: the sweep's trial (training or detection, by `config["phase"]`), the final evaluation.

Trials only report to Tune (metrics, checkpoints); the driver's Tune callback writes MLflow. They read
training images from the data root, validation images from the object store and models from Tune
storage. Each trial measures its own compute time (inside train / calibrate / evaluate, excluding the
time spent handing results to Tune) and reports it as `time/compute_s`, for the overhead benchmark.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune

from i3ad.calibrate import calibrate_model
from i3ad.checkpoint import read_model_info
from i3ad.evaluate import DetectionResult, evaluate
from i3ad.loading import load_model
from i3ad.scorers import DetectionSettings, IterationMaps, LoadedModel, ProjectionSettings, make_scorer
from i3ad.train import TrainConfig, TrainEvent, train
from studies.config import CalibrationConfig
from studies.data import ensure_synthetic
from studies.ledger import REPLAYED, finished_result
from studies.methods import settings_for
from studies.search import KEY, READY
from studies.storage import local_or_fetch, model_uri, publish


@dataclass(frozen=True)
class Runtime:
    """Per-trial resources as the trial itself needs to know them."""

    cpus: float
    device: str  # "cpu" or "cuda"
    workers: int = 1  # data-parallel workers of a training trial (studies/ddp_trainable.py)
    max_failures: int = 1  # worker-group restarts of a multi-worker training run
    checkpoints_to_keep: int = 2

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
    calibration: CalibrationConfig
    detect: DetectionSettings  # the base of every detection (trials replace the searched values)
    projection: ProjectionSettings  # the base of the `+proj` methods
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


def calibrated(
    folder: Path,
    settings: TrainConfig,
    data_root: Path,
    category: str,
    calibration: CalibrationConfig,
    detect: DetectionSettings,
    device: str,
) -> dict[str, float]:
    """A trained I3AD model's calibrated U as trial metrics (kept when the folder has one); {} for other methods.

    U is I3AD's; the autoencoders and GAN baselines have no threshold to calibrate.
    """
    if settings.method != "i3ad":
        return {}
    values = read_model_info(folder).get("calibration") or calibrate_model(
        folder,
        data_root,
        category,
        images=calibration.images,
        iterations=calibration.iterations,
        tolerance=calibration.tolerance,
        seed=settings.seed,
        base=detect,
        device=device,
    )
    return {"calibration/threshold": values["threshold"], "calibration/met_tolerance": float(values["met_tolerance"])}


def train_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Train one model, resuming from Tune's checkpoint if any; calibrate U; publish it to storage."""
    settings = TrainConfig.from_dict({**config["train"], "method": config["method"], "device": context.runtime.device})
    if context.runtime.workers > 1 and _train_with_workers(config, context):
        return
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
        final |= calibrated(
            folder,
            settings,
            Path(context.data_root),
            config["category"],
            context.calibration,
            context.detect,
            context.runtime.device,
        )
        publish(folder, model_uri(context.storage, config[KEY]))
        clock.report({**final, READY: 1.0})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _train_with_workers(config: dict[str, Any], context: SweepContext) -> bool:
    """Train on `runtime.workers` Ray Train workers when the method supports it; False: train here instead."""
    from studies import ddp_trainable  # Ray Train is imported only by sweeps that use it

    runtime = context.runtime
    if not ddp_trainable.uses_workers(config["method"], runtime.workers):
        return False
    job = ddp_trainable.WorkerJob(
        trial=config,
        data_root=context.data_root,
        storage=context.storage,
        synthetic=context.synthetic,
        calibration=context.calibration,
        detect=context.detect,
        cpus=max(1, int(runtime.cpus)),
        gpu=runtime.device == "cuda",
    )
    ddp_trainable.train_trial_workers(job, runtime.workers, runtime.max_failures, runtime.checkpoints_to_keep)
    return True


# ---------------------------------------------------------------- phase B


@functools.lru_cache(maxsize=4)  # per worker process: reused actors share loaded models
def cached_model(uri: str, device: str) -> LoadedModel:
    """Load a published model once per worker process (actors are reused across trials)."""
    return load_model(local_or_fetch(uri, Path(tempfile.gettempdir()) / "i3ad-models"), device)


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


def with_best_map(metrics: dict[str, float]) -> dict[str, float]:
    """Add `image_auroc_best`, the better of the SSIM- and L2-score image AUROCs.

    With the objective `val/image_auroc_best` the map is then chosen on the validation split like every setting.
    """
    return {**metrics, "image_auroc_best": max(metrics["image_auroc_ssim"], metrics["image_auroc_l2"])}


def detect_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Detect on the validation split with the trial's settings, reporting after every iteration.

    The trial runs to its method's full length (`iterations` in its config); ASHA stops weak ones, and
    the best iteration so far travels with every result (`val/objective_best_iteration`).
    """
    began = time.perf_counter()
    method = config["method"]
    detection, projection = settings_for(method, context.detect, context.projection, config)
    model = cached_model(model_uri(context.storage, config[KEY]), context.runtime.device)
    val = context.vals[config[KEY]].writable()
    scorer = MeteredScorer(make_scorer(model, detection, method, projection))
    setup = time.perf_counter() - began
    objective = context.objective.removeprefix("val/")
    best = {"value": -np.inf, "iteration": 0}
    clock = Clock()

    def on_iteration(iteration: int, metrics: dict[str, float]) -> None:
        metrics = with_best_map(metrics)
        if metrics[objective] > best["value"]:
            best.update(value=metrics[objective], iteration=iteration)
        row = {
            "iteration": iteration,
            **{f"val/{k}": v for k, v in metrics.items()},
            "val/objective": metrics[objective],  # the headline under the name the final run logs it
            "val/generator_passes": scorer.passes,
            "val/seconds_per_image": scorer.seconds / len(val.labels),
            "val/objective_best": best["value"],
            "val/objective_best_iteration": best["iteration"],
        }
        clock.report({**row, "time/setup_s": setup})

    evaluate(
        scorer,
        val.images,
        val.masks,
        val.labels,
        detection,
        on_iteration=on_iteration,
        include_pro=False,
        with_intervals=False,
    )


# ---------------------------------------------------------------- final evaluation


@dataclass
class FinalOutcome:
    """The chosen settings evaluated once on val (for PRO and a consistency check) and on test."""

    val: dict[str, Any]
    test: DetectionResult
    seconds: float = 0.0
    val_normal_scores: dict[str, list[float]] = field(default_factory=dict)  # map -> scores, for the decision


def final_evaluate(
    uri: str,
    method: str,
    detection: DetectionSettings,
    projection: ProjectionSettings,
    val: EvalSplit,
    test: EvalSplit,
    runtime: Runtime,
) -> FinalOutcome:
    """Evaluate the chosen settings on val and, once, on the held-out test split (PRO included)."""
    began = time.perf_counter()
    runtime.apply()
    model = cached_model(uri, runtime.device)
    val, test = val.writable(), test.writable()
    val_result = evaluate(
        make_scorer(model, detection, method, projection), val.images, val.masks, val.labels, detection
    )
    test_result = evaluate(
        make_scorer(model, detection, method, projection), test.images, test.masks, test.labels, detection
    )
    report = {k: v for k, v in val_result.report.items() if k != "per_iteration"}
    normal = np.asarray(val.labels) == 0
    normals = {"ssim": val_result.scores_ssim[normal].tolist(), "l2": val_result.scores_l2[normal].tolist()}
    # The pixel threshold the plots outline a predicted region with (studies.final.plot_context)
    if normal.any():
        maps = {"ssim": val_result.ssim_maps, "l2": val_result.l2_maps}
        report["normal_pixel_p99"] = {k: float(np.percentile(m[normal], 99.0)) for k, m in maps.items()}
    return FinalOutcome(val=report, test=test_result, seconds=time.perf_counter() - began, val_normal_scores=normals)
