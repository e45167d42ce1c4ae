"""Decisions, not only scores: an operating threshold chosen on val normals, a normalised score, labels."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from i3ad.cli import main
from i3ad.decision import DecisionRule, OperatingPoint, choose_operating_point
from i3ad.errors import ConfigError
from i3ad.scoring import CAPTION_HEIGHT, COLOUR_BAR_WIDTH, decision_columns, detector_config, load_detector


def test_threshold_lets_at_most_the_target_rate_of_normals_above_it():
    normals = np.arange(1, 21, dtype=float) / 100  # 0.01 .. 0.20
    point = choose_operating_point(normals, DecisionRule(0.05), "ssim")
    assert point.threshold == pytest.approx(0.19) and point.val_fpr == pytest.approx(0.05) and point.normals == 20
    assert point.median_normal == pytest.approx(0.105)
    assert choose_operating_point(normals, DecisionRule(0.0)).threshold == pytest.approx(0.20)  # none above
    assert choose_operating_point(normals[:6], DecisionRule(0.05)).val_fpr == 0.0  # 5% of 6 rounds down to none
    assert point.normalise([point.median_normal, point.threshold]) == pytest.approx([0.0, 1.0])
    assert point.labels([0.19, 0.191]) == ["normal", "anomalous"]
    with pytest.raises(ConfigError, match="decision.target_fpr"):
        DecisionRule(0.9)
    with pytest.raises(ConfigError, match="finite"):
        choose_operating_point([0.1, float("nan")], DecisionRule())


def test_detector_json_carries_the_operating_point(tiny_model: Path):
    point = OperatingPoint(0.3, 0.1, 0.05, 0.0, 6, map="l2")
    info = json.loads((tiny_model / "model.json").read_text())
    config = detector_config(info, {"anomaly_map": "l2", "operating_point": point.to_json()})
    assert detector_config(info, config.to_json()).operating == point
    assert decision_columns(config, np.array([0.2, 0.5]))["label"] == ["normal", "anomalous"]
    with pytest.raises(ConfigError, match="l2 map's scores but the detector scores with the ssim map"):
        detector_config(info, {"operating_point": point.to_json()})


def test_detect_saves_an_operating_point_then_labels_new_images(tmp_path: Path, tiny_model: Path, tiny_data: Path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    common = ["--data-root", str(tiny_data), "--category", "carpet", "--iterations", "2", "--no-pro"]
    images = ["detect", "--model", str(model), "--images", str(tiny_data / "carpet" / "test" / "hole")]
    assert main([*images, "--iterations", "2", "--out", str(tmp_path / "before")]) == 0
    with (tmp_path / "before" / "scores.csv").open() as handle:
        assert {row["label"] for row in csv.DictReader(handle)} == {""}  # no operating point yet: no labels

    val = ["detect", "--model", str(model), *common, "--split", "val", "--out", str(tmp_path / "val.json")]
    assert main([*val, "--save-operating-point", "--target-fpr", "0.0"]) == 0
    saved = load_detector(model)[1].operating
    report = json.loads((tmp_path / "val.json").read_text())
    assert saved is not None and report["operating_point"] == saved.to_json() and saved.val_fpr == 0.0

    assert main([*images, "--out", str(tmp_path / "after")]) == 0
    with (tmp_path / "after" / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        assert row["label"] == ("anomalous" if float(row["score"]) > saved.threshold else "normal")
        assert float(row["threshold"]) == pytest.approx(saved.threshold)
        normalised = (float(row["score"]) - saved.median_normal) / (saved.threshold - saved.median_normal)
        assert float(row["score_normalised"]) == pytest.approx(normalised, rel=1e-6)
    overlay = Image.open(tmp_path / "after" / "overlays" / f"{Path(rows[0]['path']).stem}.png")
    plain = Image.open(tmp_path / "before" / "overlays" / f"{Path(rows[0]['path']).stem}.png")
    # caption on top, colour bar on the right
    assert overlay.size == plain.size == (2 * 256 + COLOUR_BAR_WIDTH, CAPTION_HEIGHT + 256)
    caption = (np.asarray(overlay)[:CAPTION_HEIGHT] != np.asarray(plain)[:CAPTION_HEIGHT]).any(axis=2)
    assert caption.any()  # the caption now says the normalised score, the threshold and the label
    assert main([*images, "--out", str(tmp_path / "x"), "--save-operating-point"]) == 2  # needs --split val
