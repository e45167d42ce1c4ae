"""Type, finiteness and range checks for settings, with errors that name the setting.

Settings arrive from YAML, JSON (model.json) and the command line, where a value can look right and be
the wrong type: YAML reads `"no"` as the string "no" (true in Python), `"20"` as a string, `.nan` as a
float. Each settings dataclass checks its fields here in `__post_init__`: ints must be ints (not bools,
not strings, not 2.5), floats must be finite numbers, bools must be bools.

`check_types` checks a dataclass's own fields, or a mapping meant for it before anything converts it
(the sweep's pydantic config calls it on the raw YAML, before pydantic's "20" -> 20 coercion).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from .errors import ConfigError

# Bounds shared by training settings, model folders and detectors (README "Settings and their bounds").
MAX_IMAGE_SIZE = 4096  # pixels per side
MAX_WIDTH = 256  # network base width (48 is DeepFill v2's)


def check_types(cls: type, values: Any, section: str = "") -> None:
    """Each known key of `values` (a mapping, or a dataclass instance of `cls`) has the type `cls` declares.

    Handles the field types settings use: int, float, bool, str and `X | None`; others are not checked here.
    """
    if dataclasses.is_dataclass(values):
        values = {f.name: getattr(values, f.name) for f in dataclasses.fields(values)}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value, kind = values[f.name], hints[f.name]
        options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
        if value is None and type(None) in options:
            continue
        base = next((t for t in options if t is not type(None)), None)
        if base is int:
            check_int(value, f.name, -(2**63), 2**63 - 1, section)
        elif base is float:
            check_float(value, f.name, -math.inf, math.inf, section)
        elif base is bool:
            check_bool(value, f.name, section)
        elif base is str:
            check_str(value, f.name, section)


def _name(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def check_int(value: Any, name: str, low: int, high: int, section: str = "") -> None:
    """`value` is an int (not a bool) with low <= value <= high."""
    key = _name(section, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be a whole number, got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        raise ConfigError(f"{key} must be between {low} and {high}, got {value}")


def check_float(
    value: Any,
    name: str,
    low: float,
    high: float,
    section: str = "",
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """`value` is a finite number (not a bool) in the range [low, high] (ends open where asked)."""
    key = _name(section, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{key} must lie in {interval}, got {value}")


def check_bool(value: Any, name: str, section: str = "") -> None:
    """`value` is True or False (a YAML string such as "no" or "false" is not)."""
    if not isinstance(value, bool):
        hint = " (write true or false without quotes)" if isinstance(value, str) else ""
        raise ConfigError(f"{_name(section, name)} must be true or false, got {value!r}{hint}")


def check_str(value: Any, name: str, section: str = "") -> None:
    """`value` is a string."""
    if not isinstance(value, str):
        raise ConfigError(f"{_name(section, name)} must be a string, got {value!r} ({type(value).__name__})")


def check_mapping(value: Any, what: str) -> dict[str, Any]:
    """`value` is a mapping of setting: value (e.g. a YAML section)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a mapping of setting: value, got {value!r} ({type(value).__name__})")
    return value
