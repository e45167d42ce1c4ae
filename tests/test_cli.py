"""The `i3ad` command end to end: make-data, train, calibrate, detect; clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from i3ad.cli import main
from i3ad.evaluate import AUROC_KEYS

REPORT_KEYS = (
    *AUROC_KEYS,
    "pro_ssim",
    "pro_l2",
    "per_iteration",
    "iterations_run",
    "images",
    "seconds",
    "images_per_second",
    "settings",
)


def test_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, model = tmp_path / "data", tmp_path / "model"
    assert main(["make-data", str(data), "--size", "32", "--categories", "wood"]) == 0
    train = ["train", "--data-root", str(data), "--category", "wood", "--out", str(model), "--no-progress"]
    train += "--steps 4 --image-size 32 --width 4 --device cpu".split()
    assert main([*train, "--batch-size", "2"]) == 0
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(model),
                "--data-root",
                str(data),
                "--category",
                "wood",
                "--max-images",
                "4",
                "--iterations",
                "2",
            ]
        )
        == 0
    )
    info = json.loads((model / "model.json").read_text())
    assert 0.1 <= info["calibration"]["threshold"] <= 0.5 and len(info["calibration"]["curve"]) == 9
    assert "detection" not in info, "calibration writes only its own result, not the chosen settings"

    report_path = tmp_path / "report.json"
    assert (
        main(
            [
                "detect",
                "--model",
                str(model),
                "--data-root",
                str(data),
                "--category",
                "wood",
                "--split",
                "test",
                "--iterations",
                "3",
                "--out",
                str(report_path),
            ]
        )
        == 0
    )
    report = json.loads(report_path.read_text())
    assert set(REPORT_KEYS) <= set(report)
    for key in (*AUROC_KEYS, "pro_ssim", "pro_l2"):
        assert 0.0 <= report[key] <= 1.0
    assert report["settings"]["threshold"] == info["calibration"]["threshold"]  # the calibrated U, no flag given
    assert report["settings"]["iterations"] == 3 and len(report["per_iteration"]) == 4
    assert report["split"] == "test"

    # --resume on a finished run trains nothing more.
    assert main([*train, "--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_user_errors_print_one_line_and_exit_2(tmp_path: Path, tiny_data: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "i3ad.cli",
            "train",
            "--data-root",
            str(tiny_data),
            "--category",
            "bottle",
            "--out",
            str(tmp_path / "m"),
            "--steps",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "bottle" in result.stderr and "carpet" in result.stderr and "Traceback" not in result.stderr


def test_bad_config_file_names_the_key(tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("train:\n  stepz: 3\n")
    code = main(
        [
            "train",
            "--data-root",
            str(tiny_data),
            "--category",
            "carpet",
            "--out",
            str(tmp_path / "m"),
            "--config",
            str(config),
        ]
    )
    assert code == 2 and "stepz" in capsys.readouterr().err


def test_model_uri_without_a_resolver_names_the_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["detect", "--model", "nosuch:/x/1", "--images", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "nosuch:/" in err and "i3ad.model_resolvers" in err and "`tracking`" in err


def test_registry_uris_resolve_through_the_tracking_plug_in() -> None:
    from importlib.metadata import entry_points

    resolvers = {ep.name: ep.value for ep in entry_points(group="i3ad.model_resolvers")}
    assert resolvers == {"models": "tracking.registry:resolve_model_uri", "runs": "tracking.registry:resolve_model_uri"}


def test_top_level_is_fast_and_helpful(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0  # a bare `i3ad` prints the help, not an error
    assert "make-data" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("i3ad ")
    # `i3ad --help` answers without torch (it took 6-11 s when the CLI imported torch, ray and mlflow first).
    probe = (
        "import sys; from i3ad.cli import main\n"
        "try: main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "calibrate" in result.stdout and result.stdout.strip().endswith("False")
