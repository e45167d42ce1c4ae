"""After the search: the best setting per (category, method) on val, evaluated once on the held-out split.

The `phase=final` MLflow run records the choice, both splits' numbers, the packaged detector and plots.

Choice rule: the highest validation objective over every detection trial *and* every iteration it
reported. Detection is deterministic and iteration n does not depend on N, so the curve of a trial
run to N_max holds the exact result of every N <= N_max: the chosen N is the best iteration on the
chosen trial's curve. Ties go to fewer iterations (cheaper), then to the earlier trial.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import ray
from ray import tune

from i3ad.checkpoint import read_model_info, update_model_info
from i3ad.data import TestSet
from i3ad.decision import DecisionRule, choose_operating_point
from i3ad.errors import root_message
from i3ad.evaluate import AUROC_KEYS, PRO_KEYS, DetectionResult
from i3ad.scorers import METHODS, DetectionSettings, ProjectionSettings
from i3ad.scoring import detector_config, write_detector_json
from studies.config import DataConfig
from studies.methods import SETTING_KEYS, is_projection, settings_for
from studies.phases import result_config
from studies.report import headline_key, row_map
from studies.search import KEY, PHASE, REPEAT
from studies.storage import fetch, model_uri, safe_name
from studies.trainables import EvalSplit, FinalOutcome, Runtime, SweepContext, final_evaluate
from tracking.evidence import SCORES_ARTIFACT
from tracking.layout import GROUP_TAG, group_key, model_run, run_name, seed_label
from tracking.store import SWEEP_RUN_TAG, Store, retrying

# Packaging and plots live in their own modules; imported with the driver (not at the end of a sweep).
try:
    from tracking.detector import log_detector
except ImportError:  # without it the model folder is logged as plain artifacts
    log_detector = None
try:
    from tracking.plots import PlotContext, log_final_artifacts
except ImportError:
    log_final_artifacts = None
try:
    from tracking.calibration_plots import log_calibration_artifacts
except ImportError:
    log_calibration_artifacts = None

log = logging.getLogger(__name__)
METRIC_KEYS = AUROC_KEYS + PRO_KEYS


@dataclass
class Choice:
    """The best validation setting of one (category, method)."""

    category: str
    method: str
    kind: str
    model: str
    trial_id: str
    settings: dict[str, Any]
    val_objective: float
    trials: int = 0
    stopped_early: int = 0
    seed: int | None = None  # the repeat's seed, with `repeats` > 1 (each seed is chosen and reported on its own)

    @property
    def group(self) -> str:
        return group_name(self.category, self.method, self.seed)


def group_name(category: str, method: str, seed: int | None = None) -> str:
    """The summary group of a final: `carpet/i3ad`, or `carpet/i3ad/seed1` for one repeat (`repeats` > 1)."""
    return f"{category}/{method}" + ("" if seed is None else f"/seed{seed}")


def choose(results: tune.ResultGrid) -> tuple[dict[str, Choice], list[dict[str, Any]]]:
    """Best setting per (category, method) from the detection trials, and every failed trial."""
    candidates: dict[str, list[tuple[tuple, Choice, bool]]] = {}
    failures = []
    for order, result in enumerate(results):
        config = result_config(result)
        metrics = result.metrics or {}
        if result.error is not None:
            failures.append(
                failure(config.get(PHASE, "?"), config, metrics.get("trial_id"), root_message(result.error))
            )
            continue
        if config.get(PHASE) != "detect":
            continue
        if "val/objective_best" not in metrics:
            failures.append(failure("detect", config, metrics.get("trial_id"), "reported no validation result"))
            continue
        iteration = int(metrics["val/objective_best_iteration"])
        # The trial's settings, with N read off its curve: iteration n does not depend on how many follow.
        settings = {**{k: v for k, v in config.items() if k in SETTING_KEYS}, "iterations": iteration}
        choice = Choice(
            config["category"],
            config["method"],
            config.get("category_kind", "unknown"),
            config[KEY],
            metrics["trial_id"],
            settings,
            float(metrics["val/objective_best"]),
            seed=config.get(REPEAT),
        )
        stopped = "iterations" in config and metrics.get("iteration", 0) < config["iterations"]
        candidates.setdefault(choice.group, []).append(((-choice.val_objective, iteration, order), choice, stopped))
    choices = {}
    for group, entries in candidates.items():
        entries.sort(key=lambda entry: entry[0])
        best = entries[0][1]
        best.trials = len(entries)
        best.stopped_early = sum(1 for entry in entries if entry[2])
        choices[group] = best
    return choices, failures


def chosen_settings(choice: Choice, context: SweepContext) -> tuple[DetectionSettings, ProjectionSettings]:
    """The base settings with the chosen values applied."""
    return settings_for(choice.method, context.detect, context.projection, choice.settings)


def failure(phase: str, config: dict[str, Any], trial_id: str | None, message: str) -> dict[str, Any]:
    """A summary entry for something that failed: which phase, category, method, model and trial, and why."""
    return {
        "phase": phase,
        "category": config.get("category"),
        "method": config.get("method"),
        "model": config.get(KEY),
        "trial_id": trial_id,
        "error": message,
    }


def evaluate_finals(
    choices: dict[str, Choice],
    context: SweepContext,
    tests: dict[str, EvalSplit],
    resources: dict[str, float],
    remote: bool,
) -> Iterator[tuple[str, FinalOutcome | None, dict | None]]:
    """Evaluate every chosen setting on its held-out split (`tests` by model key).

    Yields `(group, outcome, None)` or `(group, None, failure)` as each one is done.

    On a cluster: Ray tasks with the trials' resources, all in parallel. On a local Ray instance: in the
    driver, which is already warm (new worker processes would each import torch first).
    """

    def args(c: Choice) -> tuple:
        detection, projection = chosen_settings(c, context)
        uri = model_uri(context.storage, c.model)
        return uri, c.method, detection, projection, context.vals[c.model], tests[c.model]

    if remote:
        task = ray.remote(final_evaluate).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"], max_retries=1)
        refs = {group: task.remote(*args(c), context.runtime) for group, c in choices.items()}

        def outcome(group: str) -> FinalOutcome:
            return ray.get(refs[group])
    else:
        driver = Runtime(cpus=int(ray.cluster_resources().get("CPU", 1)), device=context.runtime.device)

        def outcome(group: str) -> FinalOutcome:
            return final_evaluate(*args(choices[group]), driver)

    for group, c in choices.items():
        try:
            yield group, outcome(group), None
        except Exception as exc:  # noqa: BLE001 - one category's failure must not end the sweep
            yield (
                group,
                None,
                failure(
                    "final", {"category": c.category, "method": c.method, KEY: c.model}, c.trial_id, root_message(exc)
                ),
            )


@dataclass
class FinalRow:
    """One line of the summary: chosen settings, val and held-out test numbers, the MLflow run."""

    category: str
    kind: str
    method: str
    model: str
    trial_id: str
    settings: dict[str, Any]
    trials: int
    stopped_early: int
    val: dict[str, float]
    test: dict[str, float]
    val_images: int
    test_images: int
    test_seconds_per_image: float
    run_id: str
    model_uri: str | None = None
    seed: int | None = None
    map: str | None = None
    inpainter: dict[str, Any] | None = None  # I3AD: model.json's hole error next to the two fills (#15)
    reconstruction: dict[str, Any] | None = None  # one-pass baselines: reconstruction error vs no-learning fills


def split_metrics(report: dict[str, Any]) -> dict[str, float]:
    """A split's metrics and their interval bounds (`image_auroc_l2`, `image_auroc_l2_ci_low`, ...)."""
    values = {k: float(report[k]) for k in METRIC_KEYS if k in report}
    for key, (low, high) in (report.get("intervals") or {}).items():
        values |= {f"{key}_ci_low": float(low), f"{key}_ci_high": float(high)}
    return values


def test_scores(result: DetectionResult, test_set: TestSet, anomaly_map: str) -> dict[str, Any]:
    """The per-image scores of a final run (`final/test_scores.json`), for paired comparisons of two runs.

    `images_sha256` identifies the held-out images: two runs are compared image by image only when it matches.
    """
    digest = hashlib.sha256(np.ascontiguousarray(test_set.images).tobytes())
    digest.update(np.asarray(test_set.labels, dtype=np.int64).tobytes())
    return {
        "images_sha256": digest.hexdigest(),
        "images": [f"{path.parent.name}/{path.name}" for path in test_set.paths],
        "labels": [int(label) for label in test_set.labels],
        "map": anomaly_map,
        "scores": {"ssim": result.scores_ssim.tolist(), "l2": result.scores_l2.tolist()},
    }


def plot_context(
    choice: Choice, anomaly_map: str, outcome: FinalOutcome, operating: dict[str, Any] | None = None
) -> PlotContext:
    """Titles and the predicted region's threshold for the final run's plots.

    The threshold is the packaged detector's operating threshold (`operating`, its image score is the map's
    maximum, so the region above it is what made an image anomalous); without one, the 99th percentile of the
    validation normal images' pixel scores of the chosen map (`normal_pixel_p99`, from final_evaluate).
    """
    if operating:
        return PlotContext(
            choice.category,
            choice.method,
            anomaly_map,
            "held-out test",
            float(operating["threshold"]),
            f"operating threshold, {float(operating['target_fpr']):.0%} FPR on val normals",
        )
    p99 = (outcome.val.get("normal_pixel_p99") or {}).get(anomaly_map)
    rule = "99th percentile of the val normal images' pixel scores"
    return PlotContext(choice.category, choice.method, anomaly_map, "held-out test", p99, rule if p99 else "")


def log_final(
    store: Store,
    experiment_id: str,
    parent_run_id: str,
    choice: Choice,
    outcome: FinalOutcome,
    context: SweepContext,
    test_set: TestSet,
    models_dir: Path,
    split: DataConfig,
    decision: DecisionRule | None = None,
) -> FinalRow:
    """Write the `phase=final` run (under its (category, method) model run): params, metrics, the model, plots.

    The model folder is copied next to the sweep with the chosen settings in its model.json, so
    `i3ad detect --model <folder>` uses them too. Its detector.json (and the packaged detector) carries the
    operating point `decision` chooses on the val normals' scores of the chosen map; the held-out split then
    measures the rates it gives (`test/decision_fpr`, `test/decision_tpr`).
    """
    detection, projection = chosen_settings(choice, context)
    # Each setting under one name: the searched ones as the trials log them (`threshold`), the rest prefixed.
    to_projection = {k for k in choice.settings if k in METHODS[choice.method].projection_keys}
    params = {f"detect/{k}": v for k, v in asdict(detection).items() if k not in set(choice.settings) - to_projection}
    model_dir = fetch(model_uri(context.storage, choice.model), models_dir / safe_name(choice.group))
    update_model_info(model_dir, detection=asdict(detection))
    test_report = outcome.test.report
    val = split_metrics(outcome.val)
    anomaly_map = row_map({"val": val}, context.objective)
    headline = headline_key(context.objective, anomaly_map)
    test = split_metrics(test_report)
    for values in (val, test):  # the headline under one name on every run, with its interval
        values |= {f"objective{end}": values[f"{headline}{end}"] for end in ("", "_ci_low", "_ci_high")}
    # The folder scores like the chosen setting under `i3ad detect --model` (method, projection, map).
    detector = {"detection": asdict(detection), "method": choice.method, "anomaly_map": anomaly_map}
    decision_metrics = {}
    if outcome.val_normal_scores.get(anomaly_map):
        point = choose_operating_point(outcome.val_normal_scores[anomaly_map], decision or DecisionRule(), anomaly_map)
        detector["operating_point"] = point.to_json()
        labels = np.asarray(test_set.labels)
        flagged = outcome.test.scores_ssim if anomaly_map == "ssim" else outcome.test.scores_l2
        flagged = np.asarray(flagged) > point.threshold
        decision_metrics = {"val/decision_threshold": point.threshold, "val/decision_fpr": point.val_fpr}
        for name, selected in (("test/decision_fpr", labels == 0), ("test/decision_tpr", labels != 0)):
            if selected.any():
                decision_metrics[name] = float(flagged[selected].mean())
    if is_projection(choice.method):
        detector["projection"] = asdict(projection)
        params |= {f"projection/{k}": v for k, v in asdict(projection).items() if k not in to_projection}
    write_detector_json(
        model_dir, detector_config(read_model_info(model_dir), detector), {"chosen_trial_id": choice.trial_id}
    )
    seconds = float(test_report["seconds"]) / max(1, int(test_report["images"]))
    tags = {
        "phase": "final",
        "category": choice.category,
        "method": choice.method,
        "category_kind": choice.kind,
        "model": choice.model,
        "chosen_trial_id": choice.trial_id,
        "map": anomaly_map,
        "headline": headline,
        GROUP_TAG: group_key(choice.category, choice.method),
        SWEEP_RUN_TAG: parent_run_id,
        **({} if choice.seed is None else {"seed": str(choice.seed)}),
    }
    model_run_id = model_run(store, experiment_id, parent_run_id, choice.category, choice.method, choice.kind)
    name = run_name(choice.category, choice.method, seed_label(choice.seed), "final")
    run_id = store.start_run(experiment_id, name, tags, model_run_id)
    detector_uri = None
    with mlflow.start_run(run_id=run_id):
        retrying(
            mlflow.log_params,
            {
                **params,
                **{k: v for k, v in choice.settings.items()},  # the names the trials log their settings under
                "map": anomaly_map,
                "model": choice.model,
                "chosen_trial_id": choice.trial_id,
                "split/val_fraction": split.val_fraction,
                "split/seed": split.split_seed,
                "selection": "best val objective over trials and iterations",
                **({} if choice.seed is None else {"repeat_seed": choice.seed}),
            },
        )
        metrics = {f"val/{k}": v for k, v in val.items()} | {f"test/{k}": v for k, v in test.items()}
        metrics |= {
            "test/seconds_per_image": seconds,
            "test/interval_seconds": float(test_report.get("interval_seconds", 0.0)),
            "val/images": float(outcome.val["images"]),
            "test/images": float(test_report["images"]),
            **decision_metrics,
        }
        retrying(mlflow.log_metrics, metrics)
        retrying(mlflow.log_dict, {k: v for k, v in test_report.items()}, "final/test_report.json")
        retrying(mlflow.log_dict, outcome.val, "final/val_report.json")
        retrying(mlflow.log_dict, test_scores(outcome.test, test_set, anomaly_map), SCORES_ARTIFACT)
        if log_detector is not None:
            # The method and its own keys make the packaged detector score as e.g. the projection.
            detector_uri = log_detector(model_dir, detector, name="detector")
        else:
            retrying(mlflow.log_artifacts, str(model_dir), "model_folder")
        if log_final_artifacts is not None:
            # A max-reduced image score: the pixels above the image threshold are the region that decided.
            operating = detector.get("operating_point") if detection.score == "max" else None
            try:
                log_final_artifacts(
                    outcome.test, test_set, model_dir, plot_context(choice, anomaly_map, outcome, operating)
                )
            except Exception as exc:  # noqa: BLE001 - plots are a bonus; never lose the numbers for them
                log.warning("plots for %s failed: %s", choice.group, exc)
        if log_calibration_artifacts is not None:
            try:
                log_calibration_artifacts(model_dir)
            except Exception as exc:  # noqa: BLE001 - as above
                log.warning("calibration plot for %s failed: %s", choice.group, exc)
    info = read_model_info(model_dir)
    return FinalRow(
        choice.category,
        choice.kind,
        choice.method,
        choice.model,
        choice.trial_id,
        choice.settings,
        choice.trials,
        choice.stopped_early,
        val,
        test,
        int(outcome.val["images"]),
        int(test_report["images"]),
        seconds,
        run_id,
        detector_uri,
        choice.seed,
        anomaly_map,
        info.get("inpainter"),
        info.get("reconstruction"),
    )
