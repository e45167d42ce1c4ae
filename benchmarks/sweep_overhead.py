"""How much of a sweep is trial compute, and how much search the scheduler saves.

Runs the quick study (with U on a 0.1 grid, so that a full grid over the same space exists), then:

(a) overhead: the share of the sweep's time not spent inside trial compute. Trials measure their own
    compute (inside train / calibrate / evaluate, excluding handing results to Tune) and report it.
        capacity = slots x (Tune experiment wall + final-evaluation wall)      [slot-seconds]
        busy     = sum of trial compute + slots x final-evaluation compute     (the final runs in the
                   driver on the whole machine)
        overhead = 1 - busy / capacity     -> scheduling, search, tracking, actor start-up, idle slots
    Process start-up (imports, Ray and MLflow start, data) happens once per sweep and is printed
    separately, as is the whole-run figure that includes it.
(b) search efficiency, per category: a full grid over the same space (U x patch size, each run to
    N_max so every N is read off its curve) is evaluated in this process on the validation split;
    the ratio is the generator passes ASHA + Optuna had spent, over all trials in report order, when
    their best validation objective first reached the grid's best, divided by the grid's passes. Every
    trial runs to N_max under ASHA, so Optuna searches (U, patch size) and N is read off the curves.

Targets: (a) overhead <= 10 % on the quick study; (b) ratio <= 0.4.

    python benchmarks/sweep_overhead.py [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from i3ad.data import MVTecCategory
from i3ad.evaluate import evaluate
from i3ad.loading import load_model
from i3ad.scorers import make_scorer
from studies import config as cfg
from studies.config import SweepConfig
from studies.data import load_split, resolve_root, split
from studies.storage import model_uri
from studies.sweep import run_sweep
from studies.trainables import with_best_map


def overhead(summary: dict) -> dict:
    stats = summary["stats"]
    slots = stats["search"]["slots"]
    search_wall, final_wall = stats["search"]["wall_s"], stats["final"]["wall_s"]
    trial = stats["train"]["trial_compute_s"] + stats["detect"]["trial_compute_s"]
    final = stats["final"]["compute_s"]
    capacity = slots * (search_wall + final_wall)
    busy = trial + slots * final
    startup = sum(summary["timings"].get(k, 0.0) for k in ("startup", "data"))
    return {
        "slots": slots,
        "search_wall_s": search_wall,
        "final_wall_s": final_wall,
        "trial_compute_s": round(trial, 1),
        "final_compute_s": round(final, 1),
        "overhead": 1 - busy / capacity,
        "startup_s": startup,
        "overhead_with_startup": 1 - busy / (capacity + slots * startup),
        "trial_setup_s": stats["detect"]["trial_setup_s"],
        "trial_report_s": stats["train"]["trial_report_s"] + stats["detect"]["trial_report_s"],
    }


def trial_span(experiment: Path) -> float:
    """Seconds from the first trial's start to the last trial's end (from Tune's result files)."""
    starts, ends = [], []
    for result_file in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if rows:
            starts.append(rows[0]["timestamp"] - rows[0]["time_this_iter_s"])
            ends.append(rows[-1]["timestamp"])
    return max(ends) - min(starts)


def search_curve(experiment: Path, model: str, objective: str) -> list[tuple[float, int, float]]:
    """(timestamp, cumulative passes over all of the model's trials, objective) per reported iteration."""
    events = []
    for result_file in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if not rows or rows[0]["config"].get("phase") != "detect" or rows[0]["config"]["model"] != model:
            continue
        for row in rows:
            events.append((row["timestamp"], row["trial_id"], int(row["val/generator_passes"]), row[objective]))
    events.sort(key=lambda e: e[0])
    latest: dict[str, int] = {}
    curve = []
    for stamp, trial_id, passes, value in events:
        latest[trial_id] = passes
        curve.append((stamp, sum(latest.values()), value))
    return curve


def grid(model_dir: Path, val, config: SweepConfig) -> tuple[float, int, int]:
    """Best objective over the full grid, its passes, and those of a naive grid that runs every N separately.

    Every N is read off each curve.
    """
    model = load_model(model_dir, "cpu")
    search = config.search
    low, high = search.threshold_range
    step = search.threshold_step
    thresholds = [round(low + i * step, 10) for i in range(int(round((high - low) / step)) + 1)]
    best, passes, naive = -np.inf, 0, 0
    key = search.objective.removeprefix("val/")
    eps_values = search.stop_eps_values or [config.detect.stop_eps]
    for u, patch, eps in itertools.product(thresholds, search.patch_sizes, eps_values):
        settings = replace(config.detect, threshold=u, patch_size=patch, stop_eps=eps)
        passes_at: list[int] = []
        scorer = make_scorer(model, settings)
        original = scorer.iterate

        def counting(images, original=original, passes_at=passes_at):
            for maps in original(images):
                passes_at.append(maps.generator_passes)
                yield maps

        scorer.iterate = counting
        result = evaluate(scorer, val.images, val.masks, val.labels, settings, include_pro=False, with_intervals=False)
        best = max(best, max(with_best_map(p)[key] for p in result.report["per_iteration"]))
        passes += result.report["generator_passes"]
        naive += sum(passes_at[1:])  # a run per N = 1..N_max, each costing the passes up to its N
    return best, passes, naive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where to run the sweep (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    parser.add_argument("--num-samples", type=int, help="detection trials per model (default: the quick study's)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="i3ad-bench-"))
    search = {"threshold_step": 0.1, **({"num_samples": args.num_samples} if args.num_samples else {})}
    config = cfg.load("quick", [{"workdir": str(workdir), "search": search}])
    began = time.monotonic()
    summary = run_sweep(config, echo=print)
    total = time.monotonic() - began

    a = overhead(summary)
    print("\n(a) time inside trial compute vs scheduling / search / tracking")
    print(
        f"    slots {a['slots']}; Tune experiment {a['search_wall_s']:.1f} s + "
        f"final evaluation {a['final_wall_s']:.1f} s"
    )
    print(
        f"    trial compute {a['trial_compute_s']:.1f} slot-s (train + detect), "
        f"final compute {a['final_compute_s']:.1f} s (driver, all slots); "
        f"detection trial set-up {a['trial_setup_s']:.1f} s, handing results to Tune "
        f"{a['trial_report_s']:.1f} s (counted as overhead)"
    )
    print(f"    overhead = {100 * a['overhead']:.1f} % of the sweep's slot time (target <= 10 %)")
    span = trial_span(Path(summary["storage"]) / "sweep")
    steady = 1 - a["trial_compute_s"] / (a["slots"] * span)
    print(
        f"    of which: {a['search_wall_s'] - span:.1f} s before the first trial ran "
        f"(Tune set-up, new worker processes importing torch / ray.tune); "
        f"from the first trial's start to the last one's end the slots were "
        f"{100 * (1 - steady):.1f} % busy with compute ({100 * steady:.1f} % overhead)"
    )
    print(
        f"    one-time start-up {a['startup_s']:.1f} s (imports done, Ray + MLflow start, data); "
        f"overhead including it {100 * a['overhead_with_startup']:.1f} %; whole run {total:.0f} s"
    )

    print("\n(b) generator passes ASHA + Optuna needed to reach the best validation objective of the full grid")
    objective = config.search.objective
    data_root, _ = resolve_root(config, workdir)
    experiment = Path(summary["storage"]) / "sweep"
    torch.set_num_threads(2)
    ratios = []
    for row in summary["rows"]:
        model = row["model"]
        size = config.train.image_size
        items = split(MVTecCategory(data_root, row["category"]), config.data.val_fraction, config.data.split_seed)[
            "val"
        ]
        val = load_split(data_root, row["category"], items, size)
        began = time.monotonic()
        best, grid_passes, naive = grid(Path(model_uri(summary["storage"], model)), val, config)
        curve = search_curve(experiment, model, objective)
        reached = next((passes for _, passes, value in curve if value >= best - 1e-9), None)
        search_best = max(value for _, _, value in curve)
        spent = curve[-1][1]
        if reached is None:
            print(
                f"    {model}: grid best {best:.3f} NOT reached (search best {search_best:.3f}); search spent "
                f"{spent} passes = {spent / grid_passes:.2f} of the grid's {grid_passes} "
                f"({time.monotonic() - began:.0f} s grid)"
            )
            continue
        ratios.append(reached / grid_passes)
        print(
            f"    {model}: grid best {objective} {best:.3f} reached after {reached} passes; grid {grid_passes} passes "
            f"(naive grid over N too: {naive}) -> ratio {reached / grid_passes:.3f} (target <= 0.4); "
            f"whole search {spent} passes = {spent / grid_passes:.2f}"
        )
    if ratios:
        print(f"    mean ratio {np.mean(ratios):.3f}")
    if args.workdir is None and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
