"""The sweep's status line: counts per phase, running trials' steps, ETA; live, plain or quiet."""

from __future__ import annotations

import io
from types import SimpleNamespace

from studies.progress import ConsoleProgress, trial_label


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def trial(trial_id: str, phase: str, model: str, **config) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={"phase": phase, "model": model, **config}, last_result={})


def drive(progress: ConsoleProgress, clock: Clock) -> None:
    a = trial("a", "train", "carpet/i3ad", train={"steps": 300}, method="i3ad")
    b = trial("b", "train", "screw/i3ad", train={"steps": 300}, method="i3ad")
    progress.on_trial_start(0, [], a)
    progress.on_trial_start(0, [], b)
    clock.now = 60.0
    progress.on_trial_result(0, [], a, {"step": 150})
    progress.on_trial_result(0, [], b, {"step": 100})
    progress.on_step_end(0, [])
    clock.now = 120.0
    a.last_result = {"step": 300}
    progress.on_trial_complete(0, [], a)


def test_status_line_counts_steps_and_eta():
    clock = Clock()
    out = io.StringIO()
    progress = ConsoleProgress("val/image_auroc_ssim", {"train": 2, "detect": 20}, live=False, stream=out, clock=clock)
    drive(progress, clock)
    lines = out.getvalue().splitlines()
    # at 60 s: 0.5 + 0.33 of 2 trainings in 60 s -> 84 s left; detection has not started, so its share is unknown
    assert lines[0] == (
        "  progress: train 0/2 done, 2 running (carpet/i3ad step 150/300, screw/i3ad step 100/300), 0 pending"
        " | detect 0/20 done, 0 running, 20 pending | 1m00s, training ETA 1m24s"
    )
    assert lines[1].startswith("  [train 1/2] carpet/i3ad: 300 steps")
    assert lines[2].startswith("  progress: train 1/2 done, 1 running (screw/i3ad step 100/300)")
    assert "\r" not in out.getvalue()  # a log gets plain lines


def test_live_line_redraws_in_place_and_quiet_prints_nothing():
    clock = Clock()
    out = io.StringIO()
    drive(ConsoleProgress("x", {"train": 2}, live=True, stream=out, clock=clock), clock)
    text = out.getvalue()
    assert text.startswith("\r\033[Ktrain 0/2 done") and "\r\033[K  [train 1/2] carpet/i3ad" in text
    quiet = io.StringIO()
    drive(ConsoleProgress("x", {"train": 2}, quiet=True, stream=quiet, clock=clock), clock)
    assert quiet.getvalue() == ""


def test_trial_label_names_the_method_a_shared_model_runs() -> None:
    # ae-l2+proj and aegan+ld trials score the ae-l2 / aegan models: the line names the method, not the model.
    assert trial_label({"model": "carpet/ae-l2", "method": "ae-l2+proj"}) == "carpet/ae-l2+proj"
    assert trial_label({"model": "carpet/aegan/seed1", "method": "aegan+ld"}) == "carpet/aegan+ld/seed1"
    assert trial_label({"model": "carpet/i3ad", "method": "i3ad"}) == "carpet/i3ad"
    assert trial_label({"model": "carpet/i3ad"}) == "carpet/i3ad"
