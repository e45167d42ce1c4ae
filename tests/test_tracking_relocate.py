"""A copied runs/ folder: the moved SQLite store is detected, named, and pointed at its artifacts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from i3ad.errors import ConfigError
from tracking.registry import TrackingError, client_for
from tracking.relocate import main as relocate_main
from tracking.store import Store, default_tracking_uri


def test_moved_store_is_detected_then_relocated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = tmp_path / "old" / "sweep", tmp_path / "new" / "sweep"
    store = Store(default_tracking_uri(old))
    experiment = store.experiment("quick", old / "mlartifacts")
    run = store.start_run(experiment, "final-carpet", {"phase": "final"})
    (tmp_path / "note.txt").write_text("kept\n")
    store.call("log_artifact", run, str(tmp_path / "note.txt"), "plots")
    store.finish(run)
    shutil.copytree(old, new)
    shutil.rmtree(old)

    uri = default_tracking_uri(new)
    with pytest.raises(ConfigError, match="was moved.*tracking.relocate"):
        Store(uri)  # a sweep in the copy would log next to artifacts it cannot find
    with pytest.raises(TrackingError, match=r"mlartifacts/quick, which does not exist"):
        client_for(uri)

    assert relocate_main([uri]) == 0
    assert "rewrote" in capsys.readouterr().out
    client = MlflowClient(uri)
    assert client.get_experiment(experiment).artifact_location == (new / "mlartifacts" / "quick").as_uri()
    local = client.download_artifacts(run, "plots/note.txt", str(tmp_path))
    assert Path(local).read_text() == "kept\n"
    Store(uri)  # opens again
    assert relocate_main([uri]) == 0 and "nothing to do" in capsys.readouterr().out
