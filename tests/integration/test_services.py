"""Smoke tests: each service fixture is real and does what the scale-out tests rely on."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_postgres_accepts_connections(postgres):
    psycopg2 = pytest.importorskip("psycopg2")
    postgres.create_database("smoke")
    with (
        psycopg2.connect(
            host="127.0.0.1", port=postgres.port, user=postgres.user, password=postgres.password, dbname="smoke"
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("select current_user, current_database(), inet_server_addr()::text")
        assert cur.fetchone() == ("i3ad", "smoke", "127.0.0.1/32")


def test_mlflow_server_logs_over_rest_and_survives_restart(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment_id = client.create_experiment("smoke")
    run = client.create_run(experiment_id, tags={"category": "carpet"})
    client.log_metric(run.info.run_id, "val/image_auroc_ssim", 0.75, step=1)
    note = tmp_path / "note.txt"
    note.write_text("proxied through the server")
    client.log_artifact(run.info.run_id, str(note))  # mlflow-artifacts:/ -> the server's artifacts folder
    client.set_terminated(run.info.run_id)

    mlflow_server.restart()

    again = client.get_run(run.info.run_id)
    assert again.info.status == "FINISHED"
    assert again.data.metrics["val/image_auroc_ssim"] == 0.75
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]
    assert list((mlflow_server.root / "artifacts").rglob("note.txt"))


_PLACEMENT = """
import json, ray
ray.init(address={address!r}, logging_level="ERROR", log_to_driver=False)

@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id()

refs = [where.options(resources={{"head_node": 0.01}}).remote(),
        where.options(resources={{"worker_node": 0.01}}).remote()]
print("PLACED=" + json.dumps(ray.get(refs, timeout=120)))
"""


def test_ray_cluster_has_two_nodes_and_runs_a_task_on_each(ray_cluster):
    nodes = ray_cluster.alive_nodes()
    assert len(nodes) == 2
    by_kind = {kind: n["id"] for n in nodes for kind in ("head_node", "worker_node") if kind in n["resources"]}
    assert set(by_kind) == {"head_node", "worker_node"}

    out = subprocess.run(
        [sys.executable, "-c", _PLACEMENT.format(address=ray_cluster.address)],
        capture_output=True,
        text=True,
        env=ray_cluster.env,
        timeout=180,
    )
    placed = [line for line in out.stdout.splitlines() if line.startswith("PLACED=")]
    assert placed, out.stderr[-3000:]
    assert placed[0] == f'PLACED=["{by_kind["head_node"]}", "{by_kind["worker_node"]}"]'
