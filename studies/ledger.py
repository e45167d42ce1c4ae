"""Trials the sweep has seen finish, kept in Tune storage so that a resumed sweep never runs them again.

Tune snapshots its experiment state every ~10 s. A trial that finished after the last snapshot comes
back RUNNING when the driver is killed and restored, and Tune would run it again. So the driver writes
one small file per finished trial, `<storage>/finished/<trial_id>.json` with the trial's last reported
metrics, the moment Tune calls it complete and before any other callback (MLflow) hears of it.

A restored trial that finds its entry does no work: it hands the recorded metrics back to Tune once
(marked `REPLAYED`), so that the searcher, ASHA and the result grid see the true final result, even
when Tune's snapshot held an older one. The MLflow logger ignores trials finished in an earlier session.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pyarrow.fs
from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from studies.storage import filesystem, write_atomically

log = logging.getLogger(__name__)

FOLDER = "finished"
REPLAYED = "sweep/replayed"  # result key of a finished trial's metrics handed back after a restore
_NOT_METRICS = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint", REPLAYED}


def _fs(storage: str) -> tuple[pyarrow.fs.FileSystem, str]:
    fs, path = filesystem(storage)
    return fs, f"{path.rstrip('/')}/{FOLDER}"


def reported_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric entries a trial itself reported (Tune's own bookkeeping keys left out)."""
    return {
        k: float(v)
        for k, v in result.items()
        if k not in _NOT_METRICS and isinstance(v, (int, float)) and math.isfinite(float(v))
    }


def finished_result(storage: str, trial_id: str) -> dict[str, float] | None:
    """The recorded final metrics of `trial_id`, or None when the sweep never saw it finish."""
    fs, folder = _fs(storage)
    try:
        with fs.open_input_stream(f"{folder}/{trial_id}.json") as stream:
            return json.loads(stream.readall())
    except (FileNotFoundError, OSError):
        return None


def finished_ids(storage: str) -> set[str]:
    """Ids of every trial recorded as finished."""
    fs, folder = _fs(storage)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    except OSError:
        return set()
    return {Path(i.path).stem for i in infos if i.path.endswith(".json")}


class FinishedTrials(Callback):
    """Tune callback (list it first) that records every trial completing without error."""

    def __init__(self, storage: str) -> None:
        self.storage = storage
        self._reset()

    def _reset(self) -> None:
        # Trials that finished before this driver process started: a restore may hand them back RUNNING.
        self.earlier: set[str] = finished_ids(self.storage)

    def __getstate__(self) -> dict[str, Any]:
        return {"storage": self.storage}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def finished_earlier(self, trial_id: str) -> bool:
        return trial_id in self.earlier

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.earlier:
            return
        fs, folder = _fs(self.storage)
        body = json.dumps(reported_metrics(trial.last_result or {})).encode()
        try:
            fs.create_dir(folder, recursive=True)
            write_atomically(fs, f"{folder}/{trial.trial_id}.json", body)
        except OSError as exc:  # the sweep goes on; only a later resume could rerun this trial
            log.warning("could not record trial %s as finished in %s: %s", trial.trial_id, folder, exc)
