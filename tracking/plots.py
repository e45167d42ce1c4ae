"""Figures people look at rather than read, logged per final run.

Anomaly-map overlays, ROC curves, AUROC against detection iteration (the paper's Figure 4) and the
training loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: sweeps run on servers and in Ray workers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from i3ad.data import TestSet  # noqa: E402
from i3ad.evaluate import DetectionResult  # noqa: E402
from i3ad.intervals import describe, image_auroc_interval  # noqa: E402
from i3ad.scoring import overlay_rgb  # noqa: E402
from i3ad.train import read_train_log  # noqa: E402

PLOT_DIR = "plots"
OVERLAYS_PNG = "anomaly_maps.png"
ROC_PNG = "roc.png"
ITERATION_PNG = "auroc_vs_iteration.png"
LOSS_PNG = "train_loss.png"
GT_COLOR = "#39ff14"  # bright green: visible on both the gray image and the inferno heat map


def pick_examples(labels: np.ndarray, scores: np.ndarray, max_images: int = 8) -> list[int]:
    """Indices of the images to show, in dataset order.

    The most and least anomalous-looking defective images, and normal ones: roughly three quarters
    defective, the rest normal.
    """
    labels = np.asarray(labels)
    defective = [int(i) for i in np.flatnonzero(labels == 1)]
    normal = [int(i) for i in np.flatnonzero(labels == 0)]
    n_normal = min(len(normal), max(1, max_images // 4)) if normal else 0
    n_defective = min(len(defective), max_images - n_normal)
    n_normal = min(len(normal), max_images - n_defective)

    def spread(index: list[int], k: int) -> list[int]:
        ranked = sorted(index, key=lambda i: -float(scores[i]))
        return [ranked[int(j)] for j in np.linspace(0, len(ranked) - 1, k).round()] if k else []

    return sorted(set(spread(defective, n_defective)) | set(spread(normal, n_normal)))


def overlay_figure(result: DetectionResult, test_set: TestSet, max_images: int = 8) -> Figure:
    """A grid: one column per test image; rows = image, 1-SSIM overlay, L2 overlay; defects outlined."""
    chosen = pick_examples(test_set.labels, result.scores_ssim, max_images)
    rows = [
        ("image", None, None),
        ("1 - SSIM", result.ssim_maps, result.scores_ssim),
        ("squared L2", result.l2_maps, result.scores_l2),
    ]
    # One colour scale per map kind across the grid, so normal and defective images compare directly.
    vmax = {name: float(np.percentile(maps, 99.5)) or 1.0 for name, maps, _ in rows if maps is not None}
    fig, axes = plt.subplots(
        len(rows), len(chosen), figsize=(1.9 * len(chosen) + 0.6, 2.0 * len(rows) + 0.4), squeeze=False
    )
    for col, index in enumerate(chosen):
        image = test_set.images[index]
        gt = test_set.masks[index]
        for row, (name, maps, scores) in enumerate(rows):
            ax = axes[row, col]
            if maps is None:
                gray = np.clip((image + 1) / 2, 0, 1).transpose(1, 2, 0)
                ax.imshow(gray[..., 0] if gray.shape[2] == 1 else gray, cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"{test_set.defects[index]}", fontsize=9)
            else:
                ax.imshow(overlay_rgb(image, maps[index], vmax[name]))
                ax.set_title(f"score {scores[index]:.3g}", fontsize=8)
            if gt.any():
                ax.contour(gt.astype(float), levels=[0.5], colors=GT_COLOR, linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle("Anomaly maps (green outline = ground-truth defect; colour scale shared per row)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.95, 1))
    for row, (name, maps, _) in enumerate(rows):
        if maps is not None:  # colour bar in the reserved right margin, so the columns stay aligned
            box = axes[row, -1].get_position()
            cax = fig.add_axes((0.96, box.y0, 0.008, box.height))
            fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(0, vmax[name]), cmap="inferno"), cax=cax)
    return fig


def roc_figure(labels: np.ndarray, scores_ssim: np.ndarray, scores_l2: np.ndarray) -> Figure:
    """Image-level ROC curves of the SSIM and L2 scores, AUROC and its 95% bootstrap interval in the legend."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for name, scores, color in (("SSIM", scores_ssim, "tab:blue"), ("L2", scores_l2, "tab:orange")):
        fpr, tpr, _ = roc_curve(labels, scores)
        auroc = describe(roc_auc_score(labels, scores), image_auroc_interval(labels, scores))
        ax.plot(fpr, tpr, color=color, lw=2, label=f"{name} score (AUROC {auroc})")
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="chance")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"Image-level ROC (held-out split, {len(labels)} images)",
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def iteration_figure(per_iteration: Sequence[dict[str, Any]]) -> Figure:
    """Image and pixel AUROC (SSIM and L2 maps) after each detection iteration.

    Iteration 0 is the checkerboard initialisation.
    """
    iterations = [p["iteration"] for p in per_iteration]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, level in ((left, "image"), (right, "pixel")):
        for kind, color in (("ssim", "tab:blue"), ("l2", "tab:orange")):
            key = f"{level}_auroc_{kind}"
            values = [p.get(key, np.nan) for p in per_iteration]
            ax.plot(
                iterations,
                values,
                marker="o" if len(values) < 40 else None,
                ms=3,
                color=color,
                label=f"{kind.upper()} map",
            )
        ax.set(xlabel="detection iteration", title=f"{level} AUROC", xlim=(-0.5, max(iterations[-1], 1) + 0.5))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    left.set_ylabel("AUROC")
    note = "; iteration 0 = checkerboard initialisation" if len(iterations) > 1 else " (one pass: no iterations)"
    fig.suptitle(f"AUROC against detection iteration (held-out split{note})", fontsize=10)
    fig.tight_layout()
    return fig


def loss_figure(records: Sequence[dict[str, float]]) -> Figure | None:
    """Training losses against step, one panel per loss; None when the model folder has no log."""
    if not records:
        return None
    keys = [k for k in records[0] if k not in ("step", "time")]
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot(steps, [r.get(key, np.nan) for r in records], marker="o" if len(steps) < 40 else None, ms=3)
        ax.set(xlabel="training step", title=key)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    fig.suptitle("Training loss", fontsize=10)
    fig.tight_layout()
    return fig


def final_figures(result: DetectionResult, test_set: TestSet, model_dir: Path) -> dict[str, Figure]:
    """All figures of a final run, keyed by PNG file name."""
    figures = {
        OVERLAYS_PNG: overlay_figure(result, test_set),
        ROC_PNG: roc_figure(test_set.labels, result.scores_ssim, result.scores_l2),
        ITERATION_PNG: iteration_figure(result.report["per_iteration"]),
    }
    loss = loss_figure(read_train_log(Path(model_dir)))
    if loss is not None:
        figures[LOSS_PNG] = loss
    return figures


def log_final_artifacts(result: DetectionResult, test_set: TestSet, model_dir: Path) -> None:
    """Log the final run's PNGs into the active MLflow run under `plots/`."""
    import mlflow

    for name, fig in final_figures(result, test_set, model_dir).items():
        try:
            mlflow.log_figure(fig, f"{PLOT_DIR}/{name}")
        finally:
            plt.close(fig)
