"""The sweep on a real 2-node Ray cluster, logging to a real MLflow server on PostgreSQL, through faults.

One sweep is run once for the whole module (it is the expensive part) and goes through, in order:
  (a) the worker node is SIGKILLed while it trains a model that has checkpointed;
  (b) the MLflow server is stopped for a few seconds while detection trials report;
  (c) the driver is SIGKILLed after that, and the sweep is continued with --resume.
Each test then checks one promise against what Tune stored, what MLflow holds and the driver's summary.
"""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow import MlflowClient

from .sweep_run import LOG_EVERY, TRAIN_STEPS, SweepRun, Trial

EXPERIMENT = "scaleout"
OUTAGE_S = 5.0


@dataclass
class Record:
    run: SweepRun
    nodes_by_trial: dict[str, str] = field(default_factory=dict)  # train trial -> node that ran it first
    victim: str = ""  # train trial running on the worker when it was killed
    victim_retry_node: str = ""
    outage: tuple[float, float] = (0.0, 0.0)  # wall-clock seconds: server stopped .. healthy again
    refused_during_outage: bool = False
    at_kill: dict = field(default_factory=dict)  # snapshots taken right after the driver was killed


def _mlflow_runs(client: MlflowClient) -> dict[str, dict]:
    """Child runs of the experiment: phase, trial id, status, tags and the length of every metric history."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        tags = run.data.tags
        if "phase" not in tags:
            continue  # the parent run
        counts = {key: len(client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics}
        runs[run.info.run_id] = {"phase": tags["phase"], "trial_id": tags.get("trial_id"), "status": run.info.status,
                                 "tags": dict(tags), "counts": counts, "category": tags.get("category")}
    return runs


def _terminal_detect_runs(client: MlflowClient) -> int:
    try:
        return sum(1 for r in _mlflow_runs(client).values()
                   if r["phase"] == "detect" and r["status"] in ("FINISHED", "KILLED"))
    except Exception:  # noqa: BLE001 - the server may still be warming up
        return 0


def _health_refused(uri: str) -> bool:
    try:
        urllib.request.urlopen(f"{uri}/health", timeout=2)
    except OSError:
        return True
    return False


@pytest.fixture(scope="module")
def record(ray_cluster, mlflow_server, tmp_path_factory) -> Record:
    run = SweepRun(tmp_path_factory.mktemp("scaleout"), ray_cluster.address, mlflow_server.uri, ray_cluster.env, EXPERIMENT)
    rec = Record(run)
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    head = next(n for n in ray_cluster.nodes if n.name == "head")
    worker = next(n for n in ray_cluster.nodes if n.name.startswith("worker") and n.alive)
    run.start()
    try:
        # Both training trials running: note where each one runs.
        def placed() -> bool:
            for trial in run.trials("train").values():
                node = ray_cluster.node_of_pid(trial.pids[0]) if trial.pids else None
                if node is not None:
                    rec.nodes_by_trial.setdefault(trial.trial_id, node.name)
            return len(rec.nodes_by_trial) == 2
        run.wait_for("two training trials to report", placed, timeout=240)

        # (a) The worker's trial has a checkpoint: kill the worker node.
        def worker_trial_checkpointed() -> str | None:
            for trial in run.trials("train").values():
                if rec.nodes_by_trial.get(trial.trial_id) == worker.name and not trial.done:
                    if any(r.get("checkpoint_dir_name") for r in trial.results):
                        return trial.trial_id
            return None
        rec.victim = run.wait_for("a checkpoint of the worker's trial", worker_trial_checkpointed, timeout=240, poll=0.2)
        ray_cluster.remove_node(worker)

        def retried_somewhere() -> str | None:
            trial = run.trials("train").get(rec.victim)
            pids = trial.pids if trial else []
            node = ray_cluster.node_of_pid(pids[-1]) if pids and pids[-1] != pids[0] else None
            return node.name if node else None
        rec.victim_retry_node = run.wait_for("the retry of the worker's trial", retried_somewhere, timeout=300)

        # (b) Detection trials are reporting: stop the MLflow server for a few seconds.
        run.wait_for("the detection phase", lambda: any(t.results for t in run.trials("detect").values()), timeout=300)
        stopped = time.time()
        mlflow_server.stop()
        time.sleep(OUTAGE_S)
        rec.refused_during_outage = _health_refused(mlflow_server.uri)
        mlflow_server.start()
        rec.outage = (stopped, time.time())

        # (c) Once logging has caught up with a finished detection trial, kill the driver.
        run.wait_for("a detection run finished in MLflow", lambda: _terminal_detect_runs(client), timeout=300, poll=1.0)
        run.kill()
        rec.at_kill = {
            "state": run.state(),
            "tune": {phase: run.trials(phase) for phase in ("train", "detect")},
            "mlflow": _mlflow_runs(client),
        }
        run.resume()
        code = run.wait(timeout=420)
        assert code == 0, f"resumed sweep failed with {code}:\n{run.log_tail()}"
    finally:
        if run.running:
            run.kill()
        if not any(n.alive for n in ray_cluster.nodes if n.name.startswith("worker")):
            ray_cluster.add_worker()  # later tests expect two nodes again
    return rec


def test_sweep_finished_without_failures(record):
    summary = record.run.summary()
    assert summary["failures"] == [], summary["failures"]
    assert summary["attempts"] == 2
    assert {row["category"] for row in summary["rows"]} == {"carpet", "screw"}
    assert summary["tracking_uri"].startswith("http://127.0.0.1:")


def test_training_trials_ran_on_both_nodes(record):
    assert sorted(record.nodes_by_trial.values()) == ["head", "worker0"]


def test_lost_worker_trial_resumed_from_its_checkpoint_on_the_remaining_node(record, mlflow_server):
    trial: Trial = record.run.trials("train")[record.victim]
    first_pid = trial.results[0]["pid"]
    before = [r for r in trial.results if r["pid"] == first_pid]
    after = [r for r in trial.results if r["pid"] != first_pid]
    last_checkpoint_step = max(r["step"] for r in before if r.get("checkpoint_dir_name"))
    assert record.victim_retry_node == "head"
    assert after, "the trial was not retried"
    assert after[0]["step"] == last_checkpoint_step + LOG_EVERY, "the retry did not start from the last checkpoint"
    assert max(r["step"] for r in after) == TRAIN_STEPS and trial.done
    runs = _mlflow_runs(MlflowClient(tracking_uri=mlflow_server.uri))
    victim_run = next(r for r in runs.values() if r["trial_id"] == record.victim)
    assert victim_run["status"] == "FINISHED" and victim_run["tags"].get("retries") == "1"


def test_mlflow_outage_lost_no_metrics_of_finished_trials(record, mlflow_server):
    assert record.refused_during_outage, "the server was not actually down"
    runs = _mlflow_runs(MlflowClient(tracking_uri=mlflow_server.uri))
    by_trial = {r["trial_id"]: r for r in runs.values() if r["trial_id"]}
    checked, during_outage = 0, 0
    for phase in ("train", "detect"):
        for trial_id, trial in record.run.trials(phase).items():
            at_kill = record.at_kill["tune"][phase].get(trial_id)
            if at_kill is None or not at_kill.done:
                continue  # finished only after the driver kill: (c) covers it
            expected: dict[str, int] = {}
            for result in trial.results:
                for key, value in result.items():
                    if key.startswith(("train/", "val/", "calibration/", "time/")) and isinstance(value, (int, float)):
                        expected[key] = expected.get(key, 0) + 1
            logged = by_trial[trial_id]["counts"]
            assert {k: logged.get(k, 0) for k in expected} == expected, f"{phase} trial {trial_id}"
            checked += 1
            during_outage += sum(record.outage[0] <= r["timestamp"] <= record.outage[1] for r in trial.results)
    assert checked >= 4
    assert during_outage > 0, "no result was reported while the server was down"


def test_driver_kill_and_resume_reran_nothing_finished(record, mlflow_server):
    at_kill = record.at_kill
    for phase in ("train", "detect"):
        now = record.run.trials(phase)
        for trial_id, trial in at_kill["tune"][phase].items():
            if trial.done:
                assert len(now[trial_id].results) == len(trial.results), f"{phase} trial {trial_id} ran again"
    runs = _mlflow_runs(MlflowClient(tracking_uri=mlflow_server.uri))
    for run_id, before in at_kill["mlflow"].items():
        if before["status"] in ("FINISHED", "KILLED"):
            assert runs[run_id]["counts"] == before["counts"], f"run {run_id} got new metrics"
            assert "resumed" not in runs[run_id]["tags"]
    trial_ids = [r["trial_id"] for r in runs.values() if r["trial_id"]]
    assert len(trial_ids) == len(set(trial_ids)), "a trial got a second MLflow run"
    if "train" in at_kill["state"].get("phases_done", []):
        assert sum(r["phase"] == "train" for r in runs.values()) == 2
    finals = [r["category"] for r in runs.values() if r["phase"] == "final"]
    assert sorted(finals) == ["carpet", "screw"]


def test_promote_and_compare_against_the_server(record, mlflow_server):
    common = ["--experiment", EXPERIMENT, "--tracking-uri", mlflow_server.uri]
    compare = subprocess.run([sys.executable, "-m", "tracking.compare", *common], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[2], timeout=180)
    assert compare.returncode == 0, compare.stderr[-3000:]
    assert "carpet" in compare.stdout and "screw" in compare.stdout
    promote = subprocess.run([sys.executable, "-m", "tracking.promote", *common], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[2], timeout=180)
    assert promote.returncode == 0, promote.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    for category in ("carpet", "screw"):
        assert client.get_model_version_by_alias(f"i3ad-{category}", "champion").version
