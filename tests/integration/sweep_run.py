"""Drive `python studies/sweep.py` as a subprocess and read what it leaves behind.

Trial progress is read from Tune's own storage (`<storage>/<study>-<sweep id>/.../<trial>/result.json`,
one JSON line per reported result, with the reporting process's pid), the driver's progress from the
sweep folder (`<workdir>/sweeps/<id>/state.json`), and the tracking side from MLflow.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from studies.ledger import REPLAYED

from .procs import spawn, stop_group, tail

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "studies" / "sweep.py"

# A sweep small enough for a test on 2 shared cores (~2-3 minutes on the loopback cluster): 32-px
# synthetic data, a width-4 inpainter, 3 detection trials per category of at most 3 iterations; I3AD only
# (the quick study's ref-stats reference would add a model per category the checks below do not expect).
TINY_SETTINGS = [
    "methods=[i3ad]",
    "data.synthetic={size: 32, n_train: 8, n_test_good: 4, n_test_per_defect: 2, seed: 0}",
    "train={image_size: 32, width: 4, batch_size: 4, steps: 60, checkpoint_every: 10, log_every: 5, max_seconds: 240}",
    "calibration={images: 4, iterations: 2, tolerance: 10.0}",
    "search.num_samples=3",
    "detect.iterations=3",
    "detect.patch_size=4",
    "search.grace_period=1",
    "search.patch_sizes=[4, 8]",
]
LOG_EVERY = 5
TRAIN_STEPS = 60


def tiny_args() -> list[str]:
    return [arg for setting in TINY_SETTINGS for arg in ("--set", setting)]


@dataclass
class Trial:
    phase: str
    trial_id: str
    folder: Path
    results: list[dict]
    status: str  # Tune's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR ("" before the first snapshot)
    # A finished trial that a restore handed back re-reports its recorded final result once, marked
    # REPLAYED (studies/ledger.py); that row is a copy, not a run, so it is kept apart from `results`.
    replayed: list[dict] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in ("TERMINATED", "ERROR")

    @property
    def pids(self) -> list[int]:
        return [r["pid"] for r in self.results if "pid" in r]


class SweepRun:
    """One sweep (its workdir, storage and log), started, killed and resumed as a test needs."""

    def __init__(self, root: Path, ray_address: str, tracking_uri: str, env: dict[str, str], experiment: str):
        self.root = root
        self.workdir = root / "work"
        self.storage = root / "storage"
        self.log = root / "driver.log"
        self.ray_address = ray_address
        self.tracking_uri = tracking_uri
        self.env = env
        self.experiment = experiment
        self.proc: subprocess.Popen | None = None

    # -- the driver process ---------------------------------------------------------------------------
    def start(self, categories: str = "carpet,screw", extra: list[str] | None = None) -> None:
        self._launch(
            [
                "--categories",
                categories,
                "--tracking-uri",
                self.tracking_uri,
                "--storage-path",
                str(self.storage),
                "--experiment",
                self.experiment,
                *tiny_args(),
                *(extra or []),
            ]
        )

    def resume(self) -> None:
        self._launch(["--resume"])

    def _launch(self, args: list[str]) -> None:
        cmd = [sys.executable, str(SWEEP), "--ray-address", self.ray_address, "--workdir", str(self.workdir), *args]
        with open(self.log, "a") as out:
            out.write(f"\n$ {' '.join(cmd)}\n")
        self.proc = spawn(cmd, self.log, env=self.env)

    def kill(self) -> None:
        """SIGKILL the driver (and anything it started) without warning."""
        assert self.proc is not None
        stop_group(self.proc, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"sweep still running after {timeout:.0f}s:\n{self.log_tail()}") from None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 6000) -> str:
        return tail(self.log, chars)

    # -- what it wrote --------------------------------------------------------------------------------
    @property
    def folder(self) -> Path | None:
        latest = self.workdir / "latest"
        return self.workdir / "sweeps" / latest.read_text().strip() if latest.exists() else None

    def state(self) -> dict:
        folder = self.folder
        path = folder / "state.json" if folder else None
        return json.loads(path.read_text()) if path and path.exists() else {}

    def summary(self) -> dict:
        return json.loads((self.folder / "summary.json").read_text())

    def statuses(self) -> dict[str, str]:
        """Trial id -> status from Tune's newest experiment snapshot(s) (written by the driver as it goes)."""
        statuses = {}
        for path in sorted(self.storage.glob("**/experiment_state-*.json")):
            try:
                data = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError):  # being replaced right now
                continue
            for trial_json, _ in data.get("trial_data", []):
                trial = json.loads(trial_json)
                statuses[trial["trial_id"]] = trial["status"]
        return statuses

    def trials(self, phase: str) -> dict[str, Trial]:
        """Trials of `phase` ("train" / "detect"), told apart by the `phase` in their config, else their folder."""
        statuses = self.statuses()
        found = {}
        for result_file in sorted(self.storage.glob("**/result.json")):
            results = []
            for line in result_file.read_text().splitlines():
                try:
                    results.append(json.loads(line))
                except json.JSONDecodeError:  # a line being written right now
                    break
            if not results:
                continue
            trial_phase = results[0].get("config", {}).get("phase") or result_file.parent.parent.name
            if trial_phase == phase:
                trial_id = results[0]["trial_id"]
                ran = [r for r in results if not r.get(REPLAYED)]
                copies = [r for r in results if r.get(REPLAYED)]
                found[trial_id] = Trial(phase, trial_id, result_file.parent, ran, statuses.get(trial_id, ""), copies)
        return found

    def wait_for(self, what: str, condition: Callable[[], object], timeout: float, poll: float = 0.5):
        """Poll `condition` until it returns something truthy; fail if the driver exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if not self.running:
                raise RuntimeError(
                    f"sweep exited ({self.proc.returncode}) while waiting for {what}:\n{self.log_tail()}"
                )
            time.sleep(poll)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.log_tail()}")
