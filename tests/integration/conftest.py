"""Real services for the integration tests: PostgreSQL, an `mlflow server` on it, a 2-node Ray cluster.

All bind to loopback on free ports, live in temp folders and are torn down at the end of the session.
Without Debian's `postgresql` the MLflow server falls back to SQLite and says so (under CI=true a missing
Postgres is an error instead: `.ci/run` installs it).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from .mlflow_server import MlflowServer
from .postgres import PostgresCluster, find_bindir
from .ray_cluster import LoopbackRayCluster


@pytest.fixture(scope="session")
def postgres() -> PostgresCluster:
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries not found: apt-get install -y postgresql")
        pytest.skip("PostgreSQL server binaries not found (apt-get install -y postgresql)")
    cluster = PostgresCluster(bindir)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def mlflow_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> MlflowServer:
    """`mlflow server` with a Postgres backend store (SQLite if Postgres cannot be had) and proxied artifacts."""
    root = tmp_path_factory.mktemp("mlflow-server")
    try:
        pg: PostgresCluster = request.getfixturevalue("postgres")
        server = MlflowServer(pg.create_database("mlflow"), root, env=pg.client_env)
    except pytest.skip.Exception as skipped:
        warnings.warn(f"MLflow server on SQLite, not Postgres: {skipped}", stacklevel=2)
        server = MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster() -> LoopbackRayCluster:
    """Head (1 CPU, resource `head_node`) + one worker node (1 CPU, resource `worker_node`).

    Tests that remove the worker must add one back (`ray_cluster.add_worker()`) before they end.
    """
    cluster = LoopbackRayCluster()
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_worker(num_cpus=1)
        yield cluster
    finally:
        cluster.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)
