"""Multi-worker training trials: a Ray Train `TorchTrainer` launched from inside the Tune trial.

This is Ray Train V2's Tune pattern (the Tune trial is a light driver that starts a Train run; the Train
workers reserve the CPUs/GPUs): Tune keeps scheduling and restarting the trial, Ray Train starts
`workers` processes, sets up the process group (gloo on CPU, NCCL on GPU) and restarts the worker group
from the latest checkpoint when a worker dies. Each worker runs `i3ad.train.train`, which trains
data-parallel because a process group is initialised (see i3ad/distributed.py for the rules: `batch_size`
is the global batch, split evenly; learning rates unchanged).

Checkpoints: rank 0 writes the model folder and reports it as the Train checkpoint; on a restart (of the
worker group, or of the Tune trial: the Train run's name is the trial id, so a restarted trial finds it)
every worker downloads that checkpoint into its own folder and resumes from it. Rank 0 then calibrates U
and publishes the model exactly as a single-process trial does.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from i3ad.distributed import backend_for
from i3ad.scorers import DetectionSettings
from i3ad.train import TrainConfig, TrainEvent, train
from studies.config import CalibrationConfig
from studies.config import uses_workers as trains_with_workers
from studies.data import ensure_synthetic
from studies.search import KEY, READY
from studies.storage import model_uri, publish
from studies.trainables import calibrated

TRAIN_RUNS = "train-runs"  # under the sweep storage: one Ray Train run (its checkpoints) per multi-worker trial


@dataclass(frozen=True)
class WorkerJob:
    """What every Train worker needs (the validation images of the sweep context stay behind)."""

    trial: dict[str, Any]  # the Tune trial config (category, method, train settings, model key)
    data_root: str
    storage: str
    synthetic: dict[str, Any] | None
    calibration: CalibrationConfig
    detect: DetectionSettings
    cpus: int  # per worker: its torch threads
    gpu: bool


def uses_workers(method: str, workers: int) -> bool:
    """True when a training trial of `method` runs on `workers` Train workers (else the single-process path)."""
    return workers > 1 and trains_with_workers(method)


def train_with_workers(job: WorkerJob, workers: int, max_failures: int, checkpoints_to_keep: int) -> dict[str, Any]:
    """Run the Train run of one Tune trial (resuming it if the trial restarted); the final metrics of rank 0."""
    trial_id = tune.get_context().get_trial_id()
    resources = {"CPU": job.cpus, "GPU": 1} if job.gpu else {"CPU": job.cpus}
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend=backend_for("cuda" if job.gpu else "cpu")),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=job.gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"{TRAIN_RUNS}-{trial_id}",  # stable across trial restarts, so a restarted trial resumes the run
            storage_path=f"{job.storage.rstrip('/')}/{TRAIN_RUNS}",
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=checkpoints_to_keep),
            callbacks=[TuneReportCallback()],  # rank 0's reports become the trial's results (training curves)
        ),
    )
    result = trainer.fit()  # its metrics: rank 0's final report (the last one with a checkpoint)
    return {k: v for k, v in (result.metrics or {}).items() if k != CHECKPOINT_PATH_KEY}


def worker_loop(loop_config: dict[str, Any]) -> None:
    """One Train worker: resume from the run's latest checkpoint, train its shard, rank 0 calibrates and publishes."""
    job: WorkerJob = loop_config["job"]
    began = time.perf_counter()
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(max(1, job.cpus))
    device = str(ray.train.torch.get_device()) if job.gpu else "cpu"
    trial = job.trial
    settings = TrainConfig.from_dict({**trial["train"], "method": trial["method"], "device": device})
    if job.synthetic is not None:
        ensure_synthetic(Path(job.data_root), **job.synthetic)
    folder = Path(tempfile.mkdtemp(prefix=f"i3ad-train-{trial['category']}-rank{rank}-"))
    reporting = 0.0
    try:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:  # every rank resumes from rank 0's last checkpoint
            checkpoint.to_directory(str(folder))

        def report(metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
            nonlocal reporting
            handed = time.perf_counter()
            compute = handed - began - reporting
            ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
            # Every rank reports (Train synchronises reports); only rank 0 hands over a checkpoint.
            ray.train.report({**metrics, "time/compute_s": compute, "time/report_s": reporting}, checkpoint=ckpt)
            reporting += time.perf_counter() - handed

        def on_event(event: TrainEvent) -> None:
            report({"step": event.step, **{f"train/{k}": v for k, v in event.metrics.items()}}, event.checkpoint)

        result = train(
            settings, Path(job.data_root), trial["category"], folder, resume=True, callback=on_event, progress=False
        )
        final: dict[str, Any] = {
            "step": result.steps,
            "train/steps_done": result.steps,
            "train/workers": 0.0,
            "train/resumed_from": float(result.resumed_from or 0),  # 0: this attempt started from scratch
        }
        if rank == 0:
            final["train/workers"] = float(ray.train.get_context().get_world_size())
            final |= calibrated(
                folder, settings, Path(job.data_root), trial["category"], job.calibration, job.detect, device
            )
            publish(folder, model_uri(job.storage, trial[KEY]))
        # With the finished folder as its checkpoint: Train's result carries the metrics of the latest checkpoint.
        report(final, folder if rank == 0 else None)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def train_trial_workers(job: WorkerJob, workers: int, max_failures: int, checkpoints_to_keep: int) -> None:
    """The Tune trial of a multi-worker training: run the Train run, then report the model READY."""
    final = train_with_workers(job, workers, max_failures, checkpoints_to_keep)
    tune.report({**final, READY: 1.0})
