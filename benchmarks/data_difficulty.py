"""How hard the synthetic defects are for detectors that learn nothing (issue 14's statement of difficulty).

Per category and defect kind, the image AUROC (good test images against that kind's images) with its 95%
stratified bootstrap interval (`i3ad.intervals`) of two no-learning detectors fitted on `train/good`:

- **reference** (`i3ad.scorers.reference`): deviation of a 7 x 7 window's mean and of its contrast from the
  training images' statistics, two maps; each is its own detector (`ref mean`, `ref contrast`), image
  score = the map's largest value.
- **mean colour**: the distance of each pixel's 5 x 5 mean colour from the training images' mean colour,
  per channel in units of the training spread of that local mean; image score = its largest value.

Structural kinds should sit near chance (target <= 0.70 on every texture): their colour and contrast are
those of the texture, so only a model of the texture's structure can find them. Colour kinds may stay easy.
The data is the built-in set as `make-data --defects all` writes it at the quick study's size (64 px).

    python benchmarks/data_difficulty.py                       # 64 px, 40 train, 30 good, 30 per kind
    python benchmarks/data_difficulty.py --size 128 --categories carpet,wood
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from i3ad.data import SYNTHETIC_CATEGORIES, MVTecCategory, ensure_dataset, load_image, load_test_set
from i3ad.intervals import Interval, image_auroc_interval
from i3ad.metrics import image_auroc
from i3ad.scorers.reference import WINDOW, fit_reference

TARGET = 0.70  # structural kinds: both detectors at or below this image AUROC on every texture


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/data_difficulty"))
    parser.add_argument("--size", type=int, default=64, help="image size (default 64, the quick study's)")
    parser.add_argument("--categories", help="comma-separated subset (default: all synthetic categories)")
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-test-good", type=int, default=30)
    parser.add_argument("--n-test-per-defect", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the table here")
    return parser.parse_args()


class MeanColourDistance:
    """Largest distance of a local mean colour from the training mean colour, per channel in training spreads."""

    def __init__(self, window: int = 5) -> None:
        self.window = window

    def _local_means(self, images: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(images, size=(1, 1, self.window, self.window), mode="reflect")

    def fit(self, train: np.ndarray) -> MeanColourDistance:
        means = self._local_means(train)
        self.mean_ = means.mean(axis=(0, 2, 3), keepdims=True)
        self.std_ = means.std(axis=(0, 2, 3), keepdims=True) + 1e-6
        return self

    def scores(self, images: np.ndarray) -> dict[str, np.ndarray]:
        z = (self._local_means(images) - self.mean_) / self.std_
        return {"mean colour": np.sqrt((z**2).sum(axis=1)).max(axis=(1, 2))}


class ReferenceDetector:
    """The no-learning reference of issue 13 (`i3ad.scorers.reference`): its mean and contrast maps."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window

    def fit(self, train: np.ndarray) -> ReferenceDetector:
        self.stats_ = fit_reference(train, window=self.window)
        return self

    def scores(self, images: np.ndarray) -> dict[str, np.ndarray]:
        mean_dev, contrast_dev = (np.asarray(m) for m in self.stats_.maps(images))
        return {"ref mean": mean_dev.max(axis=(1, 2)), "ref contrast": contrast_dev.max(axis=(1, 2))}


def _cell(value: float, interval: Interval) -> str:
    return f"{value:.2f} {interval}"


def main() -> int:
    args = parse_args()
    names = [c.strip() for c in args.categories.split(",")] if args.categories else list(SYNTHETIC_CATEGORIES)
    root = ensure_dataset(
        args.workdir / f"synthetic-{args.size}",
        size=args.size,
        seed=args.seed,
        categories=names,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_per_defect=args.n_test_per_defect,
        defects="all",
    )
    detectors = (ReferenceDetector, MeanColourDistance)
    columns = ["ref mean", "ref contrast", "mean colour"]
    rows, failures = [], []
    header = f"{'category':8} {'defect':20} {'set':10}" + "".join(f" {name:>20}" for name in columns)
    print(header)
    print("-" * len(header))
    for name in names:
        spec = SYNTHETIC_CATEGORIES[name]
        category = MVTecCategory(root, name)
        train = np.stack([load_image(p, None, spec.channels) for p in category.train_paths()])
        test = load_test_set(category, category.test_items(), None)
        defects = np.array(test.defects)
        scores = {}
        for make in detectors:
            scores.update(make().fit(train).scores(test.images))
        good = defects == "good"
        for defect in spec.defects:
            pick = good | (defects == defect)
            labels = (defects[pick] != "good").astype(int)
            kind = "structural" if defect in spec.structural else "colour"
            row = {"category": name, "defect": defect, "set": kind}
            cells = []
            for key in columns:
                value = image_auroc(labels, scores[key][pick])
                interval = image_auroc_interval(labels, scores[key][pick])
                row[key] = {"auroc": value, "low": interval.low, "high": interval.high}
                cells.append(_cell(value, interval))
                if kind == "structural" and spec.kind == "texture" and value > TARGET:
                    failures.append(f"{name}/{defect} {key} {value:.2f}")
            rows.append(row)
            print(f"{name:8} {defect:20} {kind:10}" + "".join(f" {cell:>20}" for cell in cells))
    print(
        f"\nimages: {args.size} px, {args.n_train} train, {args.n_test_good} good and {args.n_test_per_defect} per kind"
    )
    if failures:
        print(f"structural kinds above {TARGET} on a texture: " + "; ".join(failures))
    else:
        print(f"every structural kind on every texture at or below {TARGET} for every detector measured")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
