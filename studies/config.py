"""The sweep's configuration: defaults <- YAML file <- command-line overrides, validated key by key.

A config is a plain nested dict (what YAML gives). `DEFAULTS` is the schema: every key a config may
hold, with its default; `NULLABLE` gives the allowed types of keys whose default is `None`, and
`FREE_FORM` names mappings whose own keys are checked elsewhere (training settings by `TrainConfig`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from i3ad.config_file import read_yaml
from i3ad.errors import ConfigError
from i3ad.scorers import COMPILE_BACKENDS
from i3ad.train import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

DEFAULTS: dict[str, Any] = {
    "study": "quick",
    "seed": 0,
    "workdir": "runs/sweep",
    "categories": ["carpet", "screw"],
    "methods": ["i3ad"],
    "data": {
        "root": None,  # MVTec-layout root; None = the synthetic set under <workdir>/data/synthetic
        "synthetic": {"size": 64, "n_train": 40, "n_test_good": 12, "n_test_per_defect": 6, "seed": 0},
        "val_fraction": 0.5,
        "split_seed": 0,
    },
    "train": {},  # TrainConfig fields for every category
    "train_by_kind": {"texture": {}, "object": {}, "unknown": {}},  # per category kind, over `train`
    "train_grid": {},  # TrainConfig field -> list of values: one training trial per combination
    # tolerance: mean |x0 - x_N| on normal training images, in grey levels (0..255); the paper's "order of 10"
    "calibration": {"images": 8, "iterations": 5, "tolerance": 10.0},
    "detect": {
        "objective": "val/image_auroc_ssim",
        "seconds_objective": False,  # also minimise val/seconds_per_image (multi-objective TPE)
        "num_samples": 10,  # detection trials per (category, method)
        "max_iterations": 30,  # N_max
        "threshold_range": [0.1, 0.6],
        "threshold_step": None,  # e.g. 0.1: search U on a grid instead of continuously
        "patch_sizes": [2, 4, 6, 8, 12, 16],
        "paper_point": {"patch_size": 6, "iterations": 30},  # U comes from calibration
        "grace_period": 2,
        "reduction_factor": 3,
        "stop_eps": 0.01,
        "score": "max",
        "batch_size": 32,
        "compile": None,  # "inductor": torch.compile the generator in each detection worker (long studies, GPUs)
        # The `+proj` baselines (Dehaene et al. 2020): T searched in steps of `every` up to `max_iterations`,
        # lam and step on a log scale; Dehaene's setting first.
        "projection": {
            "max_iterations": 50,  # T_max, also the ASHA horizon of the projection's searches
            "every": 5,  # iterations between two evaluated maps (ASHA and the choice see these)
            "lam_range": [0.01, 3.0],
            "step_range": [0.005, 0.5],
            "paper_point": {"lam": 0.1, "step": 0.05},
        },
    },
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0.0, "max_concurrent": None},
    "ray": {
        "address": None,  # None = start a local Ray instance
        "storage_path": None,  # None = <sweep folder>/ray_results; or s3://... / an NFS path
        "max_failures": 1,
        "checkpoints_to_keep": 2,
        "object_store_mb": None,  # local Ray only
    },
    "tracking": {"uri": None, "experiment": None},  # None = sqlite:///<workdir>/mlflow.db, the study name
}

NULLABLE: dict[str, tuple[type, ...]] = {
    "data.root": (str,),
    "detect.threshold_step": (float, int),
    "detect.compile": (str,),
    "resources.max_concurrent": (int,),
    "ray.address": (str,),
    "ray.storage_path": (str,),
    "ray.object_store_mb": (int,),
    "tracking.uri": (str,),
    "tracking.experiment": (str,),
}
FREE_FORM = {"train", "train_by_kind.texture", "train_by_kind.object", "train_by_kind.unknown", "train_grid"}
# `val/image_auroc_best`: the better of the two maps' image AUROCs, so the map is chosen on val like every setting.
OBJECTIVES = (
    "val/image_auroc_ssim",
    "val/image_auroc_l2",
    "val/image_auroc_best",
    "val/pixel_auroc_ssim",
    "val/pixel_auroc_l2",
)


def config_path(name_or_path: str) -> Path:
    """`quick` / `mvtec` name a file in studies/configs; anything else is a path."""
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


def parse_override(text: str) -> dict[str, Any]:
    """`detect.num_samples=4` -> {"detect": {"num_samples": 4}}; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r} must look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc})") from exc
    nested: dict[str, Any] = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def set_key(config: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating mappings on the way."""
    node = config
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def get_key(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def resolve(file: str | Path | None = "quick", overrides: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Defaults <- the config file <- each override in order; then validate."""
    config = copy.deepcopy(DEFAULTS)
    if file is not None:
        config = merge(config, read_yaml(config_path(str(file))))
    for override in overrides or []:
        config = merge(config, override)
    validate(config)
    return config


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def _check_types(value: Any, default: Any, path: str) -> None:
    if path in FREE_FORM:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
        return
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
        unknown = sorted(set(value) - set(default))
        if unknown:
            where = f"under {path!r}" if path else "at the top level"
            raise ConfigError(f"unknown config key(s) {unknown} {where}; known: {sorted(default)}")
        for key, sub in value.items():
            _check_types(sub, default[key], f"{path}.{key}" if path else key)
        return
    if value is None:
        if path in NULLABLE:
            return
        raise ConfigError(f"config key {path!r} must not be empty (null)")
    if path in NULLABLE:
        types = NULLABLE[path]
    elif isinstance(default, bool):
        types = (bool,)
    elif isinstance(default, float):
        types = (float, int)
    else:
        types = (type(default),)
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"config key {path!r} must be {_type_name(types)}, got {value!r}")
    if not isinstance(value, types):
        raise ConfigError(f"config key {path!r} must be {_type_name(types)}, got {value!r} ({type(value).__name__})")


def validate(config: dict[str, Any]) -> None:
    """Raise ConfigError naming the first key whose value is wrong."""
    _check_types(config, DEFAULTS, "")
    from studies.methods import METHODS  # local import: methods imports detection code

    if not config["categories"] or not all(isinstance(c, str) and c for c in config["categories"]):
        raise ConfigError(f"config key 'categories' must be a non-empty list of names, got {config['categories']!r}")
    unknown = [m for m in config["methods"] if m not in METHODS]
    if not config["methods"] or unknown:
        raise ConfigError(
            f"config key 'methods' has unknown method(s) {unknown or '(none given)'}; known: {sorted(METHODS)}"
        )
    data = config["data"]
    if not 0.0 < data["val_fraction"] < 1.0:
        raise ConfigError(
            f"config key 'data.val_fraction' must be strictly between 0 and 1, got {data['val_fraction']}"
        )
    detect = config["detect"]
    if detect["objective"] not in OBJECTIVES:
        raise ConfigError(f"config key 'detect.objective' must be one of {OBJECTIVES}, got {detect['objective']!r}")
    for key in ("num_samples", "max_iterations", "grace_period", "batch_size"):
        if detect[key] < 1:
            raise ConfigError(f"config key 'detect.{key}' must be >= 1, got {detect[key]}")
    if detect["reduction_factor"] < 2:
        raise ConfigError(f"config key 'detect.reduction_factor' must be >= 2, got {detect['reduction_factor']}")
    low_high = detect["threshold_range"]
    if (
        len(low_high) != 2
        or not all(isinstance(v, (int, float)) for v in low_high)
        or not 0 < low_high[0] < low_high[1] <= 1
    ):
        raise ConfigError(
            f"config key 'detect.threshold_range' must be [low, high] with 0 < low < high <= 1, got {low_high!r}"
        )
    step = detect["threshold_step"]
    if step is not None and not 0 < step < low_high[1] - low_high[0] + 1e-9:
        raise ConfigError(f"config key 'detect.threshold_step' must be positive and within the range, got {step}")
    sizes = detect["patch_sizes"]
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise ConfigError(f"config key 'detect.patch_sizes' must be a list of positive integers, got {sizes!r}")
    paper = detect["paper_point"]
    if set(paper) != {"patch_size", "iterations"}:
        raise ConfigError(
            f"config key 'detect.paper_point' needs exactly patch_size and iterations, got {sorted(paper)}"
        )
    if paper["patch_size"] not in sizes:
        raise ConfigError(
            f"config key 'detect.paper_point.patch_size' {paper['patch_size']} is not in detect.patch_sizes {sizes}"
        )
    validate_projection(detect["projection"])
    if detect["compile"] not in (None, *COMPILE_BACKENDS):
        raise ConfigError(
            f"config key 'detect.compile' must be one of {COMPILE_BACKENDS} or null, got {detect['compile']!r}"
        )
    tolerance = config["calibration"]["tolerance"]
    if not 0.5 <= tolerance <= 255:
        raise ConfigError(
            f"config key 'calibration.tolerance' is in grey levels (0..255) of mean |x0 - x_N| on normal "
            f"images, so {tolerance!r} cannot be met by any non-empty mask; the paper uses 10"
        )
    resources = config["resources"]
    if resources["cpus_per_trial"] < 1:
        raise ConfigError(f"config key 'resources.cpus_per_trial' must be >= 1, got {resources['cpus_per_trial']}")
    if resources["gpus_per_trial"] < 0:
        raise ConfigError(f"config key 'resources.gpus_per_trial' must be >= 0, got {resources['gpus_per_trial']}")
    if resources["max_concurrent"] is not None and resources["max_concurrent"] < 1:
        raise ConfigError(f"config key 'resources.max_concurrent' must be >= 1, got {resources['max_concurrent']}")
    if config["ray"]["max_failures"] < 0:
        raise ConfigError(f"config key 'ray.max_failures' must be >= 0, got {config['ray']['max_failures']}")
    if config["ray"]["checkpoints_to_keep"] < 1:
        raise ConfigError(
            f"config key 'ray.checkpoints_to_keep' must be >= 1, got {config['ray']['checkpoints_to_keep']}"
        )
    for key, values in config["train_grid"].items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"config key 'train_grid.{key}' must be a non-empty list of values, got {values!r}")
    for kind in ("texture", "object", "unknown"):
        for combo in grid_combinations(config["train_grid"]):
            try:
                TrainConfig.from_dict({**config["train"], **config["train_by_kind"][kind], **combo})
            except (ConfigError, TypeError) as exc:
                where = f"'train' + 'train_by_kind.{kind}'" + (f" + train_grid {combo}" if combo else "")
                raise ConfigError(f"training settings {where}: {exc}") from exc


def _check_range(values: Any, key: str) -> tuple[float, float]:
    if (
        not isinstance(values, list)
        or len(values) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        or not 0 < values[0] < values[1]
    ):
        raise ConfigError(
            f"config key 'detect.projection.{key}' must be [low, high] with 0 < low < high, got {values!r}"
        )
    return values[0], values[1]


def validate_projection(proj: dict[str, Any]) -> None:
    """`detect.projection`: T_max a multiple of `every`, positive log-scale ranges, the paper point inside them."""
    for key in ("max_iterations", "every"):
        if proj[key] < 1:
            raise ConfigError(f"config key 'detect.projection.{key}' must be >= 1, got {proj[key]}")
    if proj["max_iterations"] % proj["every"]:
        raise ConfigError(
            f"config key 'detect.projection.max_iterations' ({proj['max_iterations']}) must be a multiple of "
            f"detect.projection.every ({proj['every']})"
        )
    point = proj["paper_point"]
    if set(point) != {"lam", "step"}:
        raise ConfigError(f"config key 'detect.projection.paper_point' needs exactly lam and step, got {sorted(point)}")
    for key in ("lam", "step"):
        low, high = _check_range(proj[f"{key}_range"], f"{key}_range")
        if not low <= point[key] <= high:
            raise ConfigError(
                f"config key 'detect.projection.paper_point.{key}' {point[key]} is outside "
                f"detect.projection.{key}_range {proj[f'{key}_range']}"
            )


def grid_combinations(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """All combinations of a `train_grid` ({} -> [{}])."""
    combos: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        combos = [{**combo, key: value} for combo in combos for value in values]
    return combos


def flatten(config: dict[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dict -> {"a.b": value} (lists kept as values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{sep}{key}" if prefix else key
        if isinstance(value, dict) and value:
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def dump(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)
