"""Synthetic MVTec-like generator: layout, determinism, exact masks, provenance and caching."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from i3ad.data import SYNTHETIC_CATEGORIES, MVTecCategory, ensure_dataset, load_test_set, make_dataset
from i3ad.data.synthetic import DEFECT_SETS, GENERATOR_VERSION, render_sample
from i3ad.errors import ConfigError, DatasetError
from studies import data as studies_data

SMALL = {"size": 32, "n_train": 2, "n_test_good": 2, "n_test_per_defect": 2}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    make_dataset(out, seed=3, **SMALL)
    return out


def test_category_catalogue():
    specs = SYNTHETIC_CATEGORIES.values()
    assert sum(s.kind == "texture" for s in specs) >= 3
    assert sum(s.kind == "object" for s in specs) >= 2
    assert any(s.channels == 1 for s in specs) and any(s.channels == 3 for s in specs)
    assert SYNTHETIC_CATEGORIES["screw"].channels == 1
    for spec in specs:
        assert spec.kind in ("texture", "object") and len(set(spec.defects)) >= 3 and "good" not in spec.defects
        assert len(spec.colour) >= 3 and not set(spec.colour) & set(spec.structural)
        assert len(spec.structural) >= (3 if spec.kind == "texture" else 1)
        assert [spec.defect_kinds(d) for d in DEFECT_SETS] == [spec.structural, spec.colour, spec.defects]


def test_layout_read_by_mvtec_reader(small_dataset):
    for name, spec in SYNTHETIC_CATEGORIES.items():
        category = MVTecCategory(small_dataset, name)
        assert category.channels == spec.channels
        assert len(category.train_paths()) == 2
        items = category.test_items()
        assert sorted({i.defect for i in items}) == sorted(spec.defects + ("good",))
        assert not (small_dataset / name / "ground_truth" / "good").exists()
        test = load_test_set(category, items, None)
        assert test.images.shape == (len(items), spec.channels, 32, 32)
        for mask, label in zip(test.masks, test.labels, strict=True):
            assert mask.any() == bool(label)  # every defect image has a non-empty mask, good ones none


def test_mask_files_are_binary_and_good_images_have_none(small_dataset):
    for name in SYNTHETIC_CATEGORIES:
        for mask_path in (small_dataset / name / "ground_truth").rglob("*.png"):
            with Image.open(mask_path) as img:
                assert img.mode == "L"
                assert set(np.unique(np.asarray(img))) == {0, 255}
        assert all(not p.name.endswith("_mask.png") for p in (small_dataset / name / "test" / "good").iterdir())


def test_provenance_files(small_dataset):
    info = json.loads((small_dataset / "synthetic.json").read_text())
    assert info["seed"] == 3 and info["size"] == 32 and info["generator_version"] == GENERATOR_VERSION
    assert set(info["categories"]) == set(SYNTHETIC_CATEGORIES)
    assert "numpy_version" in info and "seed 3" in (small_dataset / "README.txt").read_text()


@pytest.mark.parametrize("name", sorted(SYNTHETIC_CATEGORIES))
def test_masks_are_exactly_the_changed_pixels(name):
    spec = SYNTHETIC_CATEGORIES[name]
    for k, defect in enumerate(spec.colour):
        for index in range(2):
            normal, image, mask = render_sample(name, 48, np.random.default_rng([k, index]), defect)
            assert normal.shape == image.shape == (48, 48, spec.channels)
            assert mask.any()
            np.testing.assert_array_equal(mask, np.any(normal != image, axis=-1))
            # Visible: the changed pixels move on average by a clearly perceptible amount.
            assert np.abs(image.astype(int) - normal.astype(int))[mask].mean() > 20
    normal, image, mask = render_sample(name, 48, np.random.default_rng(0), None)
    assert np.array_equal(normal, image) and not mask.any()


def _region_statistics(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(|mean inside - mean of reference| / std of reference, std inside / std of reference), on grey levels."""
    inside = image.astype(float).mean(axis=-1)[mask]
    return abs(inside.mean() - reference.mean()) / reference.std(), inside.std() / reference.std()


# Statistics kept: on textures the defect patch against a 6 px ring of texture around it; on objects (whose
# surroundings are another material) against the same pixels of the clean render. Tolerance: means within
# one standard deviation of the reference, standard deviations within a factor 1.5. Colour kinds break it
# by design (a hole on carpet: about 3.3 standard deviations darker, a sixth of the contrast).
MEAN_TOLERANCE, STD_FACTOR = 1.0, 1.5


@pytest.mark.parametrize("name", sorted(SYNTHETIC_CATEGORIES))
def test_structural_defects_keep_statistics_and_change_only_the_mask(name):
    spec = SYNTHETIC_CATEGORIES[name]
    for k, defect in enumerate(spec.structural):
        for index in range(3):
            normal, image, mask = render_sample(name, 64, np.random.default_rng([k, index, 14]), defect)
            assert image.shape == normal.shape == (64, 64, spec.channels) and mask.any()
            np.testing.assert_array_equal(image[~mask], normal[~mask])  # nothing changes outside the mask
            assert np.any(image != normal, axis=-1)[mask].mean() >= 0.25
            if spec.kind == "texture":
                ring = ndimage.binary_dilation(mask, iterations=6) & ~mask
                reference = image.astype(float).mean(axis=-1)[ring]
            else:
                reference = normal.astype(float).mean(axis=-1)[mask]
            mean_gap, std_ratio = _region_statistics(image, reference, mask)
            assert mean_gap <= MEAN_TOLERANCE, (defect, index, mean_gap)
            assert 1 / STD_FACTOR <= std_ratio <= STD_FACTOR, (defect, index, std_ratio)


def test_statistics_tolerance_catches_colour_defects():
    normal, image, mask = render_sample("carpet", 64, np.random.default_rng(0), "hole")
    ring = ndimage.binary_dilation(mask, iterations=6) & ~mask
    mean_gap, std_ratio = _region_statistics(image, image.astype(float).mean(axis=-1)[ring], mask)
    assert mean_gap > MEAN_TOLERANCE and std_ratio < 1 / STD_FACTOR


def test_every_kind_renders_at_the_smallest_size():
    for name, spec in SYNTHETIC_CATEGORIES.items():
        for defect in spec.defects:
            _, _, mask = render_sample(name, 32, np.random.default_rng(5), defect)
            assert mask.any()


def test_defect_sets_choose_the_folders(tmp_path):
    out = ensure_dataset(tmp_path, categories=["wood", "screw"], defects="structural", **SMALL)
    for name in ("wood", "screw"):
        spec = SYNTHETIC_CATEGORIES[name]
        assert sorted(p.name for p in (out / name / "test").iterdir()) == sorted(spec.structural + ("good",))
        assert sorted(p.name for p in (out / name / "ground_truth").iterdir()) == sorted(spec.structural)
    info = json.loads((out / "synthetic.json").read_text())
    assert info["defects"] == "structural" and info["categories"]["screw"]["structural"] == [
        "thread_dislocation",
        "stretched_thread",
    ]
    ensure_dataset(tmp_path, categories=["wood"], defects="colour", **SMALL)  # another set regenerates
    assert sorted(p.name for p in (out / "wood" / "test").iterdir()) == sorted(
        SYNTHETIC_CATEGORIES["wood"].colour + ("good",)
    )
    with pytest.raises(ConfigError, match="defects must be one of structural, colour, all"):
        make_dataset(tmp_path / "x", defects="shape", **SMALL)


def test_normal_images_vary():
    for name in SYNTHETIC_CATEGORIES:
        a, _, _ = render_sample(name, 32, np.random.default_rng(1))
        b, _, _ = render_sample(name, 32, np.random.default_rng(2))
        assert not np.array_equal(a, b)


def test_deterministic_bytes_and_seed_matters(tmp_path, small_dataset):
    again = tmp_path / "again"
    make_dataset(again, seed=3, **SMALL)
    assert _files(again) == _files(small_dataset)
    other = tmp_path / "other"
    make_dataset(other, seed=4, categories=["wood"], **SMALL)
    assert (other / "wood/train/good/000.png").read_bytes() != (small_dataset / "wood/train/good/000.png").read_bytes()


def test_category_subset_and_unknown_name(tmp_path):
    assert make_dataset(tmp_path / "d", categories=["screw"], **SMALL) == ["screw"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir() if p.is_dir()) == ["screw"]
    with pytest.raises(DatasetError, match="available: carpet"):
        make_dataset(tmp_path / "e", categories=["bottle"], **SMALL)
    with pytest.raises(ConfigError):
        make_dataset(tmp_path / "f", size=8)


def test_never_overwrites_foreign_folder(tmp_path):
    (tmp_path / "carpet" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="not written by the synthetic generator"):
        make_dataset(tmp_path, categories=["carpet"], **SMALL)
    assert (tmp_path / "carpet" / "train").is_dir()


def test_regeneration_replaces_stale_files(tmp_path):
    make_dataset(tmp_path, categories=["nut"], **{**SMALL, "n_train": 3})
    make_dataset(tmp_path, categories=["nut"], **SMALL)
    assert len(list((tmp_path / "nut/train/good").iterdir())) == 2


def test_ensure_dataset_is_a_no_op_when_matching(tmp_path):
    out = ensure_dataset(tmp_path, seed=1, categories=["tile"], **SMALL)
    stamp = (out / "synthetic.json").stat().st_mtime_ns
    image = out / "tile/train/good/000.png"
    image_stamp = image.stat().st_mtime_ns
    ensure_dataset(tmp_path, seed=1, categories=["tile"], **SMALL)
    assert (out / "synthetic.json").stat().st_mtime_ns == stamp and image.stat().st_mtime_ns == image_stamp
    # Interrupted generation (no synthetic.json) or other settings regenerate.
    (out / "synthetic.json").unlink()
    ensure_dataset(tmp_path, seed=1, categories=["tile"], **SMALL)
    assert json.loads((out / "synthetic.json").read_text())["seed"] == 1
    ensure_dataset(tmp_path, seed=2, categories=["tile"], **SMALL)
    assert json.loads((out / "synthetic.json").read_text())["seed"] == 2


def test_ensure_synthetic_generates_one_caller_at_a_time(tmp_path, monkeypatch):
    inside, overlaps = [], []

    def slow_ensure(root, **kwargs):
        overlaps.append(len(inside))
        inside.append(1)
        time.sleep(0.2)
        inside.pop()
        return root

    monkeypatch.setattr(studies_data, "ensure_dataset", slow_ensure)
    root = tmp_path / "cache" / "synthetic"
    workers = [threading.Thread(target=studies_data.ensure_synthetic, args=(root, {}, ["nut"])) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert overlaps == [0, 0, 0]
    assert (tmp_path / "cache" / ".synthetic.lock").exists()


def test_make_data_command_takes_the_defect_set(tmp_path, capsys):
    from i3ad.cli import main

    assert main(["make-data", str(tmp_path), "--size", "32", "--categories", "nut", "--defects", "structural"]) == 0
    assert sorted(p.name for p in (tmp_path / "nut" / "test").iterdir()) == ["good", "scaled_rings"]
    assert "structural defect kinds" in capsys.readouterr().out
