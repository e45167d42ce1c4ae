"""Detection: the batched, skipping fast path against the paper's straightforward loop; scorers; calibration."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from i3ad.data import MVTecCategory, load_test_set
from i3ad.detect import (
    AUROC_KEYS,
    DetectionSettings,
    IterativeInpainter,
    calibrate_threshold,
    evaluate,
    load_model,
    make_scorer,
    naive_iterative_inpainting,
)
from i3ad.errors import CheckpointError, ConfigError
from i3ad.ssim import ssim_map
from i3ad.train import train

from .conftest import tiny_config


@pytest.fixture(scope="module")
def carpet_test(tiny_data: Path):
    category = MVTecCategory(tiny_data, "carpet")
    return load_test_set(category, category.test_items(), 32)


def test_fast_path_matches_the_straightforward_loop(tiny_model: Path, carpet_test) -> None:
    model = load_model(tiny_model, "cpu")
    settings = DetectionSettings(threshold=0.5, patch_size=4, iterations=5, stop_eps=0.0, batch_size=7)
    images = torch.from_numpy(carpet_test.images[:6])
    inpainter = IterativeInpainter(model.module, settings)
    *_, last = inpainter.iterate(images)
    for i, image in enumerate(images):
        reference = naive_iterative_inpainting(model.module, image, settings)
        torch.testing.assert_close(inpainter.reconstruction[i], reference, atol=1e-4, rtol=0)
        expected = 1 - ssim_map(image[None], reference[None])[0].numpy()
        np.testing.assert_allclose(last.ssim[i], expected, atol=1e-4)
    # Skipping finished images must save generator passes against 4 + N per image.
    assert last.generator_passes <= len(images) * (4 + settings.iterations)


def test_checkerboard_initialisation_replaces_every_pixel(tiny_model: Path, carpet_test) -> None:
    model = load_model(tiny_model, "cpu")
    images = torch.from_numpy(carpet_test.images[:2])
    inpainter = IterativeInpainter(model.module, DetectionSettings(patch_size=3, iterations=0))
    reconstruction = inpainter.initial_reconstruction(images)
    assert inpainter.generator_passes == 8
    assert not torch.isclose(reconstruction, images).all(dim=1).any(), "a pixel was copied, not inpainted"


def test_evaluate_reports_every_iteration_and_all_metrics(tiny_model: Path, carpet_test) -> None:
    model = load_model(tiny_model, "cpu")
    settings = DetectionSettings(threshold=0.4, patch_size=4, iterations=3)
    seen: list[int] = []
    result = evaluate(make_scorer(model, settings), carpet_test.images, carpet_test.masks, carpet_test.labels,
                      settings, on_iteration=lambda i, m: seen.append(i))
    report = result.report
    assert seen == [0, 1, 2, 3]
    assert [p["iteration"] for p in report["per_iteration"]] == [0, 1, 2, 3]
    for key in (*AUROC_KEYS, "pro_ssim", "pro_l2"):
        assert 0.0 <= report[key] <= 1.0, key
    assert 0 <= report["iterations_run"] <= 3
    assert report["images"] == len(carpet_test) and report["images_per_second"] > 0
    assert result.ssim_maps.shape == carpet_test.masks.shape


def test_autoencoder_scorer_tiles_larger_images(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ae"
    train(tiny_config(method="ae-l2", crop_size=32, image_size=64, steps=2), tiny_data, "screw", out, progress=False)
    model = load_model(out, "cpu")
    category = MVTecCategory(tiny_data, "screw")
    test_set = load_test_set(category, category.test_items(), 64)
    result = evaluate(make_scorer(model, DetectionSettings()), test_set.images, test_set.masks, test_set.labels, DetectionSettings())
    assert result.ssim_maps.shape == (len(test_set), 64, 64)
    assert len(result.report["per_iteration"]) == 1


def test_calibration_picks_the_most_sensitive_threshold_normals_tolerate(tiny_model: Path, carpet_test) -> None:
    model = load_model(tiny_model, "cpu")
    normals = carpet_test.images[carpet_test.labels == 0]
    result = calibrate_threshold(model.module, normals, tolerance=255.0, iterations=2)
    assert [p["threshold"] for p in result["curve"]] == pytest.approx([0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5])
    assert result["threshold"] == pytest.approx(0.5) and result["met_tolerance"]
    errors = {p["threshold"]: p["error"] for p in result["curve"]}
    between = (errors[0.1] + errors[0.5]) / 2
    picked = calibrate_threshold(model.module, normals, tolerance=between, iterations=2)
    assert errors[picked["threshold"]] <= between
    assert all(errors[u] > between for u in errors if u > picked["threshold"]) or picked["threshold"] == 0.5
    impossible = calibrate_threshold(model.module, normals, tolerance=-1.0, iterations=2, thresholds=(0.2, 0.6))
    assert impossible["threshold"] == 0.2 and not impossible["met_tolerance"]


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        DetectionSettings(threshold=0)
    with pytest.raises(ConfigError, match="score"):
        DetectionSettings(score="median")


def test_damaged_model_folder_is_a_clear_error(tiny_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((tiny_model / "model.json").read_text())
    (broken / "weights.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="weights.safetensors"):
        load_model(broken, "cpu")
    with pytest.raises(CheckpointError, match="model.json"):
        load_model(tmp_path / "missing", "cpu")
