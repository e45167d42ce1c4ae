"""Quality of I3AD against the autoencoder baselines (the paper's Table 1 on the synthetic data).

Runs the `compare-quick` study (all methods, the synthetic categories, equal training budget) or reads
a finished sweep, then prints per category and method the held-out image AUROC, pixel AUROC and PRO,
and I3AD's image-AUROC margin over the best baseline on textures and on objects.

Each (category, method) is scored with the map (SSIM or L2) that did better on the *validation* split,
so the map is chosen the way every other setting is, never on the held-out numbers.

    python benchmarks/quality.py                                  # runs compare-quick (< 30 min, 2 cores)
    python benchmarks/quality.py --sweep runs/quality/sweeps/<id>  # or a finished sweep's folder
    python benchmarks/quality.py --summary path/to/summary.json

Every number carries its 95% bootstrap interval, and every method is weighed against the no-learning
reference `ref-stats` (when the study ran it) with the paired interval on the same held-out images
(`tracking.evidence`): "beats", "tie" or "below".

Targets (issue 5): I3AD ahead of every baseline in image AUROC on at least 2 of the 3 synthetic
texture categories, and a mean texture margin >= +0.05.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from studies.report import MAPS, row_map
from tracking.evidence import weigh

REFERENCE = "ref-stats"

ROOT = Path(__file__).resolve().parent.parent
TARGET_WINS, TARGET_MARGIN = 2, 0.05


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--sweep", type=Path, help="a finished sweep folder (holding summary.json)")
    source.add_argument("--summary", type=Path, help="a finished sweep's summary.json")
    parser.add_argument("--config", default="compare-quick", help="study to run when no sweep is given")
    parser.add_argument("--workdir", type=Path, default=Path("runs/quality"))
    parser.add_argument(
        "--map",
        choices=("val-best", *MAPS),
        default="val-best",
        help="anomaly map per (category, method): the better one on val (default), or fixed",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to the sweep (e.g. --set train.max_seconds=60)",
    )
    return parser.parse_args()


def run_study(config: str, workdir: Path, overrides: list[str]) -> Path:
    """Run a sweep in a child process (it owns its Ray instance); returns its summary.json."""
    command = [sys.executable, str(ROOT / "studies" / "sweep.py"), "--config", config, "--workdir", str(workdir)]
    for item in overrides:
        command += ["--set", item]
    print("running:", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    sweep_id = (workdir / "latest").read_text().strip()
    return workdir / "sweeps" / sweep_id / "summary.json"


def pick_map(row: dict[str, Any], choice: str) -> str:
    return row_map(row, "val/image_auroc_best") if choice == "val-best" else choice


def table(summary: dict[str, Any], choice: str) -> dict[str, dict[str, dict[str, Any]]]:
    """Category -> method -> {kind, map, image, pixel, pro} on the held-out split."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in summary["rows"]:
        kind_map = pick_map(row, choice)
        test = row["test"]
        out.setdefault(row["category"], {})[row["method"]] = {
            "kind": row["kind"],
            "map": kind_map,
            "image": test.get(f"image_auroc_{kind_map}"),
            "image_ci": (test.get(f"image_auroc_{kind_map}_ci_low"), test.get(f"image_auroc_{kind_map}_ci_high")),
            "run_id": row.get("run_id"),
            "pixel": test.get(f"pixel_auroc_{kind_map}"),
            "pro": test.get(f"pro_{kind_map}"),
            "sec": row.get("test_seconds_per_image"),
            "settings": row.get("settings", {}),
        }
    return out


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _with_interval(value: Any, bounds: tuple[Any, Any]) -> str:
    low, high = bounds
    if value is None or low is None or high is None:
        return _fmt(value)
    return f"{value:.3f} [{low:.2f}, {high:.2f}]"


def against_reference(results: dict[str, dict[str, dict[str, Any]]], summary: dict[str, Any]) -> None:
    """Per category and method: ahead of the no-learning reference beyond the paired interval, tied, or below."""
    if not any(REFERENCE in per for per in results.values()):
        print(f"(no {REFERENCE} runs in this study: nothing to weigh the methods against)")
        return
    client = MlflowClient(summary["tracking_uri"])
    print(f"against the no-learning reference {REFERENCE} (test/objective, paired 95% interval on the same images):")
    for category, per in results.items():
        if REFERENCE not in per:
            continue
        reference = client.get_run(per[REFERENCE]["run_id"])
        for method, r in per.items():
            if method == REFERENCE or r.get("run_id") is None:
                continue
            evidence = weigh(client, client.get_run(r["run_id"]), reference, "test/objective")
            if evidence.ahead:
                verdict = "BEATS the reference"
            elif evidence.interval is not None and evidence.interval.high < 0:
                verdict = "BELOW the reference"
            else:
                verdict = "tie (inside the noise)"
            interval = "" if evidence.interval is None else f" {evidence.interval}"
            print(f"  {category:<10} {method:<14} {evidence.difference:+.3f}{interval}: {verdict}")
    print()


def print_report(results: dict[str, dict[str, dict[str, Any]]], summary: dict[str, Any]) -> bool:
    """Print the tables and the margins; True when the targets are met."""
    methods = sorted({m for per in results.values() for m in per}, key=lambda m: (m != "i3ad", m))
    print(f"sweep {summary.get('sweep_id')} (study {summary.get('study')}), held-out split; map chosen on val")
    header = (
        f"{'category':<10} {'kind':<8} {'method':<14} {'map':<5} "
        f"{'image AUROC [95% CI]':>22} {'pixel AUROC':>11} {'PRO':>6} {'s/img':>7}"
    )
    print(header)
    print("-" * len(header))
    for category, per in results.items():
        for method in methods:
            if method in per:
                r = per[method]
                sec = "-" if r["sec"] is None else f"{r['sec']:.3f}"
                print(
                    f"{category:<10} {r['kind']:<8} {method:<14} {r['map']:<5} "
                    f"{_with_interval(r['image'], r['image_ci']):>22} "
                    f"{_fmt(r['pixel']):>11} {_fmt(r['pro']):>6} {sec:>7}"
                )
    print()
    against_reference(results, summary)
    margins: dict[str, list[float]] = {}
    wins: dict[str, int] = {}
    for category, per in results.items():
        baselines = {m: r["image"] for m, r in per.items() if m not in ("i3ad", REFERENCE) and r["image"] is not None}
        if "i3ad" not in per or per["i3ad"]["image"] is None or not baselines:
            print(f"{category}: no I3AD or baseline result; skipped in the margins")
            continue
        best = max(baselines, key=baselines.get)
        margin = per["i3ad"]["image"] - baselines[best]
        kind = per["i3ad"]["kind"]
        margins.setdefault(kind, []).append(margin)
        wins[kind] = wins.get(kind, 0) + int(margin > 0)
        print(
            f"{category:<10} ({kind}): I3AD {per['i3ad']['image']:.3f} vs best baseline {best} "
            f"{baselines[best]:.3f} -> margin {margin:+.3f}"
        )
    print()
    for kind, values in margins.items():
        print(
            f"{kind}s: I3AD ahead of every baseline on {wins[kind]}/{len(values)}; "
            f"mean margin {sum(values) / len(values):+.3f}"
        )
    texture = margins.get("texture", [])
    met = bool(texture) and wins.get("texture", 0) >= TARGET_WINS and sum(texture) / len(texture) >= TARGET_MARGIN
    print(
        f"targets (ahead on >= {TARGET_WINS} textures, mean texture margin >= +{TARGET_MARGIN}): "
        f"{'MET' if met else 'NOT met'}"
    )
    return met


def main() -> int:
    args = parse_args()
    if args.summary:
        path = args.summary
    elif args.sweep:
        path = args.sweep / "summary.json"
    else:
        path = run_study(args.config, args.workdir, args.overrides)
    summary = json.loads(Path(path).read_text())
    print_report(table(summary, args.map), summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
