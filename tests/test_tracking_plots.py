"""`tracking.plots`: the final run's PNGs are made from a detection result and logged into the run."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient

from i3ad.data import TestSet
from i3ad.evaluate import DetectionResult
from tests.tracking_support import new_store
from tracking.plots import final_figures, log_final_artifacts, pick_examples


def _fake(n: int = 10, size: int = 24) -> tuple[DetectionResult, TestSet]:
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * (n // 2))
    masks = np.zeros((n, size, size), dtype=bool)
    masks[labels == 1, 8:14, 8:14] = True
    images = rng.uniform(-1, 1, size=(n, 3, size, size)).astype(np.float32)
    ssim = rng.uniform(0, 0.3, size=(n, size, size)).astype(np.float32) + masks
    l2 = ssim**2
    per_iteration = [
        {
            "iteration": i,
            "image_auroc_ssim": 0.6 + 0.05 * i,
            "image_auroc_l2": 0.5,
            "pixel_auroc_ssim": 0.7,
            "pixel_auroc_l2": 0.6,
        }
        for i in range(4)
    ]
    result = DetectionResult(
        report={"per_iteration": per_iteration},
        ssim_maps=ssim,
        l2_maps=l2,
        scores_ssim=ssim.max(axis=(1, 2)),
        scores_l2=l2.max(axis=(1, 2)),
    )
    test_set = TestSet(
        images, masks, labels, ["good" if y == 0 else "hole" for y in labels], [Path(f"{i}.png") for i in range(n)]
    )
    return result, test_set


def test_pick_examples_mixes_defective_and_normal() -> None:
    labels = np.array([0] * 20 + [1] * 20)
    chosen = pick_examples(labels, np.arange(40, dtype=float), 8)
    assert len(chosen) == 8 and chosen == sorted(chosen)
    assert sum(labels[chosen]) == 6


def test_final_artifacts_logged_as_png(tmp_path: Path) -> None:
    result, test_set = _fake()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "train_log.jsonl").write_text(
        "".join(json.dumps({"step": s, "time": s, "loss_g": 1 / s, "loss_d": 2.0}) + "\n" for s in range(1, 6))
    )
    assert set(final_figures(result, test_set, tmp_path / "no-log")) == {
        "anomaly_maps.png",
        "roc.png",
        "auroc_vs_iteration.png",
    }
    uri, experiment_id = new_store(tmp_path / "store")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        log_final_artifacts(result, test_set, model_dir)
    listed = {a.path: a.file_size for a in MlflowClient(uri).list_artifacts(run.info.run_id, "plots")}
    assert set(listed) == {
        f"plots/{n}" for n in ("anomaly_maps.png", "roc.png", "auroc_vs_iteration.png", "train_loss.png")
    }
    assert all(size > 5000 for size in listed.values())
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="plots/roc.png", dst_path=str(tmp_path / "dl")
    )
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
