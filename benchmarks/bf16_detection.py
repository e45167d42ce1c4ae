"""Is bf16 detection harmless? The fast path in fp32 and in bf16 on every synthetic category, side by side.

Per category, the same model, images and settings run through `IterativeInpainter` twice (cpu_precision
"fp32" and "bf16"; SSIM maps and scores are fp32 in both). Prints image AUROC (SSIM and L2 maps) and pixel
AUROC for both and their difference, the 95 % paired bootstrap interval of the image AUROC difference
(`i3ad.intervals.paired_difference`, bf16 - fp32), the share of pixels whose mask differs between the two
runs after each iteration, and the seconds of each run (bf16 is fast only where the CPU has native bf16:
`i3ad.precision.cpu_has_bf16`).

    python -m benchmarks.bf16_detection                                      # trains a quick-study model per category
    python -m benchmarks.bf16_detection --models runs/quick/models/{category}__i3ad --categories carpet screw

Criterion (issue 16): |bf16 - fp32| <= 0.01 for image and pixel AUROC on every category, and 0 inside the
paired interval.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from i3ad.calibrate import calibrate_threshold
from i3ad.data import SYNTHETIC_CATEGORIES, MVTecCategory, ensure_dataset, load_image, load_test_set
from i3ad.intervals import paired_difference
from i3ad.loading import load_model
from i3ad.metrics import image_auroc, image_scores, pixel_auroc
from i3ad.precision import cpu_has_bf16
from i3ad.scorers import DetectionSettings, IterativeInpainter
from i3ad.train import TrainConfig, train

QUICK_DATA = {"size": 64, "n_train": 40, "n_test_good": 12, "n_test_per_defect": 6, "seed": 0, "defects": "structural"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_bf16"))
    parser.add_argument("--categories", nargs="+", default=list(SYNTHETIC_CATEGORIES))
    parser.add_argument("--models", help="model folder per category, with {category}; default: train into --workdir")
    parser.add_argument("--train-steps", type=int, default=300, help="steps of a model trained here (quick settings)")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--patch-size", type=int, default=6)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    return parser.parse_args()


def model_for(category: str, data: Path, args: argparse.Namespace) -> Path:
    if args.models:
        return Path(args.models.format(category=category))
    out = args.workdir / f"model-{category}"
    config = TrainConfig(steps=args.train_steps, image_size=64, width=8, batch_size=8, device="cpu")
    train(config, data, category, out, resume=True, progress=False)
    return out


def run(model, images: torch.Tensor, settings: DetectionSettings) -> tuple[list, float]:
    began = time.perf_counter()
    with torch.no_grad():
        maps = list(IterativeInpainter(model.module, settings).iterate(images))
    return maps, time.perf_counter() - began


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    data = ensure_dataset(args.workdir / "data", categories=args.categories, **QUICK_DATA)
    print(f"native bf16 on this CPU: {cpu_has_bf16()}; threads={args.threads}; N={args.iterations}")
    header = (
        f"{'category':<8} {'map':<4} {'image fp32':>10} {'bf16':>7} {'diff':>7} {'paired 95% interval':>20} "
        f"{'pixel fp32':>10} {'bf16':>7} {'diff':>7}"
    )
    worst = 0.0
    for name in args.categories:
        model = load_model(model_for(name, data, args), "cpu")
        category = MVTecCategory(data, name)
        test = load_test_set(category, category.test_items(), model.info["image_size"])
        normals = np.stack([load_image(p, model.info["image_size"], category.channels) for p in category.train_paths()])
        threshold = calibrate_threshold(model.module, normals[:8])["threshold"]
        images = torch.from_numpy(test.images)
        runs, seconds = {}, {}
        for precision in ("fp32", "bf16"):
            settings = DetectionSettings(
                threshold=threshold, patch_size=args.patch_size, iterations=args.iterations, cpu_precision=precision
            )
            runs[precision], seconds[precision] = run(model, images, settings)
        print(f"\n{header}" if name == args.categories[0] else "")
        for key in ("ssim", "l2"):
            scores = {p: image_scores(getattr(runs[p][-1], key), "max") for p in runs}
            image = {p: image_auroc(test.labels, scores[p]) for p in runs}
            pixel = {p: pixel_auroc(test.masks, getattr(runs[p][-1], key)) for p in runs}
            interval = paired_difference(test.labels, scores["bf16"], scores["fp32"])
            worst = max(worst, abs(image["bf16"] - image["fp32"]), abs(pixel["bf16"] - pixel["fp32"]))
            print(
                f"{name:<8} {key:<4} {image['fp32']:>10.4f} {image['bf16']:>7.4f} "
                f"{image['bf16'] - image['fp32']:>+7.4f} "
                f"{f'[{interval.low:+.3f}, {interval.high:+.3f}]':>20} {pixel['fp32']:>10.4f} {pixel['bf16']:>7.4f} "
                f"{pixel['bf16'] - pixel['fp32']:>+7.4f}"
            )
        # M_{i+1} = SSIM(x0, x_i) < U, and the maps hold 1 - SSIM.
        differing = [
            float(np.mean((1 - a.ssim < threshold) != (1 - b.ssim < threshold)))
            for a, b in zip(runs["fp32"], runs["bf16"], strict=True)
        ]
        print(
            f"{name:<8} U={threshold:.2f}; masks differing after iterations 0..{args.iterations}: "
            + " ".join(f"{d:.3%}" for d in differing)
            + f"; seconds fp32 {seconds['fp32']:.1f}, bf16 {seconds['bf16']:.1f} ({len(images)} images)"
        )
    print(f"\nlargest |bf16 - fp32| of image and pixel AUROC over all categories and maps: {worst:.4f} (<= 0.01)")


if __name__ == "__main__":
    main()
