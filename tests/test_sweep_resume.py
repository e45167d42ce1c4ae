"""A sweep whose driver is killed (SIGKILL to its whole process group, as a reboot would) continues with
`--resume`: finished training is not repeated, the training that was running continues from its last
Tune checkpoint, and the MLflow runs the dead driver left open are closed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ray.tune import ExperimentAnalysis

from studies.ledger import REPLAYED
from studies.search import READY

REPO = Path(__file__).resolve().parents[1]

ARGS = [
    "--categories",
    "carpet,screw",
    "--set",
    "methods=[i3ad]",  # one training trial per category: the kill point and snapshot edit key trials by category
    "--num-samples",
    "1",
    "--max-concurrent",
    "2",
    "--set",
    "data.synthetic={size: 32, n_train: 8, n_test_good: 4, n_test_per_defect: 2, seed: 0}",
    "--set",
    "train={image_size: 32, width: 4, batch_size: 2, steps: 10, checkpoint_every: 5, log_every: 5, max_seconds: null}",
    "--set",
    "train_by_kind.object={steps: 80}",  # screw trains long enough to be killed mid-way
    "--set",
    "calibration={images: 2, iterations: 2, tolerance: 10.0}",
    "--set",
    "detect.iterations=2",
    "--set",
    "search.grace_period=1",
    "--set",
    "ray.max_failures=0",
]


def _sweep(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "studies/sweep.py", "--workdir", str(workdir), *ARGS, *extra]


def _trials_in_snapshot(experiment: Path) -> dict[str, tuple[str, dict]]:
    """Training trials in Tune's latest experiment snapshot: category -> (status, last result)."""
    snapshots = sorted(experiment.glob("experiment_state-*.json"))
    if not snapshots:
        return {}
    try:
        data = json.loads(snapshots[-1].read_text())
    except ValueError:  # being rewritten
        return {}
    trials = {}
    for trial_json, meta_json in data["trial_data"]:
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        if trial["config"].get("phase") == "train":
            trials[trial["config"]["category"]] = (trial["status"], meta.get("last_result") or {})
    return trials


def _wait_for_kill_point(proc: subprocess.Popen, workdir: Path, timeout: float = 300) -> Path:
    """Until Tune's snapshot has carpet's training finished and screw's running past a checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for storage in workdir.glob("sweeps/*/ray_results"):
            trials = _trials_in_snapshot(storage / "sweep")
            carpet, screw = trials.get("carpet", ("", {})), trials.get("screw", ("", {}))
            if carpet[0] == "TERMINATED" and screw[0] == "RUNNING" and screw[1].get("step", 0) >= 5:
                return storage
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (status {proc.returncode}) before the kill point")
        time.sleep(0.2)
    pytest.fail("the kill point was not reached in time")


def _snapshot_missed_finish(experiment: Path, category: str) -> None:
    """Make Tune's latest snapshot hold `category`'s finished training trial as RUNNING, as a snapshot
    taken just before it finished would (Tune snapshots every ~10 s; the driver may die in between)."""
    snapshot = sorted(experiment.glob("experiment_state-*.json"))[-1]
    data = json.loads(snapshot.read_text())
    for entry in data["trial_data"]:
        trial = json.loads(entry[0])
        if trial["config"].get("phase") == "train" and trial["config"]["category"] == category:
            assert trial["status"] == "TERMINATED"
            trial["status"] = "RUNNING"
            entry[0] = json.dumps(trial)
    snapshot.write_text(json.dumps(data))


def test_killed_sweep_resumes_from_checkpoints(tmp_path):
    workdir = tmp_path / "work"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_sweep(workdir), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        storage = _wait_for_kill_point(proc, workdir)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # driver and the Ray instance it started
        proc.wait()
    _snapshot_missed_finish(storage / "sweep", "carpet")

    resumed = subprocess.run(_sweep(workdir, "--resume"), cwd=REPO, capture_output=True, text=True, timeout=420)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming sweep" in resumed.stdout and "closed" in resumed.stdout

    trials = ExperimentAnalysis(str(storage / "sweep")).trials
    train = {t.config["category"]: t for t in trials if t.config["phase"] == "train"}
    assert sorted(train) == ["carpet", "screw"]  # no training trial was added or repeated
    (carpet_results,) = (storage / "sweep").glob(f"*{train['carpet'].trial_id}*/result.json")
    carpet_rows = [json.loads(line) for line in carpet_results.read_text().splitlines()]
    assert [r["step"] for r in carpet_rows if not r.get(REPLAYED)] == [
        5,
        10,
        10,
    ]  # two logged steps + the final; not rerun
    assert [r[REPLAYED] for r in carpet_rows if r.get(REPLAYED)] == [1.0]  # its recorded result handed back once
    assert train["carpet"].last_result.get(READY) == 1.0
    screw = train["screw"].last_result
    assert screw["step"] == 80 and screw["iterations_since_restore"] < screw["training_iteration"]  # continued

    folder = storage.parent
    client = MlflowClient(f"sqlite:///{workdir.resolve() / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "quick"]
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("i3ad.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not [r for r in runs if r.info.status == "RUNNING"]
    train_runs = {r.data.tags["category"]: r for r in runs if r.data.tags.get("phase") == "train"}
    assert sorted(train_runs) == ["carpet", "screw"]
    carpet_steps = [m.step for m in client.get_metric_history(train_runs["carpet"].info.run_id, "train/loss_g")]
    assert carpet_steps == [5, 10]  # trained once
    assert "resumed" not in train_runs["carpet"].data.tags and train_runs["carpet"].info.status == "FINISHED"
    assert train_runs["screw"].data.tags.get("resumed") == "true"
    finals = {r.data.tags["category"] for r in runs if r.data.tags.get("phase") == "final"}
    assert finals == {"carpet", "screw"}
    assert (folder / "summary.json").exists()
