"""The sweep's MLflow plumbing on a real SQLite store: URIs, retries, closing runs a dead driver left open."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pytest
from mlflow.exceptions import MlflowException

from i3ad.errors import root_message
from tracking import store as store_module
from tracking.store import Store, is_transient, resolve_tracking_uri, retrying
from tracking.tune_logger import MlflowTrialLogger, flat_params, result_metrics


def test_tracking_uris_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None, Path("work")) == f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:///rel/m.db", Path("w")) == f"sqlite:///{tmp_path / 'rel' / 'm.db'}"
    assert resolve_tracking_uri("http://mlflow:5000", Path("w")) == "http://mlflow:5000"
    assert resolve_tracking_uri("store", Path("w")) == (tmp_path / "store").as_uri()


def test_retrying_waits_out_transient_errors_only(monkeypatch):
    monkeypatch.setattr(store_module.time, "sleep", lambda seconds: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("Connection refused")
        return "ok"

    assert retrying(flaky) == "ok" and len(calls) == 3
    assert is_transient(MlflowException("sqlite3.OperationalError: database is locked"))
    with pytest.raises(ValueError):
        retrying(lambda: (_ for _ in ()).throw(ValueError("a bug, not an outage")))


def test_close_open_children(tmp_path):
    store = Store(resolve_tracking_uri(None, tmp_path))
    experiment = store.experiment("study", tmp_path / "artifacts")
    parent = store.start_run(experiment, "sweep", {"i3ad.kind": "sweep"})
    running = store.start_run(experiment, "train", {"phase": "train"}, parent)
    done = store.start_run(experiment, "detect", {"phase": "detect"}, parent)
    store.finish(done)
    assert store.close_open_children(experiment, parent) == 1
    assert store.client.get_run(running).info.status == "KILLED"
    assert store.client.get_run(running).data.tags["interrupted"] == "true"
    assert store.client.get_run(done).info.status == "FINISHED"
    assert store.client.get_run(parent).info.status == "RUNNING"  # the parent is the resumed driver's


def test_result_metrics_and_params():
    result = {
        "iteration": 3,
        "val/image_auroc_ssim": 0.9,
        "val/bad": float("nan"),
        "done": False,
        "config/threshold": 0.2,
        "timestamp": 1_700_000_000,
        "time/compute_s": 1.5,
    }
    metrics = {m.key: (m.value, m.step) for m in result_metrics(result, "iteration")}
    assert metrics == {"val/image_auroc_ssim": (0.9, 3), "time/compute_s": (1.5, 3)}
    assert flat_params({"category": "carpet", "train": {"width": 8}}) == {"category": "carpet", "train/width": "8"}
    assert flat_params({"a": {"b": {"c": "x" * 600}}, "empty": {}}) == {"a/b/c": "x" * 500}


def test_root_message_unwraps_causes():
    try:
        try:
            raise FileNotFoundError("/data/x.png")
        except FileNotFoundError as inner:
            raise RuntimeError("trial failed") from inner
    except RuntimeError as outer:
        assert root_message(outer) == "FileNotFoundError: /data/x.png"


def test_root_message_passes_text_errors_through():
    assert root_message("DatasetError: /data/x.png is truncated") == "DatasetError: /data/x.png is truncated"


def test_root_message_follows_a_cause_attribute():
    class Wrapper(Exception):  # as Ray's RayTaskError / TuneError carry the trial's exception
        def __init__(self, cause: BaseException) -> None:
            super().__init__("wrapped")
            self.cause = cause

    looped = ValueError("loop")
    looped.__cause__ = looped
    assert root_message(Wrapper(Wrapper(KeyError("k")))) == "KeyError: 'k'"
    assert root_message(looped) == "ValueError: loop"


def test_children_reads_every_page(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "SEARCH_MAX_RESULTS_DEFAULT", 2)
    store = Store(resolve_tracking_uri(None, tmp_path))
    experiment = store.experiment("study", tmp_path / "artifacts")
    parent = store.start_run(experiment, "sweep", {})
    other = store.start_run(experiment, "other", {})
    runs = {store.start_run(experiment, f"t{i}", {"phase": "detect" if i else "train"}, parent) for i in range(5)}
    store.start_run(experiment, "elsewhere", {}, other)
    assert {r.info.run_id for r in store.children(experiment, parent)} == runs
    assert len(store.children(experiment, parent, "tags.phase = 'detect'")) == 4


def _trial(trial_id: str, phase: str = "detect", **config):
    return SimpleNamespace(
        trial_id=trial_id,
        config={"phase": phase, "category": "carpet", "method": "i3ad", **config},
        last_result={},
        num_failures=0,
        pickled_error_file=None,
        error_file=None,
        get_pickled_error=lambda: ValueError("bad threshold"),
        get_error=lambda: None,
    )


def _logger(store: Store, experiment: str, parent: str, **kwargs) -> MlflowTrialLogger:
    return MlflowTrialLogger(
        store.uri,
        experiment,
        parent,
        step_keys={"train": "step", "detect": "iteration"},
        target_keys={"detect": "iterations"},
        **kwargs,
    )


def test_trial_logger_child_runs(tmp_path):
    store = Store(resolve_tracking_uri(None, tmp_path))
    experiment = store.experiment("study", tmp_path / "artifacts")
    parent = store.start_run(experiment, "sweep", {})
    logger = _logger(store, experiment, parent)
    stopped, done, failed = (_trial(f"ab12_0000{n}", iterations=3, detect={"threshold": 0.2}) for n in (1, 2, 3))
    for trial in (stopped, done, failed):
        logger.on_trial_start(0, [], trial)
    logger.on_trial_result(1, [], stopped, {"iteration": 1, "val/image_auroc_ssim": 0.7, "done": False})
    stopped.last_result = {"iteration": 1}
    done.last_result = {"iteration": 3}
    logger.on_trial_complete(2, [], stopped)
    logger.on_trial_complete(2, [], done)
    failed.num_failures = 1
    logger.on_trial_recover(2, [], failed)
    logger.on_trial_error(3, [], failed)
    logger.on_experiment_end([])

    (model,) = store.children(experiment, parent)  # sweep -> carpet·i3ad -> its trials
    assert model.info.run_name == "carpet·i3ad" and model.data.tags["i3ad.kind"] == "model"
    runs = {r.data.tags["trial_id"]: r for r in store.children(experiment, model.info.run_id)}
    assert {t: r.info.status for t, r in runs.items()} == {
        "ab12_00001": "FINISHED",  # ASHA-stopped: not a failure
        "ab12_00002": "FINISHED",
        "ab12_00003": "FAILED",
    }
    first = runs["ab12_00001"]
    assert (
        first.info.run_name == "carpet·i3ad·t01"
        and runs["ab12_00003"].info.run_name == "carpet·i3ad·t03"
        and first.data.tags["sweep_run_id"] == parent
    )
    assert first.data.tags["stopped_early"] == "true" and first.data.tags["stopped_at"] == "1"
    assert first.data.params == {"category": "carpet", "method": "i3ad", "iterations": "3", "detect/threshold": "0.2"}
    assert [(m.step, m.value) for m in store.client.get_metric_history(first.info.run_id, "val/image_auroc_ssim")] == [
        (1, 0.7)
    ]
    assert "stopped_early" not in runs["ab12_00002"].data.tags
    assert runs["ab12_00003"].data.tags["error"] == "ValueError: bad threshold"
    assert runs["ab12_00003"].data.tags["retries"] == "1"
    assert runs["ab12_00003"].data.tags["last_error"] == "ValueError: bad threshold"
    assert logger.run_ids == {t: r.info.run_id for t, r in runs.items()}


def test_trial_logger_resumes_runs_skips_replayed_trials_and_queues_writes(tmp_path, monkeypatch):
    store = Store(resolve_tracking_uri(None, tmp_path))
    experiment = store.experiment("study", tmp_path / "artifacts")
    parent = store.start_run(experiment, "sweep", {})
    logger = _logger(store, experiment, parent, skip=lambda trial_id: trial_id == "old", retry_delay=0.01)
    trial, old = _trial("t1", phase="train"), _trial("old", phase="train")
    logger.on_trial_start(0, [], trial)
    logger.on_trial_start(0, [], old)
    logger.writer.flush()
    assert [r.data.tags["trial_id"] for r in store.descendants(experiment, parent) if "trial_id" in r.data.tags] == [
        "t1"
    ]

    restored = cloudpickle.loads(cloudpickle.dumps(logger))  # Tune saves callbacks with the experiment
    down = threading.Event()
    real_call = Store.call

    def outage(self, method, *args, **kwargs):
        if down.is_set():
            raise ConnectionError("Connection refused")
        return real_call(self, method, *args, **kwargs)

    monkeypatch.setattr(Store, "call", outage)
    down.set()
    restored.on_trial_start(1, [], trial)  # the restored trial's own run, found by its trial_id tag
    restored.on_trial_result(2, [], trial, {"step": 5, "train/loss": 1.5})
    trial.last_result = {"step": 5}
    restored.on_trial_complete(3, [], trial)
    restored.on_trial_complete(3, [], old)
    assert restored.writer.pending >= 3  # still down: kept in order
    down.clear()
    restored.on_experiment_end([])
    assert restored.writer.pending == 0

    (run,) = [r for r in store.descendants(experiment, parent) if r.data.tags.get("trial_id") == "t1"]
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert run.data.metrics == {"train/loss": 1.5}
    assert run.info.run_name == "carpet·i3ad·train"


def test_trial_logger_does_not_wait_on_a_dead_tracking_server(caplog):
    """Issue 20 item 7: with the server down, trial events return at once; the end names what was not delivered."""
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logger = MlflowTrialLogger(
        f"http://127.0.0.1:{port}",
        "0",
        "parent",
        step_keys={"detect": "iteration"},
        target_keys={"detect": "iterations"},
        flush_timeout=0.5,
    )
    trial = _trial("ab12_00001", iterations=3)
    began = time.monotonic()
    logger.on_trial_start(0, [], trial)
    for i in range(20):
        logger.on_trial_result(i, [], trial, {"iteration": i, "val/image_auroc_ssim": 0.5})
    trial.last_result = {"iteration": 3}
    logger.on_trial_complete(21, [], trial)
    assert time.monotonic() - began < 0.5  # synchronous run creation waited 30-67 s here
    with caplog.at_level(logging.WARNING, logger="tracking"):
        began = time.monotonic()
        logger.on_experiment_end([])
        assert time.monotonic() - began < 5
    assert logger.writer.pending >= 23  # nothing dropped: still queued, in order
    assert "could not be delivered" in caplog.text and f"127.0.0.1:{port}" in caplog.text
