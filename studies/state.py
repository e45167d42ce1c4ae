"""A sweep's folder and its small driver state file (what is done, which MLflow parent run it writes to)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from i3ad.atomic import atomic_write_json, atomic_write_text
from i3ad.errors import ConfigError

STATE_FILE = "state.json"
LATEST_FILE = "latest"


def new_sweep_id() -> str:
    """A sweep id from the current time, e.g. 20261129-180514."""
    return time.strftime("%Y%m%d-%H%M%S")


@dataclass
class SweepPaths:
    """Everything one sweep writes locally lives in `<workdir>/sweeps/<sweep_id>/`."""

    workdir: Path
    sweep_id: str

    @property
    def folder(self) -> Path:
        return self.workdir / "sweeps" / self.sweep_id

    @property
    def state(self) -> Path:
        return self.folder / STATE_FILE

    @property
    def config(self) -> Path:
        return self.folder / "config.yaml"

    @property
    def models(self) -> Path:
        return self.folder / "models"

    def storage(self, storage_path: str | None, study: str) -> str:
        """Tune's storage root for this sweep: local by default, or under a shared `storage_path`."""
        if storage_path is None:
            return str((self.folder / "ray_results").resolve())
        if "://" not in storage_path:
            storage_path = str(Path(storage_path).expanduser().resolve())
        return f"{storage_path.rstrip('/')}/{study}-{self.sweep_id}"

    @classmethod
    def create(cls, workdir: Path, attempts: int = 100) -> SweepPaths:
        """A new sweep folder, created exclusively: a sweep started in the same second gets `<id>-2`, `-3`, ..."""
        base = new_sweep_id()
        (Path(workdir) / "sweeps").mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            paths = cls(Path(workdir), base if attempt == 1 else f"{base}-{attempt}")
            try:
                paths.folder.mkdir()  # atomic: exactly one process creates a given folder
                return paths
            except FileExistsError:
                continue
        raise ConfigError(f"could not create a new sweep folder in {Path(workdir) / 'sweeps'} ({attempts} ids taken)")

    def mark_latest(self) -> None:
        atomic_write_text(self.workdir / LATEST_FILE, self.sweep_id + "\n")

    @classmethod
    def latest(cls, workdir: Path, sweep_id: str | None = None) -> SweepPaths:
        """The sweep to resume: `sweep_id`, or the most recent one started in `workdir`."""
        if sweep_id is None:
            marker = workdir / LATEST_FILE
            if not marker.exists():
                raise ConfigError(f"--resume: no sweep was started in {workdir}; run without --resume first")
            sweep_id = marker.read_text().strip()
        paths = cls(workdir, sweep_id)
        if not paths.state.exists():
            raise ConfigError(f"--resume: {paths.state} does not exist; is {sweep_id!r} a sweep in {workdir}?")
        return paths


@dataclass
class SweepState:
    """Progress of one sweep, rewritten atomically after every phase."""

    sweep_id: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    storage: str
    phases_done: list[str] = field(default_factory=list)  # "train", "detect"
    finals: dict[str, Any] = field(default_factory=dict)  # "<category>/<method>" -> summary row
    failures: list[dict[str, Any]] = field(default_factory=list)  # failed trials / categories
    timings: dict[str, float] = field(default_factory=dict)  # seconds per driver step (last attempt)
    attempts: int = 1

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> SweepState:
        return cls(**json.loads(Path(path).read_text()))

    def done(self, phase: str) -> bool:
        return phase in self.phases_done

    def mark(self, phase: str) -> None:
        if phase not in self.phases_done:
            self.phases_done.append(phase)
