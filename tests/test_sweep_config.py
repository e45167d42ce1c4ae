"""Sweep configuration, search spaces and the keyed searcher / scheduler (no Ray cluster needed)."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import pytest
from ray.tune.search import Searcher

from i3ad.errors import ConfigError
from i3ad.scorers import DetectionSettings, ProjectionSettings
from i3ad.train import TrainConfig
from studies import config as cfg
from studies.data import KINDS_FILE, user_kinds
from studies.methods import i3ad_space, search_space, settings_for, snap
from studies.phases import open_search, train_configs
from studies.search import KEY, PHASE, READY, REPEAT, ListSearcher, SweepSearcher
from studies.sweep import build_parser, config_from_args
from studies.sweep import main as sweep_main


def test_builtin_configs_resolve():
    quick = cfg.load("quick")
    assert quick.study == "quick" and len(quick.categories) >= 2 and quick.methods == ["i3ad", "ref-stats"]
    assert isinstance(quick.detect, DetectionSettings) and isinstance(quick.train, TrainConfig)
    mvtec = cfg.load("mvtec")
    assert mvtec.train.width == 48 and mvtec.train_by_kind["texture"]["crop_size"] == 128
    assert mvtec.train_for("object").image_size == 256 and mvtec.train_for("texture").crop_size == 128


def test_defaults_are_the_librarys_own():
    config = cfg.load(None)
    assert config.detect == DetectionSettings() and config.projection == ProjectionSettings()
    assert config.train == TrainConfig()


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
            "detect.iterations=7",
            "--set",
            "train.width=12",
            "--set",
            "search.patch_sizes=[4, 8]",
            "--set",
            "detect.patch_size=4",
        ]
    )
    config = config_from_args(args)
    assert config.categories == ["tile", "nut"]
    assert config.search.num_samples == 4 and config.detect.iterations == 7
    assert config.resources.gpus_per_trial == 0.25 and config.seed == 3
    assert config.train.width == 12 and config.search.patch_sizes == [4, 8]
    assert config.train_for("texture").seed == 3  # the sweep's seed seeds training


@pytest.mark.parametrize(
    "override, named",
    [
        ("search.num_samples=abc", "search.num_samples"),
        ("train.width=abc", "train.width"),
        ("detect.threshold=2.0", "detect"),
        ("detect.nope=1", "detect.nope"),
        ("train.widht=3", "train.widht"),
        ("search.objective=val/accuracy", "search.objective"),
        ("search.threshold_range=[0.7, 0.2]", "search.threshold_range"),
        ("detect.patch_size=5", "detect.patch_size"),
        ("methods=[i3ad, magic]", "magic"),
        ("resources.max_concurrent=0", "resources.max_concurrent"),
        ("resources.cpus_per_trial=0.5", "resources.cpus_per_trial"),
        ("calibration.tolerance=0.05", "calibration.tolerance"),  # grey levels, not a fraction
        ("detect.compile=fast", "compile"),
        ("train_by_kind.texture={crop_size: 999}", "train_by_kind.texture"),
        ("train_by_kind.object={seed: 3}", "seed"),
        ("projection.iterations=7", "projection.iterations"),
    ],
)
def test_invalid_values_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        cfg.load("quick", [cfg.parse_override(override)])


def test_moved_keys_say_where_they_went():
    with pytest.raises(ConfigError, match=r"detect\.max_iterations.*now detect\.iterations"):
        cfg.load("quick", [cfg.parse_override("detect.max_iterations=10")])
    with pytest.raises(ConfigError, match=r"now search\.num_samples"):
        cfg.load("quick", [cfg.parse_override("detect.num_samples=3")])


def test_unknown_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="neither a file nor a built-in config"):
        cfg.load("no-such-config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("detect: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        cfg.load(bad)


def test_dump_reads_back_and_differences_name_keys(tmp_path):
    config = cfg.load("compare-quick")
    path = tmp_path / "config.yaml"
    path.write_text(config.dump())
    assert cfg.load(path) == config
    changed = cfg.load("compare-quick", [cfg.parse_override("detect.iterations=5")])
    assert cfg.differences(config, changed) == ["detect.iterations"]
    assert config.flat()["train.width"] == 8


def test_train_configs_per_category_method_and_grid():
    config = cfg.load(
        "quick",
        [{"methods": ["i3ad"], "train_grid": {"width": [4, 8]}, "train_by_kind": {"object": {"steps": 5}}}],
    )
    configs = train_configs(config, synthetic=True)
    assert [c[KEY] for c in configs] == [
        "carpet/i3ad/width=4",
        "carpet/i3ad/width=8",
        "screw/i3ad/width=4",
        "screw/i3ad/width=8",
    ]
    screw = configs[2]
    assert screw["category_kind"] == "object" and screw["train"]["steps"] == 5 and screw["train"]["width"] == 4
    assert configs[0]["train"]["steps"] == config.train.steps


def test_repeats_train_one_model_per_seed():
    config = cfg.load("quick", [{"categories": ["carpet"], "methods": ["i3ad", "ref-stats"], "seed": 5, "repeats": 2}])
    configs = train_configs(config, synthetic=True)
    assert [c[KEY] for c in configs] == [
        "carpet/i3ad/seed5",
        "carpet/i3ad/seed6",
        "carpet/ref-stats/seed5",
        "carpet/ref-stats/seed6",
    ]
    assert [c["train"]["seed"] for c in configs] == [5, 6, 5, 6] and [c[REPEAT] for c in configs] == [5, 6, 5, 6]
    single = train_configs(cfg.load("quick", [{"categories": ["carpet"]}]), synthetic=True)
    assert [c[KEY] for c in single] == ["carpet/i3ad", "carpet/ref-stats"] and REPEAT not in single[0]


def test_i3ad_space_puts_the_paper_point_first_and_fixes_n():
    config = cfg.load("quick", [{"detect": {"iterations": 12}, "search": {"threshold_step": 0.1}}])
    space = i3ad_space(config, threshold=0.27)
    assert set(space.distributions) == {"threshold", "patch_size"}  # N is read off the curve, not searched
    assert space.points == [{"threshold": 0.3, "patch_size": 6}]  # snapped to the 0.1 grid
    assert space.fixed == {"iterations": 12} and space.max_t == 12
    assert snap(0.05, 0.1, 0.6, None) == 0.1 and snap(0.9, 0.1, 0.6, 0.1) == 0.6
    assert not search_space("ae-l2", config).searched


def test_i3ad_space_searches_the_stop_rule_when_listed():
    config = cfg.load("quick", [{"search": {"stop_eps_values": [0.0, 0.05]}}])
    space = i3ad_space(config, threshold=None)
    assert set(space.distributions) == {"threshold", "patch_size", "stop_eps"}
    assert space.points[0]["stop_eps"] == 0.0 and space.points[0]["threshold"] == config.detect.threshold


def test_trial_values_replace_the_base_settings():
    config = cfg.load("compare-quick")
    values = {"threshold": 0.2, "patch_size": 4, "iterations": 20, "category": "carpet"}
    detection, projection = settings_for("i3ad", config.detect, config.projection, values)
    assert detection == replace(config.detect, threshold=0.2, patch_size=4) and projection == config.projection
    values = {"lam": 0.5, "step": 0.01, "iterations": 10, "every": 5}
    detection, projection = settings_for("ae-l2+proj", config.detect, config.projection, values)
    assert projection == replace(config.projection, lam=0.5, step=0.01, iterations=10) and detection == config.detect


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


def test_user_categories_get_kinds_from_the_config_or_the_data_root(tmp_path):
    (tmp_path / KINDS_FILE).write_text("brick: texture\nbolt: object\n")
    config = cfg.load("quick", [{"categories": ["brick", "bolt", "gear"], "methods": ["i3ad"]}])
    kinds = user_kinds(config, tmp_path)
    assert [c["category_kind"] for c in train_configs(config, False, kinds)] == ["texture", "object", "unknown"]
    config = cfg.load("quick", [cfg.parse_override("data.kinds={bolt: texture, gear: object}")])
    assert user_kinds(config, tmp_path) == {"brick": "texture", "bolt": "texture", "gear": "object"}
    with pytest.raises(ConfigError, match="data.kinds"):
        cfg.load("quick", [cfg.parse_override("data.kinds={gear: gadget}")])
    (tmp_path / KINDS_FILE).write_text("brick: stone\n")
    with pytest.raises(ConfigError, match="kinds.yaml.*'brick'.*texture"):
        user_kinds(config, tmp_path)


@pytest.mark.parametrize(
    "args, named",
    [
        (["--data-root", "{tmp}/nowhere"], "nowhere does not exist"),
        (["--categories", "brick"], "unknown synthetic category 'brick'"),
        (["--set", "train.width=abc"], "train.width must be a whole number"),
    ],
)
def test_sweep_errors_come_before_any_folder_store_or_run(tmp_path, capsys, args, named):
    workdir = tmp_path / "work"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert sweep_main(["--workdir", str(workdir), *args]) == 2
    assert named in capsys.readouterr().err
    assert not workdir.exists()  # no sweep folder, no mlflow.db, no `latest`


def test_sweep_searcher_state_is_json_and_resumes_the_same_suggestions(tmp_path):
    config = cfg.load("quick", [{"categories": ["carpet"], "methods": ["i3ad"], "search": {"num_samples": 6}}])
    opener = functools.partial(open_search, config=config, study_id="s")
    trains = train_configs(config, synthetic=True)

    def fresh() -> SweepSearcher:
        return SweepSearcher(trains, opener)

    searcher = fresh()
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", result={READY: 1.0, "calibration/threshold": 0.3, "step": 10})
    first = [searcher.suggest(f"d{i}") for i in range(3)]
    for i, value in enumerate((0.6, 0.8)):  # d0, d1 end; d2 still runs at the save
        searcher.on_trial_result(f"d{i}", {config.search.objective: value, "iteration": 1, "training_iteration": 1})
        searcher.on_trial_complete(
            f"d{i}", result={config.search.objective: value, "iteration": 1, "training_iteration": 1}
        )
    path = tmp_path / "searcher-state-x.pkl"  # Tune's file name; the content is JSON
    searcher.save(str(path))
    assert json.loads(path.read_text())["searchers"]["carpet/i3ad"]["kind"] == "optuna"

    restored = fresh()
    restored.restore(str(path))
    for both in (searcher, restored):
        both.on_trial_complete("d2", result={config.search.objective: 0.7, "iteration": 1, "training_iteration": 1})
    assert [restored.suggest(f"e{i}") for i in range(3)] == [searcher.suggest(f"e{i}") for i in range(3)]
    assert first[0]["threshold"] == 0.3  # the paper's point first, with the calibrated U
    path.write_bytes(b"\x80\x05 an old pickle")
    with pytest.raises(ValueError, match="older i3ad"):
        fresh().restore(str(path))
