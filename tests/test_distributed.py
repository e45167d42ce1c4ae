"""Data-parallel training (i3ad.distributed) on 2 gloo ranks: same curve as one worker, ranks in sync, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from i3ad import distributed
from i3ad.checkpoint import load_weights, read_model_info
from i3ad.errors import ConfigError
from i3ad.train import read_train_log, train
from studies import config as cfg

from .conftest import tiny_config
from .ddp_support import run_ranks

# Two ranks on half batches vs one on the whole: the same sums in another order (conv batches, the gradient
# all-reduce), so the losses agree to float32 rounding; 1e-5 relative leaves a wide margin over the ~3e-7 seen.
RTOL, ATOL = 1e-5, 1e-6
SETTINGS = dict(steps=6, batch_size=4, log_every=1, checkpoint_every=3)


@pytest.fixture(scope="module")
def ddp_runs(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One spawn of 2 ranks: a straight 6-step run, and one interrupted at step 4 and then resumed to 6."""
    folder = tmp_path_factory.mktemp("ddp")
    base = dict(config=tiny_config(**SETTINGS).__dict__, data=str(tiny_data), category="carpet")
    run_ranks(
        2,
        folder / "init",
        [
            {**base, "out": str(folder / "straight"), "resume": False},
            {**base, "out": str(folder / "split"), "resume": False, "stop_at": 4},
            {**base, "out": str(folder / "split"), "resume": True},
        ],
    )
    return folder


def test_two_workers_give_the_one_worker_loss_curve(ddp_runs: Path, tiny_data: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    train(tiny_config(**SETTINGS), tiny_data, "carpet", one, progress=False)
    single, double = read_train_log(one), read_train_log(ddp_runs / "straight")
    assert [r["step"] for r in double] == [r["step"] for r in single] == list(range(1, 7))
    for a, b in zip(single, double, strict=True):
        for name in ("loss_g", "loss_d", "loss_l1", "loss_gan"):
            torch.testing.assert_close(b[name], a[name], rtol=RTOL, atol=ATOL, msg=f"{name} at step {a['step']}")
    assert read_model_info(ddp_runs / "straight")["workers"] == 2
    assert "workers" not in read_model_info(one)  # the single-process folder is unchanged


def test_ranks_stay_in_sync_including_spectral_norm_vectors(ddp_runs: Path) -> None:
    rank0, rank1 = (torch.load(ddp_runs / f"straight.rank{r}.pt", weights_only=True) for r in (0, 1))
    power_iteration = [k for k in rank0["disc"] if k.endswith(("._u", "._v"))]
    assert len(power_iteration) == 12  # u and v of the six spectral-normalised convs
    for part in ("model", "disc"):
        for name, value in rank0[part].items():
            assert torch.equal(value, rank1[part][name]), f"{part}.{name} differs between the ranks"


def test_interrupted_two_worker_run_resumes_to_the_straight_run(ddp_runs: Path) -> None:
    assert [r["step"] for r in read_train_log(ddp_runs / "split")] == list(range(1, 7))  # step 4's line replaced
    a, b = (
        load_weights(ddp_runs / "straight" / "weights.safetensors"),
        load_weights(ddp_runs / "split" / "weights.safetensors"),
    )
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=f"{name} differs after resume")
    resumed = torch.load(ddp_runs / "split.rank1.pt", weights_only=True)  # rank 1 resumed from rank 0's folder
    for name, value in load_weights(ddp_runs / "straight" / "weights.safetensors").items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=1e-6)


def test_single_process_helpers_are_no_ops() -> None:
    images = torch.zeros(4, 3, 8, 8)
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard(images)[0] is images
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap(module, torch.device("cpu")) is module
    assert distributed.backend_for(["cuda:0", "cuda:1"]) == "nccl" and distributed.backend_for("cpu") == "gloo"


def test_unsupported_method_and_uneven_batch_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    with pytest.raises(ConfigError, match="anogan.*one worker"):
        distributed.check_supported("anogan", 8)
    with pytest.raises(ConfigError, match="batch_size 10 is the global batch.*4 workers"):
        distributed.check_supported("i3ad", 10)
    distributed.check_supported("i3ad", 8)


def test_workers_setting_is_stated_once_and_checked() -> None:
    assert cfg.load("quick").resources.workers == 1  # the default: the single-process path
    assert cfg.load("quick", [{"resources": {"workers_per_trial": 2}}]).resources.workers == 2
    gpus = cfg.load("quick", [{"resources": {"gpus_per_trial": 4}, "train": {"batch_size": 8}}]).resources
    assert (gpus.workers, gpus.gpus_per_process) == (4, 1.0)
    with pytest.raises(ConfigError, match="whole number"):
        cfg.load("quick", [{"resources": {"gpus_per_trial": 2.5}}])
    with pytest.raises(ConfigError, match="one whole GPU"):
        cfg.load("quick", [{"resources": {"workers_per_trial": 2, "gpus_per_trial": 1}}])
    with pytest.raises(ConfigError, match="batch_size 8 .* global batch of 3"):
        cfg.load("quick", [{"resources": {"workers_per_trial": 3}}])
    cfg.load("quick", [{"resources": {"workers_per_trial": 3}, "methods": ["ref-stats"]}])  # trains on one
