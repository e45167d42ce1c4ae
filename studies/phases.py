"""The sweep's Tune experiment: phase A (training) and phase B (each model's detection search) in one.

Pipelined in one experiment, the phases share warm actors and the cluster.

An interrupted experiment is continued with `Tuner.restore` (finished trials are not rerun, running
ones restart from their last checkpoint); a finished one is only read back.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import zlib
from dataclasses import dataclass
from typing import Any

import optuna
from ray import tune
from ray.tune.execution.placement_groups import PlacementGroupFactory, resource_dict_to_pg_factory
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from i3ad.scorers import base_method
from studies.config import SweepConfig, uses_workers
from studies.data import category_kind
from studies.methods import iterative, search_space
from studies.search import (
    KEY,
    PHASE,
    READY,
    REPEAT,
    KeyedScheduler,
    ListSearcher,
    SweepSearcher,
    model_methods,
    search_key,
)
from studies.trainables import SweepContext, sweep_trial

EXPERIMENT = "sweep"
SECONDS_METRIC = "val/seconds_per_image"
DRIVER_MEMORY = 256 * 2**20  # bytes the light driver of a multi-worker training trial reserves


@dataclass
class SweepSetup:
    """What the experiment needs from the driver."""

    config: SweepConfig
    storage: str
    resources: dict[str, float]
    max_concurrent: int
    study_id: str  # "<study>-<sweep_id>", the prefix of the Optuna study names
    workers: int = 1  # data-parallel workers of a training trial (resources.workers)

    def trial_resources(self, trial: dict[str, Any]) -> PlacementGroupFactory:
        """A trial's reservation: `resources`, except a multi-worker training trial's light driver.

        Its Ray Train workers reserve their own CPUs/GPUs (studies/ddp_trainable.py), so the Tune trial
        that drives them holds no CPU that a worker would then wait for; it reserves memory only (Ray
        refuses an all-zero reservation).
        """
        if trial.get(PHASE) == "train" and self.workers > 1 and uses_workers(trial.get("method", "")):
            return PlacementGroupFactory([{"CPU": 0.0, "memory": DRIVER_MEMORY}])
        return resource_dict_to_pg_factory(self.resources)

    @property
    def path(self) -> str:
        return f"{self.storage}/{EXPERIMENT}"

    def run_config(self, callbacks: list[tune.Callback]) -> tune.RunConfig:
        ray_cfg = self.config.ray
        return tune.RunConfig(
            name=EXPERIMENT,
            storage_path=self.storage,
            failure_config=tune.FailureConfig(max_failures=ray_cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=ray_cfg.checkpoints_to_keep),
            callbacks=callbacks,
            verbose=0,
        )


def train_configs(config: SweepConfig, synthetic: bool, kinds: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Phase A: one trial config per (category, training method, training-grid combination, repeat seed).

    Methods with the same training method share the model: `methods` lists the methods whose
    detection searches open on it (`ae-l2` and `ae-l2+proj` on one `ae-l2` model).
    """
    by_train: dict[str, list[str]] = {}
    for method in config.methods:
        by_train.setdefault(base_method(method), []).append(method)
    configs = []
    repeated = config.repeats > 1
    for category in config.categories:
        kind = category_kind(category, synthetic, kinds)
        for trained, methods in by_train.items():
            for combo in config.train_combinations():
                for seed in config.seeds:
                    settings = dataclasses.asdict(config.train_for(kind, combo, seed))
                    variant = ",".join(f"{k}={v}" for k, v in combo.items())
                    model = (
                        f"{category}/{trained}"
                        + (f"/{variant}" if combo else "")
                        + (f"/seed{seed}" if repeated else "")
                    )
                    entry = {
                        KEY: model,
                        "category": category,
                        "method": trained,
                        "methods": methods,
                        "category_kind": kind,
                        "train": settings,
                    }
                    configs.append(entry | ({REPEAT: seed} if repeated else {}))
    return configs


def objective_metrics(config: SweepConfig) -> tuple[str | list[str], str | list[str]]:
    """What Optuna optimises: the validation objective, optionally also seconds per image."""
    if config.search.seconds_objective:
        return [config.search.objective, SECONDS_METRIC], ["max", "min"]
    return config.search.objective, "max"


def budget(config: SweepConfig, method: str) -> int:
    """Detection trials one method gets on a model: the sample budget, or 1 when there is nothing to search."""
    return config.search.num_samples if search_space(method, config).searched else 1


def open_search(
    key: str, train_config: dict[str, Any], result: dict[str, Any], *, config: SweepConfig, study_id: str
) -> tuple[Searcher, int, dict[str, Any]]:
    """Phase B for one (trained model, method): its own Optuna study, seeded, with the paper's point first.

    U of that point is the one the training trial calibrated. `key` is the search key;
    `train_config["method"]` the method searched. Every trial carries the space's fixed settings
    (its full length as `iterations`).
    """
    method = train_config["method"]
    space = search_space(method, config, result.get("calibration/threshold"))
    carried = ("category", "method", "category_kind", REPEAT)
    constants = {**space.fixed, **{k: train_config[k] for k in carried if k in train_config}}
    if not space.searched:
        return ListSearcher([space.fixed]), 1, constants
    metric, mode = objective_metrics(config)
    searcher = OptunaSearch(
        space.distributions,
        metric=metric,
        mode=mode,
        points_to_evaluate=space.points,
        sampler=optuna.samplers.TPESampler(seed=(config.seed * 1_000_003 + zlib.crc32(key.encode())) % 2**31),
        study_name=f"{study_id}-{key}",
    )
    return searcher, config.search.num_samples, constants


def build_search(setup: SweepSetup, configs: list[dict[str, Any]]) -> tuple[SweepSearcher, KeyedScheduler]:
    """The sweep's searcher (training configs, then each model's Optuna studies) and per-search ASHA."""
    config = setup.config
    search = config.search
    opener = functools.partial(open_search, config=config, study_id=setup.study_id)
    schedulers = {}
    for c in configs:
        for method in model_methods(c):
            if not iterative(method):
                continue
            horizon = search_space(method, config).max_t
            schedulers[search_key(c[KEY], c["method"], method)] = ASHAScheduler(
                time_attr="iteration",
                metric=search.objective,
                mode="max",
                max_t=horizon,
                grace_period=min(search.grace_period, horizon),
                reduction_factor=search.reduction_factor,
            )
    # No metric on the sweep searcher itself: Tune would then demand it in training results too.
    return SweepSearcher(configs, opener), KeyedScheduler(schedulers)


@dataclass
class Outcome:
    """The experiment's results and whether it ran to the end (False: interrupted, resume later)."""

    results: tune.ResultGrid
    complete: bool


def result_config(result: tune.Result) -> dict[str, Any]:
    """A result's trial config (read from the trial folder when the trial never reported)."""
    if result.config:
        return result.config
    with result.filesystem.open_input_file(f"{result.path}/params.json") as handle:
        return json.loads(handle.readall())


def _complete(grid: tune.ResultGrid, sweep: SweepConfig, n_train: int) -> bool:
    """Every training trial and every detection trial its model was owed exists and ended."""
    expected = n_train
    for result in grid:
        trial = result_config(result)
        if trial.get(PHASE) == "train" and (result.metrics or {}).get(READY):
            expected += sum(budget(sweep, method) for method in model_methods(trial))
    ended = all(r.error is not None or (r.metrics or {}).get("done") for r in grid)
    return ended and len(grid) >= expected


def run(
    setup: SweepSetup,
    context: SweepContext,
    configs: list[dict[str, Any]],
    callbacks: list[tune.Callback],
    finished: bool = False,
) -> Outcome:
    """Fit the sweep experiment, continue it after an interruption, or read a finished one back."""
    resources = setup.trial_resources if setup.workers > 1 else setup.resources  # one worker: as before
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, context=context), resources)
    if finished:
        return Outcome(tune.Tuner.restore(setup.path, trainable).get_results(), True)
    if tune.Tuner.can_restore(setup.path):
        tuner = tune.Tuner.restore(setup.path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        searcher, scheduler = build_search(setup, configs)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=setup.max_concurrent),
                scheduler=scheduler,
                num_samples=-1,
                reuse_actors=True,
            ),
            run_config=setup.run_config(callbacks),
        )
    grid = tuner.fit()
    return Outcome(grid, _complete(grid, setup.config, len(configs)))
