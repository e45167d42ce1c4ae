"""Detection methods the sweep knows, and each one's test-time search space.

`method` is a dimension of the study: phase A trains one model per (category, method) with the same
budget; phase B searches that method's own test-time settings. To add a method, add a `MethodSpec`
to `METHODS` (e.g. `ae-l2+proj`): which training method builds its model, whether its threshold is
calibrated after training, how to score images, and which settings to search. Methods that share a
`train_method` (`ae-l2`, `ae-l2+proj`) share one trained model per category: phase A trains it once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from i3ad import scorers
from i3ad.scorers import (
    METHOD_NAMES,
    DetectionSettings,
    IterativeInpainter,
    LoadedModel,
    ProjectionScorer,
    ProjectionSettings,
    Scorer,
    make_scorer,
)

DEFAULT_THRESHOLD = 0.3  # DetectionSettings' default, used when a model has no calibrated U


@dataclass(frozen=True)
class SearchSpace:
    """What phase B searches for one method. No distributions = one evaluation with `fixed` settings."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)  # evaluated first (the paper's setting)
    fixed: dict[str, Any] = field(default_factory=dict)  # detection settings every trial uses
    max_t: int | None = None  # ASHA horizon on the iteration axis; None = detect.max_iterations

    @property
    def searched(self) -> bool:
        return bool(self.distributions)


SpaceBuilder = Callable[[dict[str, Any], "float | None"], SearchSpace]
# (loaded model, detection settings, the trial's params or the chosen settings) -> scorer
ScorerBuilder = Callable[[LoadedModel, DetectionSettings, dict[str, Any]], Scorer]


def default_scorer(model: LoadedModel, settings: DetectionSettings, params: dict[str, Any]) -> Scorer:
    """The model's own scorer (I3AD inpainting, AE reconstruction); everything it needs is in `settings`."""
    return make_scorer(model, settings)


@dataclass(frozen=True)
class MethodSpec:
    """How the sweep trains, calibrates, scores and searches one method."""

    train_method: str  # TrainConfig.method that builds the model
    space: SpaceBuilder  # (the config's `detect` mapping, calibrated U or None) -> search space
    calibrate: bool = False  # choose U by the paper's rule on training normals after training
    iterative: bool = False  # reports one result per detection iteration (ASHA stops on that axis)
    scorer: ScorerBuilder = default_scorer
    params: tuple[str, ...] = ()  # searched keys besides threshold / patch_size / iterations, kept in the choice


def snap(value: float, low: float, high: float, step: float | None) -> float:
    """Clamp `value` into [low, high] and onto the grid low + k * step when a step is given."""
    value = min(max(value, low), high)
    if step:
        value = low + round((value - low) / step) * step
        value = min(value, high)
    return round(value, 10)


def i3ad_space(detect: dict[str, Any], threshold: float | None) -> SearchSpace:
    """U, checkerboard cell size and N; the paper's setting (calibrated U, 6 px, 30) goes first."""
    low, high = detect["threshold_range"]
    step = detect["threshold_step"]
    n_max = detect["max_iterations"]
    distributions: dict[str, BaseDistribution] = {
        "threshold": FloatDistribution(low, high, step=step),
        "patch_size": CategoricalDistribution(list(detect["patch_sizes"])),
        "iterations": IntDistribution(1, n_max),
    }
    paper = detect["paper_point"]
    point = {
        "threshold": snap(DEFAULT_THRESHOLD if threshold is None else threshold, low, high, step),
        "patch_size": paper["patch_size"],
        "iterations": min(paper["iterations"], n_max),
    }
    return SearchSpace(distributions, [point])


def no_search(detect: dict[str, Any], threshold: float | None) -> SearchSpace:
    """Plain autoencoders have no test-time setting to search: one evaluation trial."""
    return SearchSpace(fixed={"iterations": 0})


def projection_space(detect: dict[str, Any], threshold: float | None) -> SearchSpace:
    """T (a multiple of `every`), lam and step (log scale); Dehaene's setting (lam 0.1, step 0.05, T_max) first."""
    proj = detect["projection"]
    every, t_max = proj["every"], proj["max_iterations"]
    distributions: dict[str, BaseDistribution] = {
        "iterations": IntDistribution(every, t_max, step=every),
        "lam": FloatDistribution(*proj["lam_range"], log=True),
        "step": FloatDistribution(*proj["step_range"], log=True),
    }
    point = {"iterations": t_max, **proj["paper_point"]}
    return SearchSpace(distributions, [point], fixed={"every": every}, max_t=t_max)


def projection_scorer(method: str) -> ScorerBuilder:
    """Scorer builder for "ae-l2+proj" / "ae-ssim+proj": the projection with the params' T, lam, step, every."""

    def build(model: LoadedModel, settings: DetectionSettings, params: dict[str, Any]) -> Scorer:
        keys = ("iterations", "lam", "step", "every")
        return make_scorer(
            model, settings, method, ProjectionSettings.from_dict({k: params[k] for k in keys if k in params})
        )

    return build


def _projection(method: str, train_method: str) -> MethodSpec:
    return MethodSpec(
        train_method, projection_space, iterative=True, scorer=projection_scorer(method), params=("lam", "step")
    )


def _spec(method: str) -> MethodSpec:
    """The sweep's spec of a library method (i3ad.scorers.registry), by the family of its scorer."""
    train_method, scorer = scorers.METHODS[method].train_method, scorers.METHODS[method].scorer
    if scorer is IterativeInpainter:
        return MethodSpec(train_method, i3ad_space, calibrate=True, iterative=True)
    if scorer is ProjectionScorer:
        return _projection(method, train_method)
    return MethodSpec(train_method, no_search)


METHODS: dict[str, MethodSpec] = {method: _spec(method) for method in METHOD_NAMES}
