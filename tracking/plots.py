"""Figures people look at rather than read, logged per final run.

Anomaly-map overlays of example images with the predicted region, image/pixel ROC and PRO curves,
AUROC per defect kind, AUROC against detection iteration (the paper's Figure 4) and the training loss.
Every title names the category, method, chosen map and split (`PlotContext`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
from i3ad.metrics import pro_curve  # noqa: E402
from i3ad.scoring import overlay_rgb  # noqa: E402
from i3ad.train import read_train_log  # noqa: E402

PLOT_DIR = "plots"
OVERLAYS_PNG = "anomaly_maps.png"
ROC_PNG = "roc.png"
ITERATION_PNG = "auroc_vs_iteration.png"
LOSS_PNG = "train_loss.png"
KINDS_PNG = "auroc_by_defect.png"
GT_COLOR = "#39ff14"  # bright green: visible on both the gray image and the inferno heat map
PRED_COLOR = "#00e5ff"  # cyan, dashed: the predicted region at the operating threshold
MAP_TITLES = {"ssim": "1 - SSIM", "l2": "squared L2"}
MAX_ROC_PIXELS = 2_000_000  # pixel ROC from an evenly strided sample beyond this (the curve, not the metric)
ROLES = ("normal, lowest", "normal, highest", "defect, highest", "defect, lowest")


@dataclass
class PlotContext:
    """What every title names: category, method, the chosen map, the split; and the operating threshold.

    `threshold` is the pixel threshold of the predicted region on the chosen map; `threshold_rule` says
    where it came from: the packaged detector's operating threshold or, until detectors carry one, the
    fallback the sweep passes: the 99th percentile of the validation normal images' pixel scores of the
    chosen map (`normal_pixel_p99` in the final run's `val_report.json`; no held-out image is used).
    """

    category: str = "?"
    method: str = "?"
    anomaly_map: str = "ssim"
    split: str = "held-out test"
    threshold: float | None = None
    threshold_rule: str = ""

    @property
    def title(self) -> str:
        return (
            f"{self.category} · {self.method} · {MAP_TITLES.get(self.anomaly_map, self.anomaly_map)} map · {self.split}"
        )


def pick_examples(labels: np.ndarray, scores: np.ndarray, max_images: int = 8) -> list[tuple[int, str]]:
    """The images to show, by the chosen map's image score: `(index, role)` in the order of `ROLES`.

    The lowest- and highest-scored normal images (a clean pass, the worst false alarm) and the highest-
    and lowest-scored defective ones (a clear find, the hardest miss); `max_images // 4` of each, fewer
    when a class has fewer images, no image twice.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    per_role = max(1, max_images // 4)
    chosen: list[tuple[int, str]] = []
    seen: set[int] = set()
    for role in ROLES:
        label = 0 if role.startswith("normal") else 1
        index = np.flatnonzero(labels == label)
        ranked = index[np.argsort(scores[index], kind="stable")]
        if role.endswith("highest"):
            ranked = ranked[::-1]
        picked = [int(i) for i in ranked if int(i) not in seen][:per_role]
        seen.update(picked)
        chosen += [(i, role) for i in picked]
    return chosen


def _gray(image: np.ndarray) -> np.ndarray:
    unit = np.clip((image + 1) / 2, 0, 1).transpose(1, 2, 0)
    return unit[..., 0] if unit.shape[2] == 1 else unit


def overlay_figure(
    result: DetectionResult, test_set: TestSet, context: PlotContext | None = None, max_images: int = 8
) -> Figure:
    """A grid of example images (chosen by the chosen map's score) over three rows.

    Rows: the image; the chosen map's overlay with the image score printed above it; the other map's
    overlay. The colour scale of a row runs from 0 to the largest image score shown in it, so with the
    `max` score the brightest pixel of an image is its printed score. Green outline: ground-truth defect;
    dashed cyan: the predicted region (chosen map >= the operating threshold).
    """
    context = context or PlotContext()
    reduction = str(result.report.get("settings", {}).get("score", "max"))
    maps = {"ssim": (result.ssim_maps, result.scores_ssim), "l2": (result.l2_maps, result.scores_l2)}
    chosen_map = context.anomaly_map if context.anomaly_map in maps else "ssim"
    other_map = "l2" if chosen_map == "ssim" else "ssim"
    examples = pick_examples(test_set.labels, maps[chosen_map][1], max_images)
    shown = [i for i, _ in examples]
    rows = [("image", None), (chosen_map, "chosen"), (other_map, "not chosen")]
    vmax = {}
    for name in maps:
        values = maps[name][0][shown] if reduction != "max" else maps[name][1][shown]
        vmax[name] = float(np.max(values)) or 1.0
    fig, axes = plt.subplots(
        len(rows), len(examples), figsize=(1.9 * len(examples) + 0.9, 2.0 * len(rows) + 0.9), squeeze=False
    )
    for col, (index, role) in enumerate(examples):
        image, gt = test_set.images[index], test_set.masks[index]
        for row, (name, note) in enumerate(rows):
            ax = axes[row, col]
            if name == "image":
                ax.imshow(_gray(image), cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"{test_set.defects[index]}\n({role})", fontsize=8)
            else:
                amap, scores = maps[name]
                ax.imshow(overlay_rgb(image, amap[index], vmax[name]))
                title = f"{reduction} {scores[index]:.3g}"
                if name == chosen_map and context.threshold is not None:
                    predicted = amap[index] >= context.threshold
                    title += f", {100 * predicted.mean():.0f}% flagged"  # also when all or none is (no outline)
                    if predicted.any() and not predicted.all():
                        ax.contour(
                            predicted.astype(float),
                            levels=[0.5],
                            colors=PRED_COLOR,
                            linewidths=1.0,
                            linestyles="dashed",
                        )
                ax.set_title(title, fontsize=8)
            if gt.any():
                ax.contour(gt.astype(float), levels=[0.5], colors=GT_COLOR, linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                label = "image" if name == "image" else f"{MAP_TITLES[name]}\n({note})"
                ax.set_ylabel(label, fontsize=9)
    threshold = (
        f"dashed cyan = predicted region, {MAP_TITLES[chosen_map]} >= {context.threshold:.3g} "
        f"({context.threshold_rule})"
        if context.threshold is not None
        else "no operating threshold: no predicted region"
    )
    fig.suptitle(
        f"Anomaly maps: {context.title}\ngreen = ground-truth defect; {threshold}; "
        f"colour scale per row from 0 to the largest {reduction} score shown",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 0.94, 1))
    for row, (name, _) in enumerate(rows):
        if name != "image":  # colour bar in the reserved right margin, so the columns stay aligned
            box = axes[row, -1].get_position()
            cax = fig.add_axes((0.95, box.y0, 0.008, box.height), label=f"colorbar {name}")
            bar = fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(0, vmax[name]), cmap="inferno"), cax=cax)
            bar.set_label(MAP_TITLES[name], fontsize=7)
            bar.ax.tick_params(labelsize=7)
    return fig


def _pixel_sample(gt: np.ndarray, amap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat_gt, flat_map = np.asarray(gt).ravel(), np.asarray(amap).ravel()
    stride = max(1, -(-flat_gt.size // MAX_ROC_PIXELS))
    return flat_gt[::stride], flat_map[::stride]


def roc_figure(result: DetectionResult, test_set: TestSet, context: PlotContext | None = None) -> Figure:
    """Image ROC, pixel ROC and the PRO curve of both maps side by side; the chosen map drawn bold.

    The image AUROC in the legend carries its 95% bootstrap interval; the PRO panel shades FPR <= 0.3,
    the range the PRO score integrates.
    """
    context = context or PlotContext()
    labels = np.asarray(test_set.labels)
    gt = np.asarray(test_set.masks, dtype=bool)
    maps = {"ssim": (result.ssim_maps, result.scores_ssim), "l2": (result.l2_maps, result.scores_l2)}
    colors = {"ssim": "tab:blue", "l2": "tab:orange"}
    has_regions = bool(gt.any()) and not bool(gt.all())
    fig, axes = plt.subplots(1, 3 if has_regions else 1, figsize=(13.5 if has_regions else 4.8, 4.4), squeeze=False)
    image_ax = axes[0, 0]
    for name, (amap, scores) in maps.items():
        width = 2.5 if name == context.anomaly_map else 1.2
        fpr, tpr, _ = roc_curve(labels, scores)
        auroc = describe(roc_auc_score(labels, scores), image_auroc_interval(labels, scores))
        image_ax.plot(fpr, tpr, color=colors[name], lw=width, label=f"{MAP_TITLES[name]} (AUROC {auroc})")
        if has_regions:
            sample_gt, sample_map = _pixel_sample(gt, amap)
            fpr, tpr, _ = roc_curve(sample_gt, sample_map)
            axes[0, 1].plot(
                fpr,
                tpr,
                color=colors[name],
                lw=width,
                label=f"{MAP_TITLES[name]} (AUROC {roc_auc_score(sample_gt, sample_map):.3f})",
            )
            fpr, pro = pro_curve(gt, amap)
            axes[0, 2].plot(
                fpr,
                pro,
                color=colors[name],
                lw=width,
                label=f"{MAP_TITLES[name]}" + _pro_note(result.report.get(f"pro_{name}")),
            )
    panels = [(image_ax, f"Image ROC ({len(labels)} images)", "true positive rate (defective images)")]
    if has_regions:
        panels += [
            (axes[0, 1], f"Pixel ROC ({gt.size:,} pixels)", "true positive rate (defect pixels)"),
            (axes[0, 2], "PRO curve", "per-region overlap (PRO)"),
        ]
        axes[0, 2].axvspan(0, 0.3, color="gray", alpha=0.12, label="FPR <= 0.3 (PRO score)")
    for ax, title, ylabel in panels:
        ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="chance")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel=ylabel, title=title)
        ax.legend(loc="lower right", fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{context.title} (bold: the chosen map)", fontsize=10)
    fig.tight_layout()
    return fig


def _pro_note(value: float | None) -> str:
    return "" if value is None else f" (PRO score {value:.3f})"


def kinds_figure(result: DetectionResult, test_set: TestSet, context: PlotContext | None = None) -> Figure | None:
    """Image AUROC of the chosen map per defect kind (that kind's images against all normal images).

    None when the split has no normal images or no defective ones.
    """
    context = context or PlotContext()
    labels = np.asarray(test_set.labels)
    scores = result.scores_l2 if context.anomaly_map == "l2" else result.scores_ssim
    normal = labels == 0
    kinds = sorted({d for d, y in zip(test_set.defects, labels, strict=True) if y == 1})
    if not normal.any() or not kinds:
        return None
    values, counts = [], []
    for kind in kinds:
        mine = np.array([d == kind for d in test_set.defects]) & (labels == 1)
        pick = normal | mine
        values.append(roc_auc_score(labels[pick], scores[pick]))
        counts.append(int(mine.sum()))
    fig, ax = plt.subplots(figsize=(1.1 * len(kinds) + 2.4, 3.6))
    bars = ax.bar(range(len(kinds)), values, color="tab:purple")
    for bar, value, count in zip(bars, values, counts, strict=True):
        ax.annotate(
            f"{value:.2f}\nn={count}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=7
        )
    ax.axhline(0.5, color="gray", ls="--", lw=1, label="chance")
    ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.15), xlabel="defect kind", ylabel="image AUROC (vs all normal images)")
    ax.set_title(f"AUROC by defect kind: {context.title}\n({int(normal.sum())} normal images)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def iteration_figure(per_iteration: Sequence[dict[str, Any]], context: PlotContext | None = None) -> Figure:
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
        ax.set(
            xlabel="detection iteration",
            ylabel=f"{level} AUROC",
            title=f"{level} AUROC",
            xlim=(-0.5, max(iterations[-1], 1) + 0.5),
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    note = " (iteration 0 = checkerboard initialisation)" if len(iterations) > 1 else " (one pass: no iterations)"
    context = context or PlotContext()
    fig.suptitle(f"AUROC against detection iteration: {context.title}{note}", fontsize=10)
    fig.tight_layout()
    return fig


def loss_figure(records: Sequence[dict[str, float]], context: PlotContext | None = None) -> Figure | None:
    """Training losses against step, one panel per loss; None when the model folder has no log."""
    if not records:
        return None
    keys = [k for k in records[0] if k not in ("step", "time")]
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot(steps, [r.get(key, np.nan) for r in records], marker="o" if len(steps) < 40 else None, ms=3)
        ax.set(xlabel="training step", ylabel="loss", title=key)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    context = context or PlotContext()
    fig.suptitle(f"Training loss: {context.category} · {context.method} (train split)", fontsize=10)
    fig.tight_layout()
    return fig


def final_figures(
    result: DetectionResult, test_set: TestSet, model_dir: Path, context: PlotContext | None = None
) -> dict[str, Figure]:
    """All figures of a final run, keyed by PNG file name."""
    figures = {
        OVERLAYS_PNG: overlay_figure(result, test_set, context),
        ROC_PNG: roc_figure(result, test_set, context),
        ITERATION_PNG: iteration_figure(result.report["per_iteration"], context),
    }
    kinds = kinds_figure(result, test_set, context)
    if kinds is not None:
        figures[KINDS_PNG] = kinds
    loss = loss_figure(read_train_log(Path(model_dir)), context)
    if loss is not None:
        figures[LOSS_PNG] = loss
    return figures


def log_final_artifacts(
    result: DetectionResult, test_set: TestSet, model_dir: Path, context: PlotContext | None = None
) -> None:
    """Log the final run's PNGs into the active MLflow run under `plots/`."""
    import mlflow

    for name, fig in final_figures(result, test_set, model_dir, context).items():
        try:
            mlflow.log_figure(fig, f"{PLOT_DIR}/{name}")
        finally:
            plt.close(fig)
