"""Fault suite, trust boundary: tampered MLmodel paths, the pyfunc's `path` column, SECURITY.md."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

import tracking.registry
from i3ad.errors import ConfigError
from tracking.registry import TrackingError, download_detector, inside

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("relative", ["/etc", "../outside", "artifacts/../../outside", ""])
def test_artifact_paths_outside_the_model_are_refused(relative: str, tmp_path: Path) -> None:
    with pytest.raises(TrackingError, match="relative path inside the model"):
        inside(tmp_path, relative, "path")


def test_a_link_out_of_the_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "artifacts").symlink_to(tmp_path)
    with pytest.raises(TrackingError, match="leads outside"):
        inside(tmp_path / "model", "artifacts", "path")
    assert inside(tmp_path, "model", "path") == (tmp_path / "model").resolve()


@pytest.mark.parametrize("relative", ["/tmp", "../../etc"])
def test_download_detector_rejects_a_tampered_mlmodel(
    relative: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "downloaded"
    model.mkdir()
    flavor = {
        "python_function": {"loader_module": "mlflow.pyfunc.model", "artifacts": {"detector": {"path": relative}}}
    }
    (model / "MLmodel").write_text(yaml.safe_dump({"flavors": flavor}))
    monkeypatch.setattr(tracking.registry, "client_for", lambda uri=None: None)
    monkeypatch.setattr(tracking.registry.mlflow.artifacts, "download_artifacts", lambda **kwargs: str(model))
    with pytest.raises(TrackingError, match="must be a relative path inside the model"):
        download_detector("models:/i3ad-carpet@champion", dst=tmp_path / "dst")


@pytest.fixture
def detector():
    module = importlib.import_module("tracking.detector_model")
    model = module.I3ADDetector()
    model.config = SimpleNamespace(image_size=8)
    model.model = SimpleNamespace(info={"channels": 1})
    return module, model


def test_path_column_is_off_unless_a_root_folder_is_set(detector, tmp_path: Path, monkeypatch) -> None:
    module, model = detector
    monkeypatch.delenv(module.PATH_ROOT_ENV, raising=False)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    with pytest.raises(ConfigError, match="`path` column is off"):
        model._images(pd.DataFrame({"path": [str(image)]}))
    sources, images = model._images(pd.DataFrame({"image": [np.zeros((8, 8), np.uint8)]}))
    assert images.shape == (1, 1, 8, 8)


def test_path_column_reads_only_inside_its_root_and_never_says_what_exists(
    detector, tmp_path: Path, monkeypatch
) -> None:
    module, model = detector
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(allowed / "a.png")
    (tmp_path / "secret.png").write_bytes(b"x")
    monkeypatch.setenv(module.PATH_ROOT_ENV, str(allowed))
    sources, images = model._images(pd.DataFrame({"path": ["a.png"]}))
    assert images.shape == (1, 1, 8, 8) and sources == [str((allowed / "a.png").resolve())]
    messages = set()
    for outside in (str(tmp_path / "secret.png"), str(tmp_path / "missing.png"), "../secret.png", "/etc/passwd"):
        with pytest.raises(ConfigError) as caught:
            model._images(pd.DataFrame({"path": [outside]}))
        messages.add(str(caught.value))
    assert messages == {f"row 0: `path` must name a file or folder inside {module.PATH_ROOT_ENV}"}


def test_security_notes_name_the_locations_that_hold_code() -> None:
    text = (ROOT / "SECURITY.md").read_text()
    for needle in ("tuner.pkl", "artifact store", "I3AD_PREDICT_PATH_ROOT", "weights_only=True", "safetensors"):
        assert needle in text, needle
