"""The MLflow UI shows a final run: its name, metrics, the packaged detector and a rendered plot.

Starts `mlflow server` on loopback against a SQLite store holding one tiny final run (logged with the
tracking functions, no sweep needed) and renders pages in headless Chromium (Debian's `chromium`).
The UI is a React app, so pages are dumped after `--virtual-time-budget` lets its requests finish.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import pytest

from i3ad.data import MVTecCategory, load_test_set
from i3ad.evaluate import evaluate
from i3ad.loading import load_model
from i3ad.scorers import DetectionSettings, make_scorer
from tests.integration.procs import free_port, spawn, stop_group, wait_http_ok
from tests.tracking_support import SETTINGS, new_store
from tracking.detector import log_detector
from tracking.plots import log_final_artifacts

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
]
RUN_NAME = "final-carpet-i3ad"


@pytest.fixture(scope="module")
def server(tiny_data: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """(base URL, experiment id, run id) of a server over a store with one final run."""
    root = tmp_path_factory.mktemp("ui")
    uri, experiment_id = new_store(root)
    category = MVTecCategory(tiny_data, "carpet")
    test_set = load_test_set(category, category.test_items(), 32)
    settings = DetectionSettings.from_dict(SETTINGS)
    result = evaluate(
        make_scorer(load_model(tiny_model, "cpu"), settings), test_set.images, test_set.masks, test_set.labels, settings
    )
    tags = {"phase": "final", "category": "carpet", "method": "i3ad", "category_kind": "texture"}
    with mlflow.start_run(experiment_id=experiment_id, run_name=RUN_NAME, tags=tags) as run:
        mlflow.log_params(SETTINGS)
        mlflow.log_metrics(
            {f"test/{k}": result.report[k] for k in ("image_auroc_ssim", "image_auroc_l2", "pixel_auroc_ssim")}
        )
        log_detector(tiny_model, SETTINGS)
        log_final_artifacts(result, test_set, tiny_model)
    port = free_port()
    log = root / "server.log"
    proc = spawn(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        log,
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", proc, log, timeout=180)
        yield f"http://127.0.0.1:{port}", experiment_id, run.info.run_id
    finally:
        stop_group(proc, timeout=20)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _dom(url: str, profile: Path) -> str:
    """The page's DOM after the React app has loaded its data; text and image tags kept."""
    done = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _text(dom: str) -> str:
    dom = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


def test_rest_api_lists_run_metrics_and_plots(server: tuple[str, str, str]) -> None:
    base, experiment_id, run_id = server
    run = _get(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
    assert run["info"]["run_name"] == RUN_NAME
    assert {m["key"] for m in run["data"]["metrics"]} >= {"test/image_auroc_ssim", "test/image_auroc_l2"}
    files = {f["path"] for f in _get(f"{base}/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=plots")["files"]}
    assert files >= {"plots/anomaly_maps.png", "plots/roc.png", "plots/auroc_vs_iteration.png", "plots/train_loss.png"}


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium)")
def test_ui_pages_show_run_metrics_and_image(server: tuple[str, str, str], tmp_path: Path) -> None:
    base, experiment_id, run_id = server
    runs_page = _text(_dom(f"{base}/#/experiments/{experiment_id}/runs", tmp_path / "p1"))
    assert RUN_NAME in runs_page and "1 matching run" in runs_page

    run_page = _text(_dom(f"{base}/#/experiments/{experiment_id}/runs/{run_id}", tmp_path / "p2"))
    assert RUN_NAME in run_page and "test/image_auroc_ssim" in run_page
    assert "detector" in run_page and "phase : final" in run_page

    artifact = _dom(f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/plots/roc.png", tmp_path / "p3")
    assert "anomaly_maps.png" in _text(artifact) and "auroc_vs_iteration.png" in _text(artifact)
    # The preview is an <img> whose bytes the app fetched from the server (a blob: URL).
    assert re.search(r'<img[^>]*alt="plots/roc.png"[^>]*src="blob:', artifact), "the ROC plot was not rendered"
