"""Helpers shared by the tracking tests: temporary MLflow stores with final runs as the sweep logs them."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient

SETTINGS = {"threshold": 0.5, "patch_size": 4, "iterations": 3, "score": "max"}
_TEMPLATE: list[Path] = []


def _empty_db(folder: Path) -> None:
    """Copy an empty, migrated MLflow database (creating one costs seconds of schema migrations)."""
    if not _TEMPLATE:
        folder_ = tempfile.mkdtemp(prefix="i3ad-mlflow-template-")
        atexit.register(shutil.rmtree, folder_, ignore_errors=True)
        template = Path(folder_) / "mlflow.db"
        MlflowClient(f"sqlite:///{template}").search_experiments()
        _TEMPLATE.append(template)
    shutil.copy2(_TEMPLATE[0], folder / "mlflow.db")


def new_store(folder: Path, experiment: str = "study") -> tuple[str, str]:
    """A fresh SQLite store with one experiment whose artifacts live in `folder`: (uri, experiment_id)."""
    folder.mkdir(parents=True, exist_ok=True)
    _empty_db(folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment_id = MlflowClient(uri).create_experiment(experiment, artifact_location=(folder / "artifacts").as_uri())
    return uri, experiment_id


def log_final_run(
    experiment_id: str,
    category: str,
    method: str,
    metrics: dict[str, float],
    model_dir: Path | None = None,
    kind: str = "texture",
    settings: dict | None = None,
    scores: dict | None = None,
    tags: dict | None = None,
) -> str:
    """A FINISHED `phase=final` run as the sweep logs it (detector included when `model_dir` is given).

    `scores`: the per-image held-out scores (`final/test_scores.json`) paired comparisons read.
    """
    from tracking.detector import log_detector
    from tracking.evidence import SCORES_ARTIFACT

    tags = {"phase": "final", "category": category, "method": method, "category_kind": kind, **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{category}·{method}·final", tags=tags) as run:
        mlflow.log_metrics(metrics)
        if scores is not None:
            mlflow.log_dict(scores, SCORES_ARTIFACT)
        if model_dir is not None:
            mlflow.log_params(settings or SETTINGS)
            log_detector(model_dir, settings or SETTINGS)
    return run.info.run_id


def scored_run_metrics(labels: list[int], scores: list[float], split: str = "test") -> dict[str, float]:
    """`<split>/objective` and its interval for per-image scores, as the sweep's final step logs them."""
    from i3ad.intervals import image_auroc_interval
    from i3ad.metrics import image_auroc

    interval = image_auroc_interval(labels, scores)
    return {
        f"{split}/objective": image_auroc(labels, scores),
        f"{split}/objective_ci_low": interval.low,
        f"{split}/objective_ci_high": interval.high,
    }


def scores_artifact(labels: list[int], scores: list[float], images: str = "same") -> dict:
    """A `final/test_scores.json` payload: L2 map chosen, `images` names the held-out image set."""
    return {"images_sha256": images, "labels": labels, "map": "l2", "scores": {"l2": scores, "ssim": scores}}
