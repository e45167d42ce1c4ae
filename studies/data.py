"""Where a sweep's images come from: the data root, category kinds, validation / held-out splits."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from i3ad.data import SYNTHETIC_CATEGORIES, MVTecCategory, TestSet, ensure_dataset, load_test_set, split_test_items

if TYPE_CHECKING:
    from studies.config import SweepConfig

MVTEC_KINDS = {
    **{name: "texture" for name in ("carpet", "grid", "leather", "tile", "wood")},
    **{
        name: "object"
        for name in (
            "bottle",
            "cable",
            "capsule",
            "hazelnut",
            "metal_nut",
            "pill",
            "screw",
            "toothbrush",
            "transistor",
            "zipper",
        )
    },
}


def category_kind(name: str, synthetic: bool) -> str:
    """`texture`, `object` or `unknown` (own categories), for per-kind settings and the MLflow tag."""
    if synthetic and name in SYNTHETIC_CATEGORIES:
        return SYNTHETIC_CATEGORIES[name].kind
    return MVTEC_KINDS.get(name, "unknown")


def ensure_synthetic(root: Path, params: dict[str, Any], categories: list[str]) -> Path:
    """Generate (or reuse) the synthetic set; safe to call from several processes of one machine.

    Trials call it too: on a multi-node cluster without shared storage each node then writes the
    same deterministic images instead of assuming the driver's disk.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    # An exclusive lock, so trials sharing a node do not generate the same data at once.
    with FileLock(root.parent / f".{root.name}.lock"):
        return ensure_dataset(root, categories=categories, **params)


def resolve_root(config: SweepConfig, workdir: Path) -> tuple[Path, bool]:
    """(data root, synthetic?) from `data.root`; relative roots are taken from the current folder."""
    root = config.data.root
    if root is None:
        return (workdir / "data" / "synthetic").resolve(), True
    return Path(root).expanduser().resolve(), False


def split(category: MVTecCategory, val_fraction: float, seed: int) -> dict[str, list]:
    """The category's test items split into `val` (search decisions) and `test` (reported once)."""
    return split_test_items(category.test_items(), val_fraction=val_fraction, seed=seed)


def load_split(root: Path, name: str, items: list, image_size: int) -> TestSet:
    """Decode one split of a category at the model's image size."""
    return load_test_set(MVTecCategory(root, name), items, image_size)
