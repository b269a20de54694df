"""The plan's estimates come from what the suite's finished cells measured, where they measured anything."""

from __future__ import annotations

import pytest

from advbench.suite.cache import Cache, cache_key
from advbench.suite.plan import Cell, Plan, calibrate, cell_family


def _cell(kind: str, label: str, estimate: float) -> Cell:
    return Cell(kind, label, cache_key(kind, {"label": label}), [], {}, estimate)


def _plan() -> Plan:
    cells = [
        _cell("attack", f"attack {a} eps=0.1 on m seed={s}", est)
        for a, est in (("dknn-adaptive", 50.0), ("pgd", 4.0), ("fgsm", 0.5))
        for s in range(3)
    ]
    cells.append(_cell("transfer", "transfer pgd eps=0.1 from m seed=0 to seed=1", 0.2))
    return Plan(suite=None, cells=cells)  # type: ignore[arg-type]  # calibrate never reads the suite


def test_a_cell_family_blanks_every_seed_and_nothing_else() -> None:
    a, b = (
        _cell("transfer", "transfer pgd eps=0.1 from m seed=0 to seed=1", 1),
        _cell("transfer", "transfer pgd eps=0.1 from m seed=4 to seed=5", 1),
    )
    assert cell_family(a) == cell_family(b) == ("transfer", "transfer pgd eps=0.1 from m seed=* to seed=*")
    assert cell_family(_cell("attack", "attack pgd eps=0.05 on m seed=0", 1)) != cell_family(
        _cell("attack", "attack pgd eps=0.1 on m seed=0", 1)
    )


def test_measured_cells_guide_their_unmeasured_relatives() -> None:
    plan = _plan()
    by_label = {c.label: c for c in plan.cells}
    measured = {
        by_label["attack dknn-adaptive eps=0.1 on m seed=0"].key: 400.0,
        by_label["attack dknn-adaptive eps=0.1 on m seed=1"].key: 420.0,
        by_label["attack pgd eps=0.1 on m seed=0"].key: 8.0,
    }
    out = {c.label: c for c in calibrate(plan, measured).cells}
    seed0 = out["attack dknn-adaptive eps=0.1 on m seed=0"]
    assert (seed0.estimate_s, seed0.estimate_basis) == (400.0, "measured")
    seed2 = out["attack dknn-adaptive eps=0.1 on m seed=2"]
    assert (seed2.estimate_s, seed2.estimate_basis) == (410.0, "other seeds")  # the median of 400 and 420
    # no FGSM cell measured: the model scaled by the attack kind's median measured/model ratio (8, 8.4, 2)
    fgsm = out["attack fgsm eps=0.1 on m seed=1"]
    assert fgsm.estimate_basis == "kind ratio" and fgsm.estimate_s == pytest.approx(0.5 * 8.0)
    # no transfer cell measured at all: the work model's figure stands
    transfer = out["transfer pgd eps=0.1 from m seed=0 to seed=1"]
    assert (transfer.estimate_s, transfer.estimate_basis) == (0.2, "model")
    assert [c.key for c in calibrate(plan, measured).cells] == [c.key for c in plan.cells]  # keys untouched


def test_recorded_seconds_come_from_the_entry_manifest_and_tolerate_anything_else(tmp_path) -> None:
    cache = Cache(tmp_path)
    timed, untimed = cache_key("attack", {"n": 1}), cache_key("attack", {"n": 2})
    with cache.writer("attack", timed, {"label": "a", "seconds": 12.5}) as folder:
        (folder / "x.txt").write_text("x")
    with cache.writer("attack", untimed, {"label": "b"}) as folder:
        (folder / "x.txt").write_text("x")
    assert cache.recorded_seconds("attack", timed) == 12.5
    assert cache.recorded_seconds("attack", untimed) is None
    assert cache.recorded_seconds("attack", cache_key("attack", {"n": 3})) is None  # absent
    (cache.path("attack", untimed) / "MANIFEST.json").write_text("{not json")
    assert cache.recorded_seconds("attack", untimed) is None  # damaged: no estimate, no crash


def test_a_cell_measured_under_earlier_code_is_found_again_by_its_label() -> None:
    plan = _plan()
    by_label = {c.label: c for c in plan.cells}
    measured = {by_label["attack pgd eps=0.1 on m seed=0"].key: 8.0}
    earlier = {"attack dknn-adaptive eps=0.1 on m seed=2": 450.0, "attack pgd eps=0.1 on m seed=1": 99.0}
    out = {c.label: c for c in calibrate(plan, measured, earlier=earlier).cells}
    adaptive = out["attack dknn-adaptive eps=0.1 on m seed=2"]
    assert (adaptive.estimate_s, adaptive.estimate_basis) == (450.0, "earlier code")
    # this code's own measurements of the family come first
    assert out["attack pgd eps=0.1 on m seed=1"].estimate_basis == "other seeds"
    assert out["attack dknn-adaptive eps=0.1 on m seed=0"].estimate_basis == "kind ratio"


def test_run_manifests_give_computed_cells_seconds_by_key_and_label(tmp_path) -> None:
    import json
    import os

    from advbench.suite.rundir import RunDir

    def run(folder: str, cells: dict, *, suite: str = "t", mtime: float) -> None:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "manifest.json").write_text(json.dumps({"suite": suite, "cells": cells}))
        os.utime(tmp_path / folder, (mtime, mtime))

    cell = {"kind": "attack", "key": "k1", "cached": False, "seconds": 40.0}
    run("t-1", {"attack a": cell, "attack b": {**cell, "key": "k2", "cached": True, "seconds": 0.0}}, mtime=1)
    run("t-2", {"attack a": {**cell, "seconds": 42.0}}, mtime=2)  # the later run's measurement wins
    run("t-3", {"attack c": {**cell, "key": "k3"}}, suite="t-other", mtime=3)  # another suite's run
    (tmp_path / "t-4").mkdir()
    (tmp_path / "t-4" / "manifest.json").write_text("{damaged")
    by_key, by_label = RunDir.measured_seconds(tmp_path, "t")
    assert by_key == {"k1": 42.0} and by_label == {"attack a": 42.0}  # a cache hit measured nothing
    assert RunDir.measured_seconds(tmp_path / "absent", "t") == ({}, {})


def test_a_cache_hit_carries_its_compute_seconds_into_every_later_manifest(tmp_path) -> None:
    """Issue 32: one manifest holds every cell's cost, including cells computed in an earlier part of the run."""
    import json
    import os

    from advbench.suite.rundir import RunDir

    for folder, mtime, cells in (
        ("t-1", 1, {"train m": {"kind": "train", "key": "k1", "cached": False, "seconds": 30.0}}),
        (
            "t-2",
            2,
            {"train m": {"kind": "train", "key": "k1", "cached": True, "seconds": 0.1, "compute_seconds": 30.0}},
        ),
    ):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "manifest.json").write_text(json.dumps({"suite": "t", "cells": cells}))
        os.utime(tmp_path / folder, (mtime, mtime))
    (tmp_path / "t-1" / "manifest.json").unlink()  # only the later part's manifest is left
    assert RunDir.measured_seconds(tmp_path, "t") == ({"k1": 30.0}, {"train m": 30.0})


def test_record_cell_writes_compute_seconds(tmp_path) -> None:
    from advbench.suite.rundir import RunDir

    run = RunDir(tmp_path)
    run.manifest = {"suite": "t"}
    run.record_cell("a", "attack", "k1", cached=False, seconds=12.5)
    run.record_cell("b", "attack", "k2", cached=True, seconds=0.2, compute_seconds=40.0)
    run.record_cell("c", "attack", "k3", cached=True, seconds=0.2)  # never measured: nothing invented
    cells = run.manifest["cells"]
    assert cells["a"]["compute_seconds"] == 12.5 and cells["b"]["compute_seconds"] == 40.0
    assert "compute_seconds" not in cells["c"]
