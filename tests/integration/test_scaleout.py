"""The sweep on a real 2-node Ray cluster, logging to a real MLflow server on PostgreSQL, through faults.

One sweep is run once for the whole module (it is the expensive part) and goes through, in order:
  (a) the worker node is SIGKILLed while it trains a model that has checkpointed;
  (b) the MLflow server is stopped for a few seconds while that trial, retried on the head, reports;
  (c) once that trial has finished and been logged, the driver is SIGKILLed; a fresh worker node
      joins and the sweep is continued with --resume.
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
TERMINAL = ("FINISHED", "KILLED", "FAILED")


@dataclass
class Record:
    run: SweepRun
    nodes_by_trial: dict[str, str] = field(default_factory=dict)  # train trial -> node that ran it first
    victim: str = ""  # train trial running on the worker when it was killed
    victim_retry_node: str = ""
    outage: tuple[float, float] = (0.0, 0.0)  # wall-clock seconds: server stopped .. healthy again
    refused_during_outage: bool = False
    at_kill: dict = field(default_factory=dict)  # snapshots taken right after the driver was killed
    killed_at: float = 0.0  # wall-clock seconds


def _mlflow_runs(client: MlflowClient) -> dict[str, dict]:
    """Child runs of the experiment: phase, trial id, status, tags and the length of every metric history."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        tags = run.data.tags
        if "phase" not in tags:
            continue  # the parent run
        counts = {key: len(client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics}
        runs[run.info.run_id] = {
            "phase": tags["phase"],
            "trial_id": tags.get("trial_id"),
            "status": run.info.status,
            "tags": dict(tags),
            "counts": counts,
            "category": tags.get("category"),
        }
    return runs


def _spans(trial: Trial, outage: tuple[float, float]) -> bool:
    """The trial reported while the server was down, or before it went down and again after it was back.

    (A result's timestamp is when the driver fetched it. The trial logger queues its MLflow writes, so the
    driver keeps fetching results during the outage and their rows must reach MLflow once it is back.)"""
    stamps = [r["timestamp"] for r in trial.results]
    during = any(outage[0] <= t <= outage[1] for t in stamps)
    return bool(stamps) and (during or (min(stamps) < outage[0] and max(stamps) > outage[1]))


def _outage_trial_settled(run: SweepRun, client: MlflowClient, outage: tuple[float, float]) -> str | None:
    """A trial that ran through the outage and whose MLflow run is closed (the logger closes a run after
    all of its results were written)."""
    try:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        closed = {
            r.data.tags.get("trial_id")
            for r in client.search_runs([experiment.experiment_id], max_results=1000)
            if r.info.status in TERMINAL
        }
    except Exception:  # noqa: BLE001 - the server may still be warming up
        return None
    for trial in [*run.trials("train").values(), *run.trials("detect").values()]:
        if trial.trial_id in closed and _spans(trial, outage):
            return trial.trial_id
    return None


def _finished_at_kill(record: Record) -> set[str]:
    """Trials finished when the driver was killed: closed in MLflow or ended in Tune's last snapshot."""
    closed = {r["trial_id"] for r in record.at_kill["mlflow"].values() if r["status"] in TERMINAL}
    ended = {t for phase in record.at_kill["tune"].values() for t, trial in phase.items() if trial.done}
    return (closed | ended) - {None}


def _health_refused(uri: str) -> bool:
    try:
        urllib.request.urlopen(f"{uri}/health", timeout=2)
    except OSError:
        return True
    return False


@pytest.fixture(scope="module")
def record(ray_cluster, mlflow_server, tmp_path_factory) -> Record:
    run = SweepRun(
        tmp_path_factory.mktemp("scaleout"), ray_cluster.address, mlflow_server.uri, ray_cluster.env, EXPERIMENT
    )
    rec = Record(run)
    client = MlflowClient(tracking_uri=mlflow_server.uri)
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

        rec.victim = run.wait_for(
            "a checkpoint of the worker's trial", worker_trial_checkpointed, timeout=240, poll=0.2
        )
        ray_cluster.remove_node(worker)

        def retried_somewhere() -> str | None:
            trial = run.trials("train").get(rec.victim)
            pids = trial.pids if trial else []
            node = ray_cluster.node_of_pid(pids[-1]) if pids and pids[-1] != pids[0] else None
            return node.name if node else None

        rec.victim_retry_node = run.wait_for("the retry of the worker's trial", retried_somewhere, timeout=300)

        # (b) While the retried trial trains, stop the MLflow server for a few seconds.
        stopped = time.time()
        mlflow_server.stop()
        time.sleep(OUTAGE_S)
        rec.refused_during_outage = _health_refused(mlflow_server.uri)
        mlflow_server.start()
        rec.outage = (stopped, time.time())

        # (c) Once a trial that reported during the outage is finished and logged, kill the driver.
        run.wait_for(
            "a trial of the outage to be logged",
            lambda: _outage_trial_settled(run, client, rec.outage),
            timeout=300,
            poll=0.5,
        )
        rec.killed_at = time.time()
        run.kill()
        rec.at_kill = {
            "state": run.state(),
            "tune": {phase: run.trials(phase) for phase in ("train", "detect")},
            "mlflow": _mlflow_runs(client),
        }
        ray_cluster.add_worker()  # a replacement node for the rest of the sweep
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
    closed_at_kill = {r["trial_id"] for r in record.at_kill["mlflow"].values() if r["status"] in TERMINAL}
    checked, spanning = [], 0
    for phase in ("train", "detect"):
        for trial_id, trial in record.run.trials(phase).items():
            if trial_id not in closed_at_kill:
                continue  # finished only after the driver kill: (c) covers it
            expected: dict[str, int] = {}
            for result in trial.results:
                for key, value in result.items():
                    if key.startswith(("train/", "val/", "calibration/", "time/")) and isinstance(value, (int, float)):
                        expected[key] = expected.get(key, 0) + 1
            logged = by_trial[trial_id]["counts"]
            assert {k: logged.get(k, 0) for k in expected} == expected, f"{phase} trial {trial_id}"
            checked.append(phase)
            spanning += _spans(trial, record.outage)
    assert checked, "no trial had finished before the driver was killed"
    assert spanning > 0, "no finished trial ran through the outage"


def test_driver_kill_and_resume_reran_nothing_finished(record, mlflow_server):
    at_kill, finished = record.at_kill, _finished_at_kill(record)
    assert finished
    for phase in ("train", "detect"):
        now = record.run.trials(phase)
        for trial_id, trial in at_kill["tune"][phase].items():
            if trial_id in finished:
                # Tune syncs result.json to storage with a lag, so rows the dead driver had already received
                # can appear after the kill; a rerun is a row *produced* after the kill (not a replayed copy).
                after = [
                    r["step"] if "step" in r else r.get("iteration")
                    for r in now[trial_id].results
                    if r["timestamp"] > record.killed_at
                ]
                assert not after, f"{phase} trial {trial_id} ran again after the driver was killed: {after}"
                assert len(now[trial_id].results) >= len(trial.results)
    runs = _mlflow_runs(MlflowClient(tracking_uri=mlflow_server.uri))
    for run_id, before in at_kill["mlflow"].items():
        if before["trial_id"] in finished:
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
    compare = subprocess.run(
        [sys.executable, "-m", "tracking.compare", *common],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=180,
    )
    assert compare.returncode == 0, compare.stderr[-3000:]
    assert "carpet" in compare.stdout and "screw" in compare.stdout
    promote = subprocess.run(
        [sys.executable, "-m", "tracking.promote", *common],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=180,
    )
    assert promote.returncode == 0, promote.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    for category in ("carpet", "screw"):
        assert client.get_model_version_by_alias(f"i3ad-{category}", "champion").version
