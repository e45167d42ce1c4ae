"""`tracking.plots`: the final run's PNGs are made from a detection result and logged into the run."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from i3ad.data import TestSet
from i3ad.evaluate import DetectionResult
from tests.tracking_support import new_store
from tracking.plots import PlotContext, final_figures, log_final_artifacts, pick_examples


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
        report={"per_iteration": per_iteration, "settings": {"score": "max"}, "pro_ssim": 0.8, "pro_l2": 0.7},
        ssim_maps=ssim,
        l2_maps=l2,
        scores_ssim=ssim.max(axis=(1, 2)),
        scores_l2=l2.max(axis=(1, 2)),
    )
    test_set = TestSet(
        images,
        masks,
        labels,
        ["good" if y == 0 else ("hole" if i % 4 == 1 else "scratch") for i, y in enumerate(labels)],
        [Path(f"{i}.png") for i in range(n)],
    )
    return result, test_set


def test_pick_examples_by_the_chosen_maps_score() -> None:
    labels = np.array([0] * 20 + [1] * 20)
    scores = np.r_[np.linspace(0, 1, 20), np.linspace(2, 3, 20)][np.r_[np.arange(20)[::-1], np.arange(20, 40)]]
    chosen = pick_examples(labels, scores, 8)
    by_role = {}
    for index, role in chosen:
        by_role.setdefault(role, []).append(index)
    normals, defects = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    assert by_role["normal, lowest"] == list(normals[np.argsort(scores[normals])][:2])
    assert by_role["normal, highest"] == list(normals[np.argsort(scores[normals])][::-1][:2])
    assert by_role["defect, highest"] == list(defects[np.argsort(scores[defects])][::-1][:2])
    assert by_role["defect, lowest"] == list(defects[np.argsort(scores[defects])][:2])
    assert len({i for i, _ in pick_examples(labels[:3], scores[:3], 8)}) == 3  # few images: each once


def test_figures_state_what_they_show(tmp_path: Path) -> None:
    result, test_set = _fake()
    context = PlotContext("carpet", "i3ad", "l2", "held-out test", threshold=0.05, threshold_rule="val p99")
    figures = final_figures(result, test_set, tmp_path / "no-log", context)
    for name, fig in figures.items():
        title = fig._suptitle.get_text() if fig._suptitle else " ".join(ax.get_title() for ax in fig.axes)
        assert all(part in title for part in ("carpet", "i3ad", "squared L2", "held-out test")), (name, title)
        for ax in fig.axes:  # every plot with axes has them labelled (image panels have no ticks)
            if (
                ax.get_xticks().size
                and ax.get_images() == []
                and ax.get_ylabel() == ""
                and not ax.get_label().startswith("colorbar")
            ):
                raise AssertionError(f"{name}: an axis without a label")
    overlay = figures["anomaly_maps.png"]
    chosen = [i for i, _ in pick_examples(test_set.labels, result.scores_l2, 8)]
    bars = {ax.get_label(): ax for ax in overlay.axes if ax.get_label().startswith("colorbar")}
    # The chosen (L2) row's colour scale tops at the largest printed score: the score is the map's maximum.
    assert bars["colorbar l2"].get_ylim()[1] == pytest.approx(float(result.scores_l2[chosen].max()))
    titles = [ax.get_title() for ax in overlay.axes]
    assert any(t.startswith(f"max {result.scores_l2[chosen[0]]:.3g}, ") and t.endswith("% flagged") for t in titles)
    assert "dashed cyan = predicted region" in overlay._suptitle.get_text()
    roc = figures["roc.png"]
    assert [ax.get_title().split(" (")[0] for ax in roc.axes] == ["Image ROC", "Pixel ROC", "PRO curve"]
    kinds = figures["auroc_by_defect.png"]
    assert [t.get_text() for t in kinds.axes[0].get_xticklabels()] == ["hole", "scratch"]
    for fig in figures.values():
        plt.close(fig)


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
        "auroc_by_defect.png",
    }
    uri, experiment_id = new_store(tmp_path / "store")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        log_final_artifacts(result, test_set, model_dir)
    listed = {a.path: a.file_size for a in MlflowClient(uri).list_artifacts(run.info.run_id, "plots")}
    assert set(listed) == {
        f"plots/{n}"
        for n in ("anomaly_maps.png", "roc.png", "auroc_vs_iteration.png", "train_loss.png", "auroc_by_defect.png")
    }
    assert all(size > 5000 for size in listed.values())
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="plots/roc.png", dst_path=str(tmp_path / "dl")
    )
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
