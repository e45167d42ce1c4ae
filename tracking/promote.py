"""Promote the best detector per category into the model registry, behind a held-out gate.

Among a category's `phase=final` runs the candidate is the best by a *validation* metric (search
decisions never look at the held-out split); by default the study's headline (`val/objective`).
Its `detector` model is registered as `i3ad-<category>`; the alias `champion` moves to it only if it
is ahead of the current champion on the held-out gate metric (default `test/objective`) beyond the
noise (`tracking.evidence`: the paired bootstrap interval on the same images, else both runs' own
intervals) and by more than `margin`. The replaced champion keeps the alias `previous`. Each decision
is written into the candidate version's tags (`promotion.*`).

    python -m tracking.promote --experiment NAME [--category C] [--metric val/objective]
        [--gate-metric test/objective] [--margin 0.0] [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from tracking.evidence import metric_value, weigh
from tracking.registry import TrackingError, client_for, detector_uri, final_runs, get_experiment

CHAMPION = "champion"
PREVIOUS = "previous"
DEFAULT_METRIC = "val/objective"
DEFAULT_GATE = "test/objective"


def model_name(category: str) -> str:
    """Registered model name of a category's detector."""
    return f"i3ad-{category}"


@dataclass
class Decision:
    """The outcome of one promotion attempt."""

    category: str
    model_name: str
    version: str
    run_id: str
    promoted: bool
    reason: str
    candidate_value: float
    champion_value: float | None = None
    champion_version: str | None = None

    def line(self) -> str:
        verdict = "PROMOTED" if self.promoted else "kept champion"
        return f"{self.model_name} v{self.version} (run {self.run_id[:8]}): {verdict}: {self.reason}"


_metric = metric_value


def best_run(runs: Sequence[Run], metric: str, category: str) -> Run:
    """The run with the highest `metric` (all our metrics are higher-is-better); ties -> newest."""
    scored = [r for r in runs if _metric(r, metric) is not None]
    if not scored:
        known = sorted({k for r in runs for k in r.data.metrics})
        raise TrackingError(
            f"no final run of {category!r} has metric {metric!r}; metrics logged: {', '.join(known) or 'none'}"
        )
    return max(scored, key=lambda r: (_metric(r, metric), r.info.start_time))


def _alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _register(client: MlflowClient, name: str, run: Run) -> ModelVersion:
    """The version of `name` built from `run`'s detector, registering it if it is not there yet."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            tags={"category": run.data.tags.get("category", "")},
            description=f"I3AD detector for {run.data.tags.get('category')}",
        )
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.run_id == run.info.run_id:
            return version
    uri = detector_uri(client, run)
    model_id = uri.removeprefix("models:/")
    tags = {k: run.data.tags[k] for k in ("category", "method", "category_kind") if k in run.data.tags}
    return client.create_model_version(name, uri, run_id=run.info.run_id, tags=tags, model_id=model_id)


HISTORY_CHARS = 4000  # MLflow keeps tag values up to 5000 characters


def _history(previous: str | None, tags: dict[str, str]) -> str:
    """The version's earlier decisions plus this one, as a JSON list (oldest dropped to fit a tag)."""
    try:
        entries = json.loads(previous) if previous else []
    except json.JSONDecodeError:
        entries = []
    keys = ("decision", "at", "by", "gate_metric", "candidate_value", "champion_value", "champion_version", "margin")
    entries.append({k: tags[f"promotion.{k}"] for k in keys})
    while len(json.dumps(entries)) > HISTORY_CHARS and len(entries) > 1:
        entries.pop(0)
    return json.dumps(entries)


def promote_category(
    client: MlflowClient,
    experiment_id: str,
    category: str,
    metric: str = DEFAULT_METRIC,
    gate_metric: str = DEFAULT_GATE,
    margin: float = 0.0,
) -> Decision:
    """Register the category's best final run and move `champion` to it if it passes the gate."""
    runs = final_runs(client, experiment_id, category)
    if not runs:
        known = sorted({r.data.tags.get("category", "?") for r in final_runs(client, experiment_id)})
        raise TrackingError(
            f"no finished phase=final runs of category {category!r}; "
            f"categories with final runs: {', '.join(known) or 'none'}"
        )
    candidate = best_run(runs, metric, category)
    candidate_gate = _metric(candidate, gate_metric)
    if candidate_gate is None:
        raise TrackingError(f"the best run {candidate.info.run_id} of {category!r} has no gate metric {gate_metric!r}")
    name = model_name(category)
    version = _register(client, name, candidate)
    champion = _alias_version(client, name, CHAMPION)
    champion_value = None
    outcome = None
    if champion is None:
        promoted, reason = True, f"no champion yet; {gate_metric}={candidate_gate:.4f}"
    elif champion.version == version.version:
        promoted, reason = False, f"already the champion ({gate_metric}={candidate_gate:.4f})"
        outcome = "unchanged"
        champion_value = candidate_gate
    else:
        champion_run = client.get_run(champion.run_id) if champion.run_id else None
        champion_value = _metric(champion_run, gate_metric) if champion_run is not None else None
        if champion_value is None:
            promoted, reason = (
                False,
                f"champion v{champion.version} has no {gate_metric} to compare with; promote by hand if intended",
            )
        else:
            evidence = weigh(client, candidate, champion_run, gate_metric, margin)
            promoted = evidence.ahead
            verdict = "ahead of" if promoted else "not ahead of"
            reason = f"{verdict} champion v{champion.version} beyond the noise (margin {margin}): {evidence.reason}"
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    user = getpass.getuser()
    tags = {
        "promotion.decision": outcome or ("promoted" if promoted else "rejected"),
        "promotion.reason": reason,
        "promotion.selection_metric": metric,
        "promotion.selection_value": repr(_metric(candidate, metric)),
        "promotion.gate_metric": gate_metric,
        "promotion.candidate_value": repr(candidate_gate),
        "promotion.champion_value": repr(champion_value),
        "promotion.champion_version": champion.version if champion else "",
        "promotion.margin": repr(margin),
        "promotion.by": user,
        "promotion.at": now,
        "promotion.source_run_id": candidate.info.run_id,
    }
    earlier = client.get_model_version(name, version.version).tags.get("promotion.history")
    tags["promotion.history"] = _history(earlier, tags)
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    if promoted:
        if champion is not None:
            client.set_registered_model_alias(name, PREVIOUS, champion.version)
            client.set_model_version_tag(
                name, champion.version, "promotion.replaced_by", f"v{version.version} at {now} by {user}"
            )
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return Decision(
        category,
        name,
        version.version,
        candidate.info.run_id,
        promoted,
        reason,
        candidate_gate,
        champion_value,
        champion.version if champion else None,
    )


def promote(
    experiment: str,
    category: str | None = None,
    metric: str = DEFAULT_METRIC,
    gate_metric: str = DEFAULT_GATE,
    margin: float = 0.0,
    tracking_uri: str | None = None,
) -> list[Decision]:
    """Promote per category (every category with final runs when `category` is None)."""
    client = client_for(tracking_uri)
    exp = get_experiment(client, experiment)
    if category is not None:
        categories = [category]
    else:
        categories = sorted(
            {r.data.tags["category"] for r in final_runs(client, exp.experiment_id) if "category" in r.data.tags}
        )
        if not categories:
            raise TrackingError(f"experiment {experiment!r} has no finished phase=final runs to promote")
    return [promote_category(client, exp.experiment_id, c, metric, gate_metric, margin) for c in categories]


def promote_sweep(summary: dict[str, Any], margin: float = 0.0) -> list[Decision]:
    """`sweep.py --promote`: promote the sweep's categories on the study's headline.

    Selects by `val/objective` and gates on `test/objective` (the objective's metric on the map chosen
    on val). Prints each decision; raises TrackingError naming every category that could not be
    promoted (after trying them all), so the sweep exits non-zero.
    """
    rows = summary.get("rows") or []
    categories = sorted({row["category"] if isinstance(row, dict) else row.category for row in rows})
    decisions: list[Decision] = []
    errors: list[str] = []
    for category in categories:
        try:
            decisions += promote(
                summary["experiment"], category, DEFAULT_METRIC, DEFAULT_GATE, margin, summary["tracking_uri"]
            )
        except (TrackingError, MlflowException) as exc:
            errors.append(f"{category}: {exc}")
    for decision in decisions:
        print(f"promote: {decision.line()}")
    if not categories:
        errors.append("the sweep finished no category, so there is nothing to promote")
    if errors:
        raise TrackingError("promotion failed for " + "; ".join(errors))
    return decisions


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tracking.promote`: promote and print the decisions; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tracking.promote", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="MLflow experiment (the study) holding phase=final runs")
    parser.add_argument("--category", help="one category (default: every category in the experiment)")
    parser.add_argument(
        "--metric",
        default=DEFAULT_METRIC,
        help=f"validation metric that picks the candidate (default {DEFAULT_METRIC})",
    )
    parser.add_argument(
        "--gate-metric",
        default=DEFAULT_GATE,
        help=f"held-out metric the candidate must win on (default {DEFAULT_GATE})",
    )
    parser.add_argument(
        "--margin", type=float, default=0.0, help="required lead over the champion on the gate metric (default 0)"
    )
    parser.add_argument(
        "--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///$PWD/runs/sweep/mlflow.db"
    )
    args = parser.parse_args(argv)
    try:
        decisions = promote(
            args.experiment, args.category, args.metric, args.gate_metric, args.margin, args.tracking_uri
        )
    except TrackingError as exc:
        print(f"promote: error: {exc}", file=sys.stderr)
        return 2
    for decision in decisions:
        print(decision.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
