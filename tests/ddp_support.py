"""Runs `i3ad.train.train` on several gloo ranks with torch.multiprocessing (no Ray), for tests/test_distributed.py.

Kept apart from conftest (which imports Ray) so the spawned processes start quickly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from i3ad import distributed
from i3ad.train import TrainConfig, TrainEvent, _Trainer, train


class Interrupted(Exception):
    """Raised on every rank at `stop_at`: the run dies mid-way (after its last checkpoint) and is resumed later."""


def _rank_main(rank: int, world: int, init_file: str, runs: list[dict[str, Any]]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    trainers: list[_Trainer] = []
    original = _Trainer.distribute

    def keep(self: _Trainer) -> None:  # remember each rank's trainer, to compare the ranks' states afterwards
        original(self)
        trainers.append(self)

    _Trainer.distribute = keep
    try:
        for run in runs:
            stop_at = run.get("stop_at")

            def on_event(event: TrainEvent, stop_at: int | None = stop_at) -> None:
                if stop_at is not None and event.step >= stop_at:
                    raise Interrupted(event.step)

            out = Path(run["out"])
            try:
                train(
                    TrainConfig(**run["config"]),
                    Path(run["data"]),
                    run["category"],
                    out,
                    run["resume"],
                    on_event,
                    False,
                )
            except Interrupted:
                continue
            trainer = trainers[-1]
            state = {"model": distributed.unwrap(trainer.model).state_dict()}
            if trainer.disc is not None:
                state["disc"] = distributed.unwrap(trainer.disc).state_dict()
            torch.save(state, out.parent / f"{out.name}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, init_file: Path, runs: list[dict[str, Any]]) -> None:
    """Train each run (a dict: config, data, category, out, resume, optional stop_at) on `world` gloo ranks.

    A run with `stop_at` is interrupted on every rank at that step (its folder keeps its last checkpoint). Every
    rank saves the final model (and discriminator) state of each finished run as `<out>.rank<r>.pt` beside `out`.
    """
    mp.spawn(_rank_main, args=(world, str(init_file), runs), nprocs=world, join=True)
