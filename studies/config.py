"""The sweep's configuration: one typed `SweepConfig`, read from YAML <- `--set key=value` <- flags.

The config embeds the library's own settings instead of restating them: `train` is an
`i3ad.train.TrainConfig`, `detect` a `DetectionSettings`, `projection` and `gan` `ProjectionSettings`, so every
default and every check lives once, in i3ad. What only the sweep needs (the search, resources, Ray,
MLflow) is declared here, with its defaults.

pydantic validates the whole tree, the embedded dataclasses included (their `__post_init__` checks run;
`ConfigError` is a `ValueError`, so its message arrives with the key path). pydantic is already installed
with MLflow and Ray, rejects unknown keys, and reports *where* a wrong value sits (`train.width`), which
is most of what a config loader is for; the rest (YAML, deep merge, `--set a.b=value`) is a few lines.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from ray.tune.utils import flatten_dict

from i3ad.calibrate import (
    CALIBRATION_IMAGES,
    CALIBRATION_ITERATIONS,
    CALIBRATION_MAX_IMAGES,
    CALIBRATION_TOLERANCE,
    CALIBRATION_TOLERANCE_RANGE,
)
from i3ad.checks import check_types
from i3ad.config_file import read_yaml
from i3ad.decision import DecisionRule
from i3ad.distributed import DDP_METHODS
from i3ad.errors import ConfigError
from i3ad.scorers import (
    ANOGAN_SEARCH,
    LD_WEIGHT,
    METHOD_NAMES,
    DetectionSettings,
    ProjectionSettings,
    base_method,
)
from i3ad.scorers.iterative import MAX_ITERATIONS
from i3ad.train import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
KINDS = ("texture", "object", "unknown")
# `val/image_auroc_best`: the better of the two maps' image AUROCs, so the map is chosen on val like every setting.
Objective = Literal[
    "val/image_auroc_ssim", "val/image_auroc_l2", "val/image_auroc_best", "val/pixel_auroc_ssim", "val/pixel_auroc_l2"
]
# Keys that moved when the config became typed: an old config or command gets told where they went.
MOVED = {
    "detect.max_iterations": "detect.iterations",
    "detect.num_samples": "search.num_samples",
    "detect.objective": "search.objective",
    "detect.seconds_objective": "search.seconds_objective",
    "detect.threshold_range": "search.threshold_range",
    "detect.threshold_step": "search.threshold_step",
    "detect.patch_sizes": "search.patch_sizes",
    "detect.paper_point": "detect.patch_size (the first point is `detect` itself, U from calibration)",
    "detect.grace_period": "search.grace_period",
    "detect.reduction_factor": "search.reduction_factor",
    "detect.projection": "projection (ProjectionSettings) and search.lam_range / search.step_range",
}


class _Section(BaseModel):
    # strict: YAML's "20", "no" or 2.5 is not coerced into an int or bool; finite: no .nan / .inf anywhere.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# A [low, high] pair: YAML writes it as a list, which strict mode would reject for a tuple; the numbers stay strict.
Range = Annotated[tuple[Annotated[float, Strict()], Annotated[float, Strict()]], Field(strict=False)]


class SyntheticData(_Section):
    """Size and counts of the built-in synthetic set (`i3ad make-data`)."""

    size: int = Field(64, ge=8)
    n_train: int = Field(40, ge=1)
    n_test_good: int = Field(12, ge=1)
    n_test_per_defect: int = Field(6, ge=1)
    seed: int = 0
    # Which defect kinds are written (`make-data --defects`): "structural" breaks the pattern and keeps its local
    # colour and contrast (statistics cannot find it, a model of the texture can); "colour" are intensity and
    # colour outliers (holes, stains), which a no-learning detector already finds; "all" is both.
    defects: Literal["structural", "colour", "all"] = "structural"


class DataConfig(_Section):
    """Where the images come from and how each category's test images are split into val / test."""

    root: str | None = None  # MVTec-layout root; None = the synthetic set under <workdir>/data/synthetic
    synthetic: SyntheticData = SyntheticData()
    val_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    split_seed: int = 0
    # kinds of a user's own categories ({brick: texture}), over the data root's kinds.yaml (studies.data.user_kinds);
    # per-kind settings (`train_by_kind`) and tracking.compare's texture / object groups follow them
    kinds: dict[StrictStr, Literal["texture", "object"]] = {}


class CalibrationConfig(_Section):
    """The paper's rule for U after training (`i3ad.calibrate`): mean |x0 - x_N| on normals, in grey levels."""

    images: int = Field(CALIBRATION_IMAGES, ge=1, le=CALIBRATION_MAX_IMAGES)
    iterations: int = Field(CALIBRATION_ITERATIONS, ge=1, le=MAX_ITERATIONS)
    tolerance: float = Field(  # 0.5: no non-empty mask meets less
        CALIBRATION_TOLERANCE, ge=CALIBRATION_TOLERANCE_RANGE[0], le=CALIBRATION_TOLERANCE_RANGE[1]
    )


class SearchConfig(_Section):
    """Phase B: what Optuna proposes per trained model and how ASHA stops trials on the iteration axis.

    Every detection trial runs to `detect.iterations` (the projection's to `projection.iterations`) and
    reports after each iteration; the N to report is read off the validation curve.
    """

    objective: Objective = "val/image_auroc_ssim"
    seconds_objective: bool = False  # also minimise val/seconds_per_image (multi-objective TPE)
    num_samples: int = Field(10, ge=1)  # detection trials per (model, method)
    threshold_range: Range = (0.1, 0.6)
    threshold_step: float | None = Field(None, gt=0.0)  # e.g. 0.1: U on a grid instead of continuous
    patch_sizes: list[int] = Field([2, 4, 6, 8, 12, 16], min_length=1)
    stop_eps_values: list[float] | None = None  # the stop rule's eps, searched among these; None = detect.stop_eps
    lam_range: Range = (0.01, 3.0)  # the projection's lam (log scale)
    step_range: Range = (0.005, 0.5)  # the projection's step (log scale)
    # the `+ld` methods' weight of L_D in L2 + L_D (log scale); AnoGAN's search uses lam_range / step_range
    ld_weight_range: Range = (0.01, 100.0)
    grace_period: int = Field(2, ge=1)
    reduction_factor: int = Field(3, ge=2)

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        low, high = self.threshold_range
        if not 0.0 < low < high <= 1.0:
            raise ConfigError(
                f"search.threshold_range must be [low, high] with 0 < low < high <= 1, got [{low}, {high}]"
            )
        if self.threshold_step is not None and self.threshold_step > high - low + 1e-9:
            raise ConfigError(f"search.threshold_step {self.threshold_step} is wider than search.threshold_range")
        if any(size < 1 for size in self.patch_sizes):
            raise ConfigError(f"search.patch_sizes must be positive pixel counts, got {self.patch_sizes}")
        if self.stop_eps_values is not None and (not self.stop_eps_values or min(self.stop_eps_values) < 0):
            raise ConfigError(
                f"search.stop_eps_values must be a non-empty list of values >= 0, got {self.stop_eps_values}"
            )
        for name in ("lam_range", "step_range", "ld_weight_range"):
            low, high = getattr(self, name)
            if not 0.0 < low < high:
                raise ConfigError(
                    f"search.{name} must be [low, high] with 0 < low < high (log scale), got [{low}, {high}]"
                )
        return self


class ResourcesConfig(_Section):
    """What one trial gets; `max_concurrent` None = as many as the cluster fits.

    `workers_per_trial` > 1 (or `gpus_per_trial` > 1, one GPU per worker) trains each i3ad / ae-l2 / ae-ssim
    model data-parallel on that many Ray Train workers, each with `cpus_per_trial` CPUs (and one GPU when
    `gpus_per_trial` > 0); `train.batch_size` is then the global batch, split evenly over the workers
    (i3ad/distributed.py). Detection trials and the other methods stay single-process, with at most one GPU.
    """

    cpus_per_trial: int = Field(1, ge=1)
    gpus_per_trial: float = Field(0.0, ge=0.0)
    workers_per_trial: int = Field(1, ge=1, le=1024)
    max_concurrent: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check_workers(self) -> ResourcesConfig:
        gpus = self.gpus_per_trial
        if gpus > 1 and gpus != int(gpus):
            raise ConfigError(
                f"resources.gpus_per_trial {gpus:g} > 1 means that many data-parallel workers (one GPU each); "
                "give a whole number, or a fraction <= 1 to share a GPU"
            )
        if self.workers_per_trial > 1 and gpus > 0 and gpus != self.workers_per_trial:
            raise ConfigError(
                f"resources.workers_per_trial {self.workers_per_trial} with gpus_per_trial {gpus:g}: each worker "
                f"takes one whole GPU; set gpus_per_trial to {self.workers_per_trial}, or 0 to train on CPUs"
            )
        return self

    @property
    def workers(self) -> int:
        """Data-parallel workers per training trial: `workers_per_trial`, or `gpus_per_trial` when that is > 1."""
        return max(self.workers_per_trial, int(self.gpus_per_trial) if self.gpus_per_trial > 1 else 1)

    @property
    def gpus_per_process(self) -> float:
        """GPUs of one single-process trial (detection, final evaluation, one-worker training)."""
        return min(self.gpus_per_trial, 1.0)


class RayConfig(_Section):
    """Where Ray runs and keeps the experiment."""

    address: str | None = None  # None = start a local Ray instance
    storage_path: str | None = None  # None = <sweep folder>/ray_results; or s3://... / an NFS path
    max_failures: int = Field(1, ge=0)
    checkpoints_to_keep: int = Field(2, ge=1)
    object_store_mb: int | None = Field(None, ge=64)  # local Ray only


class TrackingConfig(_Section):
    """The MLflow store; None = sqlite:///<workdir>/mlflow.db and the study name as experiment."""

    uri: str | None = None
    experiment: str | None = None


class SweepConfig(_Section):
    """A whole study. `train`, `detect` and `projection` are the library's own settings types.

    Not strict as a whole: strict mode would want dataclass instances for those three; their raw values are
    type-checked by `_typed` (i3ad.checks.check_types) before pydantic converts them, and by their own
    `__post_init__` after. This model's own scalars are declared strict one by one.
    """

    model_config = ConfigDict(extra="forbid", strict=False, allow_inf_nan=False)

    study: StrictStr = "quick"
    seed: StrictInt = Field(0, ge=0, le=2**32 - 1)  # training, the Optuna samplers; the split: `data.split_seed`
    # Train and search every (category, method) once per seed: seed, seed + 1, ... (separate Tune trials,
    # in parallel where resources allow); the summary and compare report the mean and spread over seeds.
    repeats: StrictInt = Field(1, ge=1, le=20)
    workdir: StrictStr = "runs/sweep"
    categories: list[StrictStr] = Field(["carpet", "screw"], min_length=1)
    methods: list[StrictStr] = Field(["i3ad"], min_length=1)
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()  # for every category; `seed` and `device` come from the sweep
    train_by_kind: dict[Literal["texture", "object", "unknown"], dict[str, Any]] = {}  # over `train`, per kind
    train_grid: dict[str, list[Any]] = {}  # TrainConfig field -> values: one training trial per combination
    calibration: CalibrationConfig = CalibrationConfig()
    # The base of every detection: N = `iterations` for every trial, `patch_size` the paper's cell evaluated
    # first, `threshold` only for a model without a calibrated U.
    detect: DetectionSettings = DetectionSettings()
    projection: ProjectionSettings = ProjectionSettings()  # the `+proj` baselines' base; Dehaene's setting first
    gan: ProjectionSettings = ANOGAN_SEARCH  # AnoGAN's latent search (Adam steps, lr, L_D weight); searched from here
    search: SearchConfig = SearchConfig()
    # how each chosen detector's operating threshold is set on val normals (i3ad.decision; default 5% of them above)
    decision: DecisionRule = DecisionRule()
    resources: ResourcesConfig = ResourcesConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("train", "detect", "projection", "decision", mode="before")
    @classmethod
    def _typed(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, dict):
            check_types(_LIBRARY_TYPES[info.field_name], value, section=info.field_name)
        return value

    @field_validator("train_by_kind", "train_grid", mode="before")
    @classmethod
    def _typed_train(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, dict):
            for key, overrides in value.items():
                if info.field_name == "train_grid" and isinstance(overrides, list):
                    for item in overrides:
                        check_types(TrainConfig, {key: item}, section="train_grid")
                elif isinstance(overrides, dict):
                    check_types(TrainConfig, overrides, section=f"train_by_kind.{key}")
        return value

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if not all(isinstance(c, str) and c for c in self.categories):
            raise ConfigError(f"categories must be non-empty names, got {self.categories}")
        unknown = [m for m in self.methods if m not in METHOD_NAMES]
        if unknown:
            raise ConfigError(f"methods has unknown method(s) {unknown}; known: {', '.join(METHOD_NAMES)}")
        if self.detect.patch_size not in self.search.patch_sizes:
            raise ConfigError(
                f"detect.patch_size {self.detect.patch_size} (the first point searched) is not in "
                f"search.patch_sizes {self.search.patch_sizes}"
            )
        for section in ("projection", "gan"):
            settings = getattr(self, section)
            if settings.iterations % settings.every:
                raise ConfigError(
                    f"{section}.iterations ({settings.iterations}) must be a multiple of "
                    f"{section}.every ({settings.every})"
                )
            for name, value in (("lam", settings.lam), ("step", settings.step)):
                low, high = getattr(self.search, f"{name}_range")
                if not low <= value <= high:
                    raise ConfigError(
                        f"{section}.{name} {value} (the first point searched) is outside search.{name}_range"
                    )
        low, high = self.search.ld_weight_range
        if not low <= LD_WEIGHT.lam <= high:
            raise ConfigError(
                f"search.ld_weight_range {[low, high]} must hold the L_D weight tried first ({LD_WEIGHT.lam})"
            )
        for key, values in self.train_grid.items():
            if not values:
                raise ConfigError(f"train_grid.{key} must be a non-empty list of values")
        for kind in KINDS:
            for combo in self.train_combinations():
                trained = self.train_for(kind, combo)
                workers = self.resources.workers
                if workers > 1 and trained.batch_size % workers and any(uses_workers(m) for m in self.methods):
                    raise ConfigError(
                        f"train.batch_size {trained.batch_size} (for {kind} categories) is the global batch of "
                        f"{workers} data-parallel workers (resources.workers_per_trial / gpus_per_trial) and must "
                        f"divide evenly; choose a multiple of {workers}"
                    )
        return self

    def train_combinations(self) -> list[dict[str, Any]]:
        """All combinations of `train_grid` ({} -> [{}])."""
        keys = list(self.train_grid)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*self.train_grid.values())]

    @property
    def seeds(self) -> list[int]:
        """The seed of each repeat: `seed`, `seed + 1`, ... (`repeats` of them)."""
        return [self.seed + repeat for repeat in range(self.repeats)]

    def train_for(self, kind: str, combo: dict[str, Any] | None = None, seed: int | None = None) -> TrainConfig:
        """The training settings of a category of `kind` (and a `train_grid` combination), seeded by `seed`."""
        overrides = {**self.train_by_kind.get(kind, {}), **(combo or {})}
        if "seed" in overrides:
            raise ConfigError("set the sweep's top-level `seed` (and `repeats`), not a training seed per kind or grid")
        values = {**dataclasses.asdict(self.train), **overrides, "seed": self.seed if seed is None else seed}
        try:
            return _TRAIN.validate_python(values)
        except ValidationError as exc:
            where = f"train_by_kind.{kind}" + (f" with train_grid {combo}" if combo else "")
            raise ConfigError(f"config key {where!r} (applied over 'train'): {_describe(exc)}") from exc

    def dump(self) -> str:
        """The config as YAML (what `load` reads back)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def flat(self, delimiter: str = ".") -> dict[str, Any]:
        """`{"detect.threshold": 0.3, ...}`, lists kept as values (MLflow params, resume checks)."""
        return flatten_dict(self.model_dump(mode="json"), delimiter=delimiter)


_TRAIN = TypeAdapter(TrainConfig)
_LIBRARY_TYPES = {
    "train": TrainConfig,
    "detect": DetectionSettings,
    "projection": ProjectionSettings,
    "decision": DecisionRule,
}


def uses_workers(method: str) -> bool:
    """True when `method`'s model trains data-parallel under `resources.workers_per_trial` > 1."""
    return base_method(method) in DDP_METHODS


def config_path(name_or_path: str) -> Path:
    """`quick` / `mvtec` / ... name a file in studies/configs; anything else is a path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    named = CONFIG_DIR / f"{name_or_path}.yaml"
    if named.exists():
        return named
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"--config {name_or_path!r} is neither a file nor a built-in config ({known})")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def nested(dotted: str, value: Any) -> dict[str, Any]:
    """`("a.b.c", 1)` -> `{"a": {"b": {"c": 1}}}`."""
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def parse_override(text: str) -> dict[str, Any]:
    """`search.num_samples=4` -> {"search": {"num_samples": 4}}; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r} must look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc})") from exc
    return nested(key.strip(), value)


def load(file: str | Path | None = "quick", overrides: list[dict[str, Any]] | None = None) -> SweepConfig:
    """The config file (a built-in name or a path) <- each override in order, validated."""
    values: dict[str, Any] = read_yaml(config_path(str(file))) if file is not None else {}
    for override in overrides or []:
        values = merge(values, override)
    return validate(values)


def validate(values: dict[str, Any]) -> SweepConfig:
    """A `SweepConfig` from plain values; ConfigError naming the first wrong key."""
    try:
        return SweepConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    """The first error as `config key 'a.b': what is wrong`, with a hint for keys that moved."""
    error = exc.errors()[0]
    loc = tuple(str(part) for part in error["loc"])
    key = ".".join(loc)
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        moved = MOVED.get(key)
        hint = f"; it is now {moved}" if moved else f"; known keys there: {', '.join(_known(loc[:-1]))}"
        return f"unknown config key {key!r}{hint}"
    if error["type"] == "missing_keyword_argument":
        return f"config key {key!r}: {message}"
    value = error.get("input")
    shown = (
        "" if isinstance(value, dict) or error["type"] in ("value_error", "assertion_error") else f" (got {value!r})"
    )
    return f"config key {key!r}: {message}{shown}" if key else message


def _known(loc: tuple[str, ...]) -> list[str]:
    """The keys allowed under a config location (for unknown-key messages)."""
    node: Any = SweepConfig
    for part in loc:
        if isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            node = node.model_fields[part].annotation
        elif dataclasses.is_dataclass(node):
            node = next((f.type for f in dataclasses.fields(node) if f.name == part), None)
        else:
            return []
    if isinstance(node, type) and issubclass(node, BaseModel):
        return sorted(node.model_fields)
    if dataclasses.is_dataclass(node):
        return sorted(f.name for f in dataclasses.fields(node))
    return []


def differences(a: SweepConfig, b: SweepConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    fa, fb = a.flat(), b.flat()
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
