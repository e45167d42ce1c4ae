"""Model folders (safetensors + JSON, no pickle) and resumable training state, committed as one unit.

A checkpoint (training state, weights, model.json) is written in full into the hidden folder `.staging`
inside the model folder, flushed to disk, and then committed by ONE atomic step: renaming `.staging` to
`.commit`. Afterwards the files are moved from `.commit` into the model folder and `.commit` is removed.

- Killed before the rename: the model folder still holds the previous complete checkpoint; the next
  writer deletes the uncommitted `.staging` (`recover`).
- Killed after it: the new checkpoint is complete in `.commit`; `recover` (run by the next writer and by
  every reader of model.json) finishes moving it into place. Moving a file is a rename, so it can be
  repeated safely, and model.json moves last.

So a reader never sees weights of one step under model.json of another, and `--resume` always restarts
from the newest committed checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_write, atomic_write_json
from .errors import CheckpointError
from .locks import exclusive

MODEL_JSON = "model.json"
WEIGHTS_FILE = "weights.safetensors"
TRAINING_STATE = "training_state.pt"
FORMAT_VERSION = 1
STAGING = ".staging"  # a checkpoint being written (not committed)
COMMITTING = ".commit"  # a committed checkpoint whose files are being moved into place


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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finish_commit(folder: Path) -> bool:
    """Move a committed checkpoint's files from `.commit` into place (model.json last); True if there was one."""
    folder = Path(folder)
    commit = folder / COMMITTING
    if not commit.is_dir():
        return False
    try:
        for path in sorted(commit.iterdir(), key=lambda p: (p.name == MODEL_JSON, p.name)):
            try:
                os.replace(path, folder / path.name)
            except FileNotFoundError:  # another process moved it first
                pass
        commit.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CheckpointError(
            f"{folder} holds a checkpoint whose commit was interrupted and it cannot be finished here ({exc}); "
            f"run `i3ad train --resume` on it with write access"
        ) from exc
    return True


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Delete an uncommitted `.staging` folder and `.*.tmp` files left by killed writers; returns their names."""
    folder = Path(folder)
    removed = []
    if (folder / STAGING).exists():
        shutil.rmtree(folder / STAGING)
        removed.append(STAGING)
    for path in folder.glob(".*.tmp"):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def recover(folder: Path) -> None:
    """Bring a model folder to its newest committed checkpoint (the writer calls this under its lock)."""
    finish_commit(folder)
    remove_stale_temporaries(folder)


def save_checkpoint(
    folder: Path,
    state_dict: dict[str, torch.Tensor],
    info: dict[str, Any],
    training_state: dict[str, Any] | None = None,
) -> None:
    """Commit weights, model.json (and the training state) as one unit; see the module docstring."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    finish_commit(folder)
    staging = folder / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    writes: dict[str, Callable[[Path], Any]] = {}
    if training_state is not None:
        writes[TRAINING_STATE] = lambda p: torch.save(training_state, p)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    writes[WEIGHTS_FILE] = lambda p: save_file(tensors, str(p))
    text = json.dumps({"format_version": FORMAT_VERSION, **info}, indent=2, sort_keys=True) + "\n"
    writes[MODEL_JSON] = lambda p: p.write_text(text)
    for name, write in writes.items():
        write(staging / name)
        _fsync(staging / name)
    _fsync(staging)
    os.rename(staging, folder / COMMITTING)  # the commit point
    _fsync(folder)
    finish_commit(folder)


def save_model_folder(folder: Path, state_dict: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Write a model folder's weights and model.json as one committed unit."""
    save_checkpoint(folder, state_dict, info)


def read_model_info(folder: Path) -> dict[str, Any]:
    """Read and check a model folder's `model.json` (finishing an interrupted commit first)."""
    finish_commit(Path(folder))
    info = read_json(Path(folder) / MODEL_JSON)
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{Path(folder) / MODEL_JSON} has format_version {info.get('format_version')!r}, "
            f"this i3ad reads {FORMAT_VERSION}; retrain the model with this version"
        )
    return info


def update_model_info(folder: Path, **changes: Any) -> dict[str, Any]:
    """Merge `changes` into a model folder's `model.json`, atomically, under its writer lock; returns the new info."""
    read_model_info(folder)  # a missing folder is named before the lock would create it
    with exclusive(folder, "updating model.json"):
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
