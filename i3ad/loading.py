"""Model folders for inference: load one, and read its effective detection settings.

model.json keeps what calibration *learned* apart from what a user or a search *chose*:
`calibration` holds `i3ad calibrate`'s result (its `threshold` is the calibrated U) and `detection` holds
the chosen settings (written by the sweep's final step). `detection_settings` layers them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checkpoint import WEIGHTS_FILE, load_weights, read_model_info
from .checks import MAX_IMAGE_SIZE, MAX_WIDTH, check_int
from .device import resolve_device
from .errors import CheckpointError, ConfigError
from .scorers import NETWORKS, DetectionSettings, LoadedModel

__all__ = ["LoadedModel", "detection_settings", "load_model"]


def load_model(model_dir: Path, device: str | torch.device = "auto") -> LoadedModel:
    """Load a model folder written by `i3ad train` (safetensors weights + model.json; no pickle)."""
    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    device = resolve_device(device) if isinstance(device, str) else device
    method = info.get("method")
    _check_sizes(info, model_dir)
    try:
        if method not in NETWORKS:
            raise CheckpointError(f"{model_dir / 'model.json'} names unknown method {method!r}")
        module = NETWORKS[method](info["model_config"])
        module.load_state_dict(load_weights(model_dir / WEIGHTS_FILE))
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"model folder {model_dir} does not match this i3ad version ({exc}); retrain it") from exc
    module.to(device).eval()
    return LoadedModel(method=method, module=module, info=info, device=device)


def _check_sizes(info: dict[str, Any], model_dir: Path) -> None:
    """Refuse sizes no model is trained at before they allocate memory (a damaged or hostile model.json)."""
    config = info.get("model_config") if isinstance(info.get("model_config"), dict) else {}
    checks = [
        ("image_size", info.get("image_size"), 4, MAX_IMAGE_SIZE),
        ("model_config.image_size", config.get("image_size", 4), 4, MAX_IMAGE_SIZE),
        ("model_config.width", config.get("width", 1), 1, MAX_WIDTH),
        ("model_config.latent_dim", config.get("latent_dim", 1), 1, 4096),
        ("model_config.channels", config.get("channels", 1), 1, 3),
    ]
    try:
        for name, value, low, high in checks:
            check_int(value, name, low, high)
    except ConfigError as exc:
        raise CheckpointError(f"{model_dir / 'model.json'}: {exc}; retrain the model or restore the file") from exc


def detection_settings(info: dict[str, Any], overrides: dict[str, Any] | None = None) -> DetectionSettings:
    """A model folder's effective detection settings, later layers winning.

    `DetectionSettings` defaults <- the calibrated U (`info["calibration"]["threshold"]`) <- the chosen
    settings (`info["detection"]`) <- `overrides` (e.g. command-line flags). Keys that are not detection
    settings and None values are ignored (`DetectionSettings.from_dict`).
    """
    values: dict[str, Any] = {}
    calibrated = (info.get("calibration") or {}).get("threshold")
    if calibrated is not None:
        values["threshold"] = calibrated
    values.update(info.get("detection") or {})
    values.update(overrides or {})
    return DetectionSettings.from_dict(values)
