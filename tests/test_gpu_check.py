"""The prepared GPU check runs every step on CPU at toy sizes (`--dry-run`), so it works when a GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--workdir", str(tmp_path), "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for heading in ("training (width, batch as the paper)", "detection (N iterations", "sweep: 4 trials"):
        assert heading in done.stdout
    measured = json.loads(out.read_text())
    assert [(r["kind"], r["dtype"]) for r in measured["training"]] == [("object", "float32"), ("texture", "float32")]
    assert all(r["steps_per_s"] > 0 and r["paper_500k_hours"] > 0 for r in measured["training"])
    paths = [r["path"] for r in measured["detection"]["rows"]]
    assert paths == ["fast, batch 1", "fast, batch 2", "fast, batch 4", "straightforward loop"]
    assert all(0 < r["of_matmul"] for r in measured["detection"]["rows"])
    sweep = measured["sweep"]
    assert sweep["finished"] and sweep["trials"] == 4
    assert sweep["mlflow_runs"].get("train") == 1 and sweep["mlflow_runs"].get("detect") == 3
