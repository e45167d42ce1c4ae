"""Keep a retried trial's result history whole in Tune storage.

When Tune restarts a failed trial from its checkpoint (a lost node, a crashed worker), its JSON and CSV
loggers first copy the trial's `result.json` / `progress.csv` back from storage over the driver's local
copy (Ray 2.x `LoggerCallback._restore_from_remote`). The storage copy is only as new as the driver's last
periodic sync, so every row reported since that sync (up to ~10 s of training curve) was silently dropped.
This callback uploads the driver's complete local copy the moment a trial is to be recovered, which Tune
signals before it starts the new attempt, so the restore copies back every row.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.result import EXPR_PROGRESS_FILE, EXPR_RESULT_FILE

from studies.storage import write_atomically

log = logging.getLogger(__name__)

HISTORY_FILES = (EXPR_RESULT_FILE, EXPR_PROGRESS_FILE)


class KeepTrialHistory(Callback):
    """Tune callback: persist a failed trial's result history to storage before Tune retries it."""

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        fs = trial.storage.storage_filesystem
        for name in HISTORY_FILES:
            local = Path(trial.local_path, name)
            if not local.is_file():
                continue
            try:
                fs.create_dir(trial.path, recursive=True)
                write_atomically(fs, f"{trial.path}/{name}", local.read_bytes())
            except OSError as exc:  # the retry goes on; only rows since Tune's last sync are at stake
                log.warning("could not save %s of trial %s before its retry: %s", name, trial.trial_id, exc)
