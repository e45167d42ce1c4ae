"""Packaged detector round trip, promotion gate and `i3ad detect --model models:/... --images`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from i3ad.cli import main as i3ad_main
from i3ad.scoring import CAPTION_HEIGHT, COLOUR_BAR_WIDTH
from tests.tracking_support import SETTINGS, log_final_run, new_store
from tracking.promote import main as promote_main
from tracking.promote import promote
from tracking.registry import TrackingError, download_detector


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tiny_model: Path) -> tuple[Path, Path]:
    """The session's tiny synthetic data and 6-step carpet inpainter (tests/conftest.py)."""
    return tiny_data, tiny_model


def _csv_scores(path: Path) -> dict[str, float]:
    with path.open() as handle:
        return {Path(row["path"]).name: float(row["score"]) for row in csv.DictReader(handle)}


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np, pandas as pd, mlflow
    from PIL import Image
    model = mlflow.pyfunc.load_model(sys.argv[1])
    folder = sys.argv[2]
    by_path = model.predict(pd.DataFrame({"path": [folder]}))
    first = np.asarray(Image.open(by_path.source[0]))
    by_array = model.predict(pd.DataFrame({"image": [first]}))
    print(json.dumps({
        "scores": {s.rsplit("/", 1)[-1]: float(v) for s, v in zip(by_path.source, by_path.score)},
        "array_score": float(by_array.score[0]),
        "map_shape": list(by_path.anomaly_map[0].shape),
        "uses_i3ad_from": __import__("i3ad").__file__,
    }))
    """
)


def test_round_trip_fresh_process_matches_cli(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, model_dir = trained
    uri, experiment_id = new_store(tmp_path / "store")
    log_final_run(experiment_id, "carpet", "i3ad", {"val/objective": 0.7, "test/objective": 0.8}, model_dir)
    [decision] = promote("study", tracking_uri=uri)
    assert decision.promoted and decision.model_name == "i3ad-carpet"

    images = data / "carpet" / "test" / "hole"
    env = {
        **os.environ,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        "MLFLOW_TRACKING_URI": uri,
        "I3AD_PREDICT_PATH_ROOT": str(data),  # the `path` column reads only under this folder
    }
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, "models:/i3ad-carpet@champion", str(images)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["map_shape"] == [32, 32]

    # The CLI on the registered model, and on the original folder with the same settings.
    assert (
        i3ad_main(
            [
                "detect",
                "--model",
                "models:/i3ad-carpet@champion",
                "--tracking-uri",
                uri,
                "--images",
                str(images),
                "--out",
                str(tmp_path / "cli"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    flags = [
        "--threshold",
        str(SETTINGS["threshold"]),
        "--patch-size",
        str(SETTINGS["patch_size"]),
        "--iterations",
        str(SETTINGS["iterations"]),
        "--score",
        SETTINGS["score"],
    ]
    assert (
        i3ad_main(
            [
                "detect",
                "--model",
                str(model_dir),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "local"),
                "--device",
                "cpu",
                *flags,
            ]
        )
        == 0
    )
    via_registry, local = _csv_scores(tmp_path / "cli" / "scores.csv"), _csv_scores(tmp_path / "local" / "scores.csv")
    assert sorted(loaded["scores"]) == sorted(via_registry) == sorted(local) and len(local) >= 2
    for name, value in local.items():
        assert loaded["scores"][name] == pytest.approx(value, abs=1e-5)
        assert via_registry[name] == pytest.approx(value, abs=1e-5)
    assert loaded["array_score"] == pytest.approx(local[sorted(local)[0]], abs=1e-5)
    overlays = sorted((tmp_path / "cli" / "overlays").glob("*.png"))
    assert [p.stem for p in overlays] == sorted(Path(n).stem for n in local)
    width, height = Image.open(overlays[0]).size  # image | map side by side, a colour bar, a caption row on top
    assert width == 2 * (height - CAPTION_HEIGHT) + COLOUR_BAR_WIDTH

    # Nothing pickled in the package: weights as safetensors, settings as JSON, code as source.
    folder = download_detector("models:/i3ad-carpet@champion", tmp_path / "dl", tracking_uri=uri)
    assert sorted(p.name for p in folder.iterdir()) == ["detector.json", "model.json", "weights.safetensors"]
    assert json.loads((folder / "detector.json").read_text())["detection"]["patch_size"] == SETTINGS["patch_size"]
    files = [p.name for p in (tmp_path / "dl").rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".pth"))], files


def test_gate_keeps_champion_against_worse_candidate(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, model_dir = trained
    uri, experiment_id = new_store(tmp_path / "store")
    client = MlflowClient(uri)

    def latest_tags(version: str) -> dict[str, str]:
        return client.get_model_version("i3ad-carpet", version).tags

    first = log_final_run(experiment_id, "carpet", "i3ad", {"val/objective": 0.70, "test/objective": 0.80}, model_dir)
    [d1] = promote("study", "carpet", tracking_uri=uri)
    assert d1.promoted and client.get_model_version_by_alias("i3ad-carpet", "champion").run_id == first

    # Best on validation but worse on the held-out gate: registered, not promoted.
    worse = log_final_run(experiment_id, "carpet", "ae-l2", {"val/objective": 0.90, "test/objective": 0.60}, model_dir)
    [d2] = promote("study", "carpet", tracking_uri=uri)
    assert not d2.promoted and d2.run_id == worse and "not ahead of" in d2.reason
    assert client.get_model_version_by_alias("i3ad-carpet", "champion").version == d1.version
    tags = latest_tags(d2.version)
    assert tags["promotion.decision"] == "rejected"
    assert float(tags["promotion.candidate_value"]) == 0.60 and float(tags["promotion.champion_value"]) == 0.80
    assert tags["promotion.source_run_id"] == worse and tags["promotion.gate_metric"] == "test/objective"
    assert tags["promotion.by"] and tags["promotion.at"].endswith("+00:00") and tags["method"] == "ae-l2"

    # Better on both, but the margin is not met; then it is.
    better = log_final_run(experiment_id, "carpet", "i3ad", {"val/objective": 0.95, "test/objective": 0.85}, model_dir)
    [d3] = promote("study", "carpet", margin=0.1, tracking_uri=uri)
    assert not d3.promoted
    [d4] = promote("study", "carpet", margin=0.01, tracking_uri=uri)
    assert d4.promoted and d4.version == d3.version
    assert client.get_model_version_by_alias("i3ad-carpet", "champion").run_id == better
    assert client.get_model_version_by_alias("i3ad-carpet", "previous").version == d1.version
    assert latest_tags(d4.version)["promotion.decision"] == "promoted"
    history = json.loads(latest_tags(d4.version)["promotion.history"])
    assert [h["decision"] for h in history] == ["rejected", "promoted"] and history[0]["margin"] == "0.1"
    assert "promotion.replaced_by" in latest_tags(d1.version)

    # Running it again changes nothing.
    [d5] = promote("study", "carpet", tracking_uri=uri)
    assert not d5.promoted and "already the champion" in d5.reason


def test_promote_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri, experiment_id = new_store(tmp_path / "store")
    log_final_run(experiment_id, "carpet", "i3ad", {"val/objective": 0.7})
    with pytest.raises(TrackingError, match="experiment 'nope' not found.*study"):
        promote("nope", tracking_uri=uri)
    with pytest.raises(TrackingError, match="category 'tile'.*carpet"):
        promote("study", "tile", tracking_uri=uri)
    with pytest.raises(TrackingError, match="metric 'val/bogus'.*val/objective"):
        promote("study", "carpet", metric="val/bogus", tracking_uri=uri)
    assert promote_main(["--experiment", "nope", "--tracking-uri", uri]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(TrackingError, match="no MLflow store"):
        promote("study", tracking_uri=f"sqlite:///{tmp_path / 'missing.db'}")


def test_detect_images_rejects_mixed_arguments(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, model_dir = trained
    assert (
        i3ad_main(
            ["detect", "--model", str(model_dir), "--images", str(data), "--category", "carpet", "--out", str(tmp_path)]
        )
        == 2
    )
    assert "drop --category" in capsys.readouterr().err
    assert i3ad_main(["detect", "--model", str(model_dir), "--out", str(tmp_path)]) == 2
    assert "--images DIR" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert i3ad_main(["detect", "--model", str(model_dir), "--images", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "holds no images" in capsys.readouterr().err


def test_projection_method_travels_with_the_detector(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("I3AD_PREDICT_PATH_ROOT", str(tiny_data))
    import mlflow
    import pandas as pd

    from i3ad.train import TrainConfig, train

    model_dir = tmp_path / "ae"
    train(
        TrainConfig(method="ae-l2", steps=3, image_size=32, batch_size=2, latent_dim=8, ae_width=8, device="cpu"),
        tiny_data,
        "carpet",
        model_dir,
        progress=False,
    )
    _, experiment_id = new_store(tmp_path / "store")
    settings = {"method": "ae-l2+proj", "iterations": 3, "lam": 0.2, "step": 0.1, "score": "max"}
    with mlflow.start_run(experiment_id=experiment_id):
        from tracking.detector import log_detector

        uri = log_detector(model_dir, settings)
    images = tiny_data / "carpet" / "test" / "hole"
    predicted = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"path": [str(images)]}))
    flags = [
        "--method",
        "ae-l2+proj",
        "--proj-iterations",
        "3",
        "--proj-lambda",
        "0.2",
        "--proj-step",
        "0.1",
        "--device",
        "cpu",
    ]
    assert (
        i3ad_main(
            ["detect", "--model", str(model_dir), "--images", str(images), "--out", str(tmp_path / "cli"), *flags]
        )
        == 0
    )
    cli = _csv_scores(tmp_path / "cli" / "scores.csv")
    plain = tmp_path / "plain"
    assert (
        i3ad_main(
            ["detect", "--model", str(model_dir), "--images", str(images), "--out", str(plain), "--device", "cpu"]
        )
        == 0
    )
    assert {Path(s).name: v for s, v in zip(predicted.source, predicted.score, strict=True)} == pytest.approx(
        cli, abs=1e-5
    )
    assert _csv_scores(plain / "scores.csv") != pytest.approx(cli, abs=1e-5)  # the projection did run
