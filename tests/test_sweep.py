"""End-to-end sweeps on a real local Ray instance, Optuna and a real MLflow SQLite store (tiny model).

One Ray instance serves the whole module (starting one costs seconds); each test uses its own workdir,
so each has its own MLflow store, synthetic data cache and Tune storage.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from i3ad.data import ensure_dataset
from studies import config as cfg
from studies.config import SweepConfig
from studies.sweep import main as sweep_main
from studies.sweep import run_sweep
from tracking.compare import compare

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("local_ray")]

TINY = {
    "categories": ["carpet"],
    "methods": ["i3ad"],
    "data": {"synthetic": {"size": 32, "n_train": 8, "n_test_good": 4, "n_test_per_defect": 2}},
    "train": {
        "image_size": 32,
        "width": 4,
        "batch_size": 2,
        "steps": 10,
        "checkpoint_every": 5,
        "log_every": 5,
        "max_seconds": None,
    },
    "calibration": {"images": 2, "iterations": 2},
    "detect": {"iterations": 4, "batch_size": 16},
    "search": {"num_samples": 3, "grace_period": 1, "reduction_factor": 2},
    "resources": {"max_concurrent": 2},
    "ray": {"max_failures": 0, "object_store_mb": None},
}


def tiny_config(workdir: Path, *overrides: dict) -> SweepConfig:
    return cfg.load("quick", [TINY, {"workdir": str(workdir)}, *overrides])


def children(client: MlflowClient, summary: dict, phase: str | None = None) -> list:
    """The sweep's runs at any depth (trials and finals sit under their model run)."""
    query = f"tags.sweep_run_id = '{summary['parent_run_id']}'"
    if phase:
        query += f" and tags.phase = '{phase}'"
    return client.search_runs([summary["experiment_id"]], filter_string=query, max_results=1000)


def test_tiny_sweep_mlflow_layout(tmp_path):
    summary = run_sweep(tiny_config(tmp_path), echo=lambda text: None)
    client = MlflowClient(summary["tracking_uri"])
    assert summary["tracking_uri"] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"

    parents = client.search_runs([summary["experiment_id"]], filter_string="tags.`i3ad.kind` = 'sweep'")
    assert [r.info.run_id for r in parents] == [summary["parent_run_id"]]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "summary.md", "summary.json"} <= artifacts

    (train,) = children(client, summary, "train")
    assert train.info.status == "FINISHED"
    assert {k: train.data.tags[k] for k in ("category", "method", "category_kind")} == {
        "category": "carpet",
        "method": "i3ad",
        "category_kind": "texture",
    }
    assert train.data.tags["trial_id"] and train.data.params["train/width"] == "4"
    steps = [m.step for m in client.get_metric_history(train.info.run_id, "train/loss_g")]
    assert steps == [5, 10]
    assert "calibration/threshold" in train.data.metrics

    detect = children(client, summary, "detect")
    assert len(detect) == 3
    for run in detect:
        assert run.data.tags["category"] == "carpet" and run.data.tags["method"] == "i3ad"
        assert {"threshold", "patch_size", "iterations"} <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, "val/image_auroc_ssim")
        assert [m.step for m in history] == list(range(len(history))) and history  # one point per iteration, from 0
        assert {"val/pixel_auroc_l2", "val/generator_passes", "val/seconds_per_image"} <= set(run.data.metrics)
        stopped = run.data.tags.get("stopped_early") == "true"
        assert run.info.status == "FINISHED"  # an ASHA-stopped trial did its job: FINISHED, tagged stopped_early
        assert len(history) - 1 == (int(run.data.tags["stopped_at"]) if stopped else int(run.data.params["iterations"]))

    (final,) = children(client, summary, "final")
    assert final.info.status == "FINISHED" and final.data.tags["category"] == "carpet"
    for key in ("image_auroc_ssim", "image_auroc_l2", "pixel_auroc_ssim", "pixel_auroc_l2", "pro_ssim", "pro_l2"):
        assert f"test/{key}" in final.data.metrics and f"val/{key}" in final.data.metrics
    assert "test/seconds_per_image" in final.data.metrics
    # The final run re-evaluates the chosen setting on val: it must reproduce the trial's number (the quick
    # study's objective is val/image_auroc_best: the better map's AUROC), logged under the trials' name.
    assert summary["objective"] == "val/image_auroc_best"
    metrics = final.data.metrics
    best = max(run.data.metrics["val/objective_best"] for run in detect)
    assert max(metrics["val/image_auroc_ssim"], metrics["val/image_auroc_l2"]) == pytest.approx(
        metrics["val/objective"]
    )
    assert metrics["val/objective"] == pytest.approx(best)
    assert all("val/objective" in run.data.metrics for run in detect)  # trials log the headline's name too
    # One headline: the chosen map's image AUROC, with its interval, under one name on val and test.
    chosen = final.data.tags["map"]
    assert final.data.params["map"] == chosen and final.data.tags["headline"] == f"image_auroc_{chosen}"
    assert metrics["test/objective"] == metrics[f"test/image_auroc_{chosen}"]
    for key in ("objective", "image_auroc_l2", "pixel_auroc_ssim", "pro_l2"):
        assert metrics[f"test/{key}_ci_low"] <= metrics[f"test/{key}"] <= metrics[f"test/{key}_ci_high"]
    assert {"threshold", "patch_size", "iterations"} <= set(final.data.params)  # the trials' parameter names
    artifacts = {a.path for a in client.list_artifacts(final.info.run_id, "final")}
    assert "final/test_scores.json" in artifacts

    # The tree: sweep -> carpet·i3ad (model run) -> carpet·i3ad·train, carpet·i3ad·t01..., carpet·i3ad·final.
    (model,) = client.search_runs([summary["experiment_id"]], filter_string="tags.`i3ad.kind` = 'model'")
    assert model.info.run_name == "carpet·i3ad" and model.info.status == "FINISHED"
    assert model.data.tags["mlflow.parentRunId"] == parent.info.run_id
    for run in (train, final, *detect):
        assert run.data.tags["mlflow.parentRunId"] == model.info.run_id
    assert train.info.run_name == "carpet·i3ad·train" and final.info.run_name == "carpet·i3ad·final"
    assert all(re.fullmatch(r"carpet·i3ad·t\d\d", run.info.run_name) for run in detect)
    assert "detect/threshold" not in final.data.params and "detect/stop_eps" in final.data.params
    # The headline and its map on the model run and on the parent; the results table on the parent.
    parent = client.get_run(parent.info.run_id)
    for run in (model, parent):
        assert run.data.metrics["test/objective"] == metrics["test/objective"] and run.data.tags["map"] == chosen
        assert run.data.metrics["val/objective"] == metrics["val/objective"]
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "results.json", str(tmp_path))).read_text())
    assert table["columns"][:4] == ["run", "category", "kind", "method"]
    assert table["data"][0][:4] == ["carpet·i3ad·final", "carpet", "texture", "i3ad"]

    (row,) = summary["rows"]
    assert row["run_id"] == final.info.run_id and row["trials"] == 3 and not summary["failures"]
    assert set(row["settings"]) == {"threshold", "patch_size", "iterations"}
    assert (Path(summary["storage"]) / "sweep").is_dir()  # the Tune experiment
    assert (Path(summary["storage"]) / "models" / "carpet__i3ad" / "model.json").is_file()  # the published model


def test_failing_category_is_reported_and_the_others_finish(tmp_path):
    config = tiny_config(tmp_path, {"categories": ["carpet", "screw"], "search": {"num_samples": 2}})
    data = tmp_path / "data" / "synthetic"
    ensure_dataset(data, categories=config.categories, **config.data.synthetic.model_dump())
    broken = data / "screw" / "train" / "good" / "003.png"
    broken.write_bytes(broken.read_bytes()[:120])  # truncated: header intact, pixels missing

    summary = run_sweep(config, echo=lambda text: None)
    assert [row["category"] for row in summary["rows"]] == ["carpet"]
    (failed,) = summary["failures"]
    assert failed["phase"] == "train" and failed["category"] == "screw" and failed["trial_id"]
    assert "DatasetError" in failed["error"] and str(broken) in failed["error"]

    client = MlflowClient(summary["tracking_uri"])
    runs = {r.data.tags["category"]: r for r in children(client, summary, "train")}
    assert runs["screw"].info.status == "FAILED" and str(broken) in runs["screw"].data.tags["error"]
    assert runs["carpet"].info.status == "FINISHED"
    assert {r.data.tags["category"] for r in children(client, summary, "final")} == {"carpet"}
    text = (Path(summary["folder"]) / "summary.md").read_text()
    assert "screw" in text and "Failed (1)" in text


def test_repeats_with_the_reference_then_promote_every_category(tmp_path, capsys):
    config = tiny_config(
        tmp_path,
        {"repeats": 2, "methods": ["i3ad", "ref-stats"], "search": {"num_samples": 2}},
    )
    path = tmp_path / "study.yaml"
    path.write_text(config.dump())
    assert sweep_main(["--config", str(path), "--promote"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(
        (
            Path(config.workdir) / "sweeps" / (Path(config.workdir) / "latest").read_text().strip() / "summary.json"
        ).read_text()
    )
    rows = {(row["method"], row["seed"]) for row in summary["rows"]}
    assert rows == {("i3ad", 0), ("i3ad", 1), ("ref-stats", 0), ("ref-stats", 1)} and not summary["failures"]
    for row in summary["rows"]:
        assert row["test"]["objective_ci_low"] <= row["test"]["objective"] <= row["test"]["objective_ci_high"]
    assert "per seed" in out and " ± " in out and "seeds" in out

    client = MlflowClient(summary["tracking_uri"])
    finals = children(client, summary, "final")
    assert sorted((r.data.tags["method"], r.data.tags["seed"]) for r in finals) == [
        ("i3ad", "0"),
        ("i3ad", "1"),
        ("ref-stats", "0"),
        ("ref-stats", "1"),
    ]
    trains = children(client, summary, "train")
    assert sorted(r.data.params["train/seed"] for r in trains) == ["0", "0", "1", "1"]

    # --promote registered and promoted the category; compare shows the seeds' mean and spread.
    champion = client.get_model_version_by_alias("i3ad-carpet", "champion")
    assert champion.run_id in {r.info.run_id for r in finals} and "promote: i3ad-carpet" in out
    table = compare(summary["experiment"], "table", summary["tracking_uri"])
    assert table.startswith("test/objective") and "2 seeds each" in table and " sd " in table


def test_a_failed_promotion_fails_the_sweep(tmp_path, monkeypatch, capsys):
    import studies.sweep as sweep_module

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("quick")
    summary = {"experiment": "quick", "tracking_uri": uri, "rows": [{"category": "carpet"}]}
    monkeypatch.setattr(sweep_module, "run_sweep", lambda *args, **kwargs: summary)  # a sweep whose finals are gone
    assert sweep_main(["--workdir", str(tmp_path), "--promote"]) == 1
    assert "promotion failed for carpet" in capsys.readouterr().err
