"""The `+proj` baselines: Dehaene et al.'s energy-based projection, and every method end to end on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from i3ad.cli import main
from i3ad.data import MVTecCategory, load_test_set
from i3ad.errors import ConfigError
from i3ad.evaluate import AUROC_KEYS, evaluate
from i3ad.loading import load_model
from i3ad.scorers import (
    DetectionSettings,
    ProjectionScorer,
    ProjectionSettings,
    base_method,
    make_scorer,
    projection_energy,
    projection_step,
)
from i3ad.train import train

from .conftest import tiny_config


@pytest.fixture(scope="module")
def autoencoders(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ae-l2 and ae-ssim model folders trained for a few steps on 32-px carpet."""
    root = tmp_path_factory.mktemp("ae")
    folders = {}
    for method in ("ae-l2", "ae-ssim"):
        folders[method] = root / method
        train(
            tiny_config(method=method, steps=20, batch_size=4, ae_width=8, checkpoint_every=20),
            tiny_data,
            "carpet",
            folders[method],
            progress=False,
        )
    return folders


@pytest.fixture(scope="module")
def carpet_test(tiny_data: Path):
    category = MVTecCategory(tiny_data, "carpet")
    return load_test_set(category, category.test_items(), 32)


class _ForgetsARegion(nn.Module):
    """A stand-in autoencoder: the identity, except that it outputs 0 inside `region`."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.region = region

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.region, torch.zeros_like(x), x)


def test_step_is_the_error_weighted_gradient_step() -> None:
    region = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    region[..., 2:4, 2:4] = True
    x0 = torch.full((1, 1, 8, 8), 0.8)
    x1 = projection_step(_ForgetsARegion(region), x0, x0, "l2", lam=0.1, step=0.05)
    # Inside: E = x^2 + lam |x - x0| -> grad 2x (sign(0) = 0), weight (x - 0)^2; outside f(x) = x: no move.
    expected = torch.where(region, x0 - 0.05 * (2 * x0) * x0**2, x0)
    torch.testing.assert_close(x1, expected)
    x2 = projection_step(_ForgetsARegion(region), x1, x0, "l2", lam=0.1, step=0.05)
    # Now x < x0 inside, so the L1 term pulls back: grad 2x - lam.
    torch.testing.assert_close(x2, torch.where(region, x1 - 0.05 * (2 * x1 - 0.1) * x1**2, x0))


@pytest.mark.parametrize("method", ["ae-l2", "ae-ssim"])
def test_projection_lowers_the_energy_it_minimises(method: str, autoencoders, carpet_test) -> None:
    model = load_model(autoencoders[method], "cpu")
    loss = "ssim" if method == "ae-ssim" else "l2"
    settings = ProjectionSettings(iterations=10, every=1)
    scorer = ProjectionScorer(model.module, loss, 32, settings)
    x0 = torch.from_numpy(carpet_test.images[carpet_test.labels == 1][:3])
    energies = []
    with torch.no_grad():
        energies.append(projection_energy(model.module, x0, x0, loss, settings.lam))
        for _ in scorer.iterate(x0):
            energies.append(projection_energy(model.module, scorer.reconstruction, x0, loss, settings.lam))
    energies = torch.stack(energies)  # (T + 1, images)
    assert (energies[1:] <= energies[:-1] + 1e-3).all(), "an iteration raised the energy"
    # A no-op would keep E, a wrong sign would raise it; E sums a per-pixel loss over 32 x 32 pixels.
    assert (energies[-1] < energies[0] - 1.0).all(), f"energy barely fell: {energies[0]} -> {energies[-1]}"
    assert not any(p.requires_grad for p in model.module.parameters())


def test_maps_every_k_iterations_with_valid_ranges(autoencoders, carpet_test) -> None:
    model = load_model(autoencoders["ae-l2"], "cpu")
    scorer = make_scorer(
        model, DetectionSettings(batch_size=5), "ae-l2+proj", ProjectionSettings(iterations=7, every=3)
    )
    maps = list(scorer.iterate(carpet_test.images))
    assert [m.iteration for m in maps] == [3, 6, 7]
    n = len(carpet_test)
    for m in maps:
        assert m.ssim.shape == m.l2.shape == (n, 32, 32)
        assert (m.ssim >= -1e-5).all() and (m.ssim <= 2).all() and (m.l2 >= 0).all() and (m.l2 <= 4).all()
        assert m.generator_passes == m.iteration * n
    assert maps[-1].changed > 0 and maps[-1].l2.max() > 0
    l2 = (torch.from_numpy(carpet_test.images) - scorer.reconstruction).pow(2).mean(dim=1).numpy()
    np.testing.assert_allclose(maps[-1].l2, l2, rtol=1e-6)


def test_larger_images_are_projected_tile_by_tile(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ae"
    train(
        tiny_config(method="ae-l2", image_size=64, crop_size=32, steps=2, ae_width=8),
        tiny_data,
        "screw",
        out,
        progress=False,
    )
    model = load_model(out, "cpu")
    images = load_test_set(
        MVTecCategory(tiny_data, "screw"), MVTecCategory(tiny_data, "screw").test_items()[:2], 64
    ).images
    settings = ProjectionSettings(iterations=3, every=3)
    scorer = make_scorer(model, DetectionSettings(), "ae-l2+proj", settings)
    list(scorer.iterate(images))
    whole = scorer.reconstruction
    corner = make_scorer(model, DetectionSettings(), "ae-l2+proj", settings)
    list(corner.iterate(images[:, :, 32:, :32]))
    torch.testing.assert_close(whole[:, :, 32:, :32], corner.reconstruction)


def test_evaluate_works_unchanged(autoencoders, carpet_test) -> None:
    model = load_model(autoencoders["ae-ssim"], "cpu")
    settings = DetectionSettings()
    scorer = make_scorer(model, settings, "ae-ssim+proj", ProjectionSettings(iterations=4, every=2))
    seen: list[int] = []
    result = evaluate(
        scorer,
        carpet_test.images,
        carpet_test.masks,
        carpet_test.labels,
        settings,
        on_iteration=lambda i, m: seen.append(i),
    )
    assert seen == [2, 4]
    for key in (*AUROC_KEYS, "pro_ssim", "pro_l2"):
        assert 0.0 <= result.report[key] <= 1.0, key


def test_methods_and_settings_are_checked(autoencoders) -> None:
    model = load_model(autoencoders["ae-l2"], "cpu")
    with pytest.raises(ConfigError, match="trained with ae-ssim"):
        make_scorer(model, DetectionSettings(), "ae-ssim+proj")
    with pytest.raises(ConfigError, match="trained with i3ad"):
        make_scorer(model, DetectionSettings(), "i3ad")
    for bad in ({"iterations": 0}, {"lam": -1.0}, {"step": 0.0}, {"every": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ProjectionSettings(**bad)
    assert base_method("ae-ssim+proj") == "ae-ssim" and base_method("i3ad") == "i3ad"


def test_every_method_trains_and_scores_through_the_cli(tiny_data: Path, tmp_path: Path) -> None:
    common = ["--data-root", str(tiny_data), "--category", "carpet"]
    for trained in ("i3ad", "ae-l2", "ae-ssim"):
        assert (
            main(
                [
                    "train",
                    *common,
                    "--out",
                    str(tmp_path / trained),
                    "--method",
                    trained,
                    "--steps",
                    "2",
                    "--image-size",
                    "32",
                    "--batch-size",
                    "2",
                    "--width",
                    "4",
                    "--device",
                    "cpu",
                    "--no-progress",
                ]
            )
            == 0
        )
    runs = {
        "i3ad": ["--iterations", "2", "--patch-size", "4"],
        "ae-l2": [],
        "ae-ssim": [],
        "ae-l2+proj": ["--proj-iterations", "3", "--proj-lambda", "0.2", "--proj-step", "0.1"],
        "ae-ssim+proj": ["--proj-iterations", "2"],
    }
    for method, flags in runs.items():
        report_path = tmp_path / f"{method}.json"
        assert (
            main(
                [
                    "detect",
                    "--model",
                    str(tmp_path / base_method(method)),
                    *common,
                    "--method",
                    method,
                    "--split",
                    "all",
                    "--no-pro",
                    "--device",
                    "cpu",
                    "--out",
                    str(report_path),
                    *flags,
                ]
            )
            == 0
        )
        report = json.loads(report_path.read_text())
        assert report["method"] == method
        assert all(0.0 <= report[k] <= 1.0 for k in AUROC_KEYS)
    assert json.loads((tmp_path / "ae-l2+proj.json").read_text())["projection"]["lam"] == 0.2
    assert (
        main(
            [
                "detect",
                "--model",
                str(tmp_path / "ae-l2"),
                *common,
                "--method",
                "ae-ssim+proj",
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "detect",
                "--model",
                str(tmp_path / "ae-l2"),
                *common,
                "--proj-step",
                "0.1",
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
        == 2
    )
