"""A Ray Tune callback, living in the sweep driver, that turns trials into nested MLflow child runs.

One child run per trial under the sweep's parent run, with the tags, params, metric names and
statuses of docs/architecture.md. It talks to MLflow through explicit run ids (no fluent active-run
stack), finds the run of a restored trial again by its `trial_id` tag, and keeps writes that failed
even after retries in a queue that is flushed on the next event, so metrics survive a tracking
server restart. It pickles without its client, because Tune saves callbacks with the experiment.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import cloudpickle
from mlflow.entities import Metric, Param, RunTag
from ray.tune.logger import LoggerCallback
from ray.tune.utils import flatten_dict

from i3ad.errors import root_message
from tracking.store import Store

log = logging.getLogger(__name__)

METRIC_PREFIXES = ("train/", "val/", "test/", "calibration/", "time/")
TAG_KEYS = ("category", "method", "category_kind", "model")
MAX_TAG = 5000
MAX_PARAM = 500


def trial_error(trial: Any) -> str:
    """The message of a trial's last error (the driver's copy first: storage is synced later)."""
    exc = None
    try:
        if trial.pickled_error_file and os.path.exists(trial.pickled_error_file):
            with open(trial.pickled_error_file, "rb") as handle:
                exc = cloudpickle.load(handle)
        else:
            exc = trial.get_pickled_error()
    except Exception:  # noqa: BLE001 - an unpicklable error falls back to the text trace
        exc = None
    if exc is not None:
        return root_message(exc)
    if trial.error_file and os.path.exists(trial.error_file):
        text = open(trial.error_file).read()
    else:
        text = trial.get_error() or ""
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """A trial config as MLflow params: nested keys joined by `/`, values as text cut to MLflow's limit."""
    return {str(key): str(value)[:MAX_PARAM] for key, value in flatten_dict(config, delimiter="/").items()}


def result_metrics(result: dict[str, Any], step_key: str) -> list[Metric]:
    """MLflow metrics of one Tune result: the namespaced numeric keys, stepped by `step_key`."""
    step = int(result.get(step_key, result.get("training_iteration", 0)) or 0)
    stamp = int(float(result.get("timestamp", time.time())) * 1000)
    metrics = []
    for key, value in result.items():
        if key.startswith(METRIC_PREFIXES) and isinstance(value, (int, float)) and math.isfinite(float(value)):
            metrics.append(Metric(key, float(value), stamp, step))
    return metrics


class MlflowTrialLogger(LoggerCallback):
    """Child run per trial: created on start, metrics per result, status on completion or error.

    A trial's phase (the `phase` tag) is its config's `phase` entry. `step_keys[phase]` names the
    result entry used as the MLflow step (e.g. `step` in training, `iteration` in detection). With
    `target_keys[phase]`, a trial that completes before its config's target (e.g. ASHA stopped it
    before its N iterations) is closed KILLED with `stopped_early=true`. Trials for which `skip(trial_id)`
    is true (finished in an earlier driver session, handed back by a restore) are left as they are.

    It fills Tune's `LoggerCallback` hooks (start, result, end) as Ray's `MLflowLoggerCallback` does, and
    adds `on_trial_recover`, which `LoggerCallback` does not forward. It does not subclass
    `MLflowLoggerCallback`, because each of that class's methods would have to be replaced: its `setup`
    sets the process-wide tracking URI and finds the experiment by name (this store is an explicit URI and
    experiment id); its runs are top-level (no parent run), keyed by the Trial object (a restored trial
    would get a second run instead of its own, found here by the `trial_id` tag); its writes go one value
    per request without retries (an outage raises in the driver or loses metrics, instead of queueing them)
    and fall back to the fluent active run when a run id cannot be checked; and it ends every trial
    FINISHED or FAILED (no KILLED for an ASHA-stopped trial, no error or retries tags).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        step_keys: dict[str, str] | None = None,
        target_keys: dict[str, str] | None = None,
        skip: Callable[[str], bool] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.skip = skip
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.step_keys = step_keys or {}
        self.target_keys = target_keys or {}
        self._reset()

    @staticmethod
    def phase(trial: Any) -> str:
        """The trial's phase: its config's `phase` entry."""
        return str(trial.config.get("phase", "trial"))

    def step_key(self, trial: Any) -> str:
        """The result entry used as the MLflow step for this trial's phase."""
        return self.step_keys.get(self.phase(trial), "training_iteration")

    def _reset(self) -> None:
        self._store: Store | None = None
        self._runs: dict[str, str] = {}
        self._pending: list[tuple[str, tuple, dict]] = []
        self.run_ids: dict[str, str] = self.__dict__.get("run_ids", {})

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_store", "_runs", "_pending"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def store(self) -> Store:
        """The retrying client on the tracking URI, made on first use (it is not pickled)."""
        if self._store is None:
            self._store = Store(self.tracking_uri)
        return self._store

    # ------------------------------------------------------------ writes
    def _write(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Queue a client call and flush the queue in order; failures stay queued for later."""
        self._pending.append((method, args, kwargs))
        self._flush()

    def _flush(self) -> None:
        while self._pending:
            method, args, kwargs = self._pending[0]
            try:
                self.store.call(method, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - keep the sweep running; retried on the next event
                log.warning("MLflow is unreachable (%s); %d write(s) queued", exc, len(self._pending))
                return
            self._pending.pop(0)

    # ------------------------------------------------------------ runs
    def _run_for(self, trial: Any) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        phase = self.phase(trial)
        existing = self.store.children(
            self.experiment_id, self.parent_run_id, f"tags.trial_id = '{trial.trial_id}' and tags.phase = '{phase}'"
        )
        if existing:
            run_id = existing[0].info.run_id
            self._write("update_run", run_id, status="RUNNING")
            self._write("set_tag", run_id, "resumed", "true")
        else:
            config = trial.config
            tags = {"phase": phase, "trial_id": trial.trial_id}
            tags.update({k: str(config[k]) for k in TAG_KEYS if k in config})
            name = "-".join(
                str(part) for part in (phase, config.get("category"), config.get("method"), trial.trial_id) if part
            )
            run_id = self.store.start_run(self.experiment_id, name, tags, self.parent_run_id)
            params = [Param(k, v) for k, v in flat_params(config).items() if k != "phase"]
            for start in range(0, len(params), 100):  # MLflow's per-batch limit
                self._write("log_batch", run_id, params=params[start : start + 100])
        self._runs[trial.trial_id] = run_id
        self.run_ids[trial.trial_id] = run_id
        return run_id

    def _skipped(self, trial: Any) -> bool:
        skip = getattr(self, "skip", None)  # absent in loggers pickled by older versions
        return bool(skip and skip(trial.trial_id))

    # ------------------------------------------------------------ LoggerCallback hooks
    def log_trial_start(self, trial: Any) -> None:
        if self._skipped(trial):
            return
        self._run_for(trial)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if self._skipped(trial):
            return
        metrics = result_metrics(result, self.step_key(trial))
        if metrics:
            self._write("log_batch", self._run_for(trial), metrics=metrics)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        if self._skipped(trial):
            return
        run_id = self._run_for(trial)
        if failed:
            self._write("set_tag", run_id, "error", trial_error(trial)[:MAX_TAG])
            self._write("set_terminated", run_id, status="FAILED")
            return
        result = trial.last_result or {}
        target_key = self.target_keys.get(self.phase(trial))
        target = trial.config.get(target_key) if target_key else None
        reached = result.get(self.step_key(trial))
        if target is not None and reached is not None and reached < target:
            self._write("log_batch", run_id, tags=[RunTag("stopped_early", "true"), RunTag("stopped_at", str(reached))])
            self._write("set_terminated", run_id, status="KILLED")
        else:
            self._write("set_terminated", run_id, status="FINISHED")

    # ------------------------------------------------------------ Tune hooks LoggerCallback does not forward
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._skipped(trial):
            return
        run_id = self._run_for(trial)
        self._write(
            "log_batch",
            run_id,
            tags=[RunTag("retries", str(trial.num_failures)), RunTag("last_error", trial_error(trial)[:MAX_TAG])],
        )

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._flush()
        if self._pending:
            log.error("%d MLflow write(s) could not be delivered to %s", len(self._pending), self.tracking_uri)
