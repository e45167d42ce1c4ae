"""Compare methods across categories on the held-out split, like the paper's Table 1.

One block per metric, the study's headline (`test/objective`) first: rows are categories grouped into
textures and objects (tag `category_kind`) with each group's mean and the overall mean; columns are the
methods present. Every value carries its 95% bootstrap interval (or, for a study with `repeats`, the
mean and spread over seeds). A row's best is marked only when it is ahead of every other method beyond
the noise (`tracking.evidence`: the paired interval on the same images); otherwise the tied methods are
marked as such. Values come from the `phase=final` runs of the latest sweep per (category, method). A
mean is left empty when a method lacks the value for any category of its group, so no mean silently
covers fewer categories than its neighbours.

    python -m tracking.compare --experiment NAME [--format table|csv|markdown] [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run

from i3ad.intervals import Interval
from i3ad.scorers import METHOD_NAMES
from tracking.evidence import metric_value, run_interval, weigh
from tracking.registry import TrackingError, client_for, final_runs, get_experiment

PARENT = "mlflow.parentRunId"

METRIC_KEYS = ("image_auroc_ssim", "image_auroc_l2", "pixel_auroc_ssim", "pixel_auroc_l2", "pro_ssim", "pro_l2")
HEADLINE = "test/objective"
METRICS = (HEADLINE, *(f"test/{k}" for k in METRIC_KEYS))
METHOD_ORDER = METHOD_NAMES
KIND_ORDER = ("texture", "object", "unknown")
KIND_TITLES = {"texture": "textures", "object": "objects", "unknown": "other"}
Z = 1.959964  # two-sided 95% normal quantile, for means over categories


@dataclass
class Cell:
    """One method's number in a row: a value, its 95% interval, and the seeds behind it."""

    value: float
    interval: Interval | None = None
    seeds: list[float] = field(default_factory=list)  # per-seed values when a study ran `repeats` > 1
    runs: list[Run] = field(default_factory=list)
    error: float | None = None  # the standard error behind a normal-approximation interval (before clipping)

    @property
    def spread(self) -> float | None:
        return statistics.stdev(self.seeds) if len(self.seeds) > 1 else None

    @property
    def standard_error(self) -> float | None:
        """From the interval (the held-out images' noise) and, over seeds, the seeds' spread as well."""
        if self.error is not None:
            return self.error
        return None if self.interval is None else self.interval.width / (2 * Z)


@dataclass
class Row:
    """One table row: a category or a mean; `cells` maps method -> Cell (None when missing)."""

    group: str  # texture | object | unknown | all
    label: str  # category name or "mean"
    cells: dict[str, Cell | None]
    leader: str | None = None  # the method with the highest value
    ahead: bool = False  # the leader is ahead of the runner-up beyond the noise (else a tie)
    evidence: str = ""

    @property
    def values(self) -> dict[str, float | None]:
        return {m: None if c is None else c.value for m, c in self.cells.items()}

    def best(self) -> list[str]:
        """The method ahead of every other beyond the noise; [] when the top two are tied."""
        return [self.leader] if self.leader is not None and self.ahead else []

    def tied(self) -> list[str]:
        """The methods whose value is within the noise of the leader's (the leader included)."""
        if self.leader is None or self.ahead:
            return []
        return sorted(m for m, c in self.cells.items() if c is not None and m in self.tie)

    tie: set[str] = field(default_factory=set)  # filled by the judge: the leader and those within its noise


@dataclass
class Comparison:
    """Rows per metric, the methods (column order) and the runs behind the numbers."""

    methods: list[str]
    blocks: dict[str, list[Row]]
    runs_used: int
    seeds: int = 1


def latest_runs(runs: Sequence[Run]) -> dict[tuple[str, str], list[Run]]:
    """Per (category, method): the most recently started run, with its sibling seeds from the same sweep."""
    latest: dict[tuple[str, str], Run] = {}
    for run in runs:
        key = (run.data.tags.get("category", "?"), run.data.tags.get("method", "?"))
        if key not in latest or run.info.start_time > latest[key].info.start_time:
            latest[key] = run
    chosen: dict[tuple[str, str], list[Run]] = {}
    for key, run in latest.items():
        parent = run.data.tags.get(PARENT)
        if "seed" not in run.data.tags or parent is None:
            chosen[key] = [run]
            continue
        siblings = {}
        for other in runs:
            same = (other.data.tags.get("category"), other.data.tags.get("method")) == key
            if same and other.data.tags.get(PARENT) == parent and "seed" in other.data.tags:
                siblings.setdefault(other.data.tags["seed"], other)
        chosen[key] = sorted(siblings.values(), key=lambda r: int(r.data.tags["seed"]))
    return chosen


def _order(methods: set[str]) -> list[str]:
    return [m for m in METHOD_ORDER if m in methods] + sorted(methods - set(METHOD_ORDER))


def _cell(runs: list[Run] | None, metric: str) -> Cell | None:
    if not runs:
        return None
    values = [metric_value(run, metric) for run in runs]
    if any(v is None for v in values):
        return None
    if len(runs) == 1:
        return Cell(values[0], run_interval(runs[0], metric), runs=runs)
    # Over seeds: the seeds' spread plus the held-out images' noise, which more seeds do not shrink.
    mean = statistics.mean(values)
    intervals = [run_interval(run, metric) for run in runs]
    image_var = 0.0 if None in intervals else statistics.mean((i.width / (2 * Z)) ** 2 for i in intervals)
    variance = statistics.variance(values) / len(values) + image_var
    return Cell(mean, _normal(mean, variance), seeds=values, runs=runs, error=math.sqrt(variance))


def _normal(mean: float, variance: float) -> Interval:
    half = Z * math.sqrt(variance)
    return Interval(max(0.0, mean - half), min(1.0, mean + half))


def _mean_cell(cells: list[Cell | None]) -> Cell | None:
    """The mean over categories; its interval by the normal approximation from each category's error."""
    if not cells or any(c is None for c in cells):
        return None
    mean = statistics.mean(c.value for c in cells)
    errors = [c.standard_error for c in cells]
    if any(e is None for e in errors):
        return Cell(mean)
    variance = sum(e * e for e in errors) / len(cells) ** 2
    return Cell(mean, _normal(mean, variance), error=math.sqrt(variance))


def _judge(row: Row, metric: str, client: MlflowClient | None, cache: dict[str, Any]) -> None:
    """Mark the row's leader, and whether it is ahead of the runner-up beyond the noise."""
    present = sorted(((c.value, m) for m, c in row.cells.items() if c is not None), reverse=True)
    if not present:
        return
    row.leader = present[0][1]
    if len(present) == 1:
        row.ahead = True
        return
    top = row.cells[row.leader]
    ties = {row.leader}
    for _, method in present[1:]:
        other = row.cells[method]
        ahead, why = _beyond(top, other, metric, client, cache)
        if not ahead:
            ties.add(method)
        if method == present[1][1]:
            row.evidence = f"{row.leader} vs {method}: {why}"
    row.ahead = len(ties) == 1
    row.tie = ties


def _beyond(a: Cell, b: Cell, metric: str, client: MlflowClient | None, cache: dict[str, Any]) -> tuple[bool, str]:
    """Is cell `a` ahead of cell `b` beyond the noise?

    One run each: `tracking.evidence.weigh` (paired when scored on the same images); seeds: the difference
    of the means beyond twice its standard error over seeds; means over categories: non-overlapping intervals.
    """
    if len(a.runs) == 1 and len(b.runs) == 1 and client is not None:
        evidence = weigh(client, a.runs[0], b.runs[0], metric, cache=cache)
        return evidence.ahead, evidence.reason
    if len(a.seeds) > 1 and len(b.seeds) > 1 and a.interval is not None and b.interval is not None:
        half = Z * math.hypot(a.standard_error, b.standard_error)
        return a.value - b.value > half, f"mean over seeds {a.value:.3f} vs {b.value:.3f} (difference ± {half:.3f})"
    if a.interval is not None and b.interval is not None:
        return a.interval.low > b.interval.high, f"{a.value:.3f} {a.interval} vs {b.value:.3f} {b.interval}"
    return a.value > b.value, "no interval: raw values"


def build(runs: Sequence[Run], metrics: Sequence[str] | None = None, client: MlflowClient | None = None) -> Comparison:
    """The comparison table from final runs (only metrics some run has, unless `metrics` is given).

    With `client`, two single runs are compared image by image from their logged per-image scores.
    """
    chosen = latest_runs(runs)
    methods = _order({method for _, method in chosen})
    kinds: dict[str, str] = {}
    for (category, _), group in chosen.items():
        kind = group[0].data.tags.get("category_kind", "unknown")
        kinds[category] = kind if kind in KIND_ORDER else "unknown"
    present = {k for group in chosen.values() for run in group for k in run.data.metrics}
    metrics = list(metrics) if metrics else [m for m in METRICS if m in present]
    cache: dict[str, Any] = {}
    blocks: dict[str, list[Row]] = {}
    for metric in metrics:
        rows: list[Row] = []
        category_rows: list[Row] = []
        for kind in KIND_ORDER:
            group = [
                Row(kind, category, {m: _cell(chosen.get((category, m)), metric) for m in methods})
                for category in sorted(c for c, k in kinds.items() if k == kind)
            ]
            if group:
                rows.extend(group)
                rows.append(Row(kind, "mean", {m: _mean_cell([r.cells[m] for r in group]) for m in methods}))
                category_rows.extend(group)
        rows.append(Row("all", "mean", {m: _mean_cell([r.cells[m] for r in category_rows]) for m in methods}))
        for row in rows:
            _judge(row, metric, client, cache)
        blocks[metric] = rows
    seeds = max((len(group) for group in chosen.values()), default=1)
    return Comparison(methods, blocks, sum(len(group) for group in chosen.values()), seeds)


def _label(row: Row) -> str:
    if row.label != "mean":
        return row.label
    return "mean (all)" if row.group == "all" else f"mean ({KIND_TITLES[row.group]})"


def _text(cell: Cell | None, with_interval: bool = True) -> str:
    if cell is None:
        return "-"
    text = f"{cell.value:.3f}"
    if cell.spread is not None:
        text += f" sd {cell.spread:.3f}"
    if with_interval and cell.interval is not None:
        text += f" {cell.interval}"
    return text


def _mark(row: Row, method: str) -> str:
    if method in row.best():
        return "*"
    return "=" if method in row.tied() else " "


def render_csv(table: Comparison) -> str:
    """Long in metrics, wide in methods: metric, group, category, <methods...>, best, tied, then bounds.

    The bounds are each method's interval and spread over seeds (empty where there is none).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    extra = [f"{m}_{part}" for m in table.methods for part in ("ci_low", "ci_high", "seed_sd")]
    writer.writerow(["metric", "group", "category", *table.methods, "best", "tied", *extra])
    for metric, rows in table.blocks.items():
        for row in rows:
            values = ["" if row.values[m] is None else repr(round(row.values[m], 6)) for m in table.methods]
            bounds = []
            for m in table.methods:
                cell = row.cells[m]
                interval = None if cell is None else cell.interval
                spread = None if cell is None else cell.spread
                bounds += [
                    "" if interval is None else repr(round(interval.low, 6)),
                    "" if interval is None else repr(round(interval.high, 6)),
                    "" if spread is None else repr(round(spread, 6)),
                ]
            writer.writerow(
                [metric, row.group, row.label, *values, ";".join(row.best()), ";".join(row.tied()), *bounds]
            )
    return out.getvalue()


def render_markdown(table: Comparison) -> str:
    """One markdown table per metric, with 95% intervals; bold = best beyond the noise, `=` = tied with the leader."""
    parts = []
    for metric, rows in table.blocks.items():
        lines = [
            f"### {metric}",
            "",
            "| category | " + " | ".join(table.methods) + " |",
            "| --- |" + " ---: |" * len(table.methods),
        ]
        for row in rows:
            label = f"*{_label(row)}*" if row.label == "mean" else _label(row)
            cells = []
            for m in table.methods:
                text = _text(row.cells[m])
                if m in row.best():
                    text = f"**{text}**"
                elif m in row.tied():
                    text += " ="
                cells.append(text)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n\n" + _footer(table)


def render_table(table: Comparison) -> str:
    """Plain aligned text, one block per metric, values with their 95% intervals; `*` best, `=` tied."""
    parts = []
    width = max([len(_label(r)) for rows in table.blocks.values() for r in rows] + [8])
    cells = [_text(c) for rows in table.blocks.values() for r in rows for c in r.cells.values()]
    col = max([len(m) for m in table.methods] + [len(c) for c in cells] + [6]) + 3
    for metric, rows in table.blocks.items():
        lines = [
            f"{metric}  (held-out split; * = best beyond the noise, = tied with the best)",
            f"{'category':<{width}}" + "".join(f"{m:>{col}}" for m in table.methods),
        ]
        lines.append("-" * len(lines[-1]))
        for row in rows:
            lines.append(
                f"{_label(row):<{width}}"
                + "".join(f"{_text(row.cells[m]) + _mark(row, m):>{col}}" for m in table.methods)
            )
            if row.label == "mean" and row.group != "all":
                lines.append("")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n\n" + _footer(table)


def _footer(table: Comparison) -> str:
    seeds = f", {table.seeds} seeds each (their mean, sd and interval)" if table.seeds > 1 else ""
    return (
        f"({table.runs_used} final runs: the latest sweep per category and method{seeds}. [a, b]: 95% bootstrap "
        "interval over held-out images; a category's best is marked only when it is ahead of the others beyond the "
        "paired interval on the same images (or beyond both intervals); means over categories carry a normal "
        "approximation.)\n"
    )


RENDERERS = {"table": render_table, "csv": render_csv, "markdown": render_markdown}


def compare(experiment: str, fmt: str = "table", tracking_uri: str | None = None) -> str:
    """The rendered comparison of an experiment's final runs."""
    client = client_for(tracking_uri)
    exp = get_experiment(client, experiment)
    runs = final_runs(client, exp.experiment_id)
    if not runs:
        raise TrackingError(f"experiment {experiment!r} has no finished phase=final runs to compare")
    table = build(runs, client=client)
    if not table.blocks:
        raise TrackingError(f"the final runs of {experiment!r} log none of {', '.join(METRICS)}")
    return RENDERERS[fmt](table)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tracking.compare`: print the comparison table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tracking.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="MLflow experiment (the study) holding phase=final runs")
    parser.add_argument("--format", choices=tuple(RENDERERS), default="table")
    parser.add_argument(
        "--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///$PWD/runs/sweep/mlflow.db"
    )
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(compare(args.experiment, args.format, args.tracking_uri))
    except TrackingError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
