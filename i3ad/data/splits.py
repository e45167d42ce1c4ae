"""Seeded, stratified, machine-stable split of a category's test images into validation and test parts."""

from __future__ import annotations

import hashlib
from collections import defaultdict

from i3ad.data.mvtec import TestItem
from i3ad.errors import ConfigError


def _rank(seed: int, item: TestItem) -> tuple[str, str]:
    key = f"{seed}:{item.defect}/{item.path.name}".encode()
    return hashlib.sha256(key).hexdigest(), item.path.as_posix()


def split_test_items(items: list[TestItem], val_fraction: float = 0.5, seed: int = 0) -> dict[str, list[TestItem]]:
    """Split test items into ``{"val": [...], "test": [...]}``, stratified by defect type.

    Search decisions (threshold, patch size, iterations) use ``val``; only the final report uses ``test``.

    Within each defect group the items are ordered by the SHA-256 of ``f"{seed}:{defect}/{filename}"``
    (no Python ``hash`` or global RNG, so the split is the same on every machine and run, and does not
    depend on where the dataset lives) and the first ``round(n * val_fraction)`` (half rounded up) go to
    ``val``. A group of two or more items always puts at least one item in each part; a single-item group
    goes wherever the rounding puts it. Each part is returned sorted by path.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}.")
    groups: dict[str, list[TestItem]] = defaultdict(list)
    for item in items:
        groups[item.defect].append(item)
    val: list[TestItem] = []
    test: list[TestItem] = []
    for defect in sorted(groups):
        group = sorted(groups[defect], key=lambda item: _rank(seed, item))
        n = len(group)
        n_val = int(n * val_fraction + 0.5)
        if n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        val.extend(group[:n_val])
        test.extend(group[n_val:])

    def by_path(item: TestItem) -> str:
        return item.path.as_posix()

    return {"val": sorted(val, key=by_path), "test": sorted(test, key=by_path)}
