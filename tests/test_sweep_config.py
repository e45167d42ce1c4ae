"""Sweep configuration, search spaces and the keyed searcher / scheduler (no Ray cluster needed)."""

from __future__ import annotations

import pytest
from ray.tune.search import Searcher

from i3ad.errors import ConfigError
from studies import config as cfg
from studies.methods import METHODS, i3ad_space, snap
from studies.phases import train_configs
from studies.search import KEY, PHASE, READY, ListSearcher, SweepSearcher
from studies.sweep import build_parser, config_from_args


def test_builtin_configs_resolve():
    quick = cfg.resolve("quick")
    assert quick["study"] == "quick" and len(quick["categories"]) >= 2 and quick["methods"] == ["i3ad"]
    mvtec = cfg.resolve("mvtec")
    assert mvtec["train"]["width"] == 48 and mvtec["train_by_kind"]["texture"]["crop_size"] == 128
    assert mvtec["train_by_kind"]["object"]["image_size"] == 256


def test_flags_and_set_overrides():
    args = build_parser().parse_args(
        [
            "--categories",
            "tile, nut",
            "--num-samples",
            "4",
            "--gpus-per-trial",
            "0.25",
            "--seed",
            "3",
            "--set",
            "detect.max_iterations=7",
            "--set",
            "train.width=12",
            "--set",
            "detect.patch_sizes=[4, 8]",
            "--set",
            "detect.paper_point.patch_size=4",
        ]
    )
    config = config_from_args(args)
    assert config["categories"] == ["tile", "nut"]
    assert config["detect"]["num_samples"] == 4 and config["detect"]["max_iterations"] == 7
    assert config["resources"]["gpus_per_trial"] == 0.25 and config["seed"] == 3
    assert config["train"]["width"] == 12 and config["detect"]["patch_sizes"] == [4, 8]


@pytest.mark.parametrize(
    "override, named",
    [
        ("detect.num_samples=abc", "detect.num_samples"),
        ("detect.nope=1", "nope"),
        ("train.widht=3", "widht"),
        ("detect.objective=val/accuracy", "detect.objective"),
        ("detect.threshold_range=[0.7, 0.2]", "detect.threshold_range"),
        ("detect.paper_point.patch_size=5", "detect.paper_point.patch_size"),
        ("methods=[i3ad, magic]", "magic"),
        ("resources.max_concurrent=0", "resources.max_concurrent"),
        ("resources.cpus_per_trial=0.5", "resources.cpus_per_trial"),
        ("calibration.tolerance=0.05", "calibration.tolerance"),  # grey levels, not a fraction
        ("detect.compile=fast", "detect.compile"),
    ],
)
def test_invalid_values_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        cfg.resolve("quick", [cfg.parse_override(override)])


def test_unknown_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="neither a file nor a built-in config"):
        cfg.resolve("no-such-config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("detect: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        cfg.resolve(bad)


def test_train_configs_per_category_method_and_grid():
    config = cfg.resolve("quick", [{"train_grid": {"width": [4, 8]}, "train_by_kind": {"object": {"steps": 5}}}])
    configs = train_configs(config, synthetic=True)
    assert [c[KEY] for c in configs] == [
        "carpet/i3ad/width=4",
        "carpet/i3ad/width=8",
        "screw/i3ad/width=4",
        "screw/i3ad/width=8",
    ]
    screw = configs[2]
    assert screw["category_kind"] == "object" and screw["train"]["steps"] == 5 and screw["train"]["width"] == 4
    assert configs[0]["train"]["steps"] == config["train"]["steps"]


def test_i3ad_space_puts_the_paper_point_first():
    detect = cfg.resolve("quick", [{"detect": {"max_iterations": 12, "threshold_step": 0.1}}])["detect"]
    space = i3ad_space(detect, threshold=0.27)
    assert set(space.distributions) == {"threshold", "patch_size", "iterations"}
    assert space.points == [{"threshold": 0.3, "patch_size": 6, "iterations": 12}]  # snapped to the 0.1 grid, N capped
    assert snap(0.05, 0.1, 0.6, None) == 0.1 and snap(0.9, 0.1, 0.6, 0.1) == 0.6
    assert not METHODS["ae-l2"].space(detect, None).searched


def test_sweep_searcher_trains_first_then_opens_each_models_search():
    opened = []

    def opener(key, config, result):
        opened.append((key, result["calibration/threshold"]))
        return ListSearcher([{"x": 1}, {"x": 2}, {"x": 3}]), 2, {"category": config["category"]}

    trains = [{KEY: "a/i3ad", "category": "a"}, {KEY: "b/i3ad", "category": "b"}]
    searcher = SweepSearcher(trains, opener, metric="m", mode="max")
    assert searcher.suggest("t1") == {**trains[0], PHASE: "train"}
    assert searcher.suggest("t2") == {**trains[1], PHASE: "train"}
    assert searcher.suggest("t3") is None  # nothing trained yet: wait
    searcher.on_trial_complete("t2", result={READY: 1.0, "calibration/threshold": 0.2})
    assert opened == [("b/i3ad", 0.2)]
    assert searcher.suggest("t3") == {"category": "b", "x": 1, KEY: "b/i3ad", PHASE: "detect"}
    searcher.on_trial_complete("t1", error=True)  # a's training failed: a gets no detection trials
    assert searcher.suggest("t4") == {"category": "b", "x": 2, KEY: "b/i3ad", PHASE: "detect"}
    assert searcher.suggest("t5") == Searcher.FINISHED  # b's budget of 2 is spent
