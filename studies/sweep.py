"""`python studies/sweep.py`: a study of detection methods per image category, recorded in MLflow.

Trains per category (phase A), searches detection settings on the validation split (phase B), evaluates
the best setting once on the held-out split, and records everything in MLflow.

With no arguments it runs the quick study (`studies/configs/quick.yaml`) on the built-in synthetic
data on a local Ray instance. See `--help` and docs/architecture.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
import ray

from i3ad.data import MVTecCategory, TestSet
from i3ad.errors import ConfigError, I3ADError, root_message
from studies import config as cfg
from studies.config import SweepConfig
from studies.data import check_data, ensure_synthetic, load_split, resolve_root, split, user_kinds
from studies.final import Choice, choose, evaluate_finals, failure, group_name, log_final
from studies.ledger import FinishedTrials
from studies.phases import SweepSetup, budget, result_config, train_configs
from studies.phases import run as run_experiment
from studies.progress import ConsoleProgress
from studies.report import markdown, render
from studies.search import KEY, PHASE, REPEAT, model_methods
from studies.state import SweepPaths, SweepState
from studies.trainables import EvalSplit, Runtime, SweepContext
from studies.trial_history import KeepTrialHistory
from tracking.layout import log_results
from tracking.store import SWEEP_KIND_TAG, Store, is_local_store, resolve_tracking_uri
from tracking.tune_logger import MlflowTrialLogger

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's boxed progress output would drown the summary
# Snapshots forced by CheckpointConfig(num_to_keep) are intended here; do not warn about them.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

log = logging.getLogger("studies.sweep")

# flag -> config key; a flag left out keeps the config's value
FLAG_KEYS = {
    "data_root": "data.root",
    "categories": "categories",
    "num_samples": "search.num_samples",
    "ray_address": "ray.address",
    "storage_path": "ray.storage_path",
    "tracking_uri": "tracking.uri",
    "experiment": "tracking.experiment",
    "gpus_per_trial": "resources.gpus_per_trial",
    "cpus_per_trial": "resources.cpus_per_trial",
    "workers_per_trial": "resources.workers_per_trial",
    "max_concurrent": "resources.max_concurrent",
    "seed": "seed",
    "workdir": "workdir",
}
RESUME_MAY_CHANGE = {"ray.address", "workdir"}  # how to reach the cluster and the sweep, not what it computes


class Interrupted(Exception):
    """The Tune experiment ended before all its trials did (Ctrl+C); the sweep can be resumed."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python studies/sweep.py` / `i3ad-sweep`."""
    parser = argparse.ArgumentParser(
        prog="python studies/sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="quick", help="quick (default), mvtec, or a YAML file")
    parser.add_argument("--data-root", help="dataset root in the MVTec AD layout (default: built-in synthetic data)")
    parser.add_argument("--categories", help="comma-separated categories (default: the config's)")
    parser.add_argument("--num-samples", type=int, help="detection trials per (category, method)")
    parser.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    parser.add_argument("--storage-path", help="Tune storage for checkpoints and results: s3://... or a shared path")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<workdir>/mlflow.db)")
    parser.add_argument("--experiment", help="MLflow experiment (default: the study name)")
    parser.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs per trial; fractions share a GPU (e.g. 0.25); N > 1: N data-parallel GPU workers per model",
    )
    parser.add_argument(
        "--workers-per-trial",
        type=int,
        help="data-parallel workers per training trial (default 1); train.batch_size is their global batch",
    )
    parser.add_argument("--cpus-per-trial", type=int, help="CPUs per trial (also torch threads)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: what the cluster fits)")
    parser.add_argument("--seed", type=int, help="seed for training, splits of the search and Optuna")
    parser.add_argument("--workdir", help="working folder: MLflow store, data cache, sweeps (default runs/sweep)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set detect.iterations=10 (YAML value; repeatable)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="SWEEP_ID",
        help="continue the latest (or the named) sweep in the workdir after an interruption",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress line (for logs): print the header, failures and the summary only",
    )
    parser.add_argument(
        "--promote",
        action="store_true",
        help="at the end, register each category's best detector and move its `champion` alias "
        "if it wins on the held-out split",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The --config file <- --set overrides <- named flags."""
    overrides = [cfg.parse_override(text) for text in args.overrides]
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            if flag == "categories":
                value = [c.strip() for c in value.split(",") if c.strip()]
            overrides.append(cfg.nested(key, value))
    return cfg.load(args.config, overrides)


# ---------------------------------------------------------------- setup


def start_ray(config: SweepConfig) -> bool:
    """Join `ray.address` or start a fresh local instance; True when this call started Ray."""
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    address = config.ray.address
    if address:
        import i3ad
        import studies
        import tracking

        # The cluster runs this checkout's code, whatever its image holds.
        ray.init(address=address, runtime_env={"py_modules": [i3ad, studies, tracking]}, **quiet)
    else:
        store_mb = config.ray.object_store_mb
        ray.init(address="local", object_store_memory=store_mb * 2**20 if store_mb else None, **quiet)
    return True


def slots(config: SweepConfig) -> int:
    """Trials at once: `max_concurrent`, else as many as the cluster's CPUs/GPUs fit."""
    res = config.resources
    if res.max_concurrent is not None:
        return res.max_concurrent
    total = ray.cluster_resources()
    fit = int(total.get("CPU", 1) // res.cpus_per_trial)
    if res.gpus_per_trial > 0:
        if total.get("GPU", 0) < res.gpus_per_trial and not config.ray.address:
            raise ConfigError(
                f"--gpus-per-trial {res.gpus_per_trial} but this machine has {total.get('GPU', 0):g} GPU(s) "
                "visible to Ray; use --gpus-per-trial 0 or join a GPU cluster with --ray-address"
            )
        fit = min(fit, int(total.get("GPU", 0) / res.gpus_per_trial + 1e-9))
    return max(1, fit)


def evaluation_split(test_set: TestSet) -> EvalSplit:
    """The arrays of a loaded split, as trials receive them."""
    return EvalSplit(test_set.images, test_set.masks, test_set.labels)


def quiet_logs() -> None:
    """Keep Ray, MLflow and Optuna to warnings: the sweep prints its own progress."""
    for name in ("ray", "ray.tune", "ray.train", "mlflow", "alembic", "optuna", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


class Driver:
    """One sweep, from config to summary. State survives in `state.json` and the MLflow parent run."""

    def __init__(
        self, config: SweepConfig, paths: SweepPaths, state: SweepState, store: Store, echo: Callable[[str], None]
    ) -> None:
        self.config = config
        self.paths = paths
        self.state = state
        self.store = store
        self.echo = echo
        self.failures: list[dict[str, Any]] = []
        self.began = time.monotonic()
        self.stats: dict[str, Any] = {}
        self.quiet = False  # no progress lines (`--quiet`)

    def timed(self, name: str, began: float) -> float:
        self.state.timings[name] = round(time.monotonic() - began, 2)
        self.save()
        return self.state.timings[name]

    def save(self) -> None:
        self.state.save(self.paths.state)

    # ------------------------------------------------------------ the sweep
    def run(self) -> dict[str, Any]:
        began = time.monotonic()
        config = self.config
        data_root, synthetic = resolve_root(config, Path(config.workdir))
        synthetic_args = (
            {"params": config.data.synthetic.model_dump(), "categories": config.categories} if synthetic else None
        )
        if synthetic:
            ensure_synthetic(data_root, **synthetic_args)
        for name in config.categories:
            MVTecCategory(data_root, name)  # a missing category is a typo: stop before starting anything
        configs = train_configs(config, synthetic, user_kinds(config, data_root))
        vals = {key: evaluation_split(t) for key, t in self.load_splits(data_root, configs, "val").items()}
        configs = [c for c in configs if c[KEY] in vals]
        res = config.resources
        setup = SweepSetup(
            config,
            self.state.storage,
            {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_process},
            slots(config),
            f"{config.study}-{self.state.sweep_id}",
            workers=res.workers,
        )
        runtime = Runtime(
            cpus=res.cpus_per_trial,
            device="cuda" if res.gpus_per_trial > 0 else "cpu",
            workers=res.workers,
            max_failures=config.ray.max_failures,
            checkpoints_to_keep=config.ray.checkpoints_to_keep,
        )
        context = SweepContext(
            str(data_root),
            self.state.storage,
            runtime,
            config.calibration,
            config.detect,
            config.projection,
            config.search.objective,
            vals,
            synthetic_args,
        )
        self.timed("data", began)
        self.echo(
            f"data: {data_root} ({'synthetic' if synthetic else 'MVTec layout'}); "
            f"{setup.max_concurrent} trial(s) at once"
        )
        if configs:
            self.search(setup, context, configs)
        return self.finish()

    def load_splits(self, data_root: Path, configs: list[dict[str, Any]], part: str) -> dict[str, TestSet]:
        """One split per model key, at the model's image size; a category that cannot be read is a failure."""
        data = self.config.data
        loaded: dict[tuple[str, int], TestSet] = {}
        out = {}
        for c in configs:
            size = c["train"]["image_size"]
            try:
                if (c["category"], size) not in loaded:
                    category = MVTecCategory(data_root, c["category"])
                    items = split(category, data.val_fraction, data.split_seed)[part]
                    loaded[c["category"], size] = load_split(data_root, c["category"], items, size)
                out[c[KEY]] = loaded[c["category"], size]
            except I3ADError as exc:
                self.failures.append(failure("data", c, None, f"{type(exc).__name__}: {exc}"))
        return out

    def search(self, setup: SweepSetup, context: SweepContext, configs: list[dict[str, Any]]) -> None:
        """Phases A and B (one Tune experiment), then the final evaluation."""
        began = time.monotonic()
        search = self.config.search
        if not self.state.done("search"):
            self.echo(f"phase A: training {len(configs)} model(s): {', '.join(c[KEY] for c in configs)}")
            self.echo(
                f"phase B: each model's detection search starts when it is trained: up to {search.num_samples} "
                f"trial(s) on the validation split, each to N = {self.config.detect.iterations} under ASHA, "
                f"objective {search.objective}"
            )
        ledger = FinishedTrials(setup.storage)  # first: it records a finished trial before MLflow hears of it
        logger = MlflowTrialLogger(
            self.store.uri,
            self.state.experiment_id,
            self.state.parent_run_id,
            step_keys={"train": "step", "detect": "iteration"},
            target_keys={"detect": "iterations"},
            skip=ledger.finished_earlier,
        )
        totals = {
            "train": len(configs),
            "detect": sum(budget(self.config, method) for c in configs for method in model_methods(c)),
        }
        progress = ConsoleProgress(search.objective, totals, quiet=self.quiet)
        outcome = run_experiment(
            setup,
            context,
            configs,
            [ledger, KeepTrialHistory(), logger, progress],
            finished=self.state.done("search"),
        )
        if not outcome.complete:
            raise Interrupted("search")
        self.state.mark("search")
        self.record(outcome.results, self.timed("search", began), setup.max_concurrent)
        choices, failures = choose(outcome.results)
        self.failures += failures
        for c in configs:
            for method in model_methods(c):  # every method searched on the model (ae-l2, ae-l2+proj)
                group = group_name(c["category"], method, c.get(REPEAT))
                if group not in choices and not any(
                    f.get("category") == c["category"] and f.get("method") in (method, c["method"])
                    for f in self.failures
                ):
                    self.failures.append(
                        failure("detect", {**c, "method": method}, None, "no detection trial finished")
                    )
        self.final(setup, context, configs, choices)

    def final(
        self, setup: SweepSetup, context: SweepContext, configs: list[dict[str, Any]], choices: dict[str, Choice]
    ) -> None:
        began = time.monotonic()
        pending = {g: c for g, c in choices.items() if g not in self.state.finals}
        if not pending:
            return
        self.echo(f"final: evaluating {len(pending)} chosen setting(s) once on the held-out test split")
        chosen = [c for c in configs if c[KEY] in {choice.model for choice in pending.values()}]
        test_sets = self.load_splits(Path(context.data_root), chosen, "test")
        pending = {g: c for g, c in pending.items() if c.model in test_sets}
        tests = {key: evaluation_split(t) for key, t in test_sets.items()}
        remote = self.config.ray.address is not None
        compute, intervals, logged = 0.0, 0.0, {}
        # MLflow logging (model packaging, plots) of one category overlaps the evaluation of the next.
        with ThreadPoolExecutor(max_workers=1) as background:
            for group, outcome, failed in evaluate_finals(pending, context, tests, setup.resources, remote):
                if failed is not None:
                    self.failures.append(failed)
                    continue
                choice = pending[group]
                compute += outcome.seconds
                intervals += outcome.test.report.get("interval_seconds", 0.0) + outcome.val.get("interval_seconds", 0.0)
                logged[group] = background.submit(
                    log_final,
                    self.store,
                    self.state.experiment_id,
                    self.state.parent_run_id,
                    choice,
                    outcome,
                    context,
                    test_sets[choice.model],
                    self.paths.models,
                    self.config.data,
                    self.config.decision,
                )
            for group, future in logged.items():
                self.state.finals[group] = asdict(future.result())
                self.save()
        self.stats["final"] = {
            "wall_s": self.timed("final", began),
            "compute_s": round(compute, 3),
            "interval_s": round(intervals, 3),  # of compute_s: the bootstrap intervals of both splits
            "evaluations": len(logged),
            "in_driver": not remote,
        }

    def record(self, results: Any, wall: float, slots: int) -> None:
        """Compute time the trials measured, per phase (for the summary and the overhead benchmark)."""
        self.stats["search"] = {"wall_s": wall, "slots": slots}
        for phase in ("train", "detect"):
            last = [r.metrics or {} for r in results if result_config(r).get(PHASE) == phase]
            self.stats[phase] = {
                "trials": len(last),
                "trial_compute_s": round(sum(m.get("time/compute_s", 0.0) for m in last), 3),
                "trial_setup_s": round(sum(m.get("time/setup_s", 0.0) for m in last), 3),
                "trial_report_s": round(sum(m.get("time/report_s", 0.0) for m in last), 3),
                "generator_passes": int(sum(m.get("val/generator_passes", 0) for m in last)),
            }

    # ------------------------------------------------------------ the end
    def finish(self) -> dict[str, Any]:
        self.state.failures = self.failures
        self.save()
        summary = {
            "sweep_id": self.state.sweep_id,
            "study": self.config.study,
            "objective": self.config.search.objective,
            "rows": [self.state.finals[g] for g in sorted(self.state.finals)],
            "failures": self.failures,
            "tracking_uri": self.store.uri,
            "experiment": self.config.tracking.experiment or self.config.study,
            "experiment_id": self.state.experiment_id,
            "parent_run_id": self.state.parent_run_id,
            "storage": self.state.storage,
            "folder": str(self.paths.folder),
            "wall_seconds": round(time.monotonic() - self.began, 2),
            "timings": self.state.timings,
            "stats": self.stats,
            "attempts": self.state.attempts,
        }
        (self.paths.folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        (self.paths.folder / "summary.md").write_text(markdown(summary))
        parent = self.state.parent_run_id
        self.store.call("log_artifact", parent, str(self.paths.folder / "summary.json"))
        self.store.call("log_artifact", parent, str(self.paths.folder / "summary.md"))
        self.store.call("set_tag", parent, "failures", str(len(self.failures)))
        log_results(self.store, self.state.experiment_id, parent, summary["rows"])
        self.store.finish(parent, "FINISHED")
        self.echo("\n" + render(summary))
        return summary


# ---------------------------------------------------------------- entry points


def open_sweep(
    config: SweepConfig, resume: bool | str, echo: Callable[[str], None], check_config: bool = True
) -> Driver:
    """Create a new sweep (folder, MLflow parent run, state) or reopen the one to resume."""
    workdir = Path(config.workdir).expanduser().resolve()
    if resume:
        paths = SweepPaths.latest(workdir, None if resume is True else str(resume))
        saved = cfg.load(paths.config)
        changed = [k for k in cfg.differences(saved, config) if k not in RESUME_MAY_CHANGE]
        if changed and check_config:
            raise ConfigError(
                f"--resume continues sweep {paths.sweep_id} with its saved config ({paths.config}); "
                f"these settings differ: {', '.join(changed)}. Repeat the original command with --resume, "
                "or give only --resume (and --workdir / --ray-address)"
            )
        config = saved.model_copy(update={"ray": saved.ray.model_copy(update={"address": config.ray.address})})
        state = SweepState.load(paths.state)
        state.attempts += 1
        store = Store(state.tracking_uri)
        mlflow.set_tracking_uri(state.tracking_uri)
        store.reopen(state.parent_run_id)
        closed = store.close_open_children(state.experiment_id, state.parent_run_id)
        echo(
            f"resuming sweep {paths.sweep_id} (attempt {state.attempts}); "
            f"closed {closed} run(s) the last attempt left open"
        )
        return Driver(config, paths, state, store, echo)

    paths = SweepPaths.create(workdir)
    sweep_id = paths.sweep_id
    try:
        config = config.model_copy(update={"workdir": str(workdir)})
        paths.config.write_text(config.dump())
        uri = resolve_tracking_uri(config.tracking.uri, workdir)
        mlflow.set_tracking_uri(uri)
        store = Store(uri)
        experiment = config.tracking.experiment or config.study
        experiment_id = store.experiment(experiment, workdir / "mlartifacts" if is_local_store(uri) else None)
        tags = {SWEEP_KIND_TAG: "sweep", "sweep_id": sweep_id, "study": config.study}
        parent = store.start_run(experiment_id, f"sweep-{sweep_id}", tags)
        params = [mlflow.entities.Param(k, str(v)[:500]) for k, v in config.flat().items()]
        for start in range(0, len(params), 100):
            store.call("log_batch", parent, params=params[start : start + 100])
        store.call("log_artifact", parent, str(paths.config))
        storage = paths.storage(config.ray.storage_path, config.study)
        state = SweepState(sweep_id, uri, experiment_id, parent, storage)
        state.save(paths.state)
    except BaseException:
        shutil.rmtree(paths.folder, ignore_errors=True)  # no orphan folder without a state.json
        raise
    paths.mark_latest()
    echo(f"sweep {sweep_id}: study {config.study!r}, folder {paths.folder}, MLflow {uri} (experiment {experiment!r})")
    return Driver(config, paths, state, store, echo)


def run_sweep(
    config: SweepConfig,
    resume: bool | str = False,
    echo: Callable[[str], None] = print,
    check_config: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run (or resume) a sweep and return its summary; raises Interrupted if a phase was stopped.

    On resume the saved config is used; with `check_config`, a `config` that differs from it (beyond
    where the sweep lives and how to reach the cluster) is an error rather than silently ignored.
    `quiet` drops the progress lines (finished trials and the status line); failures are still printed.
    """
    began = time.monotonic()
    if not resume:  # errors first: a wrong data root or category creates no folder, store or run
        check_data(config, Path(config.workdir).expanduser().resolve())
    quiet_logs()
    driver = open_sweep(config, resume, echo, check_config)
    driver.quiet = quiet
    started = start_ray(driver.config)
    driver.state.timings["startup"] = round(time.monotonic() - began, 2)
    try:
        return driver.run()
    except (Interrupted, KeyboardInterrupt) as exc:
        where = str(exc) if isinstance(exc, Interrupted) else "final"
        driver.state.failures = driver.failures
        driver.save()
        driver.store.close_open_children(driver.state.experiment_id, driver.state.parent_run_id)
        driver.store.call("set_tag", driver.state.parent_run_id, "interrupted_in", where)
        driver.store.finish(driver.state.parent_run_id, "KILLED")
        raise Interrupted(where) from None
    except BaseException as exc:
        driver.store.call("set_tag", driver.state.parent_run_id, "error", root_message(exc)[:5000])
        driver.store.finish(driver.state.parent_run_id, "FAILED")
        raise
    finally:
        if started:
            ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one clear line and exit with status 2, an interruption with 130.

    A sweep that ran but where any category (or method) failed exits with status 1.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        explicit = (
            bool(args.overrides)
            or args.config != "quick"
            or any(getattr(args, flag) is not None for flag, key in FLAG_KEYS.items() if key not in RESUME_MAY_CHANGE)
        )
        summary = run_sweep(config, resume=args.resume, check_config=explicit, quiet=args.quiet)
        failed = failed_groups(summary)
        if failed:
            print(
                f"sweep: {len(failed)} of the sweep's categories/methods failed ({', '.join(failed)}); "
                "see the failures in the summary above",
                file=sys.stderr,
            )
        if args.promote:
            from tracking.promote import promote_sweep
            from tracking.registry import TrackingError

            try:
                promote_sweep(summary)
            except TrackingError as exc:
                print(f"sweep: promote: error: {exc}", file=sys.stderr)
                return 1
    except Interrupted as exc:
        print(
            f"\nsweep interrupted during phase {exc}; continue it with: python studies/sweep.py --resume "
            f"--workdir {Path(config.workdir).resolve()}",
            file=sys.stderr,
        )
        return 130
    except I3ADError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def failed_groups(summary: dict[str, Any]) -> list[str]:
    """`category/method` (or the category, or the stage) of each failure in a sweep summary, sorted."""
    names = set()
    for f in summary.get("failures", []):
        names.add("/".join(str(f[k]) for k in ("category", "method") if f.get(k)) or str(f.get("phase", "?")))
    return sorted(names)


if __name__ == "__main__":
    sys.exit(main())
