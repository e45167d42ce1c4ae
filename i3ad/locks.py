"""Exclusive locks on folders, so two writers never interleave in one model folder.

An OS file lock (`filelock`, released by the kernel when its process dies, so a killed writer never leaves a
stale lock) plus a small holder record beside it, read only to tell a second writer who holds the lock.
Both files are hidden, so readers that list a folder skip them.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .atomic import atomic_write_json
from .errors import I3ADError

LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.holder.json"


class FolderLocked(I3ADError):
    """Another process holds the folder's writer lock."""


def _holder_text(folder: Path) -> str:
    try:
        holder = json.loads((folder / HOLDER_FILE).read_text())
        return (
            f"process {holder.get('pid')} on {holder.get('host')} "
            f"(since {holder.get('since')}: {holder.get('command')})"
        )
    except (OSError, ValueError, AttributeError):
        return "another process (its holder record is not readable yet)"


@contextmanager
def exclusive(folder: Path | str, purpose: str) -> Iterator[None]:
    """Hold `folder`'s writer lock for the block; raise FolderLocked, naming the holder, if it is taken."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout as exc:
        raise FolderLocked(
            f"{folder} is being written by {_holder_text(folder)}; wait for it to finish "
            f"or write to another folder ({purpose} needs it alone)"
        ) from exc
    try:
        atomic_write_json(
            folder / HOLDER_FILE,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": f"{purpose}: {' '.join(sys.argv)[:200]}",
            },
        )
        yield
    finally:
        (folder / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()
