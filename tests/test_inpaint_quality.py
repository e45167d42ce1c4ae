"""The inpainter's hole error on held-out normals, its two references, and where it is reported (issue 15)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from i3ad.checkpoint import read_model_info
from i3ad.inpaint_quality import HoleProbe, biharmonic_fill, describe, holdout_indices, mean_fill
from i3ad.metrics import image_scores
from i3ad.models import GeneratorConfig, InpaintGenerator
from i3ad.train import read_train_log, train

from .conftest import tiny_config


def _ramp_with_hole() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:16, 0:16].astype(np.float32)
    image = ((0.05 * x - 0.03 * y) - 0.2)[None, None].repeat(2, axis=1)  # (1, 2, 16, 16)
    mask = np.zeros((1, 1, 16, 16), dtype=np.float32)
    mask[0, 0, 5:11, 4:12] = 1.0
    return image, mask


def test_biharmonic_fill_continues_a_smooth_image_and_mean_fill_uses_known_pixels() -> None:
    image, mask = _ramp_with_hole()
    holed = image * (1 - mask) + 5.0 * mask  # hole pixels must not be read
    np.testing.assert_allclose(biharmonic_fill(holed, mask), image, atol=1e-5)
    filled = mean_fill(holed, mask)
    known = mask[0, 0] == 0
    np.testing.assert_allclose(filled[0][:, ~known], np.broadcast_to(image[0][:, known].mean(1)[:, None], (2, 48)))
    np.testing.assert_array_equal(filled[0][:, known], image[0][:, known])


def test_holdout_keeps_at_least_one_training_image() -> None:
    kept, held = holdout_indices(10, 4)
    assert kept.tolist() == list(range(6)) and held.tolist() == [6, 7, 8, 9]
    kept, held = holdout_indices(3, 4)
    assert len(kept) == 1 and len(held) == 2
    assert len(holdout_indices(5, 0)[1]) == 0


def test_probe_measures_a_generator_next_to_both_fills() -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    probe = HoleProbe.build(images)
    assert probe.held_out == 2 and len(probe.images) == 4 and set(probe.references) == {"mean_fill", "biharmonic"}
    generator = InpaintGenerator(GeneratorConfig(channels=3, width=4))
    metrics = probe.measure(generator)
    assert metrics["hole_l1_mean_fill"] == pytest.approx(probe.references["mean_fill"]["l1"])
    assert 0 < metrics["hole_l1"] < 255 and -1 <= metrics["hole_ssim"] <= 1
    assert generator.training  # measuring leaves the training mode as it was


def test_i3ad_training_logs_hole_error_and_writes_it_to_model_json(tiny_model: Path) -> None:
    log = read_train_log(tiny_model)
    assert all({"hole_l1", "hole_l1_mean_fill", "hole_l1_biharmonic", "hole_ssim"} <= set(r) for r in log)
    inpainter = read_model_info(tiny_model)["inpainter"]
    assert inpainter["step"] == 6 and inpainter["held_out_images"] == tiny_config().holdout
    assert inpainter["hole_l1"] == pytest.approx(log[-1]["hole_l1"], abs=1e-4)
    assert inpainter["beats_mean_fill"] == (inpainter["hole_l1"] < inpainter["mean_fill_l1"])


def test_summary_line_flags_an_inpainter_that_does_not_beat_the_mean_fill() -> None:
    values = {"hole_l1": 22.0, "mean_fill_l1": 21.1, "biharmonic_l1": 23.0, "held_out_images": 4}
    assert "does not beat the mean-colour fill" in describe({**values, "beats_mean_fill": False})
    line = describe({**values, "hole_l1": 9.0, "beats_mean_fill": True})
    assert line.startswith("inpainter: hole L1 9.0, mean fill 21.1, biharmonic 23.0") and "!" not in line


def test_image_score_leaves_out_the_border() -> None:
    maps = np.zeros((2, 16, 16), dtype=np.float32)
    maps[0, 0, 0] = 9.0  # a padding artefact in the corner
    maps[1, 8, 8] = 1.0  # a defect inside
    assert image_scores(maps, "max").tolist() == [9.0, 1.0]
    assert image_scores(maps, "max", border=5).tolist() == [0.0, 1.0]
    assert image_scores(maps, "max", border=8).tolist() == [9.0, 1.0]  # nothing would be left: whole map
    with pytest.raises(ValueError, match="border"):
        image_scores(maps, "max", border=-1)


def test_generator_output_follows_its_input_at_init() -> None:
    # The default conv init and half-closed gates made the output independent of the input (1e-8 apart).
    torch.manual_seed(0)
    generator = InpaintGenerator(GeneratorConfig(channels=3, width=8, wide_output=True))
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 8:20] = 1
    a, b = (torch.rand(2, 3, 32, 32) * 2 - 1 for _ in range(2))
    with torch.no_grad():
        difference = (generator(a, mask)[1] - generator(b, mask)[1]).abs().mean()
    assert difference > 0.01


def test_warm_up_trains_the_generator_on_l1_alone(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "warm"
    train(tiny_config(steps=4, gan_warmup=2, log_every=1), tiny_data, "carpet", out, progress=False)
    log = read_train_log(out)
    assert [r["loss_d"] for r in log[:2]] == [0.0, 0.0] and all(r["loss_d"] != 0.0 for r in log[2:])
    assert read_model_info(out)["model_config"]["wide_output"] is True
