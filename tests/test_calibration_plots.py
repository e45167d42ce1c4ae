"""The calibration's mask-fraction figure and record (tracking.calibration_plots, issue 15)."""

from __future__ import annotations

import matplotlib.pyplot as plt

from tracking.calibration_plots import masked_fraction_figure, masked_fraction_record


def test_masked_fraction_figure_and_record_from_model_info() -> None:
    curve = [
        {"threshold": 0.1, "error": 0.0, "flagged_fraction": 0.0, "masked": [0.2, 0.01, 0.0]},
        {"threshold": 0.2, "error": 4.0, "flagged_fraction": 0.1, "masked": [0.5, 0.2, 0.1]},
    ]
    info = {
        "calibration": {"threshold": 0.2, "met_tolerance": True, "masked_band": [0.005, 0.5], "curve": curve},
        "inpainter": {"hole_l1": 9.0},
    }
    record = masked_fraction_record(info)
    assert record["by_threshold"] == {"0.1": [0.2, 0.01, 0.0], "0.2": [0.5, 0.2, 0.1]}
    assert record["threshold"] == 0.2 and record["inpainter"] == {"hole_l1": 9.0}
    assert masked_fraction_record({"method": "ae-l2"}) is None
    fig = masked_fraction_figure(info["calibration"])
    try:
        assert len(fig.axes[0].lines) == 2
    finally:
        plt.close(fig)
