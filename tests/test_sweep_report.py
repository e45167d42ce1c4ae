"""The sweep's closing summary: each number says its split, and the map of each row is the one the objective chose."""

from __future__ import annotations

from studies.report import render, row_map


def _row(method: str, val_ssim: float, val_l2: float) -> dict:
    val = {"image_auroc_ssim": val_ssim, "image_auroc_l2": val_l2, "pixel_auroc_ssim": 0.5, "pixel_auroc_l2": 0.6}
    test = {
        "image_auroc_ssim": 0.11,
        "image_auroc_l2": 0.22,
        "pixel_auroc_ssim": 0.33,
        "pixel_auroc_l2": 0.44,
        "pro_ssim": 0.55,
        "pro_l2": 0.66,
    }
    return {
        "category": "carpet",
        "kind": "texture",
        "method": method,
        "settings": {"threshold": 0.3},
        "trials": 3,
        "stopped_early": 1,
        "val": val,
        "test": test,
        "val_images": 15,
        "test_images": 15,
        "test_seconds_per_image": 0.1,
        "run_id": f"run-{method}",
    }


def test_best_map_objective_scores_each_row_with_its_better_map_on_val():
    i3ad, ae = _row("i3ad", 0.70, 0.90), _row("ae-l2", 0.95, 0.80)
    assert row_map(i3ad, "val/image_auroc_best") == "l2" and row_map(ae, "val/image_auroc_best") == "ssim"
    assert row_map(i3ad, "val/image_auroc_ssim") == "ssim" and row_map(ae, "val/pixel_auroc_l2") == "l2"
    summary = {
        "sweep_id": "s",
        "study": "quick",
        "wall_seconds": 1.0,
        "objective": "val/image_auroc_best",
        "rows": [i3ad, ae],
        "failures": [],
        "parent_run_id": "p",
        "experiment": "quick",
        "tracking_uri": "sqlite:////tmp/x.db",
    }
    text = render(summary)
    lines = {
        line.split("  ")[1].strip(): line for line in text.splitlines() if line.startswith("  ") and "  " in line[2:]
    }
    assert lines["map (chosen on val)"].split()[-2:] == ["l2", "ssim"]
    # held-out numbers follow each row's map: i3ad's test L2 (0.22), ae-l2's test SSIM (0.11)
    assert lines["image AUROC [test]"].split()[-2:] == ["0.220", "0.110"]
    assert lines["PRO [test]"].split()[-2:] == ["0.660", "0.550"]


def test_category_table_reports_the_inpainters_hole_error_and_flags_a_mean_fill_model():
    i3ad = _row("i3ad", 0.7, 0.9) | {
        "inpainter": {"hole_l1": 22.0, "mean_fill_l1": 21.1, "biharmonic_l1": 23.3, "held_out_images": 4}
        | {"beats_mean_fill": False}
    }
    summary = {
        "sweep_id": "s",
        "study": "quick",
        "wall_seconds": 1.0,
        "objective": "val/image_auroc_best",
        "rows": [i3ad, _row("ae-l2", 0.9, 0.8)],
        "failures": [],
        "parent_run_id": "p",
        "experiment": "quick",
        "tracking_uri": "sqlite:////tmp/x.db",
    }
    lines = [line for line in render(summary).splitlines() if "inpainter:" in line]
    assert len(lines) == 1 and lines[0].startswith("  i3ad inpainter: hole L1 22.0, mean fill 21.1, biharmonic 23.3")
    assert "does not beat the mean-colour fill" in lines[0]


def test_category_table_flags_a_baseline_that_does_not_beat_the_mean_training_image():
    entry = {"recon_l1": 14.4, "mean_image_l1": 14.2, "mean_colour_l1": 30.0, "held_out_images": 4}
    ae = _row("ae-l2", 0.9, 0.8) | {"reconstruction": entry | {"beats_no_learning": False}}
    aegan = _row("aegan", 0.9, 0.8) | {"reconstruction": entry | {"recon_l1": 9.0, "beats_no_learning": True}}
    summary = {
        "sweep_id": "s",
        "study": "quick",
        "wall_seconds": 1.0,
        "objective": "val/image_auroc_best",
        "rows": [_row("i3ad", 0.7, 0.9), ae, aegan],
        "failures": [],
        "parent_run_id": "p",
        "experiment": "quick",
        "tracking_uri": "sqlite:////tmp/x.db",
    }
    lines = [line for line in render(summary).splitlines() if "reconstruction:" in line]
    assert [line.split()[0] for line in lines] == ["ae-l2", "aegan"]
    assert lines[0].startswith("  ae-l2 reconstruction: L1 14.4, mean image 14.2, mean colour 30.0")
    assert "does not beat the no-learning fills" in lines[0] and "!" not in lines[1]
