"""MVTec-layout reader: layout validation, clear errors, grayscale/RGB reading, resizing, crops."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from i3ad.data import MVTecCategory, TrainImages, load_image, load_mask, load_test_set
from i3ad.errors import ConfigError, DatasetError


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    shape = (size, size) if channels == 1 else (size, size, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _make_category(
    root: Path,
    name: str = "thing",
    channels: int = 3,
    size: int = 40,
    n_train: int = 3,
    defects: dict[str, int] | None = None,
) -> Path:
    """Write a tiny MVTec-layout category; defect masks are a square in the top-left corner."""
    rng = np.random.default_rng(0)
    defects = {"good": 2, "crack": 2} if defects is None else defects
    folder = root / name
    for i in range(n_train):
        _save(folder / "train" / "good" / f"{i:03d}.png", _image(rng, size, channels))
    for defect, n in defects.items():
        for i in range(n):
            _save(folder / "test" / defect / f"{i:03d}.png", _image(rng, size, channels))
            if defect != "good":
                mask = np.zeros((size, size), np.uint8)
                mask[: size // 4, : size // 4] = 255
                _save(folder / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return folder


# ----------------------------------------------------------------------------- layout errors


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        MVTecCategory(tmp_path / "nowhere", "thing")


def test_missing_category_lists_existing(tmp_path):
    _make_category(tmp_path, "bottle")
    _make_category(tmp_path, "cable")
    with pytest.raises(DatasetError) as err:
        MVTecCategory(tmp_path, "carpet")
    message = str(err.value)
    assert "'carpet'" in message and "bottle, cable" in message


def test_missing_train_good(tmp_path):
    folder = _make_category(tmp_path)
    for p in (folder / "train" / "good").iterdir():
        p.unlink()
    (folder / "train" / "good").rmdir()
    with pytest.raises(DatasetError, match=r"train[/\\]good"):
        MVTecCategory(tmp_path, "thing")


def test_missing_test_folder(tmp_path):
    folder = _make_category(tmp_path, defects={})
    with pytest.raises(DatasetError) as err:
        MVTecCategory(tmp_path, "thing")
    assert str(folder / "test") in str(err.value)


def test_empty_train_folder(tmp_path):
    folder = _make_category(tmp_path, n_train=0)
    (folder / "train" / "good").mkdir(parents=True)
    (folder / "train" / "good" / "notes.txt").write_text("not an image")
    category = MVTecCategory(tmp_path, "thing")
    with pytest.raises(DatasetError, match="contains no images") as err:
        category.train_paths()
    assert str(folder / "train" / "good") in str(err.value)


def test_empty_defect_folder(tmp_path):
    folder = _make_category(tmp_path)
    (folder / "test" / "hole").mkdir()
    with pytest.raises(DatasetError, match="contains no images") as err:
        MVTecCategory(tmp_path, "thing").test_items()
    assert str(folder / "test" / "hole") in str(err.value)


def test_missing_mask_names_expected_path(tmp_path):
    folder = _make_category(tmp_path)
    expected = folder / "ground_truth" / "crack" / "001_mask.png"
    expected.unlink()
    with pytest.raises(DatasetError) as err:
        MVTecCategory(tmp_path, "thing").test_items()
    assert str(expected) in str(err.value)
    assert str(folder / "test" / "crack" / "001.png") in str(err.value)


def test_mask_size_mismatch_names_both_files(tmp_path):
    folder = _make_category(tmp_path, size=40)
    mask_path = folder / "ground_truth" / "crack" / "000_mask.png"
    _save(mask_path, np.zeros((30, 36), np.uint8))
    category = MVTecCategory(tmp_path, "thing")
    with pytest.raises(DatasetError) as err:
        load_test_set(category, category.test_items(), 32)  # resizing must not hide the mismatch
    message = str(err.value)
    assert str(mask_path) in message and str(folder / "test" / "crack" / "000.png") in message
    assert "36x30" in message and "40x40" in message


def test_truncated_png(tmp_path):
    folder = _make_category(tmp_path)
    bad = folder / "test" / "good" / "001.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    category = MVTecCategory(tmp_path, "thing")
    with pytest.raises(DatasetError) as err:
        load_test_set(category, category.test_items(), None)
    assert str(bad) in str(err.value) and "re-download" in str(err.value)


def test_garbage_file_with_image_suffix(tmp_path):
    folder = _make_category(tmp_path)
    bad = folder / "train" / "good" / "000.png"
    bad.write_bytes(b"definitely not a png")
    category = MVTecCategory(tmp_path, "thing")
    with pytest.raises(DatasetError, match="cannot read image file"):
        _ = category.channels
    with pytest.raises(DatasetError, match="cannot read image file"):
        load_image(bad, 16, 3)


# ----------------------------------------------------------------------------- reading


def test_listing_suffixes_sorted_and_labels(tmp_path):
    folder = _make_category(tmp_path, n_train=0, defects={"good": 1, "crack": 1})
    rng = np.random.default_rng(1)
    train = folder / "train" / "good"
    for name in ("b.JPG", "a.png", "c.Bmp", "d.tif", "e.jpeg"):
        _save(train / name, _image(rng, 16, 3))
    (train / "._a.png").write_bytes(b"macOS resource fork")
    (train / "readme.md").write_text("x")
    category = MVTecCategory(tmp_path, "thing")
    assert [p.name for p in category.train_paths()] == ["a.png", "b.JPG", "c.Bmp", "d.tif", "e.jpeg"]
    items = category.test_items()
    assert [(i.defect, i.label, i.mask_path is None) for i in items] == [("crack", 1, False), ("good", 0, True)]
    assert items[0].mask_path == folder / "ground_truth" / "crack" / "000_mask.png"


def test_rgb_test_set(tmp_path):
    _make_category(tmp_path, channels=3, size=40, defects={"good": 2, "crack": 3})
    category = MVTecCategory(tmp_path, "thing")
    assert category.channels == 3
    test = load_test_set(category, category.test_items(), 32)
    assert test.images.shape == (5, 3, 32, 32) and test.images.dtype == np.float32
    assert test.images.min() >= -1 and test.images.max() <= 1
    assert test.masks.shape == (5, 32, 32) and test.masks.dtype == bool
    assert test.labels.tolist() == [1, 1, 1, 0, 0]
    assert test.defects == ["crack"] * 3 + ["good"] * 2
    assert len(test) == 5 and test.paths[0].name == "000.png"
    assert test.masks[:3, :8, :8].all() and test.masks[:3].sum() == 3 * 64  # nearest: exact 1/4 square
    assert not test.masks[3:].any()


def test_grayscale_category_and_conversion(tmp_path):
    folder = _make_category(tmp_path, channels=1, size=24)
    # An RGB file inside a grayscale category is converted to one channel.
    _save(folder / "test" / "good" / "009.png", np.zeros((24, 24, 3), np.uint8))
    category = MVTecCategory(tmp_path, "thing")
    assert category.channels == 1
    test = load_test_set(category, category.test_items(), None)
    assert test.images.shape == (5, 1, 24, 24)
    assert np.all(test.images[-1] == -1)


def test_sixteen_bit_grayscale_is_rescaled(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    array = load_image(path, None, 1)
    assert array.shape == (1, 8, 8) and np.allclose(array, 1.0)


def test_value_mapping_and_resize(tmp_path):
    path = tmp_path / "img.png"
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[..., 0] = 255
    _save(path, pixels)
    native = load_image(path, None, 3)
    assert native.shape == (3, 20, 30)
    assert np.all(native[0] == 1) and np.all(native[1:] == -1)
    assert load_image(path, 16, 3).shape == (3, 16, 16)
    assert load_image(path, 16, 1).shape == (1, 16, 16)


def test_mask_binarised_and_nearest(tmp_path):
    path = tmp_path / "m.png"
    mask = np.zeros((10, 10), np.uint8)
    mask[:, :5] = 200
    mask[:, 5:] = 100  # below the 127 threshold
    _save(path, mask)
    out = load_mask(path, 20, (10, 10))
    assert out.dtype == bool and out.shape == (20, 20)
    assert out[:, :10].all() and not out[:, 10:].any()
    with pytest.raises(DatasetError, match="10x10"):
        load_mask(path, None, (12, 12))


# ----------------------------------------------------------------------------- training dataset


def test_train_images_whole(tmp_path):
    _make_category(tmp_path, channels=3, size=40, n_train=3)
    data = TrainImages(MVTecCategory(tmp_path, "thing"), image_size=32, crop_size=None, seed=0)
    assert len(data) == 3 and data.channels == 3
    item = data[0]
    assert isinstance(item, torch.Tensor) and item.dtype == torch.float32 and item.shape == (3, 32, 32)
    assert torch.equal(item, data[0])
    with pytest.raises(IndexError):
        data[3]


def test_train_images_crops(tmp_path):
    _make_category(tmp_path, channels=1, size=40, n_train=2)
    category = MVTecCategory(tmp_path, "thing")
    a = TrainImages(category, image_size=32, crop_size=12, seed=5)
    b = TrainImages(category, image_size=32, crop_size=12, seed=5)
    crops_a = [a[i % 2] for i in range(8)]
    crops_b = [b[i % 2] for i in range(8)]
    for x, y in zip(crops_a, crops_b, strict=True):
        assert x.shape == (1, 12, 12) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
        assert torch.equal(x, y)  # same seed, same sequence of crops
    assert any(not torch.equal(crops_a[0], c) for c in crops_a[2::2])  # repeated reads give new crops
    other = TrainImages(category, image_size=32, crop_size=12, seed=6)
    assert any(not torch.equal(x, other[i % 2]) for i, x in enumerate(crops_a))
    a.set_epoch(1)
    b.set_epoch(1)
    assert torch.equal(a[0], b[0])


def test_train_images_bad_crop(tmp_path):
    _make_category(tmp_path)
    with pytest.raises(ConfigError, match="crop_size"):
        TrainImages(MVTecCategory(tmp_path, "thing"), image_size=32, crop_size=64, seed=0)
