"""Fault suite, model folders: a writer killed at every step of a checkpoint, two writers, torn logs, changed settings.

A kill is simulated by raising a BaseException at the chosen point: `save_checkpoint` has no cleanup on
the way out, so the files left behind are exactly those a SIGKILL would leave.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import i3ad.checkpoint
from i3ad.checkpoint import (
    COMMITTING,
    STAGING,
    load_training_state,
    load_weights,
    read_model_info,
    update_model_info,
)
from i3ad.errors import ConfigError
from i3ad.locks import FolderLocked, exclusive
from i3ad.train import read_train_log, train

from .conftest import tiny_config


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it."""


def _kill_at_fsync(monkeypatch: pytest.MonkeyPatch, checkpoint: int, point: int) -> None:
    """Kill at the `point`-th fsync of the `checkpoint`-th checkpoint.

    The fsyncs of one checkpoint, in order: training state, weights, model.json (all staged), the staging
    folder (everything written, not committed), the model folder (committed, files not moved yet).
    """
    real, calls = i3ad.checkpoint._fsync, {"n": 0}
    per_checkpoint = 5

    def fsync(path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == (checkpoint - 1) * per_checkpoint + point:
            raise Killed(path)
        real(path)

    monkeypatch.setattr(i3ad.checkpoint, "_fsync", fsync)


def _kill_while_moving(monkeypatch: pytest.MonkeyPatch, checkpoint: int) -> None:
    """Kill after the first file of the `checkpoint`-th commit has moved into place."""
    real, moved = os.replace, {"n": 0}

    def replace(src, dst):
        if Path(src).parent.name == COMMITTING:
            moved["n"] += 1
            if moved["n"] == (checkpoint - 1) * 3 + 2:
                raise Killed(src)
        return real(src, dst)

    monkeypatch.setattr(i3ad.checkpoint.os, "replace", replace)


def _assert_consistent(folder: Path) -> None:
    """model.json, weights and training state all describe the same step."""
    info = read_model_info(folder)
    state = load_training_state(folder / "training_state.pt")
    weights = load_weights(folder / "weights.safetensors")
    assert info["step"] == state["step"]
    for name, value in weights.items():
        assert torch.equal(value, state["model"][name]), f"{name}: weights and training state differ"


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_weights(a / "weights.safetensors"), load_weights(b / "weights.safetensors")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-6, msg=f"{name} differs after resume")


@pytest.mark.parametrize("point", [1, 2, 3, 4, 5, "moving"])
def test_kill_at_each_step_of_a_later_checkpoint_resumes_to_the_same_weights(
    point: int | str, tiny_data: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "killed"
    with monkeypatch.context() as patch:
        if point == "moving":
            _kill_while_moving(patch, checkpoint=2)
        else:
            _kill_at_fsync(patch, checkpoint=2, point=point)
        with pytest.raises(Killed):
            train(tiny_config(), tiny_data, "carpet", out, progress=False)
    committed = point in (5, "moving")
    info = read_model_info(out)  # a reader finishes an interrupted commit; never mixed steps
    assert info["step"] == (6 if committed else 3) and info["finished"] == committed
    _assert_consistent(out)

    result = train(tiny_config(), tiny_data, "carpet", out, resume=True, progress=False)
    assert result.steps == 6
    assert read_model_info(out)["finished"] and read_model_info(out)["step"] == 6
    assert not (out / STAGING).exists() and not (out / COMMITTING).exists()
    assert not list(out.glob(".*.tmp"))
    _assert_consistent(out)
    _assert_same_weights(tiny_model, out)
    assert [r["step"] for r in read_train_log(out)] == [2, 3, 4, 6]


@pytest.mark.parametrize("point", [2])
def test_kill_in_the_first_checkpoint_leaves_a_folder_that_a_plain_run_or_resume_can_use(
    point: int, tiny_data: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for resume in (False, True):
        out = tmp_path / f"first-{resume}"
        with monkeypatch.context() as patch:
            _kill_at_fsync(patch, checkpoint=1, point=point)
            with pytest.raises(Killed):
                train(tiny_config(), tiny_data, "carpet", out, progress=False)
        assert not (out / "model.json").exists() and not (out / "training_state.pt").exists()
        train(tiny_config(), tiny_data, "carpet", out, resume=resume, progress=False)
        _assert_same_weights(tiny_model, out)


def test_final_state_under_an_unfinished_model_json_is_rewritten_on_resume(tiny_data: Path, tmp_path: Path) -> None:
    # The folder an older i3ad left when killed between the final training state and model.json.
    out = tmp_path / "stuck"
    train(tiny_config(), tiny_data, "carpet", out, progress=False)
    update_model_info(out, step=3, finished=False)
    result = train(tiny_config(), tiny_data, "carpet", out, resume=True, progress=False)
    assert result.steps == 6 and not result.already_finished
    info = read_model_info(out)
    assert info["step"] == 6 and info["finished"]


def test_torn_last_log_line_is_dropped_and_stale_temporaries_removed(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "torn"
    train(tiny_config(steps=3), tiny_data, "carpet", out, progress=False)
    with (out / "train_log.jsonl").open("a") as log:
        log.write('{"step": 4, "loss_g": 0.')
    (out / STAGING).mkdir()
    (out / STAGING / "weights.safetensors").write_bytes(b"half")
    (out / ".training_state.pt.0123456789ab.tmp").write_bytes(b"half")
    assert [r["step"] for r in read_train_log(out)] == [2, 3]
    train(tiny_config(), tiny_data, "carpet", out, resume=True, progress=False)
    assert [r["step"] for r in read_train_log(out)] == [2, 3, 4, 6]
    assert not (out / STAGING).exists() and not list(out.glob(".*.tmp"))


def test_a_corrupt_log_line_that_is_not_the_last_is_named(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "corrupt-log"
    train(tiny_config(steps=3), tiny_data, "carpet", out, progress=False)
    log = out / "train_log.jsonl"
    log.write_text("garbage\n" + log.read_text())
    with pytest.raises(i3ad.checkpoint.CheckpointError, match=r"train_log.jsonl line 1"):
        train(tiny_config(), tiny_data, "carpet", out, resume=True, progress=False)


@pytest.mark.parametrize(
    ("change", "named"),
    [({"seed": 1}, "seed: 0 -> 1"), ({"batch_size": 4}, "batch_size: 2 -> 4"), ({"image_size": 16}, "image_size")],
)
def test_resume_with_changed_settings_is_refused_naming_them(
    change: dict, named: str, tiny_data: Path, tiny_model: Path
) -> None:
    before = json.loads((tiny_model / "model.json").read_text())
    with pytest.raises(ConfigError, match=named):
        train(tiny_config(steps=9, **change), tiny_data, "carpet", tiny_model, resume=True, progress=False)
    assert json.loads((tiny_model / "model.json").read_text()) == before


def test_resume_past_the_saved_step_count_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ahead"
    train(tiny_config(), tiny_data, "carpet", out, progress=False)
    update_model_info(out, finished=False)
    with pytest.raises(ConfigError, match="step 6, past steps=3"):
        train(tiny_config(steps=3), tiny_data, "carpet", out, resume=True, progress=False)


def test_second_writer_gets_an_error_naming_the_holder(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    with exclusive(out, "first writer"):
        with pytest.raises(FolderLocked, match=rf"process {os.getpid()} on .*first writer"):
            train(tiny_config(seed=1), tiny_data, "carpet", out, progress=False)
    assert not (out / "model.json").exists()
    train(tiny_config(), tiny_data, "carpet", out, progress=False)  # free again once the holder is gone
    assert not (out / ".lock.holder.json").exists()
    with exclusive(out, "a calibration"), pytest.raises(FolderLocked, match="a calibration"):
        update_model_info(out, calibration={})


def test_cli_resume_keeps_saved_settings_and_refuses_a_changed_flag(
    tiny_model: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from i3ad.cli import main

    args = ["train", "--data-root", str(tiny_data), "--category", "carpet", "--out", str(tiny_model), "--resume"]
    assert main([*args, "--no-progress"]) == 0  # nothing given: the saved settings, already finished
    assert "nothing to do" in capsys.readouterr().out
    assert main([*args, "--no-progress", "--batch-size", "4"]) == 2
    assert "batch_size: 2 -> 4" in capsys.readouterr().err
