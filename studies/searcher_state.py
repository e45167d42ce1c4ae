"""The state of one detection search as JSON (no pickle), and its exact rebuild.

A search is a `ListSearcher` (a fixed list: where it is in it) or Ray's `OptunaSearch` (an in-memory Optuna study).
For Optuna the state is every trial of the study (parameters, distributions, values, intermediate values,
attributes, state), which Tune trial holds which Optuna trial, the points still to evaluate and the random state
of the sampler, so a rebuilt search suggests what the saved one would have suggested next.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import TrialState, create_trial
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch


def _rng_holders(sampler: Any) -> dict[str, Any]:
    """The sampler's random states by path (TPE: its own and its random sampler's)."""
    holders = {}
    for name, owner in (("rng", sampler), ("random_sampler.rng", getattr(sampler, "_random_sampler", None))):
        lazy = getattr(owner, "_rng", None) if owner is not None else None
        if lazy is not None and hasattr(lazy, "rng"):
            holders[name] = lazy
    return holders


def _rng_state(lazy: Any) -> list[Any]:
    name, keys, pos, has_gauss, cached = lazy.rng.get_state(legacy=True)
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _trial_json(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "state": trial.state.name,
        "params": trial.params,
        "distributions": {k: distribution_to_json(d) for k, d in trial.distributions.items()},
        "values": trial.values,
        "intermediate_values": {str(step): value for step, value in trial.intermediate_values.items()},
        "user_attrs": trial.user_attrs,
        "system_attrs": trial.system_attrs,
    }


def searcher_state(searcher: Searcher) -> dict[str, Any]:
    """A JSON-ready state of a ListSearcher or an OptunaSearch."""
    if isinstance(searcher, OptunaSearch):
        study = searcher._ot_study
        return {
            "kind": "optuna",
            "trials": [_trial_json(t) for t in study.get_trials(deepcopy=False)],
            "tune_trials": {tid: trial.number for tid, trial in searcher._ot_trials.items()},
            "points_to_evaluate": list(searcher._points_to_evaluate),
            "completed": sorted(searcher._completed_trials),
            "rng": {name: _rng_state(lazy) for name, lazy in _rng_holders(searcher._sampler).items()},
        }
    if hasattr(searcher, "_configs") and hasattr(searcher, "_next"):  # studies.search.ListSearcher
        return {"kind": "list", "next": searcher._next}
    raise TypeError(f"no JSON state for a {type(searcher).__name__}")


def restore_searcher(searcher: Searcher, state: dict[str, Any]) -> None:
    """Put a freshly opened search (same space, seed and points) into a saved state."""
    if state["kind"] == "list":
        searcher._next = state["next"]
        return
    # A fresh study: the opened one already holds the points to evaluate as enqueued (waiting) trials, which
    # the saved trials include in whatever state they reached.
    opened = searcher._ot_study
    study = optuna.create_study(
        sampler=searcher._sampler, pruner=opened.pruner, study_name=opened.study_name, directions=opened.directions
    )
    searcher._ot_study = study
    for trial in state["trials"]:
        study.add_trial(
            create_trial(
                state=TrialState[trial["state"]],
                params=trial["params"],
                distributions={k: json_to_distribution(d) for k, d in trial["distributions"].items()},
                values=trial["values"],
                intermediate_values={int(step): value for step, value in trial["intermediate_values"].items()},
                user_attrs=trial["user_attrs"],
                system_attrs=trial["system_attrs"],
            )
        )
    storage, study_id = study._storage, study._study_id
    searcher._ot_trials = {
        tid: optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))
        for tid, number in state["tune_trials"].items()
    }
    searcher._points_to_evaluate = list(state["points_to_evaluate"])
    searcher._completed_trials = set(state["completed"])
    for name, lazy in _rng_holders(searcher._sampler).items():
        if name in state["rng"]:
            kind, keys, pos, has_gauss, cached = state["rng"][name]
            lazy.rng.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
