"""A Ray Tune callback, living in the sweep driver, that turns trials into nested MLflow child runs.

One child run per trial under the sweep's parent run, with the tags, params, metric names and
statuses of docs/architecture.md, nested under the trial's (category, method) model run
(`tracking.layout`). It talks to MLflow through explicit run ids (no fluent active-run stack) and finds
the run of a restored trial again by its `trial_id` tag. Every write, run creation included, goes
through a background writer (`tracking.writer`), so no trial and no Tune event waits on the tracking
server: while it is down the writes queue up in order and are delivered when it is back, and the
queue is flushed at the end of the experiment. It pickles without its client and writer, because Tune
saves callbacks with the experiment.
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
from tracking.layout import GROUP_TAG, SWEEP_RUN_TAG, group_key, model_run, run_name, seed_label, trial_label
from tracking.store import Store
from tracking.writer import BackgroundWriter, RunRef

log = logging.getLogger(__name__)

METRIC_PREFIXES = ("train/", "val/", "test/", "calibration/", "time/")
TAG_KEYS = ("category", "method", "category_kind", "model", "repeat_seed")
REPEAT_KEY = "repeat_seed"  # studies.search.REPEAT: the seed of a repeat (studies with `repeats` > 1)
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

    A trial's run sits under its (category, method) model run, itself under the sweep's parent run; it is
    named `carpet·i3ad·train` or `carpet·i3ad·t07` (Tune's trial index). A trial's phase (the `phase` tag)
    is its config's `phase` entry. `step_keys[phase]` names the result entry used as the MLflow step (e.g.
    `step` in training, `iteration` in detection). With `target_keys[phase]`, a trial that completes
    before its config's target (e.g. ASHA stopped it before its N iterations) is closed FINISHED with
    `stopped_early=true` and `stopped_at` (it did its job: its curve up to there is the result). Trials for
    which `skip(trial_id)` is true (finished in an earlier driver session, handed back by a restore) are
    left as they are. At the end of the experiment the writes still queued are waited for up to
    `flush_timeout` seconds; any left then are named in an error (the thread keeps trying while the
    driver lives).

    It fills Tune's `LoggerCallback` hooks (start, result, end) as Ray's `MLflowLoggerCallback` does, and
    adds `on_trial_recover`, which `LoggerCallback` does not forward. It does not subclass
    `MLflowLoggerCallback`, because each of that class's methods would have to be replaced: its `setup`
    sets the process-wide tracking URI and finds the experiment by name (this store is an explicit URI and
    experiment id); its runs are top-level (no parent run), keyed by the Trial object (a restored trial
    would get a second run instead of its own, found here by the `trial_id` tag); its writes are
    synchronous, one value per request without retries (an outage raises in the driver or loses metrics,
    instead of queueing them) and fall back to the fluent active run when a run id cannot be checked; and
    it ends every trial FINISHED or FAILED (no `stopped_early` tag, no error or retries tags).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        step_keys: dict[str, str] | None = None,
        target_keys: dict[str, str] | None = None,
        skip: Callable[[str], bool] | None = None,
        flush_timeout: float = 120.0,
        retry_delay: float = 0.5,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.skip = skip
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.step_keys = step_keys or {}
        self.target_keys = target_keys or {}
        self.flush_timeout = flush_timeout
        self.retry_delay = retry_delay
        self._reset()

    @staticmethod
    def phase(trial: Any) -> str:
        """The trial's phase: its config's `phase` entry."""
        return str(trial.config.get("phase", "trial"))

    def step_key(self, trial: Any) -> str:
        """The result entry used as the MLflow step for this trial's phase."""
        return self.step_keys.get(self.phase(trial), "training_iteration")

    def _reset(self) -> None:
        self._writer: BackgroundWriter | None = None
        self._runs: dict[str, RunRef] = {}
        self._groups: dict[str, RunRef] = {}
        self.run_ids: dict[str, str] = self.__dict__.get("run_ids", {})
        # trial id -> its number in its (category, method) group (`t07`); pickled, so a restore continues it
        self.numbers: dict[str, int] = self.__dict__.get("numbers", {})
        self.counts: dict[str, int] = self.__dict__.get("counts", {})

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_writer", "_runs", "_groups", "_store", "_pending"):
            state.pop(key, None)
        state["run_ids"] = dict(self.run_ids)
        state["numbers"], state["counts"] = dict(self.numbers), dict(self.counts)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def writer(self) -> BackgroundWriter:
        """The background writer on the tracking URI, made on first use (it is not pickled)."""
        if self._writer is None:
            self._writer = BackgroundWriter(self.tracking_uri, delay=getattr(self, "retry_delay", 0.5))
        return self._writer

    # ------------------------------------------------------------ writes
    def _write(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Queue a client call; `RunRef` arguments are replaced by their run ids when it is delivered."""

        def write(store: Store) -> None:
            store.call(method, *[_id(a) for a in args], **{k: _id(v) for k, v in kwargs.items()})

        self.writer.submit(write)

    # ------------------------------------------------------------ runs
    def _group_for(self, trial: Any) -> RunRef:
        config = trial.config
        key = group_key(config.get("category"), config.get("method"))
        if key not in self._groups:
            ref = self._groups[key] = RunRef()
            experiment, parent = self.experiment_id, self.parent_run_id
            kind = str(config.get("category_kind", ""))

            def open_group(store: Store) -> None:
                ref.id = model_run(store, experiment, parent, config.get("category"), config.get("method"), kind)

            self.writer.submit(open_group)
        return self._groups[key]

    def _run_for(self, trial: Any) -> RunRef:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        ref = self._runs[trial.trial_id] = RunRef()
        group = self._group_for(trial)
        phase, trial_id, config = self.phase(trial), trial.trial_id, trial.config
        part = "train" if phase == "train" else self._label(trial)
        experiment, parent, run_ids = self.experiment_id, self.parent_run_id, self.run_ids

        def open_run(store: Store) -> None:
            query = f"tags.trial_id = '{trial_id}' and tags.phase = '{phase}'"
            existing = store.search(experiment, f"tags.{SWEEP_RUN_TAG} = '{parent}' and {query}")
            existing = existing or store.children(experiment, parent, query)  # runs of the flat layout
            if existing:
                ref.id = existing[0].info.run_id
                store.call("update_run", ref.id, status="RUNNING")
                store.call("set_tag", ref.id, "resumed", "true")
            else:
                tags = {"phase": phase, "trial_id": trial_id, SWEEP_RUN_TAG: parent}
                tags.update({k: str(config[k]) for k in TAG_KEYS if k in config})
                tags[GROUP_TAG] = group_key(config.get("category"), config.get("method"))
                name = run_name(config.get("category"), config.get("method"), seed_label(config.get(REPEAT_KEY)), part)
                ref.id = store.start_run(experiment, name, tags, group.id or parent)
                params = [Param(k, v) for k, v in flat_params(config).items() if k != "phase"]
                for start in range(0, len(params), 100):  # MLflow's per-batch limit
                    store.call("log_batch", ref.id, params=params[start : start + 100])
            run_ids[trial_id] = ref.id

        self.writer.submit(open_run)
        return ref

    def _label(self, trial: Any) -> str:
        """`t07`: the trial's number among its group's trials, in the order they started."""
        if trial.trial_id not in self.numbers:
            group = group_key(trial.config.get("category"), trial.config.get("method"))
            self.counts[group] = self.counts.get(group, 0) + 1
            self.numbers[trial.trial_id] = self.counts[group]
        return trial_label(self.numbers[trial.trial_id])

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
        run = self._run_for(trial)
        if failed:
            self._write("set_tag", run, "error", trial_error(trial)[:MAX_TAG])
            self._write("set_terminated", run, status="FAILED")
            return
        result = trial.last_result or {}
        target_key = self.target_keys.get(self.phase(trial))
        target = trial.config.get(target_key) if target_key else None
        reached = result.get(self.step_key(trial))
        if target is not None and reached is not None and reached < target:
            self._write("log_batch", run, tags=[RunTag("stopped_early", "true"), RunTag("stopped_at", str(reached))])
        self._write("set_terminated", run, status="FINISHED")

    # ------------------------------------------------------------ Tune hooks LoggerCallback does not forward
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._skipped(trial):
            return
        run = self._run_for(trial)
        self._write(
            "log_batch",
            run,
            tags=[RunTag("retries", str(trial.num_failures)), RunTag("last_error", trial_error(trial)[:MAX_TAG])],
        )

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._writer is None:
            return
        timeout = getattr(self, "flush_timeout", 120.0)
        left = self._writer.close(timeout)
        if left:
            log.error(
                "%d MLflow write(s) could not be delivered to %s within %gs of the end of the trials; "
                "they are retried while the sweep driver runs (the trials' results are also in Tune's storage)",
                left,
                self.tracking_uri,
                timeout,
            )


def _id(value: Any) -> Any:
    """A `RunRef`'s run id (filled in by the writer before this write), any other value as it is."""
    return value.id if isinstance(value, RunRef) else value
