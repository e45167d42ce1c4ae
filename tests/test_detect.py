"""Detection: the batched, skipping fast path against the paper's straightforward loop; scorers; calibration."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from i3ad.calibrate import MAX_MASKED, MIN_MASKED, calibrate_threshold, choose_threshold
from i3ad.data import MVTecCategory, load_test_set
from i3ad.errors import CheckpointError, ConfigError
from i3ad.evaluate import AUROC_KEYS, evaluate
from i3ad.loading import detection_settings, load_model
from i3ad.scorers import DetectionSettings, IterativeInpainter, make_scorer
from i3ad.ssim import ssim_map
from i3ad.train import train

from .conftest import tiny_config
from .reference import naive_iterative_inpainting


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


class AlternatingFill(torch.nn.Module):
    """A stand-in generator whose masks cycle with period 2: it fills holes with the true image except a
    small spot, placed right of the centre when the hole's centre is left of it and vice versa, so each
    spot's low-SSIM region becomes the next mask and puts the spot back on the other side."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the inpainter reads the device from a parameter
        self.image = image

    def forward(self, masked: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.image.expand(len(mask), -1, -1, -1).clone()
        columns = torch.arange(mask.shape[-1], dtype=torch.float32)
        weight = mask.sum(dim=(1, 2))
        centres = (weight * columns).sum(1) / weight.sum(1).clamp(min=1)
        for i, centre in enumerate(centres):
            spot = slice(33, 35) if centre < 31.5 else slice(29, 31)
            out[i, :, 29:33, spot] = -out[i, :, 29:33, spot] - 0.5
        return out, out


def test_fast_path_ends_a_two_cycle_exactly_without_generator_passes() -> None:
    torch.manual_seed(0)
    image = torch.rand(1, 3, 64, 64) * 0.2
    generator = AlternatingFill(image)
    for n in range(1, 9):  # both parities of N after the cycle starts
        settings = DetectionSettings(threshold=0.9, patch_size=4, iterations=n, stop_eps=0.0)
        inpainter = IterativeInpainter(generator, settings)
        maps = list(inpainter.iterate(image))
        reference = naive_iterative_inpainting(generator, image[0], settings)
        torch.testing.assert_close(inpainter.reconstruction[0], reference, atol=0, rtol=0)
        np.testing.assert_allclose(maps[-1].ssim[0], 1 - ssim_map(image, reference[None])[0].numpy(), atol=1e-6)
        # 4 checkerboard passes, then iterations 1 to 3; iteration 4's mask repeats iteration 2's.
        assert inpainter.generator_passes == 4 + min(n, 3)
        if n >= 4:
            sizes = [int((m.ssim[0] > 0.1).sum()) for m in maps[1:]]
            assert sizes[-1] != sizes[-2] and sizes[-1] == sizes[-3], "the masks do not alternate"


def test_compiled_generator_gives_the_same_maps(tiny_model: Path, carpet_test) -> None:
    # The "eager" backend runs TorchDynamo's capture without code generation: it checks the wiring and the
    # dynamic batch size (the active images shrink between iterations) in seconds.
    model = load_model(tiny_model, "cpu")
    images = torch.from_numpy(carpet_test.images[:5])
    settings = DetectionSettings(threshold=0.5, patch_size=4, iterations=4, batch_size=4)
    *_, plain = IterativeInpainter(model.module, settings).iterate(images)
    *_, compiled = IterativeInpainter(
        model.module, DetectionSettings(**{**asdict(settings), "compile": "eager"})
    ).iterate(images)
    np.testing.assert_allclose(compiled.ssim, plain.ssim, atol=1e-5)
    assert compiled.generator_passes == plain.generator_passes
    with pytest.raises(ConfigError, match="compile"):
        DetectionSettings(compile="fast")


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
    result = evaluate(
        make_scorer(model, settings),
        carpet_test.images,
        carpet_test.masks,
        carpet_test.labels,
        settings,
        on_iteration=lambda i, m: seen.append(i),
    )
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
    result = evaluate(
        make_scorer(model, DetectionSettings()), test_set.images, test_set.masks, test_set.labels, DetectionSettings()
    )
    assert result.ssim_maps.shape == (len(test_set), 64, 64)
    assert len(result.report["per_iteration"]) == 1


def test_calibration_picks_the_most_sensitive_threshold_normals_tolerate(tiny_model: Path, carpet_test) -> None:
    model = load_model(tiny_model, "cpu")
    normals = carpet_test.images[carpet_test.labels == 0]
    result = calibrate_threshold(model.module, normals, tolerance=255.0, iterations=2)
    assert [p["threshold"] for p in result["curve"]] == pytest.approx([0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5])
    for point in result["curve"]:  # the mask after iterations 0..N; the last is the final one
        assert len(point["masked"]) == 3 and point["masked"][-1] == point["flagged_fraction"]
    chosen = next(p for p in result["curve"] if p["threshold"] == result["threshold"])
    assert result["masked_per_iteration"] == chosen["masked"]
    partial = [p["threshold"] for p in result["curve"] if MIN_MASKED <= p["flagged_fraction"] <= MAX_MASKED]
    # any error passes 255 grey levels: the largest U whose final mask on normals is partial
    assert result["met_tolerance"] == bool(partial)
    if partial:
        assert result["threshold"] == max(partial)


def _point(threshold: float, error: float, masked: float) -> dict[str, float]:
    return {"threshold": threshold, "error": error, "flagged_fraction": masked}


def test_calibration_rule_keeps_normals_with_a_partial_mask() -> None:
    # U = 0.1 empties the mask (error 0 meets any tolerance), 0.4 and 0.5 mask nearly everything
    curve = [_point(0.1, 0.0, 0.0), _point(0.2, 3.0, 0.05), _point(0.3, 8.0, 0.3), _point(0.4, 9.0, 0.9)]
    curve.append(_point(0.5, 30.0, 1.0))
    assert choose_threshold(curve, 10.0) == (curve[2], True)  # the largest partial U within the tolerance
    assert choose_threshold(curve, 5.0) == (curve[1], True)
    assert choose_threshold(curve, 1.0) == (curve[1], False)  # none passes: the partial U with the least error
    empty_or_full = [_point(0.1, 0.0, 0.0), _point(0.2, 0.0, 0.001), _point(0.3, 20.0, 0.95), _point(0.4, 25.0, 1.0)]
    # none partial: the U whose mask lies nearest the band (0.001 is 5x under it, 0.95 under 2x over it)
    assert choose_threshold(empty_or_full, 10.0) == (empty_or_full[2], False)


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


def test_effective_settings_layer_defaults_calibration_choice_and_flags() -> None:
    assert detection_settings({}) == DetectionSettings()
    calibrated = {"calibration": {"threshold": 0.45}}
    assert detection_settings(calibrated).threshold == 0.45
    chosen = {**calibrated, "detection": {"threshold": 0.2, "patch_size": 8}}
    assert detection_settings(chosen) == DetectionSettings(threshold=0.2, patch_size=8)
    assert detection_settings(chosen, {"threshold": 0.35, "iterations": None}).threshold == 0.35
