"""A trial that fails and is retried from its checkpoint keeps every result row in Tune storage."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from ray import tune

from studies.trial_history import KeepTrialHistory


def crashes_once_after_a_checkpoint(config: dict) -> None:
    """Reports steps 1-4; checkpoints at step 1; the first attempt dies after reporting step 3."""
    checkpoint = tune.get_checkpoint()
    attempt = 1 if checkpoint else 0
    start = 1
    if checkpoint:
        with checkpoint.as_directory() as folder:
            start = json.loads((Path(folder) / "step.json").read_text())["step"] + 1
    for step in range(start, 5):
        if step == 1:
            with tempfile.TemporaryDirectory() as folder:
                (Path(folder) / "step.json").write_text(json.dumps({"step": step}))
                tune.report({"step": step, "attempt": attempt}, checkpoint=tune.Checkpoint.from_directory(folder))
            # Let the sync Tune forces after a checkpoint copy result.json to storage with only this row,
            # so that rows 2-3 exist on the driver alone when the trial dies.
            time.sleep(3)
            continue
        tune.report({"step": step, "attempt": attempt})
        if step == 3 and attempt == 0:
            raise RuntimeError("simulated crash of the first attempt")


def _rows(storage: Path) -> list[dict]:
    (result_file,) = storage.glob("**/result.json")
    return [json.loads(line) for line in result_file.read_text().splitlines()]


def test_retried_trial_keeps_the_rows_reported_since_the_last_sync(local_ray, tmp_path):
    tuner = tune.Tuner(
        crashes_once_after_a_checkpoint,
        run_config=tune.RunConfig(
            name="history",
            storage_path=str(tmp_path),
            failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # Tune syncs after every checkpoint
            callbacks=[KeepTrialHistory()],
            verbose=0,
        ),
    )
    (result,) = tuner.fit()
    assert result.error is None
    rows = [(r["attempt"], r["step"]) for r in _rows(tmp_path)]
    assert rows == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (1, 4)]
