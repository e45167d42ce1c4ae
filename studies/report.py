"""The sweep's closing summary: a table per category, the failures, the MLflow UI command."""

from __future__ import annotations

from typing import Any

MAPS = ("ssim", "l2")

ROWS = (  # (label, where, metric key suffix); every number says which split it comes from
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


def category_table(category: str, rows: list[dict[str, Any]], objective: str) -> str:
    """One category: a column per method, settings chosen on val, then val and held-out test numbers."""
    kind = rows[0]["kind"]
    maps = [row_map(row, objective) for row in rows]
    header = ["", *[row["method"] for row in rows]]
    body = [
        ["U (chosen on val)", *[_fmt(row["settings"].get("threshold"), 2) for row in rows]],
        ["patch size (val)", *[_fmt(row["settings"].get("patch_size")) for row in rows]],
        ["N iterations (val)", *[_fmt(row["settings"].get("iterations")) for row in rows]],
        ["trials (ASHA-stopped)", *[f"{row['trials']} ({row['stopped_early']})" for row in rows]],
    ]
    body.append(["map (chosen on val)" if objective.endswith("_best") else "map", *maps])
    for label, split, key in ROWS:
        body.append([label, *[_fmt(row[split].get(f"{key}_{m}")) for row, m in zip(rows, maps, strict=True)]])
    body.append(["images val / test", *[f"{row['val_images']} / {row['test_images']}" for row in rows]])
    body.append(["sec/image [test]", *[_fmt(row["test_seconds_per_image"], 4) for row in rows]])
    body.append(["MLflow run (final)", *[row["run_id"] for row in rows]])
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = [f"{category} ({kind})"]
    for line in [header, *body]:
        lines.append(
            "  " + "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def render(summary: dict[str, Any]) -> str:
    """The plain-text summary printed at the end of a sweep (also saved as summary.md)."""
    lines = [
        f"Sweep {summary['sweep_id']} (study {summary['study']}), {summary['wall_seconds']:.0f} s",
        f"Detection settings were chosen on the validation split by {summary['objective']}; "
        "[test] numbers come from the held-out split, evaluated once, with the map in the `map` row "
        "(all metrics of both maps are in summary.json and MLflow).",
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
