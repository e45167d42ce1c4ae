"""The GAN baselines (AnoGAN, f-AnoGAN, AEGAN): training, scoring, AnoGAN's search, f-AnoGAN's frozen generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from i3ad.checkpoint import WEIGHTS_FILE, load_weights
from i3ad.data import MVTecCategory, load_test_set
from i3ad.errors import ConfigError
from i3ad.loading import load_model
from i3ad.models import GanConfig, GanNetwork
from i3ad.scorers import (
    METHODS,
    DetectionSettings,
    FeatureScorer,
    LatentSearchScorer,
    ProjectionSettings,
    base_method,
    make_scorer,
    search_objective,
)
from i3ad.scoring import detector_config
from i3ad.train import TrainConfig, TrainEvent, train
from studies import config as cfg
from studies.methods import is_projection, iterative, search_space, settings_for

from .conftest import tiny_config

GAN_TRAIN = ("anogan", "f-anogan", "aegan")


def gan_config(method: str, **overrides) -> TrainConfig:
    return tiny_config(method=method, steps=4, latent_dim=8, checkpoint_every=2, **overrides)


@pytest.fixture(scope="module")
def gans(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model folder per GAN baseline, trained for 4 steps on 32-px carpet (f-AnoGAN: 2 GAN + 2 encoder steps)."""
    root = tmp_path_factory.mktemp("gan")
    for method in GAN_TRAIN:
        train(gan_config(method), tiny_data, "carpet", root / method, progress=False)
    return {method: root / method for method in GAN_TRAIN}


@pytest.fixture(scope="module")
def test_images(tiny_data: Path) -> np.ndarray:
    category = MVTecCategory(tiny_data, "carpet")
    return load_test_set(category, category.test_items()[:3], 32).images


@pytest.mark.parametrize("method", [m for m in METHODS if base_method(m) in GAN_TRAIN])
def test_each_gan_method_trains_and_scores_tiny_data(method: str, gans: dict[str, Path], test_images) -> None:
    model = load_model(gans[base_method(method)], "cpu")
    search = ProjectionSettings(iterations=4, every=2)
    *_, last = make_scorer(model, DetectionSettings(), method, search).iterate(test_images)
    assert last.ssim.shape == last.l2.shape == (3, 32, 32)
    assert np.isfinite(last.ssim).all() and np.isfinite(last.l2).all() and (last.l2 >= 0).all()
    assert last.iteration == (4 if method == "anogan" else 0)


def test_l2_plus_ld_adds_the_weighted_feature_map(gans: dict[str, Path], test_images) -> None:
    model = load_model(gans["aegan"], "cpu")
    plain = next(make_scorer(model, DetectionSettings(), "aegan").iterate(test_images))
    scorer = make_scorer(model, DetectionSettings(), "aegan+ld", ProjectionSettings(lam=3.0))
    assert isinstance(scorer, FeatureScorer)
    combined = next(scorer.iterate(test_images))
    np.testing.assert_allclose(combined.l2, plain.l2 + 3.0 * scorer.feature_maps.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(combined.ssim, plain.ssim)
    assert scorer.feature_maps.abs().sum() > 0


def test_anogan_search_lowers_its_objective_on_a_fixed_image() -> None:
    torch.manual_seed(0)
    network = GanNetwork(GanConfig(channels=1, image_size=16, latent_dim=8, width=4, encoder=False))
    image = torch.rand(1, 1, 16, 16) * 2 - 1
    settings = ProjectionSettings(iterations=30, lam=0.1, step=0.05, every=10)
    scorer = LatentSearchScorer(network, 16, settings, device=torch.device("cpu"))
    start = search_objective(network, torch.zeros(1, 8), image, settings.lam)
    objectives = [float(scorer.objective[0]) for _ in scorer.iterate(image)]
    assert objectives[-1] < objectives[0] <= float(start[0])


def test_f_anogan_trains_its_encoder_with_the_generator_frozen(tiny_data: Path, tmp_path: Path) -> None:
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def keep(event: TrainEvent) -> None:
        if event.checkpoint is not None:
            snapshots[event.step] = load_weights(event.checkpoint / WEIGHTS_FILE)

    train(gan_config("f-anogan"), tiny_data, "carpet", tmp_path / "f", callback=keep, progress=False)
    gan_half, end = snapshots[2], snapshots[4]  # steps 1-2 train the GAN, steps 3-4 the encoder
    frozen = [k for k in end if not k.startswith("encoder.")]
    assert any(k.startswith("generator.") for k in frozen) and any(k.startswith("discriminator.") for k in frozen)
    for key in frozen:
        assert torch.equal(gan_half[key], end[key]), key
    assert any(not torch.equal(gan_half[k], end[k]) for k in end if k.startswith("encoder."))


def test_gan_patch_size_must_divide_by_16() -> None:
    with pytest.raises(ConfigError, match="divisible by 16"):
        TrainConfig(method="aegan", image_size=40)


def test_sweep_searches_anogan_and_the_ld_weight_only() -> None:
    config = cfg.load("compare-quick")
    anogan = search_space("anogan", config)
    assert set(anogan.distributions) == {"lam", "step"} and anogan.max_t == config.gan.iterations == 100
    assert anogan.points == [{"lam": 0.1, "step": 0.05}] and anogan.fixed == {"iterations": 100, "every": 10}
    ld = search_space("f-anogan+ld", config)
    assert set(ld.distributions) == {"lam"} and ld.points == [{"lam": 1.0}] and not iterative("f-anogan+ld")
    assert not search_space("aegan", config).searched and iterative("anogan")
    # A chosen +ld setting: lam is the L_D weight, N = 0 stays a detection setting (ProjectionSettings needs T >= 1).
    detection, projection = settings_for("aegan+ld", config.detect, config.projection, {"lam": 4.0, "iterations": 0})
    assert projection.lam == 4.0 and projection.iterations == config.projection.iterations and detection.iterations == 0
    assert is_projection("anogan") and is_projection("aegan+ld") and not is_projection("aegan")


def test_anogan_detector_keeps_its_own_search_settings() -> None:
    info = {"method": "anogan", "image_size": 32}
    values = {"method": "anogan", "projection": {"iterations": 40, "every": 10, "lam": 0.2, "step": 0.01}}
    config = detector_config(info, values)
    assert config.method is None and config.projection["iterations"] == 40
    reread = detector_config(info, config.to_json())
    assert ProjectionSettings.from_dict(reread.projection) == ProjectionSettings(40, 0.2, 0.01, 10)


def test_compare_groups_the_columns_by_family() -> None:
    from tracking.compare import family_labels

    methods = ["anogan", "f-anogan", "f-anogan+ld", "aegan", "aegan+ld", "i3ad"]
    assert family_labels(methods) == ["AnoGAN", "f-AnoGAN", "", "AEGAN", "", "I3AD"]
