"""Compare methods across categories on the held-out split, like the paper's Table 1.

One block per metric: rows are categories grouped into textures and objects (tag `category_kind`) with
each group's mean and the overall mean; columns are the methods present; the best value in each row is
marked. Values come from the `phase=final` runs; when several exist for one (category, method), the most
recently started one is used. A mean is left empty when a method lacks the value for any category of
its group, so no mean silently covers fewer categories than its neighbours.

    python -m tracking.compare --experiment NAME [--format table|csv|markdown] [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from mlflow.entities import Run

from i3ad.scorers import METHOD_NAMES, METHODS
from tracking.registry import TrackingError, client_for, final_runs, get_experiment

METRIC_KEYS = ("image_auroc_ssim", "image_auroc_l2", "pixel_auroc_ssim", "pixel_auroc_l2", "pro_ssim", "pro_l2")
METRICS = tuple(f"test/{k}" for k in METRIC_KEYS)
METHOD_ORDER = METHOD_NAMES
KIND_ORDER = ("texture", "object", "unknown")
KIND_TITLES = {"texture": "textures", "object": "objects", "unknown": "other"}


@dataclass
class Row:
    """One table row: a category or a mean; `values` maps method -> value (None when missing)."""

    group: str  # texture | object | unknown | all
    label: str  # category name or "mean"
    values: dict[str, float | None]

    def best(self) -> list[str]:
        present = {m: v for m, v in self.values.items() if v is not None}
        if not present:
            return []
        top = max(present.values())
        return [m for m, v in present.items() if math.isclose(v, top, rel_tol=0, abs_tol=1e-12)]


@dataclass
class Comparison:
    """Rows per metric, the methods (column order) and the runs behind the numbers."""

    methods: list[str]
    blocks: dict[str, list[Row]]
    runs_used: int


def latest_runs(runs: Sequence[Run]) -> dict[tuple[str, str], Run]:
    """The most recently started run per (category, method)."""
    chosen: dict[tuple[str, str], Run] = {}
    for run in runs:
        key = (run.data.tags.get("category", "?"), run.data.tags.get("method", "?"))
        if key not in chosen or run.info.start_time > chosen[key].info.start_time:
            chosen[key] = run
    return chosen


def _order(methods: set[str]) -> list[str]:
    return [m for m in METHOD_ORDER if m in methods] + sorted(methods - set(METHOD_ORDER))


def family_labels(methods: Sequence[str]) -> list[str]:
    """The family heading over each column (the paper's grouping: AnoGAN | f-AnoGAN | AEGAN | I3AD).

    Blank where it repeats its left neighbour, so a family's score variants (`+ld`, `+proj`) sit under one heading.
    """
    families = [METHODS[m].family if m in METHODS else "" for m in methods]
    return [f if i == 0 or f != families[i - 1] else "" for i, f in enumerate(families)]


def _mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]


def build(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> Comparison:
    """The comparison table from final runs (only metrics some run has, unless `metrics` is given)."""
    chosen = latest_runs(runs)
    methods = _order({method for _, method in chosen})
    kinds: dict[str, str] = {}
    for (category, _), run in chosen.items():
        kind = run.data.tags.get("category_kind", "unknown")
        kinds[category] = kind if kind in KIND_ORDER else "unknown"
    present = {k for run in chosen.values() for k in run.data.metrics}
    metrics = list(metrics) if metrics else [m for m in METRICS if m in present]
    blocks: dict[str, list[Row]] = {}
    for metric in metrics:
        rows: list[Row] = []
        category_rows: list[Row] = []
        for kind in KIND_ORDER:
            group = [
                Row(kind, category, {m: _value(chosen.get((category, m)), metric) for m in methods})
                for category in sorted(c for c, k in kinds.items() if k == kind)
            ]
            if group:
                rows.extend(group)
                rows.append(Row(kind, "mean", {m: _mean([r.values[m] for r in group]) for m in methods}))
                category_rows.extend(group)
        rows.append(Row("all", "mean", {m: _mean([r.values[m] for r in category_rows]) for m in methods}))
        blocks[metric] = rows
    return Comparison(methods, blocks, len(chosen))


def _value(run: Run | None, metric: str) -> float | None:
    if run is None:
        return None
    value = run.data.metrics.get(metric)
    return None if value is None or math.isnan(value) else float(value)


def _label(row: Row) -> str:
    if row.label != "mean":
        return row.label
    return "mean (all)" if row.group == "all" else f"mean ({KIND_TITLES[row.group]})"


def _cell(value: float | None, best: bool, style: str) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}"
    if best and style == "markdown":
        return f"**{text}**"
    return text + ("*" if best else " ") if style == "table" else text


def render_csv(table: Comparison) -> str:
    """Long in metrics, wide in methods: metric, group, category, <methods...>, best (';'-joined)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["metric", "group", "category", *table.methods, "best"])
    for metric, rows in table.blocks.items():
        for row in rows:
            values = ["" if row.values[m] is None else repr(round(row.values[m], 6)) for m in table.methods]
            writer.writerow([metric, row.group, row.label, *values, ";".join(row.best())])
    return out.getvalue()


def render_markdown(table: Comparison) -> str:
    """One markdown table per metric, best per row in bold."""
    parts = []
    for metric, rows in table.blocks.items():
        lines = [
            f"### {metric}",
            "",
            "| category | " + " | ".join(table.methods) + " |",
            "| --- |" + " ---: |" * len(table.methods),
            "| *family* | " + " | ".join(f"*{f}*" if f else "" for f in family_labels(table.methods)) + " |",
        ]
        for row in rows:
            best = set(row.best())
            label = f"*{_label(row)}*" if row.label == "mean" else _label(row)
            lines.append(
                f"| {label} | " + " | ".join(_cell(row.values[m], m in best, "markdown") for m in table.methods) + " |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def render_table(table: Comparison) -> str:
    """Plain aligned text, one block per metric; `*` marks the best in each row."""
    parts = []
    width = max([len(_label(r)) for rows in table.blocks.values() for r in rows] + [8])
    col = max([len(m) for m in table.methods] + [6]) + 1
    for metric, rows in table.blocks.items():
        lines = [
            f"{metric}  (held-out split, * = best in row)",
            f"{'':<{width}}" + "".join(f"{f:>{col}}" for f in family_labels(table.methods)),
            f"{'category':<{width}}" + "".join(f"{m:>{col}}" for m in table.methods),
        ]
        lines.append("-" * len(lines[-1]))
        for row in rows:
            best = set(row.best())
            lines.append(
                f"{_label(row):<{width}}"
                + "".join(f"{_cell(row.values[m], m in best, 'table'):>{col}}" for m in table.methods)
            )
            if row.label == "mean" and row.group != "all":
                lines.append("")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + f"\n\n({table.runs_used} final runs: the latest per category and method)\n"


RENDERERS = {"table": render_table, "csv": render_csv, "markdown": render_markdown}


def compare(experiment: str, fmt: str = "table", tracking_uri: str | None = None) -> str:
    """The rendered comparison of an experiment's final runs."""
    client = client_for(tracking_uri)
    exp = get_experiment(client, experiment)
    runs = final_runs(client, exp.experiment_id)
    if not runs:
        raise TrackingError(f"experiment {experiment!r} has no finished phase=final runs to compare")
    table = build(runs)
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
