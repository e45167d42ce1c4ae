"""Training throughput: the straightforward trainer (fp32, contiguous, eager) vs the step's fast settings.

All variants run in this process on the same data, batches and initial weights, interleaved (each repeat
times every variant once, the median per variant is reported), so load from elsewhere hits them alike.
Prints per variant: seconds per step, steps/s, the ratio to the straightforward trainer, and the achieved
FLOP/s of the G/D step (FLOPs of one step from `torch.utils.flop_counter`: generator and discriminator,
forward and backward) against a dense conv of the same dtype measured here (`benchmarks/peak.py`). Then
trains the straightforward trainer and the fast one for `--loss-steps` steps from the same seed and prints
their losses (mean of the last 50 steps), and the share of a step spent drawing the batch on the host.

    python -m benchmarks.train_throughput                                   # quick-study model: width 8, 64 px, batch 8
    python -m benchmarks.train_throughput --variants bf16 fp32+cl --compile inductor --loss-steps 0
    python -m benchmarks.train_throughput --profile                         # top ops of the fast variant

Variants: "fp32" (the straightforward trainer and the TrainConfig default), "auto" (bf16 where the CPU has
native bf16, else fp32), "bf16", and "+cl" (channels_last) on any of them; `--compile` adds the fast
variant with torch.compile (its one-off compile time is printed, and the steps it takes to pay for itself).

Targets (issue 16): >= 2x the straightforward trainer's steps/s at the same loss after 300 steps; the
step at >= 50 % of the same-dtype dense-conv FLOP/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.peak import DTYPE_NAMES, count_flops, dense_conv_flops_per_second, share_line
from i3ad.data import MVTecCategory, ensure_dataset
from i3ad.device import seed_everything
from i3ad.precision import cpu_has_bf16
from i3ad.train import TrainConfig, _Batches, _Trainer, load_train_images

QUICK_DATA = {"size": 64, "n_train": 40, "n_test_good": 12, "n_test_per_defect": 6, "seed": 0, "defects": "structural"}
QUICK_STUDY_STEPS = 1000  # studies/configs/quick.yaml


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_train"))
    parser.add_argument("--category", default="carpet")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variants", nargs="+", default=["auto", "fp32+cl"], help="besides the straightforward fp32")
    parser.add_argument("--compile", choices=("inductor", "eager"), help="also time the auto variant compiled")
    parser.add_argument("--timed-steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per variant (median reported)")
    parser.add_argument("--loss-steps", type=int, default=300, help="steps of the loss comparison (0: skip)")
    parser.add_argument("--peak-batch", type=int, default=8, help="batch of the dense-conv yardstick")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", action="store_true", help="print the top ops of the fast variant's steps")
    return parser.parse_args()


def variant_config(name: str, base: TrainConfig, compile_backend: str | None = None) -> TrainConfig:
    """The TrainConfig of a variant name such as "fp32", "auto", "bf16+cl"."""
    precision, _, layout = name.partition("+")
    return dataclasses.replace(
        base, cpu_precision=precision, channels_last=layout == "cl", compile=compile_backend, device="cpu"
    )


def make_trainer(config: TrainConfig, channels: int) -> _Trainer:
    seed_everything(config.seed)  # the same initial weights for every variant
    trainer = _Trainer(config, channels, torch.device("cpu"))
    trainer.model.train()
    return trainer


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    data = ensure_dataset(args.workdir / "data", categories=[args.category], **QUICK_DATA)
    category = MVTecCategory(data, args.category)
    images = load_train_images(category, args.image_size)
    base = TrainConfig(
        image_size=args.image_size, width=args.width, batch_size=args.batch_size, steps=max(args.loss_steps, 1)
    )
    names = ["fp32", *[v for v in args.variants if v != "fp32"]]
    configs = {name: variant_config(name, base) for name in names}
    if args.compile:
        configs[f"auto+{args.compile}"] = variant_config("auto", base, args.compile)
    # The timed steps are G/D steps: without this the first `gan_warmup` steps would be the cheaper L1-only
    # warm-up (no discriminator). The loss comparison below trains the real recipe, warm-up included.
    timed_configs = {name: dataclasses.replace(config, gan_warmup=0) for name, config in configs.items()}
    print(
        f"category={args.category} size={args.image_size} width={args.width} batch={args.batch_size} "
        f"threads={args.threads} native bf16 on this CPU: {cpu_has_bf16()} "
        f"load average at start: {' '.join(f'{x:.1f}' for x in _load())}"
    )

    rng = np.random.default_rng(0)
    batches = _Batches(images, base, rng)
    drawn = []
    draw_began = time.perf_counter()
    for _ in range(2 + args.timed_steps * args.repeats):
        drawn.append(batches.next())
    draw_seconds = (time.perf_counter() - draw_began) / len(drawn)

    trainers = {name: make_trainer(config, category.channels) for name, config in timed_configs.items()}
    warmup = {}
    for name, trainer in trainers.items():  # warm-up: oneDNN kernels per shape; the compile, if any
        began = time.perf_counter()
        for images_, masks in drawn[:2]:
            trainer.step(images_, masks)
        warmup[name] = time.perf_counter() - began
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for r in range(args.repeats):
        block = drawn[2 + r * args.timed_steps : 2 + (r + 1) * args.timed_steps]
        for name, trainer in trainers.items():
            began = time.perf_counter()
            for images_, masks in block:
                trainer.step(images_, masks)
            times[name].append((time.perf_counter() - began) / args.timed_steps)
    per_step = {name: float(np.median(t)) for name, t in times.items()}

    flops = count_flops(lambda: make_trainer(timed_configs["fp32"], category.channels).step(*drawn[0]))
    dtypes = {name: trainer.dtype or torch.float32 for name, trainer in trainers.items()}
    peaks = {d: dense_conv_flops_per_second(d, batch=args.peak_batch) for d in set(dtypes.values())}

    print(f"\n{'variant':<16} {'dtype':>5} {'s/step':>8} {'steps/s':>8} {'ratio':>6}   share of peak")
    for name, seconds in per_step.items():
        dtype, ratio = dtypes[name], per_step["fp32"] / seconds
        print(
            f"{name:<16} {DTYPE_NAMES[dtype]:>5} {seconds:8.3f} {1 / seconds:8.2f} {ratio:6.2f}x   "
            + share_line("G/D step", flops, seconds, peaks[dtype], dtype)
        )
    print(
        f"batch draw on the host: {draw_seconds * 1000:.1f} ms per step "
        f"({draw_seconds / per_step['fp32']:.1%} of a straightforward step)"
    )
    if args.compile:
        name = f"auto+{args.compile}"
        eager = per_step["auto"] if "auto" in per_step else per_step["fp32"]
        compile_seconds = warmup[name] - 2 * per_step[name]
        saved = eager - per_step[name]
        pays = f"after {compile_seconds / saved:.0f} steps" if saved > 0 else "never (not faster per step)"
        print(
            f"compile ({args.compile}): one-off {compile_seconds:.1f} s; saves {saved * 1000:.1f} ms per step; "
            f"pays for itself {pays} (the quick study trains {QUICK_STUDY_STEPS} steps per model)"
        )

    fast = _fastest(per_step)
    if args.profile:
        _profile(trainers[fast], drawn[:3])
    if args.loss_steps:
        _compare_losses(configs, fast, category.channels, images, args.loss_steps)


def _fastest(per_step: dict[str, float]) -> str:
    return min((name for name in per_step if name != "fp32"), key=per_step.get, default="fp32")


def _compare_losses(
    configs: dict[str, TrainConfig], fast: str, channels: int, images: torch.Tensor, steps: int
) -> None:
    """Train fp32 and the fastest variant for `steps` steps from one seed; print the mean of the last 50 losses."""
    print(f"\nloss after {steps} steps (mean of the last {min(50, steps)}), same seed and batches:")
    for name in dict.fromkeys(("fp32", fast)):
        trainer = make_trainer(configs[name], channels)
        batches = _Batches(images, configs[name], np.random.default_rng(configs[name].seed))
        history: dict[str, list[float]] = {}
        began = time.perf_counter()
        for _ in range(steps):
            for key, value in trainer.step(*batches.next()).items():
                history.setdefault(key, []).append(float(value))
        seconds = time.perf_counter() - began
        means = "  ".join(f"{k} {np.mean(v[-50:]):.4f}" for k, v in history.items())
        print(f"  {name:<16} {seconds:7.1f} s   {means}")


def _profile(trainer: _Trainer, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for images, masks in batches:
            trainer.step(images, masks)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def _load() -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ()


if __name__ == "__main__":
    main()
