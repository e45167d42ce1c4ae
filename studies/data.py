"""Where a sweep's images come from: the data root, category kinds, validation / held-out splits."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from i3ad.config_file import read_yaml
from i3ad.data import SYNTHETIC_CATEGORIES, MVTecCategory, TestSet, ensure_dataset, load_test_set, split_test_items
from i3ad.errors import ConfigError, DatasetError

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


USER_KINDS = ("texture", "object")
KINDS_FILE = "kinds.yaml"  # in a data root: `category: texture | object`, the kinds of a user's own categories


def category_kind(name: str, synthetic: bool, kinds: dict[str, str] | None = None) -> str:
    """`texture`, `object` or `unknown`, for per-kind settings and the MLflow tag (`tracking.compare` groups by it).

    `kinds` (from `data.kinds` and the data root's kinds.yaml, see `user_kinds`) comes first, then the built-in
    synthetic categories and MVTec AD's names; any other category is `unknown`.
    """
    if kinds and name in kinds:
        return kinds[name]
    if synthetic and name in SYNTHETIC_CATEGORIES:
        return SYNTHETIC_CATEGORIES[name].kind
    return MVTEC_KINDS.get(name, "unknown")


def user_kinds(config: SweepConfig, root: Path) -> dict[str, str]:
    """Category kinds a user gave: the data root's kinds.yaml, overridden by the config's `data.kinds`."""
    path = Path(root) / KINDS_FILE
    found: dict[str, str] = {}
    if path.is_file():
        values = read_yaml(path)
        for name, kind in values.items():
            if not isinstance(name, str) or kind not in USER_KINDS:
                raise ConfigError(
                    f"{path}: {name!r}: {kind!r} is not a category kind; write one `category: texture` or "
                    f"`category: object` line per category"
                )
        found = dict(values)
    return {**found, **config.data.kinds}


def check_data(config: SweepConfig, workdir: Path) -> None:
    """The data root, every category and the kinds file exist and read; run before a sweep creates anything."""
    root, synthetic = resolve_root(config, workdir)
    if synthetic:
        unknown = [name for name in config.categories if name not in SYNTHETIC_CATEGORIES]
        if unknown:
            raise DatasetError(
                f"unknown synthetic categor{'ies' if len(unknown) > 1 else 'y'} {', '.join(map(repr, unknown))}; "
                f"available: {', '.join(SYNTHETIC_CATEGORIES)} (or give --data-root for your own images)"
            )
        return
    for name in config.categories:
        MVTecCategory(root, name)  # names the missing root or category and lists the ones there
    user_kinds(config, root)


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
