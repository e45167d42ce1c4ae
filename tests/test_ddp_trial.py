"""The Ray Train route once, tiny: a 2-worker (gloo) training trial of the sweep, one worker SIGKILLed after
the first checkpoint; Ray Train restarts the workers, which resume from rank 0's checkpoint and finish."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from ray import tune

from i3ad.checkpoint import read_model_info
from i3ad.scorers import DetectionSettings, ProjectionSettings
from i3ad.train import read_train_log
from studies import config as cfg
from studies.ddp_trainable import TRAIN_RUNS
from studies.phases import SweepSetup
from studies.search import KEY, PHASE, READY
from studies.storage import model_uri
from studies.trainables import Runtime, SweepContext, sweep_trial

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("local_ray")]

STEPS = 80  # the kill lands soon after the first checkpoint (step 5), well before the last step


def steps_reported(result: tune.Result) -> list[int]:
    """The training steps the trial reported to Tune (rows with losses), in order."""
    rows = result.metrics_dataframe
    return [int(step) for step in rows[rows["train/loss_g"].notna()]["step"]]


def _train_workers() -> list[int]:
    """Pids of the Ray Train worker processes (Ray titles them `ray::RayTrainWorker...`)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _kill_a_worker_after_first_checkpoint(storage: Path, killed: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        # Once the Train controller has registered a checkpoint (an uploaded one it never registered is not resumed).
        if list((storage / TRAIN_RUNS).glob("*/checkpoint_manager_snapshot.json")):
            workers = _train_workers()
            if workers:
                os.kill(max(workers), signal.SIGKILL)
                killed.append(max(workers))
                return
        time.sleep(0.05)


def test_two_worker_training_trial_survives_a_killed_worker(tiny_data: Path, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    train = dict(
        image_size=32, width=4, batch_size=2, steps=STEPS, log_every=5, checkpoint_every=5, seed=0, max_seconds=None
    )
    trial = {KEY: "carpet/i3ad", "category": "carpet", "method": "i3ad", "methods": ["i3ad"], "train": train}
    sweep = cfg.load("quick", [{"resources": {"workers_per_trial": 2}, "categories": ["carpet"]}])
    setup = SweepSetup(sweep, str(storage), {"cpu": 1, "gpu": 0}, 1, "test", workers=2)
    context = SweepContext(
        str(tiny_data),
        str(storage),
        Runtime(cpus=1, device="cpu", workers=2, max_failures=1),
        cfg.CalibrationConfig(images=2, iterations=2),
        DetectionSettings(),
        ProjectionSettings(),
        "val/image_auroc_ssim",
        {},
    )
    assert setup.trial_resources({**trial, PHASE: "train"}).required_resources.get("CPU", 0) == 0
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(storage, killed, stop))
    killer.start()
    try:
        grid = tune.Tuner(
            tune.with_resources(tune.with_parameters(sweep_trial, context=context), setup.trial_resources),
            param_space={**trial, PHASE: "train"},
            run_config=tune.RunConfig(storage_path=str(storage), name="sweep", verbose=0),
        ).fit()
    finally:
        stop.set()
        killer.join()
    (result,) = grid
    assert result.error is None and killed, "the trial failed, or no worker was killed"
    steps = steps_reported(result)
    assert steps == sorted(set(steps)) and steps[-1] == STEPS, steps  # no step trained twice: resumed, not rerun
    assert result.metrics[READY] == 1.0 and result.metrics["train/workers"] == 2.0
    assert 5 <= result.metrics["train/resumed_from"] < STEPS  # the restarted workers loaded a checkpoint

    published = Path(model_uri(str(storage), "carpet/i3ad"))
    info = read_model_info(published)
    assert info["step"] == STEPS and info["finished"] and info["workers"] == 2
    assert [r["step"] for r in read_train_log(published)] == list(range(5, STEPS + 1, 5))
