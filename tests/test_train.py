"""Training: model folders, exact resume, NaN guard, autoencoder methods."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import i3ad.train
from i3ad.checkpoint import load_training_state, load_weights, read_model_info
from i3ad.errors import CheckpointError, ConfigError, TrainingDiverged
from i3ad.train import TrainConfig, TrainEvent, read_train_log, train

from .conftest import tiny_config


def test_model_folder_is_complete_and_records_seed(tiny_model: Path) -> None:
    info = read_model_info(tiny_model)
    assert info["method"] == "i3ad" and info["finished"] and info["step"] == 6
    assert info["seed"] == 0 and info["channels"] == 3
    assert (tiny_model / "weights.safetensors").is_file()
    assert [r["step"] for r in read_train_log(tiny_model)] == [2, 3, 4, 6]


def test_resumed_run_continues_from_its_step_and_matches_an_uninterrupted_run(tiny_data: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train(tiny_config(steps=6), tiny_data, "carpet", straight, progress=False)

    split = tmp_path / "split"
    train(tiny_config(steps=3), tiny_data, "carpet", split, progress=False)
    assert load_training_state(split / "training_state.pt")["step"] == 3
    events: list[TrainEvent] = []
    result = train(
        tiny_config(steps=6), tiny_data, "carpet", split, resume=True, callback=events.append, progress=False
    )
    assert result.resumed_from == 3 and result.steps == 6
    assert min(e.step for e in events) == 4

    a, b = load_weights(straight / "weights.safetensors"), load_weights(split / "weights.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=f"{name} differs after resume")


def test_finished_run_is_not_retrained(tiny_model: Path, tiny_data: Path) -> None:
    result = train(tiny_config(), tiny_data, "carpet", tiny_model, resume=True, progress=False)
    assert result.already_finished and result.steps == 6


def test_existing_run_without_resume_is_refused(tiny_model: Path, tiny_data: Path) -> None:
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(), tiny_data, "carpet", tiny_model, progress=False)


def test_nan_loss_stops_with_the_step_and_keeps_last_good_checkpoint(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "nan"
    train(tiny_config(steps=3), tiny_data, "carpet", out, progress=False)
    before = load_weights(out / "weights.safetensors")
    real_loader = i3ad.train.load_train_images
    monkeypatch.setattr(i3ad.train, "load_train_images", lambda *a: real_loader(*a) * float("nan"))
    with pytest.raises(TrainingDiverged, match=r"step 4.*step 3"):
        train(tiny_config(steps=6), tiny_data, "carpet", out, resume=True, progress=False)
    after = load_weights(out / "weights.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert load_training_state(out / "training_state.pt")["step"] == 3


@pytest.mark.parametrize("method", ["ae-l2", "ae-ssim"])
def test_autoencoders_train_on_grayscale(method: str, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / method
    train(tiny_config(method=method, steps=4), tiny_data, "screw", out, progress=False)
    info = read_model_info(out)
    assert info["method"] == method and info["channels"] == 1
    assert info["model_config"]["latent_dim"] == 100


def test_crops_train_on_patches(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "crops"
    train(tiny_config(crop_size=16, steps=2), tiny_data, "carpet", out, progress=False)
    assert read_model_info(out)["patch_size"] == 16


def test_bad_settings_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="method"):
        TrainConfig(method="vae")
    with pytest.raises(ConfigError, match="crop_size"):
        TrainConfig(image_size=32, crop_size=64)
    with pytest.raises(ConfigError, match="unknown training setting"):
        TrainConfig.from_dict({"stepz": 3})


def test_corrupt_training_state_is_a_clear_error(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "corrupt"
    train(tiny_config(steps=3), tiny_data, "carpet", out, progress=False)
    (out / "training_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="training_state.pt"):
        train(tiny_config(steps=6), tiny_data, "carpet", out, resume=True, progress=False)
