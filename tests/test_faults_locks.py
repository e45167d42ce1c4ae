"""Fault suite, concurrency: opening a fresh SQLite store under a lock, two sweeps in one second."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from filelock import FileLock, Timeout
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

import studies.state
import tracking.store
from studies.state import SweepPaths
from tracking.store import Store, sqlite_path, store_lock


def test_a_sqlite_store_is_opened_and_its_experiment_created_under_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Opening a fresh SQLite store creates and migrates it; two sweeps doing so at once broke the migration.
    # (A two-process run of this, `Store(uri).experiment(...)` in two Pythons at once, takes ~50 s here: too
    # slow for the suite, so this checks the lock is held where MLflow touches the database.)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    held: list[str] = []

    def assert_locked(what: str) -> None:
        try:
            FileLock(str(tmp_path / "mlflow.db.lock"), timeout=0).acquire()
        except Timeout:
            held.append(what)

    class Client:
        def __init__(self, tracking_uri: str) -> None:
            assert_locked("open")

        def get_experiment_by_name(self, name: str) -> None:
            return None

        def create_experiment(self, name: str, artifact_location: str | None = None) -> str:
            assert_locked("create")
            raise MlflowException("exists", error_code=RESOURCE_ALREADY_EXISTS)  # another sweep won the race

    monkeypatch.setattr(tracking.store, "MlflowClient", Client)
    store = Store(uri)
    found = SimpleNamespace(experiment_id="7", lifecycle_stage="active")
    monkeypatch.setattr(Client, "get_experiment_by_name", lambda self, name: found if held[-1:] == ["create"] else None)
    assert store.experiment("same") == "7"
    assert held == ["open", "create"]


def test_store_lock_is_a_file_lock_beside_the_database(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    assert sqlite_path(uri) == tmp_path / "db" / "mlflow.db"
    with store_lock(uri):
        assert (tmp_path / "db" / "mlflow.db.lock").exists()
    with store_lock("http://127.0.0.1:5000"):  # a server: nothing to lock
        pass


def test_sweeps_started_in_the_same_second_get_distinct_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(studies.state, "new_sweep_id", lambda: "20261129-180514")
    first, second = SweepPaths.create(tmp_path), SweepPaths.create(tmp_path)
    assert first.sweep_id == "20261129-180514" and second.sweep_id == "20261129-180514-2"
    assert first.folder.is_dir() and second.folder.is_dir()
