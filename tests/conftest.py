"""Shared fixtures: a tiny synthetic dataset and a tiny trained inpainter (built once per session)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import ray
import torch

from i3ad.data import make_dataset
from i3ad.precision import CPU_BF16_ENV
from i3ad.train import TrainConfig, train

torch.set_num_threads(1)
# "auto" precision means fp32 in the tests on every CPU (set before Ray starts, so its workers inherit it):
# the fast path's tests compare it with the fp32 reference loop; bf16 is tested where a test asks for it.
os.environ.setdefault(CPU_BF16_ENV, "0")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32-px synthetic carpet (RGB texture) and screw (grayscale object), few images."""
    root = tmp_path_factory.mktemp("data")
    # The colour kinds: three per category, as many test images as the tests were written for.
    make_dataset(
        root,
        size=32,
        seed=0,
        categories=["carpet", "screw"],
        n_train=8,
        n_test_good=4,
        n_test_per_defect=2,
        defects="colour",
    )
    return root


def tiny_config(**overrides) -> TrainConfig:
    """A training config small enough for a test: width 4, 32 px, a few steps."""
    values = dict(steps=6, batch_size=2, image_size=32, width=4, log_every=2, checkpoint_every=3, device="cpu")
    values["gan_warmup"] = 3  # I3AD: steps 1-3 L1 only, 4-6 adversarial, so both phases run
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def tiny_model(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny I3AD model folder trained for a few steps on `carpet`."""
    out = tmp_path_factory.mktemp("model") / "carpet"
    train(tiny_config(), tiny_data, "carpet", out, progress=False)
    return out


@pytest.fixture(scope="module")
def local_ray():
    """One real local Ray instance (2 CPUs) for a whole test module: starting one costs seconds."""
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        object_store_memory=200 * 2**20,
    )
    yield
    ray.shutdown()
