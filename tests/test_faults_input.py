"""Fault suite, input: settings of the wrong type, NaN, out of bounds, 0/1 masks, a sweep whose categories fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import studies.sweep
from i3ad.checkpoint import read_model_info
from i3ad.cli import main
from i3ad.data import load_mask
from i3ad.errors import CheckpointError, ConfigError
from i3ad.loading import load_model
from i3ad.scorers import DetectionSettings, ProjectionSettings
from i3ad.train import TrainConfig
from studies import config as cfg


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"amp": "no"}, "amp must be true or false"),
        ({"mask_boxes": "false"}, "mask_boxes must be true or false"),
        ({"attention": 1}, "attention must be true or false"),
        ({"steps": "20"}, "steps must be a whole number"),
        ({"steps": True}, "steps must be a whole number"),
        ({"batch_size": 2.5}, "batch_size must be a whole number"),
        ({"lr_g": "fast"}, "lr_g must be a number"),
        ({"lr_g": float("nan")}, "lr_g must be a finite number"),
        ({"gan_weight": float("inf")}, "gan_weight must be a finite number"),
        ({"seed": -1}, "seed must be between 0"),
        ({"image_size": 20000}, "image_size must be between 4 and 4096"),
        ({"width": 1024}, "width must be between 1 and 256"),
        ({"max_seconds": float("nan")}, "max_seconds must be a finite number"),
        ({"method": 3}, "method must be a string"),
    ],
)
def test_training_settings_check_type_finiteness_and_bounds(values: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        TrainConfig(**values)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"stop_eps": float("nan")}, "stop_eps must be a finite number"),
        ({"stop_eps": 2.0}, "stop_eps must lie in"),
        ({"threshold": float("nan")}, "threshold must be a finite number"),
        ({"threshold": 0.0}, "threshold must lie in"),
        ({"iterations": "3"}, "iterations must be a whole number"),
        ({"patch_size": 6.0}, "patch_size must be a whole number"),
        ({"score": "median"}, "score 'median' is unknown"),
    ],
)
def test_detection_settings_check_type_finiteness_and_bounds(values: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        DetectionSettings(**values)


def test_projection_settings_refuse_nan_and_strings() -> None:
    with pytest.raises(ConfigError, match="projection.lam must be a finite number"):
        ProjectionSettings(lam=float("nan"))
    with pytest.raises(ConfigError, match="projection.iterations must be a whole number"):
        ProjectionSettings(iterations="50")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("detect.stop_eps=.nan", "stop_eps must be a finite number"),
        ("train.amp='no'", "train.amp must be true or false"),
        ("train.mask_boxes='false'", "train.mask_boxes must be true or false"),
        ("train.steps='20'", "train.steps must be a whole number"),
        ("train.image_size=20000", "image_size must be between 4 and 4096"),
        ("train_by_kind.texture={amp: 'no'}", "train_by_kind.texture.amp"),
        ("train_grid.width=[4, '8']", "train_grid.width must be a whole number"),
        ("search.num_samples='4'", "search.num_samples"),
        ("search.threshold_range=[0.1, .nan]", "search.threshold_range"),
        ("calibration.tolerance=.nan", "calibration.tolerance"),
        ("data.val_fraction=.nan", "data.val_fraction"),
        ("ray.max_failures=true", "ray.max_failures"),
        ("seed='1'", "seed"),
    ],
)
def test_sweep_config_is_strict_and_finite(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        cfg.load("quick", [cfg.parse_override(override)])


def test_sweep_config_still_takes_plain_yaml_numbers() -> None:
    config = cfg.load(
        "quick", [cfg.parse_override("search.threshold_range=[0.1, 1]"), cfg.parse_override("detect.threshold=1")]
    )
    assert config.search.threshold_range == (0.1, 1.0) and config.detect.threshold == 1


def _cli_args(tiny_model: Path, tiny_data: Path) -> dict[str, list[str]]:
    data = ["--data-root", str(tiny_data), "--category", "carpet"]
    return {
        "detect": ["detect", "--model", str(tiny_model), *data, "--out", "unused.json"],
        "calibrate": ["calibrate", "--model", str(tiny_model), *data],
        "train": ["train", *data, "--out", "unused-model", "--steps", "2", "--no-progress"],
    }


@pytest.mark.parametrize(
    ("command", "flags", "named"),
    [
        ("detect", ["--stop-eps", "nan"], "stop_eps must be a finite number"),
        ("calibrate", ["--tolerance", "nan"], "calibration tolerance must be a finite number"),
        ("calibrate", ["--tolerance", "-5"], "calibration tolerance must lie in"),
        ("calibrate", ["--max-images", "0"], "calibration images must be between 1"),
        ("train", ["--seed", "-1"], "seed must be between 0"),
        ("train", ["--image-size", "20000"], "image_size must be between 4 and 4096"),
    ],
)
def test_cli_refuses_bad_numbers_with_one_line_and_leaves_the_model_alone(
    command: str,
    flags: list[str],
    named: str,
    tiny_model: Path,
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    before = (tiny_model / "model.json").read_text()
    assert main([*_cli_args(tiny_model, tiny_data)[command], *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert (tiny_model / "model.json").read_text() == before
    assert not (tmp_path / "unused-model").exists() and not (tmp_path / "unused.json").exists()


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        ("train: [1, 2]\n", "`train` in"),
        ("amp: 'no'\n", "amp must be true or false"),
        ("steps: '20'\n", "steps must be a whole number"),
        ("batch_size: 2.5\n", "batch_size must be a whole number"),
        ("lr_g: fast\n", "lr_g must be a number"),
    ],
)
def test_train_config_file_of_the_wrong_types_is_named(
    yaml_text: str, named: str, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml_text)
    out = tmp_path / "model"
    argv = ["train", "--data-root", str(tiny_data), "--category", "carpet", "--out", str(out), "--config", str(config)]
    assert main(argv) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"image_size": 20000}, "image_size must be between 4 and 4096"),
        ({"model_config": {"channels": 3, "width": 1024, "attention": True}}, "model_config.width"),
    ],
)
def test_model_json_with_huge_sizes_is_refused_before_allocating(
    change: dict, named: str, tiny_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "tampered"
    shutil.copytree(tiny_model, folder)
    info = read_model_info(folder)
    (folder / "model.json").write_text(json.dumps({**info, **change}))
    with pytest.raises(CheckpointError, match=named):
        load_model(folder, "cpu")


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_zero_one_masks_mark_every_non_zero_pixel(mode: str, tmp_path: Path) -> None:
    mask = np.zeros((8, 8), dtype=np.uint16 if mode == "I;16" else np.uint8)
    mask[2:4, 3:6] = 1
    path = tmp_path / f"mask-{mode.replace(';', '')}.png"
    Image.fromarray(mask).save(path)  # uint16 -> a 16-bit PNG
    loaded = load_mask(path, None, (8, 8))
    assert loaded.dtype == bool and loaded.sum() == 6 and loaded[2:4, 3:6].all()
    assert load_mask(path, 16, (8, 8)).sum() == 24  # nearest resize keeps it a 0/1 mask


def test_sweep_exits_non_zero_when_a_category_failed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    failure = {"phase": "train", "category": "screw", "method": "i3ad", "error": "boom"}
    monkeypatch.setattr(studies.sweep, "run_sweep", lambda *a, **k: {"failures": [failure], "rows": []})
    assert studies.sweep.main([]) == 1
    assert "screw/i3ad" in capsys.readouterr().err
    monkeypatch.setattr(studies.sweep, "run_sweep", lambda *a, **k: {"failures": [], "rows": []})
    assert studies.sweep.main([]) == 0
