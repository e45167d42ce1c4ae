"""The sweep's MLflow plumbing on a real SQLite store: URIs, retries, closing runs a dead driver left open."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from tracking import store as store_module
from tracking.store import Store, is_transient, resolve_tracking_uri, retrying
from tracking.tune_logger import flat_params, result_metrics, root_message


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


def test_root_message_unwraps_causes():
    try:
        try:
            raise FileNotFoundError("/data/x.png")
        except FileNotFoundError as inner:
            raise RuntimeError("trial failed") from inner
    except RuntimeError as outer:
        assert root_message(outer) == "FileNotFoundError: /data/x.png"
