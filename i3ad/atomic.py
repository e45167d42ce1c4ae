"""Local files replaced in one step, so a reader never sees half a file.

Every file is written beside its target under a temporary name, then renamed over it. The temporary
name is hidden and ends in `.tmp` (`.model.json.<random>.tmp`): one left behind by a killed writer is
skipped by every reader that lists a folder (they ignore dot files) and never ends in a data suffix.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def temporary_name(name: str) -> str:
    """The hidden `.tmp` name a file called `name` is written under before it is moved into place."""
    return f".{name}.{uuid.uuid4().hex[:12]}.tmp"


def atomic_write(path: Path | str, write: Callable[[Path], Any]) -> None:
    """Replace `path` with the file `write(tmp)` writes at a temporary path beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temporary_name(path.name))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """Replace `path` with `text`, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path | str, data: Any) -> None:
    """Replace `path` with `data` as indented JSON with sorted keys, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
