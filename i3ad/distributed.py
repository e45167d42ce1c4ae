"""Data-parallel training over a torch.distributed process group (DDP): ranks, batch shards, wrapping, agreement.

`i3ad.train.train` trains data-parallel whenever a process group is initialised when it is called (Ray
Train's `TorchTrainer` sets one up; so does `torch.multiprocessing` + `init_process_group` in the tests);
without one nothing here changes the single-process path. The rules of the data-parallel run:

- `batch_size` is the GLOBAL batch. Every rank draws the same global batch from the same seeded generator
  and trains on its own slice of `batch_size / world_size` images; DDP averages the gradients, so one
  optimiser step equals one single-process step on the whole batch and the learning rates apply unchanged.
  (The draw, masks included, is repeated on every rank: it keeps one generator state, which rank 0
  checkpoints and every rank resumes.)
- The generator and the discriminator are each wrapped in `DistributedDataParallel`. DDP broadcasts rank 0's
  buffers before every forward (`broadcast_buffers`, on by default), which keeps the spectral-norm
  power-iteration vectors `u`/`v` (buffers) equal on every rank; they depend only on the weights, which the
  averaged gradients keep equal anyway.
- Losses are averaged over the ranks every step, so every rank logs, checks for NaN and stops on
  `max_seconds` with the same values (a rank that decided alone would leave the others waiting).
- Only rank 0 writes the model folder (checkpoints, log); every rank resumes from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import ConfigError

# Methods a data-parallel run supports: one or two `forward` modules (G, D). The GAN baselines call their
# sub-networks directly and f-AnoGAN freezes half of them mid-run, which DDP's gradient hooks do not follow.
DDP_METHODS = ("i3ad", "ae-l2", "ae-ssim")


def active() -> bool:
    """True when a process group with more than one rank is initialised (a data-parallel run)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0, the one that writes files."""
    return rank() == 0


def check_supported(method: str, batch_size: int) -> None:
    """Raise ConfigError when `method` / `batch_size` cannot train on `world_size()` ranks."""
    workers = world_size()
    if workers == 1:
        return
    if method not in DDP_METHODS:
        raise ConfigError(
            f"method {method!r} trains on one worker only; data-parallel training (workers_per_trial > 1) "
            f"supports {', '.join(DDP_METHODS)}"
        )
    if batch_size % workers:
        raise ConfigError(
            f"batch_size {batch_size} is the global batch and must divide evenly over the {workers} workers; "
            f"choose a multiple of {workers}"
        )


def shard(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This rank's equal slice (along dim 0) of each global-batch tensor; the tensors themselves on one rank."""
    workers = world_size()
    if workers == 1:
        return tensors
    index = rank()
    return tuple(t[index * (len(t) // workers) : (index + 1) * (len(t) // workers)] for t in tensors)


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` in DistributedDataParallel (buffers broadcast from rank 0 each forward); unchanged on one rank."""
    if not active():
        return module
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def unwrap(module: nn.Module | None) -> nn.Module | None:
    """The module inside a DDP wrapper (its state_dict keys carry no `module.` prefix)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def average(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each scalar averaged over the ranks (one all-reduce), so every rank holds the global-batch value."""
    if not active() or not values:
        return values
    names = list(values)
    stacked = torch.stack([values[name].detach().float().reshape(()) for name in names])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked /= world_size()
    return {name: stacked[i] for i, name in enumerate(names)}


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is True on any rank (so all ranks stop at the same step)."""
    if not active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    """Wait for every rank (no-op on one)."""
    if active():
        dist.barrier()


def backend_for(devices: Sequence[str] | str) -> str:
    """The process-group backend: NCCL when the workers train on CUDA, gloo on CPU."""
    names = [devices] if isinstance(devices, str) else list(devices)
    return "nccl" if any(name.startswith("cuda") for name in names) else "gloo"
