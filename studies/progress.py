"""The sweep's console: one line per finished trial and a status line, instead of Tune's progress tables.

The status line counts trials done / running / pending per phase, shows the training step (or detection
iteration) of each running trial and an ETA. On a terminal it is one live line redrawn in place; in a log (not a
terminal) it is a plain line every `every` seconds; `quiet` prints only failures.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from ray import tune

from tracking.tune_logger import trial_error


def _train_line(config: dict[str, Any], result: dict[str, Any]) -> str:
    if config.get("method") == "ref-stats":  # statistics of the training normals: no steps
        return "statistics fitted"
    text = f"{result.get('step', '?')} steps"
    losses = [
        f"{k.removeprefix('train/')} {v:.3f}"
        for k, v in result.items()
        if k.startswith("train/loss") and isinstance(v, float)
    ]
    if losses:
        text += ", " + ", ".join(losses[:2])
    if "calibration/threshold" in result:
        text += f", calibrated U={result['calibration/threshold']:.2f}"
    return text


def _detect_line(config: dict[str, Any], result: dict[str, Any], objective: str) -> str:
    settings = []
    if "threshold" in config:
        settings.append(f"U={config['threshold']:.2f}")
    if "patch_size" in config:
        settings.append(f"patch={config['patch_size']}")
    if "stop_eps" in config:
        settings.append(f"eps={config['stop_eps']:g}")
    if "lam" in config:
        settings.append(f"lam={config['lam']:.3g}")
    if "step" in config:  # the projection's and AnoGAN's; the `+ld` scores search lam alone
        settings.append(f"step={config['step']:.3g}")
    text = " ".join(settings) or "fixed settings"
    value = result.get("val/objective_best")
    if value is not None:
        text += f" -> best {objective} {value:.3f} at iteration {int(result.get('val/objective_best_iteration', 0))}"
    if "iterations" in config and result.get("iteration", config["iterations"]) < config["iterations"]:
        text += f" (ASHA stopped it at iteration {result['iteration']})"
    return text


# phase -> the result key of a running trial's position (its target: `train.steps` or `iterations` in its config)
POSITION = {"train": "step", "detect": "iteration"}


def _target(trial_config: dict[str, Any], phase: str) -> int | None:
    if phase == "train":
        return (trial_config.get("train") or {}).get("steps")
    return trial_config.get("iterations")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def trial_label(config: dict[str, Any]) -> str:
    """`carpet/i3ad`: the trial's model key with the method it runs (`carpet/ae-l2+proj` on the ae-l2 model)."""
    model, method = str(config.get("model")), config.get("method")
    parts = model.split("/")
    if len(parts) >= 2 and method and parts[1] != method:
        parts[1] = method
    return "/".join(parts)


class ConsoleProgress(tune.Callback):
    """Prints `[phase n] model: outcome` when a trial ends, and keeps a status line with counts and an ETA.

    Args:
        objective: the metric the detection search maximises (named in the finished-trial lines).
        totals: trials each phase will run (`{"train": 4, "detect": 40}`), for the pending counts and the ETA.
        quiet: print only failures and retries (for logs that want no progress).
        live: redraw one line in place (a terminal); default: whether `stream` is a terminal.
        every: seconds between status lines (live: redraws; otherwise plain lines).
        stream, clock: where to write and the time source (tests pass their own).
    """

    def __init__(
        self,
        objective: str = "",
        totals: dict[str, int] | None = None,
        quiet: bool = False,
        live: bool | None = None,
        every: float | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.objective = objective
        self.done: dict[str, int] = {}
        self.totals = dict(totals or {})
        self.quiet = quiet
        self.stream = stream
        self.live = live if live is not None else bool(getattr(self._out, "isatty", lambda: False)())
        self.every = every if every is not None else (1.0 if self.live else 30.0)
        self.clock = clock
        self.began = clock()
        self.running: dict[str, tuple[str, Any]] = {}  # trial id -> (phase, model)
        self.position: dict[str, tuple[int, int | None]] = {}  # trial id -> (step or iteration, its target)
        self.phase_began: dict[str, float] = {}
        self.shown_at = -float("inf")
        self.shown = ""  # the status line now on screen (live) or last printed

    @property
    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    # ------------------------------------------------------------ lines
    def _write(self, text: str) -> None:
        """A permanent line; the live status line is cleared first and redrawn after."""
        if self.live and self.shown:
            self._out.write("\r\033[K")
        self._out.write(text + "\n")
        if self.live and self.shown:
            self._out.write(self.shown)
        self._out.flush()

    def _print(self, trial: Any, text: str) -> None:
        phase = trial.config.get("phase", "trial")
        self.done[phase] = self.done.get(phase, 0) + 1
        if not self.quiet:
            total = self.totals.get(phase)
            count = f"{self.done[phase]}/{total}" if total else str(self.done[phase])
            self._write(f"  [{phase} {count}] {trial_label(trial.config)}: {text}")

    def status(self) -> str:
        """`train 1/2 done, 1 running (carpet/i3ad step 120/300), 0 pending | detect ... | 2m10s, ETA 4m05s`."""
        parts, etas = [], {}
        for phase in ("train", "detect"):
            ids = [t for t, (p, _) in self.running.items() if p == phase]
            done = self.done.get(phase, 0)
            total = max(self.totals.get(phase, 0), done + len(ids))
            if not total:
                continue
            text = f"{phase} {done}/{total} done, {len(ids)} running"
            positions = []
            for trial_id in ids[:3]:
                at, target = self.position.get(trial_id, (0, None))
                positions.append(
                    f"{self.running[trial_id][1]} {POSITION[phase]} {at}" + (f"/{target}" if target else "")
                )
            if positions:
                text += " (" + ", ".join(positions) + (", ..." if len(ids) > 3 else "") + ")"
            text += f", {total - done - len(ids)} pending"
            parts.append(text)
            if done < total:
                etas[phase] = self._eta(phase, done, ids, total)
        text = " | ".join(parts) + f" | {_duration(self.clock() - self.began)}"
        if etas and all(v is not None for v in etas.values()):
            text += f", ETA {_duration(sum(etas.values()))}"
        elif etas.get("train") is not None:  # no detection trial has run yet: its share is unknown
            text += f", training ETA {_duration(etas['train'])}"
        return text

    def _eta(self, phase: str, done: int, running: list[str], total: int) -> float | None:
        """Seconds left in a phase at its rate so far (finished trials plus the running ones' fractions)."""
        if phase not in self.phase_began:
            return None
        progress = float(done)
        for trial_id in running:
            at, target = self.position.get(trial_id, (0, None))
            progress += min(at / target, 1.0) if target else 0.0
        spent = self.clock() - self.phase_began[phase]
        if progress <= 0 or spent <= 0:
            return None
        return (total - progress) * spent / progress

    def show(self, force: bool = False) -> None:
        """Draw (or print) the status line, at most once per `every` seconds."""
        if self.quiet or (not force and self.clock() - self.shown_at < self.every):
            return
        self.shown_at = self.clock()
        line = self.status()
        if self.live:
            width = shutil.get_terminal_size((120, 20)).columns - 1
            self.shown = line[:width]
            self._out.write("\r\033[K" + self.shown)
        else:
            if line == self.shown:
                return
            self.shown = line
            self._out.write(f"  progress: {line}\n")
        self._out.flush()

    def close(self) -> None:
        """End the live line (the summary starts on a fresh line)."""
        if self.live and self.shown and not self.quiet:
            self._out.write("\n")
            self._out.flush()
        self.shown = ""

    # ------------------------------------------------------------ Tune hooks
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        phase = trial.config.get("phase", "trial")
        self.running[trial.trial_id] = (phase, trial_label(trial.config))
        self.phase_began.setdefault(phase, self.clock())
        self.position.setdefault(trial.trial_id, (0, _target(trial.config, phase)))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        phase = trial.config.get("phase", "trial")
        if phase in POSITION and POSITION[phase] in result:
            self.position[trial.trial_id] = (int(result[POSITION[phase]]), _target(trial.config, phase))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.show()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.close()

    def _ended(self, trial: Any) -> None:
        self.running.pop(trial.trial_id, None)
        self.position.pop(trial.trial_id, None)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)
        result = trial.last_result or {}
        if trial.config.get("phase") == "train":
            self._print(trial, _train_line(trial.config, result))
        else:
            self._print(trial, _detect_line(trial.config, result, self.objective))
        self.show(force=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(
            f"  [{trial.config.get('phase')}] {trial_label(trial.config)} trial {trial.trial_id} failed, retrying: "
            f"{trial_error(trial)}"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)
        phase = trial.config.get("phase", "trial")
        self.done[phase] = self.done.get(phase, 0) + 1
        self._write(
            f"  [{phase} {self.done[phase]}] {trial_label(trial.config)}: trial {trial.trial_id} FAILED: "
            f"{trial_error(trial)}"
        )
