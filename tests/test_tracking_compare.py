"""`tracking.compare`: the right numbers in the right cells, grouped, averaged, best marked."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from tests.tracking_support import log_final_run, new_store, scored_run_metrics, scores_artifact
from tracking import registry
from tracking.compare import compare, main

# (category, kind, method) -> (test/image_auroc_ssim, test/pro_l2)
VALUES = {
    ("carpet", "texture", "i3ad"): (0.91, 0.50),
    ("carpet", "texture", "ae-l2"): (0.60, 0.70),
    ("nut", "object", "i3ad"): (0.80, 0.40),
    ("nut", "object", "ae-l2"): (0.85, 0.30),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri, experiment_id = new_store(tmp_path_factory.mktemp("compare"))
    # An older final run of (carpet, i3ad): the latest one must win.
    log_final_run(experiment_id, "carpet", "i3ad", {"test/image_auroc_ssim": 0.10, "test/pro_l2": 0.10})
    time.sleep(0.01)
    for (category, kind, method), (auroc, pro) in VALUES.items():
        log_final_run(
            experiment_id,
            category,
            method,
            {"test/image_auroc_ssim": auroc, "test/pro_l2": pro, "val/image_auroc_ssim": 0.0},
            kind=kind,
        )
    return uri


def _rows(text: str) -> dict[tuple[str, str, str], dict[str, str]]:
    return {(r["metric"], r["group"], r["category"]): r for r in csv.DictReader(io.StringIO(text))}


def test_csv_cells_means_and_best(store: str) -> None:
    text = compare("study", "csv", store)
    header = text.splitlines()[0].split(",")
    assert header[:7] == ["metric", "group", "category", "i3ad", "ae-l2", "best", "tied"]
    assert header[7:] == [f"{m}_{p}" for m in ("i3ad", "ae-l2") for p in ("ci_low", "ci_high", "seed_sd")]
    rows = _rows(text)
    assert {m for m, _, _ in rows} == {"test/image_auroc_ssim", "test/pro_l2"}  # only metrics logged; no val/
    for (category, kind, method), (auroc, pro) in VALUES.items():
        assert float(rows[("test/image_auroc_ssim", kind, category)][method]) == pytest.approx(auroc)
        assert float(rows[("test/pro_l2", kind, category)][method]) == pytest.approx(pro)
    assert rows[("test/image_auroc_ssim", "texture", "carpet")]["best"] == "i3ad"
    assert rows[("test/image_auroc_ssim", "object", "nut")]["best"] == "ae-l2"
    assert rows[("test/pro_l2", "texture", "carpet")]["best"] == "ae-l2"
    overall = rows[("test/image_auroc_ssim", "all", "mean")]
    assert float(overall["i3ad"]) == pytest.approx((0.91 + 0.80) / 2)
    assert float(overall["ae-l2"]) == pytest.approx((0.60 + 0.85) / 2)
    assert overall["best"] == "i3ad"
    assert float(rows[("test/image_auroc_ssim", "texture", "mean")]["ae-l2"]) == pytest.approx(0.60)
    # Textures come before objects, each group closed by its mean, the overall mean last.
    order = [(g, c) for m, g, c in rows if m == "test/image_auroc_ssim"]
    assert order == [("texture", "carpet"), ("texture", "mean"), ("object", "nut"), ("object", "mean"), ("all", "mean")]


def test_markdown_and_table_mark_the_best(store: str) -> None:
    markdown = compare("study", "markdown", store)
    assert "### test/image_auroc_ssim" in markdown
    assert "| carpet | **0.910** | 0.600 |" in markdown
    assert "| nut | 0.800 | **0.850** |" in markdown
    table = compare("study", "table", store)
    carpet = next(line for line in table.splitlines() if line.startswith("carpet"))
    assert "0.910*" in carpet and "0.600 " in carpet
    assert "mean (textures)" in table and "mean (objects)" in table and "mean (all)" in table


def test_missing_value_leaves_mean_empty(tmp_path: Path) -> None:
    uri, experiment_id = new_store(tmp_path)
    log_final_run(experiment_id, "carpet", "i3ad", {"test/image_auroc_ssim": 0.9})
    log_final_run(experiment_id, "tile", "i3ad", {"test/image_auroc_ssim": 0.7})
    log_final_run(experiment_id, "tile", "ae-ssim", {"test/image_auroc_ssim": 0.8})
    rows = _rows(compare("study", "csv", uri))
    assert rows[("test/image_auroc_ssim", "texture", "carpet")]["ae-ssim"] == ""
    assert rows[("test/image_auroc_ssim", "texture", "mean")]["ae-ssim"] == ""
    assert float(rows[("test/image_auroc_ssim", "texture", "mean")]["i3ad"]) == pytest.approx(0.8)


def test_unknown_experiment(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--experiment", "nope", "--tracking-uri", store]) == 2
    assert "experiment 'nope' not found" in capsys.readouterr().err


def test_final_runs_reads_every_page_newest_first(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "SEARCH_MAX_RESULTS_DEFAULT", 2)
    client = MlflowClient(store)
    experiment_id = registry.get_experiment(client, "study").experiment_id
    runs = registry.final_runs(client, experiment_id)
    assert len(runs) == 5
    assert [r.info.start_time for r in runs] == sorted((r.info.start_time for r in runs), reverse=True)
    carpet = registry.final_runs(client, experiment_id, "carpet")
    assert [r.data.metrics["test/image_auroc_ssim"] for r in carpet][-1] == pytest.approx(0.10)  # the older one last
    assert {r.data.tags["method"] for r in carpet} == {"i3ad", "ae-l2"}


LABELS = [0] * 20 + [1] * 20


def _scores(separation: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=40) + separation * np.asarray(LABELS)).round(6).tolist()


def test_best_only_beyond_the_paired_interval_else_a_tie(tmp_path: Path) -> None:
    uri, experiment_id = new_store(tmp_path)
    base = _scores(1.0, seed=0)
    nudged = list(base)
    nudged[25] += 0.3  # a hair better on the same images
    runs = {
        ("carpet", "i3ad"): nudged,
        ("carpet", "ref-stats"): base,
        ("wood", "i3ad"): _scores(4.0, seed=1),
        ("wood", "ref-stats"): _scores(0.5, seed=1),
    }
    for (category, method), scores in runs.items():
        metrics = scored_run_metrics(LABELS, scores)
        log_final_run(experiment_id, category, method, metrics, scores=scores_artifact(LABELS, scores))
    rows = _rows(compare("study", "csv", uri))
    carpet = rows[("test/objective", "texture", "carpet")]
    assert float(carpet["i3ad"]) > float(carpet["ref-stats"])
    assert carpet["best"] == "" and carpet["tied"] == "i3ad;ref-stats"
    wood = rows[("test/objective", "texture", "wood")]
    assert wood["best"] == "i3ad" and wood["tied"] == ""
    assert float(wood["i3ad_ci_low"]) <= float(wood["i3ad"]) <= float(wood["i3ad_ci_high"])
    mean = rows[("test/objective", "all", "mean")]
    assert float(mean["i3ad_ci_low"]) < float(mean["i3ad"]) < float(mean["i3ad_ci_high"])
    table = compare("study", "table", uri)
    assert "test/objective" in table.splitlines()[0]  # the headline first
    carpet_line = next(line for line in table.splitlines() if line.startswith("carpet"))
    assert carpet_line.count("=") == 2 and "*" not in carpet_line and "[" in carpet_line
    markdown = compare("study", "markdown", uri)
    assert "| wood | **" in markdown


def test_seeds_of_one_sweep_are_averaged(tmp_path: Path) -> None:
    uri, experiment_id = new_store(tmp_path)
    with mlflow.start_run(experiment_id=experiment_id) as parent:
        pass
    for seed, value in enumerate((0.80, 0.90, 0.85)):
        tags = {"seed": str(seed), "mlflow.parentRunId": parent.info.run_id}
        log_final_run(experiment_id, "carpet", "i3ad", {"test/objective": value}, tags=tags)
    rows = _rows(compare("study", "csv", uri))
    cell = rows[("test/objective", "texture", "carpet")]
    assert float(cell["i3ad"]) == pytest.approx(0.85)
    assert float(cell["i3ad_seed_sd"]) == pytest.approx(0.05)
    assert "3 seeds each" in compare("study", "table", uri)
