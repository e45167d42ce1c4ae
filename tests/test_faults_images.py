"""Fault suite, images: the colour mode comes from the whole category; 16-bit images convert without a wide copy."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from i3ad.data import MVTecCategory, load_image
from i3ad.errors import DatasetError


def _category(root: Path, modes: list[str]) -> Path:
    good = root / "c" / "train" / "good"
    good.mkdir(parents=True)
    (root / "c" / "test" / "good").mkdir(parents=True)
    for index, mode in enumerate(modes):
        Image.new(mode, (8, 8), 100 if mode in ("L", "I;16") else (100, 50, 25)).save(good / f"{index:03d}.png")
    return root


def test_one_grey_image_first_does_not_turn_a_colour_category_grey(tmp_path: Path) -> None:
    root = _category(tmp_path, ["L", "RGB", "RGB", "RGB"])  # the grey one sorts first
    with pytest.warns(UserWarning, match=r"mixes grey \(1\) and colour \(3\).*000.png.*read as colour"):
        assert MVTecCategory(root, "c").channels == 3
    with pytest.raises(DatasetError, match="mixes grey"):
        _ = MVTecCategory(root, "c", strict=True).channels


def test_one_colour_image_in_a_grey_category_warns_and_the_majority_wins(tmp_path: Path) -> None:
    root = _category(tmp_path, ["RGB", "I;16", "L", "L"])
    with pytest.warns(UserWarning, match="read as grey"):
        assert MVTecCategory(root, "c").channels == 1


def test_a_uniform_category_does_not_warn(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    assert MVTecCategory(_category(tmp_path, ["I;16", "L"]), "c").channels == 1
    assert not recwarn.list


def test_sixteen_bit_image_converts_without_a_float64_copy(tmp_path: Path) -> None:
    side = 1024
    values = (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16).reshape(side, side)
    path = tmp_path / "wide.png"
    Image.fromarray(values).save(path)
    tracemalloc.start()
    try:
        image = load_image(path, None, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.shape == (1, side, side)
    np.testing.assert_allclose(image[0, 0, :3], np.rint(values[0, :3] / 65535 * 255) / 127.5 - 1, atol=1e-6)
    # Measured: 9 B/px now (the float32 result and its one temporary); the float64 conversion peaked at 24 B/px.
    assert peak < side * side * 12, f"peak {peak / 2**20:.1f} MiB"
