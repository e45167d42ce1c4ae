"""Scale-out overhead: the same sweep on a 1-node and on a 2-node loopback Ray cluster, CPUs split.

    python -m benchmarks.scaling            # the integration tests' reduced quick sweep (~6 min on 2 cores)
    python -m benchmarks.scaling --full     # the quick study exactly as configured (~15 min on 2 cores)
    python -m benchmarks.scaling --cpus 4   # 1 node x 4 CPUs vs 2 nodes x 2 CPUs

Run it as a module from the repository root: it reuses the integration tests' cluster helpers.

Each layout gets a fresh cluster started with the real `ray start` CLI (the integration tests'
LoopbackRayCluster) and its own driver process; MLflow is the embedded SQLite store of each run.
Per layout it prints wall time per phase and the share of trial slot-time not spent computing
(scheduling, actor and placement-group start-up, data loading, result handling, checkpoint syncing):
`1 - sum(trial compute seconds) / (phase wall seconds * trial slots)`, from the sweep's summary.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.ray_cluster import LoopbackRayCluster
from tests.integration.sweep_run import tiny_args

REPO = Path(__file__).resolve().parents[1]


def run_layout(nodes: int, cpus: int, sweep_args: list[str], root: Path) -> dict:
    """Start a cluster of `nodes` nodes sharing `cpus` CPUs, run the sweep on it, return its summary."""
    cluster = LoopbackRayCluster()
    try:
        began = time.monotonic()
        cluster.start_head(num_cpus=cpus // nodes)
        for _ in range(nodes - 1):
            cluster.add_worker(num_cpus=cpus // nodes)
        cluster_s = time.monotonic() - began
        workdir = root / f"{nodes}-node"
        cmd = [
            sys.executable,
            str(REPO / "studies" / "sweep.py"),
            "--ray-address",
            cluster.address,
            "--workdir",
            str(workdir),
            "--storage-path",
            str(workdir / "storage"),
            *sweep_args,
        ]
        began = time.monotonic()
        done = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, cwd=root)
        driver_s = time.monotonic() - began
        if done.returncode != 0:
            raise SystemExit(f"sweep on {nodes} node(s) failed ({done.returncode}):\n{done.stderr[-4000:]}")
        summary = json.loads(next(workdir.glob("sweeps/*/summary.json")).read_text())
        return {"nodes": nodes, "cluster_s": cluster_s, "driver_s": driver_s, "summary": summary}
    finally:
        cluster.shutdown()


def phases(stats: dict) -> list[tuple[str, float, int, float]]:
    """(phase, wall seconds, trial slots, trial compute seconds) for the Tune phase(s) and the final one."""
    rows = []
    if "search" in stats:  # one Tune experiment for training and detection
        search = stats["search"]
        compute = sum(stats.get(p, {}).get("trial_compute_s", 0.0) for p in ("train", "detect"))
        rows.append(("search", search["wall_s"], search["slots"], compute))
    else:  # one experiment per phase
        rows += [(p, stats[p]["wall_s"], stats["slots"], stats[p]["trial_compute_s"]) for p in ("train", "detect")]
    if "final" in stats:
        slots = rows[0][2] if rows else 1
        rows.append(("final", stats["final"]["wall_s"], slots, stats["final"].get("compute_s", 0.0)))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| layout | phase | wall s | trial slots | trial compute s | not computing |", "|---|---|---|---|---|---|"]
    for row in rows:
        layout = f"{row['nodes']} node(s) x {row['cpus']} CPU"
        lines.append(f"| {layout} | cluster start | {row['cluster_s']:.1f} | | | |")
        for phase, wall, slots, compute in phases(row["summary"]["stats"]):
            share = 1.0 - compute / (wall * max(slots, 1)) if wall else float("nan")
            lines.append(f"| {layout} | {phase} | {wall:.1f} | {slots} | {compute:.1f} | {share:.0%} |")
        lines.append(f"| {layout} | whole sweep (driver) | {row['driver_s']:.1f} | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs in total, split evenly over the nodes (even)")
    parser.add_argument("--full", action="store_true", help="the quick study as configured, not the reduced one")
    parser.add_argument("--categories", default="carpet,screw")
    args = parser.parse_args()
    sweep_args = ["--categories", args.categories, *([] if args.full else tiny_args())]
    rows = []
    with tempfile.TemporaryDirectory(prefix="i3ad-scaling-") as tmp:
        for nodes in (1, 2):
            print(f"running the sweep on {nodes} node(s) ...", flush=True)
            row = run_layout(nodes, args.cpus, sweep_args, Path(tmp))
            row["cpus"] = args.cpus // nodes
            rows.append(row)
    print()
    print(table(rows))
    one, two = rows
    print(
        f"\n2 nodes / 1 node sweep wall time: {two['driver_s'] / one['driver_s']:.2f}x "
        "(same CPUs in total: the difference is the cost of spreading over nodes on one machine)"
    )
    print("\nraw stats:", json.dumps({f"{r['nodes']}-node": r["summary"]["stats"] for r in rows}))


if __name__ == "__main__":
    main()
