"""The inpainter's own figures, logged per final I3AD run: the normals' mask per iteration at the calibrated U.

Kept apart from `tracking.plots` (the anomaly-map figures). Reads only the model folder's model.json
(`calibration`, written by `i3ad.calibrate`; `inpainter`, written by training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: sweeps run on servers and in Ray workers

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from i3ad.checkpoint import read_model_info  # noqa: E402

MASKED_PNG = "masked_fraction.png"
MASKED_JSON = "masked_fraction.json"


def masked_fraction_figure(calibration: dict[str, Any]) -> Figure:
    """The fraction of normal pixels masked after each iteration, one line per U; the calibrated U bold."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    chosen = calibration["threshold"]
    for point in calibration["curve"]:
        masked = point.get("masked") or [point["flagged_fraction"]]
        bold = point["threshold"] == chosen
        ax.plot(
            range(len(masked)),
            masked,
            marker="o" if bold else None,
            linewidth=2.5 if bold else 1.0,
            alpha=1.0 if bold else 0.45,
            label=f"U={point['threshold']:.2f}" + (" (calibrated)" if bold else ""),
        )
    low, high = calibration.get("masked_band", (None, None))
    if low is not None:
        ax.axhspan(low, high, color="tab:green", alpha=0.08, label="partial mask")
    ax.set_xlabel("iteration (0 = checkerboard)")
    ax.set_ylabel("normal pixels masked")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Calibration: mask on normal images")
    ax.legend(fontsize=6, ncol=2, loc="upper right")
    fig.tight_layout()
    return fig


def masked_fraction_record(info: dict[str, Any]) -> dict[str, Any] | None:
    """model.json's calibration mask fractions (and the hole error) as one small JSON, None without a calibration."""
    calibration = info.get("calibration")
    if not calibration or "curve" not in calibration:
        return None
    return {
        "threshold": calibration["threshold"],
        "met_tolerance": calibration.get("met_tolerance"),
        "masked_per_iteration": calibration.get("masked_per_iteration"),
        "by_threshold": {str(p["threshold"]): p.get("masked", [p["flagged_fraction"]]) for p in calibration["curve"]},
        "inpainter": info.get("inpainter"),
    }


def log_calibration_artifacts(model_dir: Path, plot_dir: str = "plots") -> None:
    """Log the mask-fraction figure and JSON of an I3AD model folder into the active MLflow run."""
    import mlflow

    info = read_model_info(Path(model_dir))
    record = masked_fraction_record(info)
    if record is None:
        return
    mlflow.log_dict(record, f"{plot_dir}/{MASKED_JSON}")
    fig = masked_fraction_figure(info["calibration"])
    try:
        mlflow.log_figure(fig, f"{plot_dir}/{MASKED_PNG}")
    finally:
        plt.close(fig)
