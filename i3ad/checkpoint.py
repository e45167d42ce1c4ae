"""Model folders (safetensors + JSON, no pickle) and resumable training state, all written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_write, atomic_write_json
from .errors import CheckpointError

MODEL_JSON = "model.json"
WEIGHTS_FILE = "weights.safetensors"
TRAINING_STATE = "training_state.pt"
FORMAT_VERSION = 1


def read_json(path: Path) -> dict:
    """Read a JSON file, turning a missing or corrupt file into a CheckpointError."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} does not exist; is this a model folder written by `i3ad train`?") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); retrain or restore the file") from exc


def save_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Save a state dict as safetensors (no pickle), atomically."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors state dict, naming the file when it is missing or corrupt."""
    if not Path(path).is_file():
        raise CheckpointError(f"weights file {path} is missing; the model folder is incomplete")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"weights file {path} cannot be read ({exc}); retrain or restore it") from exc


def save_model_folder(folder: Path, state_dict: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Write `weights.safetensors` then `model.json`; model.json last marks the folder complete."""
    folder = Path(folder)
    save_weights(folder / WEIGHTS_FILE, state_dict)
    atomic_write_json(folder / MODEL_JSON, {"format_version": FORMAT_VERSION, **info})


def read_model_info(folder: Path) -> dict[str, Any]:
    """Read and check a model folder's `model.json`."""
    info = read_json(Path(folder) / MODEL_JSON)
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{Path(folder) / MODEL_JSON} has format_version {info.get('format_version')!r}, "
            f"this i3ad reads {FORMAT_VERSION}; retrain the model with this version"
        )
    return info


def update_model_info(folder: Path, **changes: Any) -> dict[str, Any]:
    """Merge `changes` into a model folder's `model.json`, atomically; returns the new info."""
    info = read_model_info(folder)
    info.update(changes)
    atomic_write_json(Path(folder) / MODEL_JSON, info)
    return info


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Save resumable training state (tensors, numbers, strings only), atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: Path) -> dict[str, Any]:
    """Load training state with `weights_only=True`, so nothing is unpickled."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"no training state at {path}; run without --resume to start fresh") from exc
    except Exception as exc:
        raise CheckpointError(
            f"training state {path} is corrupt or not an i3ad checkpoint ({exc}); "
            "delete it to start fresh or restore it from a backup"
        ) from exc
