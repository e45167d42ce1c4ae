"""Detection throughput: the batched, skipping fast path vs the paper's straightforward loop.

Both run in this process on the same model, images and settings. The straightforward loop handles one
image at a time: four separate checkerboard passes, then all N iterations with no stop rule. Prints
images/second for each, their ratio, and the image AUROC (SSIM and L2 scores) of both.

    python benchmarks/detect_throughput.py                      # trains a small carpet model first
    python benchmarks/detect_throughput.py --model runs/carpet  # or uses a model folder

Target (issue 2): ratio >= 5 at N = 30 with equal AUROC (+-0.005).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from i3ad.data import MVTecCategory, ensure_dataset, load_image, load_test_set, split_test_items
from i3ad.detect import DetectionSettings, IterativeInpainter, calibrate_threshold, load_model, naive_iterative_inpainting
from i3ad.metrics import image_auroc, image_scores
from i3ad.ssim import ssim_map
from i3ad.train import TrainConfig, train


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model folder; default: train one into --workdir")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_detect"))
    parser.add_argument("--category", default="carpet")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--patch-size", type=int, default=6)
    parser.add_argument("--threshold", type=float, help="default: calibrated on training normals")
    parser.add_argument("--split", choices=("val", "test", "all"), default="all")
    parser.add_argument("--stop-eps", type=float, default=DetectionSettings.stop_eps)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", choices=("inductor", "eager"), help="also time the fast path with torch.compile")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path (median reported)")
    return parser.parse_args()


def compiled_run(generator: torch.nn.Module, settings: DetectionSettings, images: torch.Tensor,
                 args: argparse.Namespace) -> tuple[float, object, float]:
    """The fast path with a torch.compile'd generator: median seconds, last maps, one-off compile seconds."""
    settings = replace(settings, compile=args.compile)
    with torch.no_grad():
        began = time.perf_counter()
        *_, _ = IterativeInpainter(generator, settings).iterate(images)  # compiles (and warms every batch size)
        compile_seconds = time.perf_counter() - began
        times = []
        for _ in range(args.repeats):
            inpainter = IterativeInpainter(generator, settings)
            began = time.perf_counter()
            *_, last = inpainter.iterate(images)
            times.append(time.perf_counter() - began)
    median = float(np.median(times))
    return median, last, compile_seconds - median


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    data = ensure_dataset(args.workdir / "data", size=128, seed=0, categories=[args.category])
    model_dir = args.model or args.workdir / f"model-{args.category}-{args.image_size}"
    if args.model is None:
        config = TrainConfig(steps=args.train_steps, image_size=args.image_size, device="cpu", checkpoint_every=100)
        train(config, data, args.category, model_dir, resume=True, progress=False)
    model = load_model(model_dir, "cpu")
    image_size = model.info["image_size"]
    category = MVTecCategory(data, args.category)
    items = category.test_items()
    if args.split != "all":
        items = split_test_items(items)[args.split]
    test_set = load_test_set(category, items, image_size)

    threshold = args.threshold
    if threshold is None:
        normals = np.stack([load_image(p, image_size, category.channels) for p in category.train_paths()[:16]])
        threshold = calibrate_threshold(model.module, normals)["threshold"]
    settings = DetectionSettings(threshold=threshold, patch_size=args.patch_size, iterations=args.iterations,
                                 stop_eps=args.stop_eps)
    images = torch.from_numpy(test_set.images)

    # Alternate the two paths and keep the median of each: a burst of load from elsewhere on the machine
    # then skews one repeat, not the ratio.
    naive_times, fast_times = [], []
    with torch.no_grad():
        for _ in range(args.repeats):
            began = time.perf_counter()
            naive = torch.stack([naive_iterative_inpainting(model.module, image, settings) for image in images])
            naive_times.append(time.perf_counter() - began)

            inpainter = IterativeInpainter(model.module, settings)
            began = time.perf_counter()
            *_, last = inpainter.iterate(images)
            fast_times.append(time.perf_counter() - began)
    naive_seconds, fast_seconds = float(np.median(naive_times)), float(np.median(fast_times))
    compiled = compiled_run(model.module, settings, images, args) if args.compile else None
    naive_ssim = (1 - ssim_map(images, naive)).numpy()
    naive_l2 = (images - naive).pow(2).mean(dim=1).numpy()

    labels = test_set.labels
    rows = {
        "naive": (naive_seconds, image_auroc(labels, image_scores(naive_ssim, settings.score)),
                  image_auroc(labels, image_scores(naive_l2, settings.score)), len(images) * (4 + settings.iterations)),
        "fast": (fast_seconds, image_auroc(labels, image_scores(last.ssim, settings.score)),
                 image_auroc(labels, image_scores(last.l2, settings.score)), last.generator_passes),
    }
    print(f"category={args.category} images={len(images)} size={image_size} N={settings.iterations} "
          f"U={settings.threshold:.2f} patch={settings.patch_size} stop_eps={settings.stop_eps} threads={args.threads} "
          f"repeats={args.repeats} (median)")
    print(f"{'path':<14} {'images/s':>9} {'image AUROC ssim':>17} {'image AUROC l2':>15} {'generator passes':>17}")
    for name, (seconds, auc_ssim, auc_l2, passes) in rows.items():
        print(f"{name:<14} {len(images) / seconds:>9.2f} {auc_ssim:>17.4f} {auc_l2:>15.4f} {passes:>17d}")
    if compiled is not None:
        seconds, last_compiled, compile_seconds = compiled
        auc = (image_auroc(labels, image_scores(last_compiled.ssim, settings.score)),
               image_auroc(labels, image_scores(last_compiled.l2, settings.score)))
        print(f"{'fast+' + args.compile:<14} {len(images) / seconds:>9.2f} {auc[0]:>17.4f} {auc[1]:>15.4f} "
              f"{last_compiled.generator_passes:>17d}   (one-off compile {compile_seconds:.1f}s not included)")
        print(f"speed ratio fast+{args.compile}/naive = {naive_seconds / seconds:.2f}x")
    ratio = naive_seconds / fast_seconds
    delta = max(abs(rows["fast"][1] - rows["naive"][1]), abs(rows["fast"][2] - rows["naive"][2]))
    print(f"speed ratio fast/naive = {ratio:.2f}x (target >= 5); max AUROC difference = {delta:.4f} (target <= 0.005)")


if __name__ == "__main__":
    main()
