"""The sweep's MLflow run tree: sweep -> (category, method) model run -> its trials and its final run.

MLflow nests runs by the `mlflow.parentRunId` tag. Every run below the sweep also carries the sweep's
run id in `SWEEP_RUN_TAG`, so a sweep's runs are found (and closed after a crash) at any depth. Names are
short enough for the UI's name column: `carpet·i3ad`, `carpet·i3ad·train`, `carpet·i3ad·t07`,
`carpet·i3ad·final` (with `·s1` after the method for one seed of a study with `repeats`).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from typing import Any

from mlflow.entities import Metric, RunTag

from tracking.store import SWEEP_KIND_TAG, SWEEP_RUN_TAG, Store

GROUP_TAG = "group"  # `category/method` of a model run and of every run under it
SEP = "·"
log = logging.getLogger(__name__)

HEADLINE = ("val/objective", "test/objective")
TABLE = "results.json"  # the parent run's results table (mlflow.log_table)


def group_key(category: Any, method: Any) -> str:
    """The model run a trial or final belongs to: one per (category, method); repeats share it."""
    return f"{category}/{method}"


def run_name(category: Any, method: Any, *parts: Any) -> str:
    """`carpet·i3ad`, `carpet·i3ad·t07`: the parts that are set, joined by a middle dot."""
    return SEP.join(str(p) for p in (category, method, *parts) if p not in (None, ""))


def trial_label(number: int) -> str:
    """`t07` for a group's seventh trial."""
    return f"t{number:02d}"


def seed_label(seed: Any) -> str | None:
    """`s1` for a repeat's seed, None without repeats."""
    return None if seed is None else f"s{seed}"


def model_run(store: Store, experiment_id: str, sweep_run_id: str, category: str, method: str, kind: str = "") -> str:
    """The id of the (category, method) model run under the sweep, created on first use."""
    group = group_key(category, method)
    found = store.children(
        experiment_id, sweep_run_id, f"tags.`{SWEEP_KIND_TAG}` = 'model' and tags.{GROUP_TAG} = '{group}'"
    )
    if found:
        return found[0].info.run_id
    tags = {
        SWEEP_KIND_TAG: "model",
        GROUP_TAG: group,
        SWEEP_RUN_TAG: sweep_run_id,
        "category": str(category),
        "method": str(method),
        **({"category_kind": kind} if kind else {}),
    }
    return store.start_run(experiment_id, run_name(category, method), tags, sweep_run_id)


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def results_table(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The parent's results table, one line per final: who, the headline on val and test with its interval."""
    columns = (
        "run",
        "category",
        "kind",
        "method",
        "seed",
        "map",
        "val/objective",
        "test/objective",
        "test/objective_ci_low",
        "test/objective_ci_high",
        "trials",
        "stopped_early",
        "test_images",
    )
    table: dict[str, list[Any]] = {c: [] for c in columns}
    for row in rows:
        split = {"val": row.get("val", {}), "test": row.get("test", {})}
        values = {
            "run": run_name(row["category"], row["method"], seed_label(row.get("seed")), "final"),
            "category": row["category"],
            "kind": row.get("kind"),
            "method": row["method"],
            "seed": row.get("seed"),
            "map": row.get("map"),
            "val/objective": split["val"].get("objective"),
            "test/objective": split["test"].get("objective"),
            "test/objective_ci_low": split["test"].get("objective_ci_low"),
            "test/objective_ci_high": split["test"].get("objective_ci_high"),
            "trials": row.get("trials"),
            "stopped_early": row.get("stopped_early"),
            "test_images": row.get("test_images"),
        }
        for column in columns:
            table[column].append(values[column])
    return table


def headline(rows: Sequence[dict[str, Any]]) -> tuple[dict[str, float], str | None]:
    """The headline metrics over `rows` (their mean; the value itself for one row) and their map(s)."""
    metrics = {}
    for name in HEADLINE:
        split, key = name.split("/")
        value = _mean([float(r[split]["objective"]) for r in rows if "objective" in r.get(split, {})])
        if value is not None:
            metrics[name] = value
    maps = sorted({str(r["map"]) for r in rows if r.get("map")})
    return metrics, ",".join(maps) or None


def log_results(store: Store, experiment_id: str, sweep_run_id: str, rows: Sequence[dict[str, Any]]) -> None:
    """At the end of a sweep: the headline and map on each model run and on the parent, the table on the parent.

    The parent's `val/objective` and `test/objective` are the means over its finals (`finals` says how many).
    Model runs are closed FINISHED (a finished sweep leaves no open run). The numbers are already in the
    final runs and the summary, so a failure here is logged, not raised.
    """
    try:
        _log_results(store, experiment_id, sweep_run_id, rows)
    except Exception as exc:  # noqa: BLE001 - a summary view; never fail a finished sweep for it
        log.warning("could not log the results table and headlines on the sweep's runs: %s", exc)


def _log_headline(store: Store, run_id: str, rows: Sequence[dict[str, Any]], now: int) -> None:
    """The headline of `rows` (mean over their finals), their map(s) and how many finals, on one run."""
    metrics, maps = headline(rows)
    store.call(
        "log_batch",
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
        tags=[RunTag("map", maps or ""), RunTag("finals", str(len(rows)))],
    )


def _log_results(store: Store, experiment_id: str, sweep_run_id: str, rows: Sequence[dict[str, Any]]) -> None:
    now = int(time.time() * 1000)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(group_key(row["category"], row["method"]), []).append(row)
    for group, members in groups.items():
        category, method = group.split("/", 1)
        run_id = model_run(store, experiment_id, sweep_run_id, category, method, str(members[0].get("kind") or ""))
        _log_headline(store, run_id, members, now)
    for run in store.children(experiment_id, sweep_run_id, f"tags.`{SWEEP_KIND_TAG}` = 'model'"):
        if run.info.status != "FINISHED":  # also one an interrupted attempt closed, now that the sweep is done
            store.finish(run.info.run_id)
    _log_headline(store, sweep_run_id, rows, now)
    if rows:
        store.call("log_table", sweep_run_id, data=results_table(rows), artifact_file=TABLE)
