"""The MLflow UI shows a final run: its name, metrics, the packaged detector and a rendered plot.

Starts `mlflow server` on loopback against a SQLite store holding one tiny final run (logged with the
tracking functions, no sweep needed) and renders pages in headless Chromium (Debian's `chromium`).
The UI is a React app, so pages are dumped after `--virtual-time-budget` lets its requests finish.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest

from i3ad.data import MVTecCategory, load_test_set
from i3ad.evaluate import evaluate
from i3ad.loading import load_model
from i3ad.scorers import DetectionSettings, make_scorer
from tests.integration.procs import free_port, spawn, stop_group, wait_http_ok
from tests.tracking_support import SETTINGS, new_store
from tracking.detector import log_detector
from tracking.layout import log_results, model_run
from tracking.plots import PlotContext, log_final_artifacts
from tracking.store import SWEEP_KIND_TAG, SWEEP_RUN_TAG, Store
from tracking.tune_logger import MlflowTrialLogger

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
RUN_NAME = "carpet·i3ad·final"
SCREENSHOTS = os.environ.get("I3AD_UI_SCREENSHOTS")  # a folder: the pages are also saved there as PNGs


def _trial(trial_id: str, phase: str, **config: object) -> SimpleNamespace:
    return SimpleNamespace(
        trial_id=trial_id,
        config={"phase": phase, "category": "carpet", "method": "i3ad", "category_kind": "texture", **config},
        last_result={},
        num_failures=0,
        pickled_error_file=None,
        error_file=None,
        get_pickled_error=lambda: None,
        get_error=lambda: None,
    )


def _sweep_runs(uri: str, experiment_id: str) -> tuple[str, str]:
    """A sweep as the driver logs it: parent -> carpet·i3ad -> train + 3 detection trials; (parent, model) ids."""
    store = Store(uri)
    parent = store.start_run(experiment_id, "sweep-test", {SWEEP_KIND_TAG: "sweep"})
    logger = MlflowTrialLogger(
        uri, experiment_id, parent, {"train": "step", "detect": "iteration"}, {"detect": "iterations"}
    )
    train = _trial("aa_train", "train", train={"width": 4, "steps": 10})
    logger.on_trial_start(0, [], train)
    for step in (5, 10):
        logger.on_trial_result(step, [], train, {"step": step, "train/loss_g": 1.0 / step})
    train.last_result = {"step": 10}
    logger.on_trial_complete(2, [], train)
    for n, reached in enumerate((3, 1, 3)):
        trial = _trial(f"bb{n}", "detect", threshold=0.2 + 0.1 * n, patch_size=4, iterations=3)
        logger.on_trial_start(3, [], trial)
        for it in range(reached + 1):
            logger.on_trial_result(it, [], trial, {"iteration": it, "val/objective": 0.5 + 0.05 * it + 0.01 * n})
        trial.last_result = {"iteration": reached}
        logger.on_trial_complete(4, [], trial)
    logger.on_experiment_end([])
    return parent, model_run(store, experiment_id, parent, "carpet", "i3ad", "texture")


@pytest.fixture(scope="module")
def server(tiny_data: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """(base URL, experiment id, final run id, parent run id) of a server over a store with one sweep."""
    root = tmp_path_factory.mktemp("ui")
    uri, experiment_id = new_store(root)
    category = MVTecCategory(tiny_data, "carpet")
    test_set = load_test_set(category, category.test_items(), 32)
    settings = DetectionSettings.from_dict(SETTINGS)
    result = evaluate(
        make_scorer(load_model(tiny_model, "cpu"), settings), test_set.images, test_set.masks, test_set.labels, settings
    )
    parent, model = _sweep_runs(uri, experiment_id)
    tags = {
        "phase": "final",
        "category": "carpet",
        "method": "i3ad",
        "category_kind": "texture",
        "map": "ssim",
        "mlflow.parentRunId": model,
        SWEEP_RUN_TAG: parent,
    }
    context = PlotContext("carpet", "i3ad", "ssim", "held-out test", threshold=0.3, threshold_rule="test fixture")
    with mlflow.start_run(experiment_id=experiment_id, run_name=RUN_NAME, tags=tags) as run:
        mlflow.log_params(SETTINGS)
        test = {k: result.report[k] for k in ("image_auroc_ssim", "image_auroc_l2", "pixel_auroc_ssim")}
        test["objective"] = test["image_auroc_ssim"]
        mlflow.log_metrics({f"test/{k}": v for k, v in test.items()} | {"val/objective": 0.62})
        log_detector(tiny_model, SETTINGS)
        log_final_artifacts(result, test_set, tiny_model, context)
    row = {"category": "carpet", "kind": "texture", "method": "i3ad", "map": "ssim", "trials": 3, "stopped_early": 1}
    row |= {"val": {"objective": 0.62}, "test": test, "test_images": len(test_set.labels)}
    store = Store(uri)
    log_results(store, experiment_id, parent, [row])
    store.finish(parent)
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
        yield f"http://127.0.0.1:{port}", experiment_id, run.info.run_id, parent
    finally:
        stop_group(proc, timeout=20)


def _get(url: str, body: dict | None = None) -> dict:
    """GET `url`, or POST `body` as JSON to it."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _dom(url: str, profile: Path, screenshot: str | None = None) -> str:
    """The page's DOM after the React app has loaded its data; text and image tags kept.

    With `screenshot` and `I3AD_UI_SCREENSHOTS` set, the page is also saved there as `<screenshot>.png`.
    """
    if screenshot and SCREENSHOTS:  # for people to look at; a slow or failed screenshot does not fail the test
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        png = Path(SCREENSHOTS) / f"{screenshot}.png"
        try:
            subprocess.run(
                [
                    CHROMIUM,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}-shot",
                    "--window-size=1600,1000",
                    f"--screenshot={png}",
                    url,
                ],
                capture_output=True,
                timeout=180,
            )
        except subprocess.TimeoutExpired:
            pass
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


def test_rest_api_lists_run_metrics_and_plots(server: tuple[str, str, str, str]) -> None:
    base, experiment_id, run_id, parent = server
    run = _get(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
    assert run["info"]["run_name"] == RUN_NAME
    assert {m["key"] for m in run["data"]["metrics"]} >= {"test/image_auroc_ssim", "test/image_auroc_l2"}
    files = {f["path"] for f in _get(f"{base}/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=plots")["files"]}
    assert files >= {
        "plots/anomaly_maps.png",
        "plots/roc.png",
        "plots/auroc_vs_iteration.png",
        "plots/train_loss.png",
        "plots/auroc_by_defect.png",
    }
    parent_run = _get(f"{base}/api/2.0/mlflow/runs/get?run_id={parent}")["run"]
    assert {m["key"] for m in parent_run["data"]["metrics"]} >= {"val/objective", "test/objective"}
    files = {f["path"] for f in _get(f"{base}/api/2.0/mlflow/artifacts/list?run_id={parent}")["files"]}
    assert "results.json" in files


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium)")
def test_ui_pages_show_the_run_tree_metrics_and_images(server: tuple[str, str, str, str], tmp_path: Path) -> None:
    """What the screenshots showed (I3AD_UI_SCREENSHOTS=<folder> saves them), checked on the rendered DOM."""
    base, experiment_id, run_id, parent = server
    runs = f"{base}/#/experiments/{experiment_id}/runs"
    runs_page = _text(_dom(runs, tmp_path / "p1", "runs"))
    # One top-level row, the sweep, with its 6 runs nested (collapsed) under it: no flat list of 44 trials.
    assert "sweep-test" in runs_page and "7 matching runs" in runs_page
    assert "carpet·i3ad·t01" not in runs_page

    parent_page = _text(_dom(f"{runs}/{parent}", tmp_path / "p2", "sweep"))
    assert "Child runs carpet·i3ad " in parent_page  # the model run, not 44 trials
    assert "test/objective" in parent_page and "val/objective" in parent_page and "map : ssim" in parent_page
    table = _text(_dom(f"{runs}/{parent}/artifacts/results.json", tmp_path / "p3", "table"))
    assert "carpet·i3ad·final carpet texture i3ad" in table  # the results table, rendered as a table

    model = _get(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})
    (model_id,) = [r["info"]["run_id"] for r in model["runs"] if r["info"]["run_name"] == "carpet·i3ad"]
    model_page = _text(_dom(f"{runs}/{model_id}", tmp_path / "p4", "model"))
    assert "Parent run sweep-test" in model_page and "test/objective" in model_page
    for name in (RUN_NAME, "carpet·i3ad·t01", "carpet·i3ad·t02", "carpet·i3ad·t03", "carpet·i3ad·train"):
        assert name in model_page

    run_page = _text(_dom(f"{runs}/{run_id}", tmp_path / "p5", "final"))
    assert RUN_NAME in run_page and "Parent run carpet·i3ad " in run_page and "test/image_auroc_ssim" in run_page
    assert "detector" in run_page and "phase : final" in run_page

    artifact = _dom(f"{runs}/{run_id}/artifacts/plots/anomaly_maps.png", tmp_path / "p6", "plot")
    assert "roc.png" in _text(artifact) and "auroc_by_defect.png" in _text(artifact)
    # The preview is an <img> whose bytes the app fetched from the server (a blob: URL).
    assert re.search(r'<img[^>]*alt="plots/anomaly_maps.png"[^>]*src="blob:', artifact), "the plot was not rendered"
