"""The sweep's closing summary: a table per category, the failures, the MLflow UI command."""

from __future__ import annotations

import statistics
from typing import Any

from i3ad.inpaint_quality import describe as describe_inpainter
from i3ad.intervals import WIDE
from i3ad.reconstruction_quality import describe as describe_reconstruction

MAPS = ("ssim", "l2")

ROWS = (  # (label, where, metric key before the map); every number says which split it comes from
    ("HEADLINE [val]", "val", "objective"),
    ("HEADLINE [test]", "test", "objective"),
    ("image AUROC [val]", "val", "image_auroc"),
    ("image AUROC [test]", "test", "image_auroc"),
    ("pixel AUROC [val]", "val", "pixel_auroc"),
    ("pixel AUROC [test]", "test", "pixel_auroc"),
    ("PRO [val]", "val", "pro"),
    ("PRO [test]", "test", "pro"),
)


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this sweep's store."""
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def row_map(row: dict[str, Any], objective: str) -> str:
    """The anomaly map a row is scored with: the objective's, or (`..._best`) the better one on val."""
    if objective.endswith("_best"):
        return max(MAPS, key=lambda m: row["val"].get(f"image_auroc_{m}", float("-inf")))
    return "ssim" if objective.endswith("_ssim") else "l2"


def headline_key(objective: str, anomaly_map: str) -> str:
    """The metric key the study's headline is: `val/image_auroc_best` with the L2 map -> `image_auroc_l2`."""
    base = objective.removeprefix("val/")
    if base.endswith("_best"):
        return f"{base.removesuffix('_best')}_{anomaly_map}"
    return base


def with_interval(split: dict[str, Any], key: str) -> str:
    """`0.907 [0.78, 0.98]` from a split's metrics and their `<key>_ci_low` / `_ci_high`."""
    value = split.get(key)
    if value is None:
        return "-"
    low, high = split.get(f"{key}_ci_low"), split.get(f"{key}_ci_high")
    return f"{value:.3f}" if low is None or high is None else f"{value:.3f} [{low:.2f}, {high:.2f}]"


def _joined(values: list[Any], digits: int = 3) -> str:
    return " / ".join(_fmt(v, digits) for v in values)


def _metric_cell(rows: list[dict[str, Any]], split: str, key: str) -> str:
    """One seed: the value with its interval; several: mean ± sd over the seeds."""
    if len(rows) == 1:
        return with_interval(rows[0][split], key)
    values = [row[split].get(key) for row in rows]
    if any(v is None for v in values):
        return "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _row_key(row: dict[str, Any], objective: str, key: str) -> str:
    return key if key == "objective" else f"{key}_{row.get('map') or row_map(row, objective)}"


def category_table(category: str, rows: list[dict[str, Any]], objective: str) -> str:
    """One category: a column per method, settings chosen on val, then val and held-out test numbers.

    Metrics on the held-out split carry their 95% bootstrap interval; with `repeats` > 1 a column holds
    every seed's run: settings per seed, metrics as mean ± sd over seeds and the headline per seed.
    """
    kind = rows[0]["kind"]
    by_method: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    columns = list(by_method.values())
    repeated = any(len(column) > 1 for column in columns)
    header = ["", *by_method]
    maps = [_joined([row.get("map") or row_map(row, objective) for row in column]) for column in columns]
    body = []
    if repeated:
        body.append(["seeds", *[_joined([row.get("seed") for row in column]) for column in columns]])
    body += [
        ["U (chosen on val)", *[_joined([row["settings"].get("threshold") for row in c], 2) for c in columns]],
        ["patch size (val)", *[_joined([row["settings"].get("patch_size") for row in c]) for c in columns]],
        ["N iterations (val)", *[_joined([row["settings"].get("iterations") for row in c]) for c in columns]],
        ["trials (ASHA-stopped)", *[_joined([f"{r['trials']} ({r['stopped_early']})" for r in c]) for c in columns]],
        ["map (chosen on val)" if objective.endswith("_best") else "map", *maps],
    ]
    for label, split, key in ROWS:
        body.append([label, *[_metric_cell(c, split, _row_key(c[0], objective, key)) for c in columns]])
        if repeated and (split, key) == ("test", "objective"):
            body.append(["  per seed", *[_joined([row["test"].get("objective") for row in c]) for c in columns]])
    body.append(["images val / test", *[f"{c[0]['val_images']} / {c[0]['test_images']}" for c in columns]])
    body.append(["sec/image [test]", *[_joined([row["test_seconds_per_image"] for row in c], 4) for c in columns]])
    body.append(["MLflow run (final)", *[_joined([row["run_id"] for row in c]) for c in columns]])
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = [f"{category} ({kind})"]
    for line in [header, *body]:
        lines.append(
            "  " + "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    lines += _warnings(rows)
    lines += [f"  {row['method']} {describe_inpainter(row['inpainter'])}" for row in rows if row.get("inpainter")]
    lines += [
        f"  {row['method']} {describe_reconstruction(row['reconstruction'])}"
        for row in rows
        if row.get("reconstruction")
    ]
    return "\n".join(lines)


def _warnings(rows: list[dict[str, Any]]) -> list[str]:
    """Plain words where the held-out numbers cannot resolve a difference of 0.05."""
    wide = []
    for row in rows:
        low, high = row["test"].get("objective_ci_low"), row["test"].get("objective_ci_high")
        if low is not None and high is not None and high - low > WIDE:
            wide.append(f"{row['method']} ({high - low:.2f})")
    if not wide:
        return []
    return [
        f"  note: headline interval wider than {WIDE} for {', '.join(sorted(set(wide)))}: too few held-out images "
        f"({rows[0]['test_images']}) to resolve differences of 0.05 (more held-out images narrow it; `repeats` "
        "measure the spread over training seeds, not this)"
    ]


def render(summary: dict[str, Any]) -> str:
    """The plain-text summary printed at the end of a sweep (also saved as summary.md)."""
    lines = [
        f"Sweep {summary['sweep_id']} (study {summary['study']}), {summary['wall_seconds']:.0f} s",
        f"Detection settings were chosen on the validation split by {summary['objective']}; "
        "[test] numbers come from the held-out split, evaluated once, with the map in the `map` row "
        "(all metrics of both maps are in summary.json and MLflow). HEADLINE is the objective's metric on "
        "that map (MLflow `val/objective`, `test/objective`); [a, b] is its 95% bootstrap interval over images.",
        "",
    ]
    by_category: dict[str, list[dict[str, Any]]] = {}
    for row in summary["rows"]:
        by_category.setdefault(row["category"], []).append(row)
    for category, rows in by_category.items():
        lines += [category_table(category, rows, summary["objective"]), ""]
    if not summary["rows"]:
        lines += ["No category finished.", ""]
    if summary["failures"]:
        lines.append(f"Failed ({len(summary['failures'])}):")
        for item in summary["failures"]:
            trial = f" trial {item['trial_id']}" if item.get("trial_id") else ""
            lines.append(f"  [{item['phase']}] {item.get('category')} / {item.get('method')}{trial}: {item['error']}")
        lines.append("")
    lines += [
        f"MLflow parent run {summary['parent_run_id']} in experiment {summary['experiment']!r}. Open the UI with:",
        f"  {ui_command(summary['tracking_uri'])}",
    ]
    return "\n".join(lines)


def markdown(summary: dict[str, Any]) -> str:
    """summary.md: the same text in a fenced block, readable in the MLflow artifact view."""
    return f"# Sweep {summary['sweep_id']}\n\n```text\n{render(summary)}\n```\n"
