"""The search algorithm and scheduler of the sweep's single Tune experiment.

Phase A (training) and phase B (detection search) run in one experiment, so trials share warm
actors and a category's detection search starts as soon as its own model is trained, while other
categories still train. `SweepSearcher` hands out the training configs first; when a training trial
ends well it opens that model's own search (its Optuna study, seeded, the paper's point first) and
interleaves the open searches. `KeyedScheduler` gives every model its own ASHA brackets on the
detection-iteration axis and lets training trials run to the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from i3ad.atomic import atomic_write_text
from studies.searcher_state import restore_searcher, searcher_state

KEY = "model"  # trial-config entry naming the model (category/method[/training variant]) a trial belongs to
REPEAT = "repeat_seed"  # trial-config entry of a study with `repeats` > 1: the seed of the model's repeat
SEARCH = "search"  # detection-config entry naming its search when that is not the model's own method's (KEY)
PHASE = "phase"  # "train" or "detect"
READY = "train/published"  # a training result with this metric means the model is in storage

# (search key, the training config with `method` = the method searched, the training trial's last result)
#   -> (searcher, trial budget, constants)
SearchOpener = Callable[[str, dict[str, Any], dict[str, Any]], tuple[Searcher, int, dict[str, Any]]]


def model_methods(train_config: dict[str, Any]) -> list[str]:
    """The methods searched on a training config's model (`methods`, else its own method)."""
    return list(train_config.get("methods") or [train_config.get("method")])


def search_key(model: str, train_method: str | None, method: str | None) -> str:
    """One search per (model, method): the model key for its own method, `<model>:<method>` for others."""
    return model if method == train_method else f"{model}:{method}"


def trial_search(config: dict[str, Any]) -> str | None:
    """The search a detection trial config belongs to."""
    return config.get(SEARCH, config.get(KEY))


STATE_FORMAT = "i3ad-sweep-searcher/1"


class ListSearcher(Searcher):
    """Suggests a fixed list of configs, then FINISHED (methods with nothing to search)."""

    def __init__(self, configs: list[dict[str, Any]], metric: str | None = None, mode: str | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        self._configs = list(configs)
        self._next = 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if self._next >= len(self._configs):
            return Searcher.FINISHED
        self._next += 1
        return dict(self._configs[self._next - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


class SweepSearcher(Searcher):
    """Training configs first; then each trained model's searches (one per method on it), round-robin.

    Each search stays within its budget. Tune saves the searcher's state with the experiment (`save` /
    `restore`); it is JSON, not a pickle: the bookkeeping, and per open search the opener's arguments and the
    searcher's own state (an Optuna study's trials and its sampler's random state, studies.searcher_state), from
    which `restore` rebuilds each search exactly. The file keeps Tune's name (`searcher-state-*.pkl`).
    """

    def __init__(
        self,
        train_configs: list[dict[str, Any]],
        opener: SearchOpener,
        metric: str | list[str] | None = None,
        mode: str | list[str] | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self._train = [dict(c, **{PHASE: "train"}) for c in train_configs]
        self._next_train = 0
        self._opener = opener
        self._training: set[str] = {c[KEY] for c in train_configs}  # keys whose training has not ended
        self._searchers: dict[str, Searcher] = {}  # by search key
        self._remaining: dict[str, int] = {}
        self._constants: dict[str, dict[str, Any]] = {}
        self._owner: dict[str, tuple[str, str]] = {}  # trial id -> (phase, model key or search key)
        self._live: set[str] = set()
        self._turn = 0
        self._opened: dict[str, list[Any]] = {}  # search key -> [training config, result fields] it was opened with

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._next_train < len(self._train):
            config = self._train[self._next_train]
            self._next_train += 1
            return self._assign(trial_id, "train", config[KEY], config)
        open_keys = [k for k in self._searchers if self._remaining[k] > 0]
        for _ in range(len(open_keys)):
            key = open_keys[self._turn % len(open_keys)]
            self._turn += 1
            suggestion = self._searchers[key].suggest(trial_id)
            if suggestion == Searcher.FINISHED:
                self._remaining[key] = 0
            elif suggestion is not None:
                self._remaining[key] -= 1
                return self._assign(trial_id, "detect", key, {**self._constants[key], **suggestion, PHASE: "detect"})
        if self._training and not self._live:
            self._training.clear()  # defensive: a training trial ended without telling us; never wait forever
        if not self._training and all(n <= 0 for n in self._remaining.values()):
            return Searcher.FINISHED
        return None  # models still training: ask again later

    def _assign(self, trial_id: str, phase: str, key: str, config: dict[str, Any]) -> dict[str, Any]:
        self._owner[trial_id] = (phase, key)
        self._live.add(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        phase, key = self._owner.get(trial_id, ("", ""))
        if phase == "detect":
            self._searchers[key].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        phase, key = self._owner.get(trial_id, ("", ""))
        self._live.discard(trial_id)
        if phase == "train":
            self._training.discard(key)
            if not error and result and result.get(READY):
                config = next(c for c in self._train if c[KEY] == key)
                for method in model_methods(config):
                    skey = search_key(key, config.get("method"), method)
                    if skey in self._searchers:  # a finished trial handed back after a restore (studies/ledger.py)
                        continue
                    own = config if method == config.get("method") else {**config, "method": method}
                    scalars = {k: v for k, v in result.items() if isinstance(v, (str, int, float, bool, type(None)))}
                    self._opened[skey] = [own, scalars]
                    searcher, budget, constants = self._opener(skey, own, scalars)
                    ids = {KEY: key} if skey == key else {KEY: key, SEARCH: skey}
                    self._searchers[skey], self._remaining[skey], self._constants[skey] = (
                        searcher,
                        budget,
                        {**constants, **ids},
                    )
        elif phase == "detect":
            self._searchers[key].on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        state = {
            "format": STATE_FORMAT,
            "next_train": self._next_train,
            "training": sorted(self._training),
            "remaining": self._remaining,
            "constants": self._constants,
            "owner": self._owner,
            "live": sorted(self._live),
            "turn": self._turn,
            "opened": self._opened,
            "searchers": {key: searcher_state(searcher) for key, searcher in self._searchers.items()},
        }
        atomic_write_text(checkpoint_path, json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        try:
            with open(checkpoint_path, encoding="utf-8") as file:
                state = json.load(file)
        except (UnicodeDecodeError, json.JSONDecodeError):
            state = {}
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"{checkpoint_path} is not a JSON sweep searcher state ({STATE_FORMAT}): a sweep started by an "
                "older i3ad (which pickled it) is resumed with that version, or started again"
            )
        self._next_train = state["next_train"]
        self._training = set(state["training"])
        self._remaining = state["remaining"]
        self._constants = state["constants"]
        self._owner = {trial: tuple(owner) for trial, owner in state["owner"].items()}
        self._live = set(state["live"])
        self._turn = state["turn"]
        self._opened = state["opened"]
        self._searchers = {}
        for key, (own, result) in self._opened.items():
            searcher, _, _ = self._opener(key, own, result)  # the same search, seeded: then its saved state
            restore_searcher(searcher, state["searchers"][key])
            self._searchers[key] = searcher


class KeyedScheduler(FIFOScheduler):
    """Detection trials go to their model's scheduler (ASHA); training trials run FIFO to the end."""

    def __init__(self, schedulers: dict[str, TrialScheduler]) -> None:
        super().__init__()
        self._schedulers = schedulers
        self._fifo = FIFOScheduler()

    def _for(self, trial: Any) -> TrialScheduler:
        if trial.config.get(PHASE) != "detect":
            return self._fifo
        return self._schedulers.get(trial_search(trial.config), self._fifo)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._for(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._for(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._for(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._for(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._for(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"ASHA per model over {sorted(self._schedulers)}; training FIFO"
