"""The projection baselines as sweep methods: shared training, their own search, the final run."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from i3ad.scorers import METHOD_NAMES
from i3ad.scoring import load_detector
from studies import config as cfg
from studies.config import CONFIG_DIR
from studies.methods import projection_space
from studies.phases import build_search, train_configs
from studies.search import KEY, READY, SEARCH, SweepSearcher
from studies.sweep import run_sweep
from tests.test_sweep import TINY, children

pytestmark = pytest.mark.filterwarnings("ignore")
PROJ = {
    "methods": ["ae-l2", "ae-l2+proj"],
    "search": {"num_samples": 2},
    "projection": {"iterations": 4, "every": 2},
}


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_builtin_config_validates(path):
    config = cfg.load(path)
    assert config.study == path.stem


def test_compare_configs_hold_every_method_with_equal_steps():
    for name in ("compare-quick", "paper"):
        config = cfg.load(name)
        assert set(config.methods) == set(METHOD_NAMES)
        assert config.train.steps and not config.train.max_seconds  # equal steps, no clock cap
    assert len(cfg.load("paper").categories) == 15


def test_projection_shares_the_autoencoder_and_has_its_own_search():
    config = cfg.load("quick", [PROJ, {"categories": ["carpet"]}])
    (train,) = train_configs(config, synthetic=True)
    assert train[KEY] == "carpet/ae-l2" and train["methods"] == ["ae-l2", "ae-l2+proj"]
    space = projection_space(config, None)
    assert space.points == [{"lam": 0.1, "step": 0.05}] and space.max_t == 4
    assert set(space.distributions) == {"lam", "step"} and space.fixed == {"iterations": 4, "every": 2}

    searcher, scheduler = build_search_for(config, [train])
    assert searcher.suggest("t1")["phase"] == "train"
    searcher.on_trial_complete("t1", result={READY: 1.0})
    suggested = [searcher.suggest(f"d{i}") for i in range(3)]
    plain = [s for s in suggested if s["method"] == "ae-l2"]
    proj = [s for s in suggested if s["method"] == "ae-l2+proj"]
    assert len(plain) == 1 and plain[0][KEY] == "carpet/ae-l2" and SEARCH not in plain[0]
    assert proj[0][KEY] == "carpet/ae-l2" and proj[0][SEARCH] == "carpet/ae-l2:ae-l2+proj" and proj[0]["every"] == 2
    assert list(scheduler._schedulers) == ["carpet/ae-l2:ae-l2+proj"]  # ASHA for the iterative search only


def build_search_for(config, configs) -> tuple[SweepSearcher, object]:
    from studies.phases import SweepSetup

    return build_search(SweepSetup(config, "/tmp/unused", {"cpu": 1, "gpu": 0}, 1, "test"), configs)


def test_tiny_sweep_with_projection_trains_once(tmp_path, local_ray):
    config = cfg.load("quick", [TINY, PROJ, {"workdir": str(tmp_path)}])
    summary = run_sweep(config, echo=lambda text: None)
    assert not summary["failures"]
    client = MlflowClient(summary["tracking_uri"])
    (train,) = children(client, summary, "train")  # one model for both methods
    assert train.data.tags["method"] == "ae-l2"
    detect = children(client, summary, "detect")
    assert sorted(r.data.tags["method"] for r in detect) == ["ae-l2", "ae-l2+proj", "ae-l2+proj"]
    finals = {r.data.tags["method"]: r for r in children(client, summary, "final")}
    assert set(finals) == {"ae-l2", "ae-l2+proj"}
    proj = finals["ae-l2+proj"]
    assert (
        proj.info.status == "FINISHED"
        and "test/image_auroc_ssim" in proj.data.metrics
        and "test/pro_ssim" in proj.data.metrics
    )
    # The searched settings under the trials' names; the fixed rest of the projection's settings prefixed.
    assert {"lam", "step", "iterations"} <= set(proj.data.params)
    assert not {"projection/lam", "projection/step", "projection/iterations"} & set(proj.data.params)
    best = max(proj.data.metrics["val/image_auroc_ssim"], proj.data.metrics["val/image_auroc_l2"])
    assert best == pytest.approx(proj.data.metrics["val/objective"])
    row = next(r for r in summary["rows"] if r["method"] == "ae-l2+proj")
    assert (
        {"lam", "step", "iterations"} <= set(row["settings"]) and row["model"] == "carpet/ae-l2" and row["trials"] == 2
    )
    # The sweep's copy of the model scores like the chosen setting under `i3ad detect --model <folder>`.
    _, detector = load_detector(Path(summary["folder"]) / "models" / "carpet__ae-l2+proj", "cpu")
    assert detector.method == "ae-l2+proj" and detector.anomaly_map in ("ssim", "l2")
    assert {k: detector.projection[k] for k in ("lam", "step")} == {k: row["settings"][k] for k in ("lam", "step")}
