"""Each detection method's test-time search space, and how a trial's values become settings.

The method names and what each one trains and scores with come from `i3ad.scorers` (the one place they
are listed); this module adds what only a sweep needs: which settings Optuna proposes, the point it
tries first, and how far a trial runs. Optuna proposes only settings that change the detection loop
itself (U, the checkerboard cell, the stop rule's eps; the projection's and AnoGAN's lam and step; the
L_D weight of the `+ld` scores). Every trial runs
to the method's full length and reports after each iteration, so ASHA can stop weak ones and the N to
report is read off the validation curve: iteration n does not depend on how many follow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from i3ad.scorers import (
    LD_WEIGHT,
    METHODS,
    DetectionSettings,
    FeatureScorer,
    IterativeInpainter,
    LatentSearchScorer,
    ProjectionScorer,
    ProjectionSettings,
)

if TYPE_CHECKING:
    from studies.config import SweepConfig


@dataclass(frozen=True)
class SearchSpace:
    """What phase B searches for one method. No distributions = one evaluation with `fixed` settings."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)  # evaluated first (the paper's setting)
    fixed: dict[str, Any] = field(default_factory=dict)  # settings every trial of the search carries
    max_t: int = 0  # the last iteration a trial reports (ASHA's horizon)

    @property
    def searched(self) -> bool:
        return bool(self.distributions)


def snap(value: float, low: float, high: float, step: float | None) -> float:
    """Clamp `value` into [low, high] and onto the grid low + k * step when a step is given."""
    value = min(max(value, low), high)
    if step:
        value = low + round((value - low) / step) * step
        value = min(value, high)
    return round(value, 10)


def i3ad_space(config: SweepConfig, threshold: float | None) -> SearchSpace:
    """U, checkerboard cell size (and eps when listed); the paper's setting (calibrated U, `detect`) first."""
    search, base = config.search, config.detect
    low, high = search.threshold_range
    distributions: dict[str, BaseDistribution] = {
        "threshold": FloatDistribution(low, high, step=search.threshold_step),
        "patch_size": CategoricalDistribution(list(search.patch_sizes)),
    }
    point = {
        "threshold": snap(base.threshold if threshold is None else threshold, low, high, search.threshold_step),
        "patch_size": base.patch_size,
    }
    if search.stop_eps_values is not None:
        distributions["stop_eps"] = CategoricalDistribution(list(search.stop_eps_values))
        point["stop_eps"] = min(search.stop_eps_values, key=lambda eps: abs(eps - base.stop_eps))
    return SearchSpace(distributions, [point], fixed={"iterations": base.iterations}, max_t=base.iterations)


def _lam_step_space(base: ProjectionSettings, config: SweepConfig) -> SearchSpace:
    """Lam and step on a log scale, `base`'s point first; every trial runs `base.iterations`."""
    search = config.search
    distributions: dict[str, BaseDistribution] = {
        "lam": FloatDistribution(*search.lam_range, log=True),
        "step": FloatDistribution(*search.step_range, log=True),
    }
    fixed = {"iterations": base.iterations, "every": base.every}
    return SearchSpace(distributions, [{"lam": base.lam, "step": base.step}], fixed=fixed, max_t=base.iterations)


def projection_space(config: SweepConfig, threshold: float | None) -> SearchSpace:
    """The projection's lam and step, Dehaene's setting (`projection`) first; every trial runs T iterations."""
    return _lam_step_space(config.projection, config)


def anogan_space(config: SweepConfig, threshold: float | None) -> SearchSpace:
    """AnoGAN's L_D weight and Adam step size, `gan` first; every trial runs its `gan.iterations`."""
    return _lam_step_space(config.gan, config)


def ld_space(config: SweepConfig, threshold: float | None) -> SearchSpace:
    """The weight of L_D in the L2 + L_D score (log scale), 1 first; one pass per trial."""
    distributions: dict[str, BaseDistribution] = {"lam": FloatDistribution(*config.search.ld_weight_range, log=True)}
    return SearchSpace(distributions, [{"lam": LD_WEIGHT.lam}], fixed={"iterations": 0})


def no_search(config: SweepConfig, threshold: float | None) -> SearchSpace:
    """Plain autoencoders, f-AnoGAN and AEGAN have no test-time setting to search: one evaluation trial."""
    return SearchSpace(fixed={"iterations": 0})


def is_projection(method: str) -> bool:
    """Whether a method has `ProjectionSettings` (the `+proj` baselines, AnoGAN's search, the `+ld` weight)."""
    return bool(METHODS[method].projection_keys)


# by scorer; others: no search
SPACES = {
    IterativeInpainter: i3ad_space,
    ProjectionScorer: projection_space,
    LatentSearchScorer: anogan_space,
    FeatureScorer: ld_space,
}
ITERATIVE = (IterativeInpainter, ProjectionScorer, LatentSearchScorer)  # report once per iteration


def search_space(method: str, config: SweepConfig, threshold: float | None = None) -> SearchSpace:
    """The search space of `method` under `config` (`threshold`: the model's calibrated U, if any)."""
    return SPACES.get(METHODS[method].scorer, no_search)(config, threshold)


_DETECTION_KEYS = {f.name for f in dataclasses.fields(DetectionSettings)}
_PROJECTION_KEYS = {f.name for f in dataclasses.fields(ProjectionSettings)}
SETTING_KEYS = _DETECTION_KEYS | _PROJECTION_KEYS  # what a trial config may carry besides its identifiers


def settings_for(
    method: str, detect: DetectionSettings, projection: ProjectionSettings, values: dict[str, Any]
) -> tuple[DetectionSettings, ProjectionSettings]:
    """The base settings with a trial's (or a choice's) values applied: `replace(base, **values)`.

    A method's projection keys (`Method.projection_keys`: a projection's or AnoGAN's T as `iterations`,
    lam, step, every; the `+ld` weight as lam) go to its `ProjectionSettings`; every other known key goes
    to `DetectionSettings`.
    """
    keys = METHODS[method].projection_keys
    to_projection = {k: v for k, v in values.items() if k in keys}
    to_detection = {k: v for k, v in values.items() if k in _DETECTION_KEYS and k not in to_projection}
    return dataclasses.replace(detect, **to_detection), dataclasses.replace(projection, **to_projection)


def iterative(method: str) -> bool:
    """Whether the method reports once per iteration (ASHA stops it on that axis)."""
    return METHODS[method].scorer in ITERATIVE
