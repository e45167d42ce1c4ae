"""One prepared accelerator check: the paper configuration's training and detection speed, and a GPU sweep.

    python -m benchmarks.gpu_check                 # on the GPU it finds; about 8 minutes on one H200-class GPU
    python -m benchmarks.gpu_check --dry-run       # every step on CPU at toy sizes (< 2 minutes; in the tests)

(run from the repository root as a module: the straightforward detection loop is the tests' reference,
tests/reference.py). It measures, in one run, and prints as tables:

1. training steps/s and images/s at the paper's sizes (width 48, batch 10; objects at 256 px, textures as
   128 px patches), fp32 vs bf16 autocast (and torch.compile with the inductor backend, on an accelerator),
   the peak GPU memory of each, and what 30 minutes reach in steps and what the paper's 500k steps take
   (extrapolated from the measured rate: steps/s x 1800 s, 500k / steps/s);
2. detection images/s at 256 px, N = 30, the fast path at batch sizes 1 / 8 / 32 against the
   straightforward loop, and the generator's achieved FLOP/s (FLOPs counted by torch's FlopCounterMode
   for one pass, times the passes the fast path ran, over its seconds) as a ratio to a dense matmul
   measured in the same run, in the same dtype;
3. a 4-trial sweep on the one GPU (`gpus_per_trial: 0.25`: one training and three detection trials,
   tiny budgets) that must finish and log to MLflow.

`--dry-run` runs the same code at toy sizes on the CPU: it checks that every step works, not the speeds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from i3ad.data import MVTecCategory, ensure_dataset, load_test_set
from i3ad.device import amp_dtype
from i3ad.loading import load_model
from i3ad.scorers import DetectionSettings, IterativeInpainter
from i3ad.train import TrainConfig, read_train_log, train
from tests.reference import naive_iterative_inpainting

PAPER_STEPS = 500_000
HALF_HOUR = 1800.0


@dataclass(frozen=True)
class Sizes:
    """Everything the check sizes: the paper's on a GPU, toy ones for the dry run."""

    width: int = 48
    batch: int = 10
    object_size: int = 256
    texture_crop: int = 128
    warmup_steps: int = 5
    timed_steps: int = 30
    detect_size: int = 256
    detect_images: int = 32
    naive_images: int = 8
    iterations: int = 30
    detect_batches: tuple[int, ...] = (1, 8, 32)
    matmul: int = 8192
    sweep_steps: int = 20
    sweep_size: int = 64
    sweep_width: int = 16
    gpus_per_trial: float = 0.25


DRY = Sizes(
    width=4,
    batch=4,
    object_size=32,
    texture_crop=16,
    warmup_steps=1,
    timed_steps=2,
    detect_size=32,
    detect_images=4,
    naive_images=2,
    iterations=2,
    detect_batches=(1, 2, 4),
    matmul=128,
    sweep_steps=2,
    sweep_size=32,
    sweep_width=4,
    gpus_per_trial=0.0,
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- 1. training


def training_row(
    data: Path, workdir: Path, sizes: Sizes, device: torch.device, kind: str, amp: bool, compile_: bool
) -> dict[str, Any]:
    """Train warm-up + timed steps through `i3ad.train.train`; the rate is read off its log's clock."""
    crop = sizes.texture_crop if kind == "texture" else None
    settings: dict[str, Any] = dict(
        steps=sizes.warmup_steps + sizes.timed_steps,
        batch_size=sizes.batch,
        image_size=sizes.object_size,
        crop_size=crop,
        width=sizes.width,
        device=str(device),
        amp=amp,
        log_every=1,
        checkpoint_every=10_000_000,
    )
    if compile_:
        settings["compile"] = "inductor"
    out = workdir / f"train-{kind}-{'bf16' if amp else 'fp32'}{'-compile' if compile_ else ''}"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    train(TrainConfig(**settings), data, "carpet" if kind == "texture" else "screw", out, progress=False)
    wall = time.perf_counter() - began
    log = read_train_log(out)
    seconds = log[-1]["time"] - log[sizes.warmup_steps - 1]["time"]
    rate = sizes.timed_steps / seconds
    dtype = amp_dtype(device, amp)
    return {
        "kind": kind,
        "patch": crop or sizes.object_size,
        "dtype": str(dtype).removeprefix("torch.") if dtype else "float32",
        "compile": compile_,
        "steps_per_s": rate,
        "images_per_s": rate * sizes.batch,
        "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "steps_in_30_min": rate * HALF_HOUR,
        "paper_500k_hours": PAPER_STEPS / rate / 3600,
        "wall_s": wall,
        "model": str(out),
    }


def training_table(data: Path, workdir: Path, sizes: Sizes, device: torch.device) -> list[dict[str, Any]]:
    # torch.compile rows on an accelerator only: on the CPU dry run a compile costs more than the whole check
    # (tests/test_precision.py covers the compiled step on CPU).
    compiles = [False, True] if device.type == "cuda" else [False]
    amps = [False, True] if device.type == "cuda" else [False]  # autocast is off on CPU (i3ad.device)
    return [
        training_row(data, workdir, sizes, device, kind, amp, compile_)
        for kind in ("object", "texture")
        for amp in amps
        for compile_ in compiles
    ]


# ---------------------------------------------------------------- 2. detection


def matmul_flops(n: int, dtype: torch.dtype, device: torch.device, repeats: int = 10) -> float:
    """FLOP/s of a dense n x n matmul in `dtype` (the accelerator's practical ceiling)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - began)


def pass_flops(generator: torch.nn.Module, images: torch.Tensor, device: torch.device) -> float:
    """FLOPs of one generator pass per image (counted, not timed)."""
    x = images[:1].to(device)
    mask = torch.zeros(1, 1, *x.shape[2:], device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        generator(x * (1 - mask), mask)
    return float(counter.get_total_flops())


def detection_table(model_dir: Path, data: Path, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    model = load_model(model_dir, str(device))
    generator = model.module
    category = MVTecCategory(data, "screw")
    test = load_test_set(category, category.test_items()[: sizes.detect_images], sizes.detect_size)
    images = torch.from_numpy(test.images)
    base = DetectionSettings(threshold=0.3, patch_size=6, iterations=sizes.iterations)
    rows = []
    passes_flops = pass_flops(generator, images, device)
    with torch.no_grad():
        for batch in sizes.detect_batches:
            settings = DetectionSettings(**{**asdict(base), "batch_size": batch})
            *_, _ = IterativeInpainter(generator, settings).iterate(images[:batch])  # warm-up per shape
            synchronize(device)
            began = time.perf_counter()
            *_, last = IterativeInpainter(generator, settings).iterate(images)
            synchronize(device)
            seconds = time.perf_counter() - began
            rows.append(
                {
                    "path": f"fast, batch {batch}",
                    "images_per_s": len(images) / seconds,
                    "generator_passes": int(last.generator_passes),
                    "flops_per_s": passes_flops * last.generator_passes / seconds,
                }
            )
        naive = images[: sizes.naive_images]
        naive_iterative_inpainting(generator, naive[0], base)  # warm-up
        synchronize(device)
        began = time.perf_counter()
        for image in naive:
            naive_iterative_inpainting(generator, image, base)
        synchronize(device)
        seconds = time.perf_counter() - began
        naive_passes = len(naive) * (4 + sizes.iterations)
        rows.append(
            {
                "path": "straightforward loop",
                "images_per_s": len(naive) / seconds,
                "generator_passes": naive_passes,
                "flops_per_s": passes_flops * naive_passes / seconds,
            }
        )
    dtype = amp_dtype(device) or torch.float32  # detection's autocast dtype on this device
    ceiling = matmul_flops(sizes.matmul, dtype, device)
    for row in rows:
        row["of_matmul"] = row["flops_per_s"] / ceiling
    return {
        "rows": rows,
        "dtype": str(dtype).removeprefix("torch."),
        "matmul_flops_per_s": ceiling,
        "pass_gflop": passes_flops / 1e9,
    }


# ---------------------------------------------------------------- 3. sweep


def sweep_check(workdir: Path, sizes: Sizes) -> dict[str, Any]:
    """A 4-trial sweep (1 training + 3 detection trials) with fractional GPUs; its MLflow runs."""
    from mlflow import MlflowClient

    from studies import config as cfg
    from studies.sweep import run_sweep
    from tracking.store import SWEEP_RUN_TAG

    overrides = {
        "workdir": str(workdir / "sweep"),
        "categories": ["carpet"],
        "methods": ["i3ad"],
        "data": {"synthetic": {"size": sizes.sweep_size, "n_train": 8, "n_test_good": 4, "n_test_per_defect": 2}},
        "train": {
            "image_size": sizes.sweep_size,
            "width": sizes.sweep_width,
            "batch_size": 2,
            "steps": sizes.sweep_steps,
            "checkpoint_every": sizes.sweep_steps,
            "log_every": sizes.sweep_steps,
            "max_seconds": None,
        },
        "calibration": {"images": 2, "iterations": 2},
        "detect": {"iterations": 2},
        "search": {"num_samples": 3, "grace_period": 1, "reduction_factor": 2},
        "resources": {"gpus_per_trial": sizes.gpus_per_trial, "max_concurrent": 4},
    }
    began = time.perf_counter()
    summary = run_sweep(cfg.load("quick", [overrides]), echo=lambda text: None)
    client = MlflowClient(summary["tracking_uri"])
    # Every run of the sweep's tree (model runs, their trials and finals) carries the sweep's run id.
    runs = client.search_runs(
        [summary["experiment_id"]], filter_string=f"tags.{SWEEP_RUN_TAG} = '{summary['parent_run_id']}'"
    )
    phases = [r.data.tags.get("phase") for r in runs if r.data.tags.get("phase")]
    return {
        "wall_s": time.perf_counter() - began,
        "trials": phases.count("train") + phases.count("detect"),
        "mlflow_runs": {p: phases.count(p) for p in sorted(set(phases), key=str)},
        "finished": all(r.info.status == "FINISHED" for r in runs) and not summary["failures"],
        "gpus_per_trial": sizes.gpus_per_trial,
    }


# ---------------------------------------------------------------- report


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def report(device_name: str, training: list[dict], detection: dict, sweep: dict, wall: float) -> str:
    lines = [f"device: {device_name}; total wall {wall:.0f} s", "", "training (width, batch as the paper)"]
    lines.append(
        f"{'kind':<8} {'patch':>5} {'dtype':<9} {'compile':<7} {'steps/s':>8} {'images/s':>9} "
        f"{'peak MiB':>9} {'steps/30 min':>12} {'500k steps (h)':>14}"
    )
    for r in training:
        lines.append(
            f"{r['kind']:<8} {r['patch']:>5} {r['dtype']:<9} {'on' if r['compile'] else 'off':<7} "
            f"{r['steps_per_s']:>8.2f} {r['images_per_s']:>9.1f} {fmt(r['peak_mib'], '9.0f'):>9} "
            f"{r['steps_in_30_min']:>12.0f} {r['paper_500k_hours']:>14.1f}"
        )
    lines += [
        "",
        f"detection (N iterations, {detection['dtype']}; one generator pass = {detection['pass_gflop']:.2f} GFLOP "
        f"per image; dense matmul {detection['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s)",
        f"{'path':<22} {'images/s':>9} {'passes':>7} {'TFLOP/s':>8} {'of matmul':>9}",
    ]
    naive = detection["rows"][-1]["images_per_s"]
    for r in detection["rows"]:
        ratio = "" if r["path"].startswith("straight") else f"   {r['images_per_s'] / naive:.1f}x the loop"
        lines.append(
            f"{r['path']:<22} {r['images_per_s']:>9.2f} {r['generator_passes']:>7d} "
            f"{r['flops_per_s'] / 1e12:>8.3f} {r['of_matmul']:>9.3f}{ratio}"
        )
    lines += [
        "",
        f"sweep: {sweep['trials']} trials at gpus_per_trial {sweep['gpus_per_trial']:g}, "
        f"{'finished' if sweep['finished'] else 'NOT finished'} in {sweep['wall_s']:.0f} s; "
        f"MLflow child runs {sweep['mlflow_runs']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU: every step, not the speeds")
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    if args.dry_run:
        sizes, device = DRY, torch.device("cpu")
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device is visible; run on a GPU machine, or pass --dry-run")
        sizes, device = Sizes(), torch.device("cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run: toy sizes)"
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="i3ad-gpu-check-") as tmp:
        workdir = args.workdir or Path(tmp)
        data = ensure_dataset(
            workdir / "data",
            size=sizes.object_size,
            seed=0,
            categories=["carpet", "screw"],
            n_train=4,
            n_test_good=max(2, sizes.detect_images // 2),
            n_test_per_defect=max(1, sizes.detect_images // 6),
        )
        training = training_table(data, workdir, sizes, device)
        detection = detection_table(Path(training[0]["model"]), data, sizes, device)
        print("training and detection measured; running the sweep", flush=True)
        sweep = sweep_check(workdir, sizes)
    text = report(name, training, detection, sweep, time.perf_counter() - began)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "training": training, "detection": detection, "sweep": sweep}))
    return 0 if sweep["finished"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
