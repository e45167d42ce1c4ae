"""Seconds per image of I3AD (N = 10 and 30), the autoencoder projection and the GAN baselines, in one run.

The paper's Table 2 point: I3AD's forward iterations against back-propagation at test time (the projection,
AnoGAN's latent search).

All methods score the same images in this process on the same device. Speed does not depend on how
well a model is trained, so by default the models are *untrained*, built at the configured widths:
the I3AD generator at `--width` (16 = our CPU config, 48 = DeepFill v2 / the paper) and the
Bergmann et al. autoencoder at `--ae-width` (32 = the paper). The "every pass" I3AD rows drop the stop
rule and re-inpaint every image whose mask is not empty in every iteration: (4 + N) generator passes per
image for an untrained model, the upper bound of I3AD's cost. With a trained `--i3ad-model` the fast
path (skipping images whose mask is settled, the model folder's calibrated settings) is timed too;
`--ae-model` times a trained autoencoder.
The projection's cost does not depend on the model: T forward + backward passes per image tile.
The GAN baselines (untrained, generator and discriminator at `--width`, code size 100, `--ae-patch` tiles):
AnoGAN's search is T Adam steps, each a forward + backward pass through generator and discriminator
(T = `--gan-iterations`, 500 as the paper); f-AnoGAN / AEGAN score in one encoder + generator pass, their
L2 + L_D score adds two discriminator passes (one network serves both, as their cost is the same).

    python benchmarks/method_speed.py                                  # 64 px, CPU-sized models
    python benchmarks/method_speed.py --image-size 256 --width 48 --device cuda   # paper sizes
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import torch

from i3ad.data import MVTecCategory, ensure_dataset, load_test_set
from i3ad.device import resolve_device
from i3ad.loading import LoadedModel, detection_settings, load_model
from i3ad.models import AutoencoderConfig, ConvAutoencoder, GanConfig, GanNetwork, GeneratorConfig, InpaintGenerator
from i3ad.scorers import (
    ANOGAN_SEARCH,
    AutoencoderScorer,
    DetectionSettings,
    EncoderScorer,
    FeatureScorer,
    IterativeInpainter,
    LatentSearchScorer,
    ProjectionScorer,
    ProjectionSettings,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_speed"))
    parser.add_argument("--category", default="carpet")
    parser.add_argument("--images", type=int, default=8, help="test images to score")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--ae-patch", type=int, help="autoencoder input size (default: the image size; smaller tiles)")
    parser.add_argument("--width", type=int, default=16, help="I3AD generator base width (48 = paper)")
    parser.add_argument("--ae-width", type=int, default=32, help="autoencoder width (32 = paper)")
    parser.add_argument("--i3ad-model", type=Path, help="trained I3AD model folder (default: untrained)")
    parser.add_argument("--ae-model", type=Path, help="trained ae-l2 model folder (default: untrained)")
    parser.add_argument("--proj-iterations", type=int, default=ProjectionSettings.iterations)
    parser.add_argument("--gan-iterations", type=int, default=ANOGAN_SEARCH.iterations, help="AnoGAN's Adam steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    return parser.parse_args()


class _EveryPass(IterativeInpainter):
    """I3AD without the stop rule: every image whose mask is not empty is inpainted in every iteration."""

    skip_cycles = False

    def _still_changing(self, masks: torch.Tensor, previous: torch.Tensor, first: bool) -> torch.Tensor:
        return torch.ones(len(masks), dtype=torch.bool)


def timed(scorer, images: torch.Tensor) -> tuple[float, int]:
    """Seconds to run all iterations of `scorer` on `images`, after a one-image warm-up; and passes."""
    list(scorer.iterate(images[:1]))
    began = time.perf_counter()
    *_, last = scorer.iterate(images)
    return time.perf_counter() - began, last.generator_passes


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    data = ensure_dataset(args.workdir / "data", size=max(128, args.image_size), seed=0, categories=[args.category])
    category = MVTecCategory(data, args.category)
    images = torch.from_numpy(load_test_set(category, category.test_items()[: args.images], args.image_size).images)
    channels = images.shape[1]

    if args.i3ad_model:
        generator = load_model(args.i3ad_model, device).module
        i3ad_settings = detection_settings(load_model(args.i3ad_model, "cpu").info)
    else:
        generator = InpaintGenerator(GeneratorConfig(channels=channels, width=args.width)).to(device).eval()
        i3ad_settings = DetectionSettings()
    if args.ae_model:
        loaded: LoadedModel = load_model(args.ae_model, device)
        autoencoder, patch = loaded.module, int(loaded.info["patch_size"])
    else:
        patch = args.ae_patch or args.image_size
        cfg = AutoencoderConfig(channels=channels, image_size=patch, width=args.ae_width)
        autoencoder = ConvAutoencoder(cfg).to(device).eval()

    projection = ProjectionSettings(iterations=args.proj_iterations, every=args.proj_iterations)
    gan = GanNetwork(GanConfig(channels=channels, image_size=patch, width=args.width)).to(device).eval()
    search = ProjectionSettings(
        iterations=args.gan_iterations, lam=ANOGAN_SEARCH.lam, step=ANOGAN_SEARCH.step, every=args.gan_iterations
    )

    def i3ad(n: int) -> DetectionSettings:
        return DetectionSettings(**{**asdict(i3ad_settings), "iterations": n, "batch_size": args.batch_size})

    runs = {
        "ae (one pass)": AutoencoderScorer(autoencoder, patch, args.batch_size, device),
        **{f"i3ad N={n} every pass": _EveryPass(generator, i3ad(n), device) for n in (10, 30)},
        **(
            {f"i3ad N={n} fast path": IterativeInpainter(generator, i3ad(n), device) for n in (10, 30)}
            if args.i3ad_model
            else {}
        ),
        f"ae-l2+proj T={projection.iterations}": ProjectionScorer(
            autoencoder, "l2", patch, projection, args.batch_size, device
        ),
        f"ae-ssim+proj T={projection.iterations}": ProjectionScorer(
            autoencoder, "ssim", patch, projection, args.batch_size, device
        ),
        f"anogan T={search.iterations}": LatentSearchScorer(gan, patch, search, args.batch_size, device),
        "f-anogan / aegan (one pass)": EncoderScorer(gan, patch, args.batch_size, device),
        "f-anogan+ld / aegan+ld": FeatureScorer(gan, patch, None, args.batch_size, device),
    }
    trained = f"i3ad={args.i3ad_model or 'untrained'} ae={args.ae_model or 'untrained'}"
    print(
        f"device={device} threads={args.threads} images={len(images)} size={args.image_size} ae_patch={patch} "
        f"width={generator.cfg.width} ae_width={autoencoder.cfg.width} models: {trained}"
    )
    print(f"{'method':<28} {'s/image':>9} {'passes/image':>13} {'x i3ad N=30':>12}")
    results = {name: timed(scorer, images) for name, scorer in runs.items()}
    reference = results["i3ad N=30 every pass"][0]
    for name, (seconds, passes) in results.items():
        print(f"{name:<28} {seconds / len(images):>9.4f} {passes / len(images):>13.1f} {seconds / reference:>12.2f}")


if __name__ == "__main__":
    main()
