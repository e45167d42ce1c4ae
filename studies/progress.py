"""One console line per finished trial, instead of Tune's progress tables."""

from __future__ import annotations

import sys
from typing import Any

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


class ConsoleProgress(tune.Callback):
    """Prints `[phase n] model: outcome` when a trial ends."""

    def __init__(self, objective: str = "") -> None:
        self.objective = objective
        self.done: dict[str, int] = {}

    def _print(self, trial: Any, text: str) -> None:
        phase = trial.config.get("phase", "trial")
        self.done[phase] = self.done.get(phase, 0) + 1
        print(f"  [{phase} {self.done[phase]}] {trial.config.get('model')}: {text}", file=sys.stdout, flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if trial.config.get("phase") == "train":
            self._print(trial, _train_line(trial.config, result))
        else:
            self._print(trial, _detect_line(trial.config, result, self.objective))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(
            f"  [{trial.config.get('phase')}] {trial.config.get('model')} trial {trial.trial_id} failed, retrying: "
            f"{trial_error(trial)}",
            flush=True,
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._print(trial, f"trial {trial.trial_id} FAILED: {trial_error(trial)}")
