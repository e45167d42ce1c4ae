"""Validation curves of detection settings already measured, shared by a sweep's detection trials.

A detection trial's per-iteration results depend on its model, the validation split and its settings
except N: iteration i comes out the same whether the run stops at N = 5 or N = 20. TPE on a discrete
space (`detect.threshold_step`, the patch sizes) often proposes a (U, patch size) it has already tried
with another N. A trial whose setting an earlier trial already ran to at least its N replays that curve
instead of running the generator: Tune, ASHA, the searcher and MLflow see the same metrics, and
`val/passes_computed` = 0 (with `val/replayed` = 1, `CURVE_REPLAYED`) records that no generator pass was spent. A record
that stops short of N (an ASHA-stopped run) is replayed as far as it goes; only a trial that outlives
it runs detection, from iteration 0, reporting the iterations after the replayed ones.

Curves live in Tune storage, `<storage>/curves/<model>/<digest>.json`, rewritten atomically after every
iteration (an ASHA-stopped trial leaves the prefix it reached), so trials on other machines and resumed
sweeps find them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from studies.storage import filesystem, safe_name, write_atomically

log = logging.getLogger(__name__)

FOLDER = "curves"
PASSES_COMPUTED = "val/passes_computed"  # generator passes this trial itself ran (0 when replayed)
CURVE_REPLAYED = "val/replayed"  # 1 on rows replayed from a record, 0 on computed ones


def _rounded(value: Any) -> Any:
    # Optuna's stepped floats come back as e.g. 0.30000000000000004 next to a configured 0.3.
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def curve_digest(config: dict[str, Any], detection_base: dict[str, Any]) -> str:
    """Identifies everything a detection curve depends on except N (`iterations`)."""
    identity = _rounded(
        {
            "config": {k: v for k, v in config.items() if k != "iterations"},
            "base": {k: v for k, v in detection_base.items() if k != "iterations"},
        }
    )
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


class CurveStore:
    """One setting's recorded curve: the rows reported per iteration, and whether the run ended."""

    def __init__(self, storage: str, model_key: str, digest: str) -> None:
        fs, root = filesystem(storage)
        self.fs = fs
        self.folder = f"{root.rstrip('/')}/{FOLDER}/{safe_name(model_key)}"
        self.path = f"{self.folder}/{digest}.json"
        self.recorded = self._read()

    def _read(self) -> dict[str, Any]:
        try:
            with self.fs.open_input_stream(self.path) as stream:
                return json.loads(stream.readall())
        except (FileNotFoundError, OSError, ValueError):
            return {"rows": [], "finished": False, "iterations": 0}

    def replay(self, iterations: int) -> tuple[list[dict[str, float]], bool]:
        """The recorded rows up to iteration `iterations`, and whether they are all a run to N gives.

        A finished run covers every N up to the one it was asked for, also when its scorer yielded
        fewer rows (the autoencoders' single pass). An incomplete record (an ASHA-stopped run) is still
        worth replaying: ASHA may stop this trial within it again, before any generator pass.
        """
        rows = [row for row in self.recorded["rows"] if row["iteration"] <= iterations]
        reached = rows[-1]["iteration"] if rows else -1
        complete = reached >= iterations or (self.recorded["finished"] and self.recorded["iterations"] >= iterations)
        return rows, complete

    def save(self, rows: list[dict[str, float]], iterations: int, finished: bool) -> None:
        """Record `rows` unless a longer curve is already recorded; a failure only costs later trials a rerun."""
        if len(rows) < len(self.recorded["rows"]) or (len(rows) == len(self.recorded["rows"]) and not finished):
            return
        body = {"rows": list(rows), "finished": finished, "iterations": iterations}  # a copy: the caller appends
        try:
            self.fs.create_dir(self.folder, recursive=True)
            write_atomically(self.fs, self.path, json.dumps(body).encode())
        except OSError as exc:
            log.warning("could not record a detection curve in %s: %s", self.folder, exc)
            return
        self.recorded = body
