"""The reconstruction baselines' error on held-out normals next to two no-learning references."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from i3ad.checkpoint import read_model_info
from i3ad.reconstruction_quality import ReconstructionProbe, describe
from i3ad.train import read_train_log, train

from .conftest import tiny_config


class _Returns(torch.nn.Module):
    """A stand-in model whose reconstruction is a fixed function of its input."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def test_references_are_the_mean_training_image_and_each_images_mean_colour() -> None:
    torch.manual_seed(0)
    training, held_out = torch.rand(6, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    probe = ReconstructionProbe.build(held_out, training, patch=8)
    grey = 255.0 / 2.0
    mean_image = training.mean(0, keepdim=True)
    assert probe.references["mean_image"] == pytest.approx(float((held_out - mean_image).abs().mean()) * grey)
    mean_colour = held_out.mean((2, 3), keepdim=True)
    assert probe.references["mean_colour"] == pytest.approx(float((held_out - mean_colour).abs().mean()) * grey)

    identity = _Returns(lambda x: x)
    assert probe.measure(identity, identity)["recon_l1"] == pytest.approx(0.0, abs=1e-6)
    # Tile by tile, a model that returns the mean training image's tile scores exactly the mean-image reference.
    tile = mean_image[:, :, :8, :8]
    constant = _Returns(lambda x: tile.expand(len(x), -1, -1, -1))
    flat = ReconstructionProbe.build(held_out, mean_image[:, :, :8, :8].repeat(1, 1, 2, 2), patch=8)
    assert flat.measure(constant, constant)["recon_l1"] == pytest.approx(flat.references["mean_image"], rel=1e-5)


def test_images_are_cropped_to_whole_tiles_and_training_mode_is_restored() -> None:
    probe = ReconstructionProbe.build(torch.zeros(1, 1, 20, 20), torch.zeros(3, 1, 20, 20), patch=8)
    assert probe.images.shape == (1, 1, 16, 16)
    model = _Returns(lambda x: x)
    model.train()
    probe.measure(model, model)
    assert model.training


@pytest.mark.parametrize(("method", "crop_size"), [("ae-l2", None), ("f-anogan", 16)])  # whole images; 4 tiles each
def test_baseline_training_logs_its_reconstruction_error_and_writes_it_to_model_json(
    method: str, crop_size: int | None, tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / method
    config = tiny_config(method=method, steps=4, log_every=2, checkpoint_every=2, crop_size=crop_size)
    train(config, tiny_data, "carpet", out, progress=False)
    log = read_train_log(out)
    assert all({"recon_l1", "recon_l1_mean_image", "recon_l1_mean_colour"} <= set(r) for r in log)
    entry = read_model_info(out)["reconstruction"]
    assert entry["step"] == 4 and entry["held_out_images"] == config.holdout
    assert entry["recon_l1"] == pytest.approx(log[-1]["recon_l1"], abs=1e-4)
    references = min(entry["mean_image_l1"], entry["mean_colour_l1"])
    assert entry["beats_no_learning"] == (entry["recon_l1"] < references)


def test_anogan_and_i3ad_have_no_reconstruction_entry(tiny_data: Path, tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "anogan"
    train(
        tiny_config(method="anogan", steps=2, log_every=2, checkpoint_every=2), tiny_data, "carpet", out, progress=False
    )
    assert "reconstruction" not in read_model_info(out)
    assert "recon_l1" not in read_train_log(out)[-1]
    assert "reconstruction" not in read_model_info(tiny_model)


def test_summary_flags_a_baseline_that_does_not_beat_the_mean_image() -> None:
    values = {"recon_l1": 12.3, "mean_image_l1": 12.2, "mean_colour_l1": 15.0, "held_out_images": 4}
    assert "does not beat the no-learning fills" in describe({**values, "beats_no_learning": False})
    line = describe({**values, "recon_l1": 7.0, "beats_no_learning": True})
    assert line.startswith("reconstruction: L1 7.0, mean image 12.2, mean colour 15.0") and "!" not in line
