"""Promotion needs evidence: a candidate replaces the champion only when ahead beyond the noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from tests.tracking_support import log_final_run, new_store, scored_run_metrics, scores_artifact
from tracking.promote import promote

LABELS = [0] * 20 + [1] * 20


def _scores(separation: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=40) + separation * np.asarray(LABELS)).round(6).tolist()


def _log(experiment_id: str, model_dir: Path, scores: list[float], val: float, images: str = "same") -> str:
    metrics = {"val/objective": val, **scored_run_metrics(LABELS, scores)}
    return log_final_run(
        experiment_id, "carpet", "i3ad", metrics, model_dir, scores=scores_artifact(LABELS, scores, images)
    )


def test_promotion_needs_a_lead_beyond_the_paired_interval(tiny_model: Path, tmp_path: Path) -> None:
    uri, experiment_id = new_store(tmp_path / "store")
    client = MlflowClient(uri)
    champion_scores = _scores(1.0, seed=0)
    champion = _log(experiment_id, tiny_model, champion_scores, val=0.70)
    [first] = promote("study", "carpet", tracking_uri=uri)
    assert first.promoted

    # A little better on the same images (one score nudged): inside the noise, so the champion stays.
    nudged = list(champion_scores)
    nudged[25] += 0.3
    slightly = _log(experiment_id, tiny_model, nudged, val=0.80)
    [kept] = promote("study", "carpet", tracking_uri=uri)
    assert kept.run_id == slightly and kept.candidate_value > kept.champion_value
    assert not kept.promoted and "paired 95% interval" in kept.reason and "not ahead of" in kept.reason
    assert client.get_model_version_by_alias("i3ad-carpet", "champion").run_id == champion

    # Clearly better on the same images: promoted.
    clearly = _log(experiment_id, tiny_model, _scores(4.0, seed=0), val=0.90)
    [won] = promote("study", "carpet", tracking_uri=uri)
    assert won.promoted and won.run_id == clearly and "paired" in won.reason
    assert client.get_model_version_by_alias("i3ad-carpet", "champion").run_id == clearly


def test_different_images_need_non_overlapping_intervals(tiny_model: Path, tmp_path: Path) -> None:
    uri, experiment_id = new_store(tmp_path / "store")
    _log(experiment_id, tiny_model, _scores(1.5, seed=1), val=0.70, images="set-a")
    assert promote("study", "carpet", tracking_uri=uri)[0].promoted
    # Higher, but scored on other images and within the champion's interval: kept.
    _log(experiment_id, tiny_model, _scores(1.8, seed=2), val=0.80, images="set-b")
    [kept] = promote("study", "carpet", tracking_uri=uri)
    assert kept.candidate_value > kept.champion_value  # 0.92 against 0.87
    assert not kept.promoted and "intervals must not overlap" in kept.reason
