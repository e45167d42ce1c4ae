"""Recorded detection curves (studies/curves.py): which N a record covers, and that records only grow."""

from __future__ import annotations

from studies.curves import CurveStore, curve_digest


def rows(n: int) -> list[dict[str, float]]:
    return [{"iteration": i, "val/image_auroc_ssim": 0.5 + 0.01 * i} for i in range(n + 1)]


def test_digest_ignores_n_only():
    base = {"stop_eps": 0.01, "iterations": 30}
    config = {"threshold": 0.3, "patch_size": 6, "iterations": 5, "model": "carpet/i3ad"}
    assert curve_digest(config, base) == curve_digest({**config, "iterations": 20}, {**base, "iterations": 7})
    assert curve_digest(config, base) != curve_digest({**config, "threshold": 0.4}, base)
    assert curve_digest(config, base) == curve_digest(
        {**config, "threshold": 0.1 + 0.2}, base
    )  # Optuna's 0.30000000000000004
    assert curve_digest(config, base) != curve_digest(config, {**base, "stop_eps": 0.0})


def test_a_prefix_replays_every_n_it_reaches(tmp_path):
    store = CurveStore(str(tmp_path), "carpet/i3ad", "abc")
    assert store.replay(1) == ([], False)
    store.save(rows(3), iterations=10, finished=False)  # e.g. ASHA stopped the run at iteration 3

    again = CurveStore(str(tmp_path), "carpet/i3ad", "abc")  # another trial, reading storage
    assert again.replay(2) == (rows(2), True)
    assert again.replay(3) == (rows(3), True)
    assert again.replay(4) == (rows(3), False)  # replayed as far as it goes; the rest must be computed


def test_a_finished_run_covers_n_up_to_what_it_was_asked(tmp_path):
    store = CurveStore(str(tmp_path), "carpet/ae-l2", "one-pass")
    store.save(rows(0), iterations=5, finished=True)  # a scorer that stops by itself after one pass
    again = CurveStore(str(tmp_path), "carpet/ae-l2", "one-pass")
    assert again.replay(5) == (rows(0), True)
    assert again.replay(6) == (rows(0), False)


def test_a_shorter_curve_never_replaces_a_longer_one(tmp_path):
    CurveStore(str(tmp_path), "m", "d").save(rows(4), iterations=4, finished=True)
    late = CurveStore(str(tmp_path), "m", "d")
    late.save(rows(1), iterations=8, finished=False)
    assert CurveStore(str(tmp_path), "m", "d").replay(4) == (rows(4), True)
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_growing_curve_is_saved_at_every_iteration(tmp_path):
    store = CurveStore(str(tmp_path), "m", "d")
    curve: list[dict[str, float]] = []
    for row in rows(3):
        curve.append(row)  # as the trial does: one list, appended to, saved after each iteration
        store.save(curve, iterations=3, finished=False)
        assert CurveStore(str(tmp_path), "m", "d").replay(row["iteration"]) == (curve, True)
