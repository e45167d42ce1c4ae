"""The MLflow store a sweep writes to: tracking URI, experiment, parent run, retries.

Only the sweep driver writes (see docs/architecture.md). Every call goes through `retrying`, so a
tracking server that restarts mid-sweep costs a wait, not lost metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.store.tracking import SEARCH_MAX_RESULTS_DEFAULT
from mlflow.utils import get_results_from_paginated_fn
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from i3ad.errors import ConfigError
from tracking.relocate import moved_message

log = logging.getLogger(__name__)
T = TypeVar("T")

SWEEP_KIND_TAG = "i3ad.kind"
SWEEP_RUN_TAG = "sweep_run_id"  # on every run below a sweep's parent run (model runs nest trials)
_TRANSIENT_TEXT = (
    "database is locked",
    "max retries exceeded",
    "connection refused",
    "connection reset",
    "temporarily unavailable",
    "timed out",
    "bad gateway",
    "service unavailable",
)


def default_tracking_uri(workdir: Path) -> str:
    """The embedded store: a SQLite file in the working folder, as an absolute URI."""
    return f"sqlite:///{(Path(workdir) / 'mlflow.db').resolve()}"


def resolve_tracking_uri(uri: str | None, workdir: Path) -> str:
    """An absolute tracking URI (Tune changes trials' working folders, so relative ones break)."""
    if uri is None:
        return default_tracking_uri(workdir)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    if "://" not in uri:  # a bare folder: MLflow's file store
        return Path(uri).resolve().as_uri()
    return uri


def is_local_store(uri: str) -> bool:
    """Whether `uri` is a store in a local file (SQLite or MLflow's file store), written by one process only."""
    return uri.startswith(("sqlite:", "file:"))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


@contextmanager
def store_lock(uri: str, timeout: float = 600.0) -> Iterator[None]:
    """For a SQLite store, hold `<db>.lock` (creating and migrating the database, creating experiments).

    MLflow creates and migrates a SQLite database when a client first opens it; two processes doing that
    at once (two sweeps started together on a fresh workdir) break the migration ("No such index").
    Other stores are servers that serialise this themselves: nothing to lock.
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout):
        yield


def is_transient(exc: BaseException) -> bool:
    """Connection-type failures worth retrying (server restarting, SQLite busy)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        if status in (429, 502, 503, 504):
            return True
    text = str(exc).lower()
    return any(fragment in text for fragment in _TRANSIENT_TEXT)


def retrying(
    call: Callable[..., T], *args: Any, attempts: int = 6, delay: float = 0.5, max_delay: float = 30.0, **kwargs: Any
) -> T:
    """Call `call(*args, **kwargs)`, retrying transient failures with exponential backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - filtered by is_transient
            if attempt == attempts or not is_transient(exc):
                raise
            log.warning(
                "MLflow call %s failed (%s); retry %d/%d in %.1fs",
                getattr(call, "__name__", call),
                exc,
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")


class Store:
    """An MlflowClient bound to one tracking URI whose calls are retried."""

    def __init__(self, uri: str, attempts: int = 6) -> None:
        self.uri = uri
        self.attempts = attempts
        moved = moved_message(uri)  # a copied runs/ would write new runs next to artifacts it cannot find
        if moved:
            raise ConfigError(moved)
        with store_lock(uri):  # the client opens (creates, migrates) the store here
            self.client = MlflowClient(tracking_uri=uri)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return retrying(getattr(self.client, method), *args, attempts=self.attempts, **kwargs)

    def experiment(self, name: str, artifact_root: Path | None = None) -> str:
        """The id of experiment `name`, created on first use (with a local artifact folder for local stores)."""
        found = self.call("get_experiment_by_name", name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise MlflowException(
                    f"MLflow experiment {name!r} is deleted; restore it in the UI or pass --experiment"
                )
            return found.experiment_id
        location = (Path(artifact_root) / name).resolve().as_uri() if artifact_root is not None else None
        with store_lock(self.uri):
            try:
                return self.call("create_experiment", name, artifact_location=location)
            except MlflowException as exc:  # another sweep (e.g. on a server) created it meanwhile
                if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                return self.call("get_experiment_by_name", name).experiment_id

    def start_run(self, experiment_id: str, name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
        """Create a run (nested under `parent_run_id` when given); returns its id."""
        tags = {**tags, MLFLOW_RUN_NAME: name}
        if parent_run_id is not None:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        return self.call("create_run", experiment_id, tags=tags, run_name=name).info.run_id

    def reopen(self, run_id: str) -> None:
        self.call("update_run", run_id, status="RUNNING")

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.call("set_terminated", run_id, status=status)

    def search(self, experiment_id: str, filter_string: str) -> list[Run]:
        """Runs of an experiment matching `filter_string` (all pages).

        `mlflow.search_runs` pages too but only on the process-wide tracking URI; this store has its own,
        so MLflow's pager is driven with this client, each page retried.
        """
        return get_results_from_paginated_fn(
            lambda count, token: self.call(
                "search_runs", [experiment_id], filter_string=filter_string, max_results=count, page_token=token
            ),
            SEARCH_MAX_RESULTS_DEFAULT,
        )

    def children(self, experiment_id: str, parent_run_id: str, extra_filter: str = "") -> list[Run]:
        """Direct child runs of a parent run (all pages)."""
        query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'" + (f" and {extra_filter}" if extra_filter else "")
        return self.search(experiment_id, query)

    def descendants(self, experiment_id: str, parent_run_id: str) -> list[Run]:
        """Every run below a sweep's parent run: its children and the runs tagged with its id (nested deeper)."""
        runs = {r.info.run_id: r for r in self.children(experiment_id, parent_run_id)}
        runs |= {r.info.run_id: r for r in self.search(experiment_id, f"tags.{SWEEP_RUN_TAG} = '{parent_run_id}'")}
        return list(runs.values())

    def close_open_children(self, experiment_id: str, parent_run_id: str, status: str = "KILLED") -> int:
        """Close runs below the parent that a dead driver left RUNNING; returns how many were closed."""
        open_runs = [
            r
            for r in self.descendants(experiment_id, parent_run_id)
            if r.info.status == RunStatus.to_string(RunStatus.RUNNING)
        ]
        for run in open_runs:
            self.call("set_tag", run.info.run_id, "interrupted", "true")
            self.finish(run.info.run_id, status)
        return len(open_runs)
