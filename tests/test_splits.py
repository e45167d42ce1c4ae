"""Validation/test split: stratified, disjoint, complete, seeded and identical on every machine."""

from pathlib import Path

import pytest

from i3ad.data import TestItem, split_test_items
from i3ad.errors import ConfigError

GROUPS = {"good": 7, "crack": 5, "hole": 3, "scratch": 2, "rare": 1}


def _items(root: str = "/data/cat") -> list[TestItem]:
    items = []
    for defect, n in GROUPS.items():
        for i in range(n):
            path = Path(root) / "test" / defect / f"{i:03d}.png"
            mask = None if defect == "good" else Path(root) / "ground_truth" / defect / f"{i:03d}_mask.png"
            items.append(TestItem(path, mask, defect, int(defect != "good")))
    return items


def _names(items: list[TestItem]) -> list[str]:
    return [f"{i.defect}/{i.path.name}" for i in items]


def test_disjoint_and_complete():
    items = _items()
    split = split_test_items(items)
    assert set(split) == {"val", "test"}
    val, test = set(split["val"]), set(split["test"])
    assert not val & test and val | test == set(items)


def test_stratified_with_at_least_one_per_side():
    split = split_test_items(_items(), val_fraction=0.5)
    for defect, n in GROUPS.items():
        n_val = sum(i.defect == defect for i in split["val"])
        n_test = sum(i.defect == defect for i in split["test"])
        assert n_val + n_test == n
        if n >= 2:
            assert n_val >= 1 and n_test >= 1
            assert abs(n_val - n / 2) <= 0.5
    extreme = split_test_items(_items(), val_fraction=0.05)
    assert all(sum(i.defect == d for i in extreme["val"]) >= 1 for d, n in GROUPS.items() if n >= 2)


def test_sorted_by_path_and_stable():
    items = _items()
    split = split_test_items(items, seed=7)
    for part in split.values():
        assert [i.path.as_posix() for i in part] == sorted(i.path.as_posix() for i in part)
    assert split_test_items(list(reversed(items)), seed=7) == split  # input order does not matter
    assert _names(split_test_items(_items("/elsewhere/x"), seed=7)["val"]) == _names(split["val"])  # nor the root


def test_seed_changes_split():
    assert split_test_items(_items(), seed=0) != split_test_items(_items(), seed=1)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="val_fraction"):
        split_test_items(_items(), val_fraction=fraction)


def test_golden_split():
    """Hard-coded expectation: a change here means splits differ across versions or machines."""
    split = split_test_items(_items(), val_fraction=0.5, seed=0)
    assert _names(split["val"]) == GOLDEN_VAL
    assert _names(split["test"]) == GOLDEN_TEST


GOLDEN_VAL = [
    "crack/001.png",
    "crack/002.png",
    "crack/003.png",
    "good/000.png",
    "good/001.png",
    "good/004.png",
    "good/006.png",
    "hole/001.png",
    "hole/002.png",
    "rare/000.png",
    "scratch/001.png",
]
GOLDEN_TEST = [
    "crack/000.png",
    "crack/004.png",
    "good/002.png",
    "good/003.png",
    "good/005.png",
    "hole/000.png",
    "scratch/000.png",
]
