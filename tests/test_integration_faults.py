"""Faults through the CLI: ``kill -9`` at random points, again and again, and two runs at once on one cache.

Each kill lands at a random moment (seeded), so over the loop it hits process start-up, training,
attacks, cache writes and report rendering. After every kill the cache must hold only complete,
verified entries; the final resumed run must give exactly the tables of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from advbench.suite.cache import Cache

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "tests" / "suites" / "tiny.yaml"
TABLES = ["outcomes.csv.gz", "clean.csv", "dknn.csv.gz", "dknn_examples.csv.gz", "transfer_metrics.csv"]
KILLS = 8
pytestmark = pytest.mark.integration


def _cmd(tmp: Path, name: str, cache: Path, *, workers: int | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "advbench.cli.main",
        "-q",
        "run",
        str(SUITE),
        *(["--workers", str(workers)] if workers else []),
        "--threads",
        "1",
        "--runs-dir",
        str(tmp / f"runs-{name}"),
        "--cache-dir",
        str(cache),
        "--report",
        str(tmp / f"{name}.md"),
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


def _tables(runs: Path) -> dict[str, pd.DataFrame]:
    run = max((p for p in runs.iterdir() if (p / "results" / "suite.json").is_file()), key=lambda p: p.stat().st_mtime)
    out = {}
    for t in TABLES:
        df = pd.read_csv(run / "results" / t)
        out[t] = df.sort_values(list(df.columns)).reset_index(drop=True)
    return out


def _assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for t in TABLES:
        pd.testing.assert_frame_equal(a[t], b[t], check_exact=True, obj=t)


def _entries(cache_root: Path) -> list[tuple[str, str]]:
    return [
        (kind.name, entry.name)
        for kind in cache_root.iterdir()
        if kind.is_dir() and kind.name not in ("tmp", "corrupt")
        for shard in kind.iterdir()
        for entry in shard.iterdir()
    ]


def _assert_cache_consistent(cache_root: Path) -> int:
    """Every visible entry is complete and verifies; returns how many there are."""
    cache = Cache(cache_root)
    entries = _entries(cache_root)
    for kind, key in entries:
        assert cache.get(kind, key) is not None, f"half-written or corrupt cache entry {kind}/{key[:12]}"
    assert not cache.corrupt_found
    return len(entries)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("reference")
    proc = subprocess.run(_cmd(tmp, "ref", tmp / "cache"), env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _tables(tmp / "runs-ref")


@pytest.fixture(scope="module")
def planned_entries(reference, tmp_path_factory) -> int:
    """How many cache entries a whole run of the suite leaves (the reference run's cache)."""
    root = tmp_path_factory.getbasetemp()
    return len(_entries(next(root.glob("reference*/cache"))))


def test_kill_9_at_random_points_then_resume_gives_identical_results(
    reference, planned_entries, tmp_path, record_property
):
    rng = random.Random(20261123)
    cache = tmp_path / "cache"
    kills: list[tuple[float, int]] = []  # (seconds after start, cache entries complete at the kill)
    # Each kill after the first lands once the run has added cells since the last kill (a seeded share of what
    # is left), plus a random fraction of a second: so every run makes progress and the kills fall at
    # different points of the plan whatever the machine's speed or load (a wall-clock delay estimated from
    # another run did not: under load the runs finished between kills). The first lands during start-up.
    for i in range(KILLS):
        done = len(_entries(cache)) if cache.exists() else 0
        if done >= planned_entries:
            break
        target = done + max(1, int(rng.uniform(0.1, 0.35) * (planned_entries - done)))
        # in one process, so that a cell's time is what a kill must outlast to make progress (worker processes
        # first spend seconds starting); killing a pool is the second half of this test
        proc = subprocess.Popen(
            _cmd(tmp_path, "killed", cache, workers=1),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        t0 = time.time()
        if i == 0:
            time.sleep(0.3)
        else:
            deadline = t0 + 300
            while proc.poll() is None and time.time() < deadline:
                if cache.exists() and len(_entries(cache)) >= target:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4))  # inside the next cell, or between cells, or in a cache write
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append((round(time.time() - t0, 2), _assert_cache_consistent(cache)))
        elif proc.returncode == 0:
            _assert_cache_consistent(cache)
            break  # the run finished before this kill
    record_property("kills", kills)  # (seconds, complete cache entries) per kill, in the JUnit XML
    # the kills landed at several different points of the plan, not all at one spot
    assert len(kills) >= 3 and len({n for _, n in kills}) >= 3, kills
    # then the default, parallel run killed once its workers have added to the cache: they end with it
    entries = _assert_cache_consistent(cache)
    proc = subprocess.Popen(
        _cmd(tmp_path, "killed", cache, workers=2), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and _assert_cache_consistent(cache) <= entries:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(1.5)  # a worker notices its driver is gone within 0.5 s
        kills.append((-1.0, _assert_cache_consistent(cache)))
    final = subprocess.run(_cmd(tmp_path, "killed", cache), env=_env(), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    _assert_cache_consistent(cache)
    _assert_same(_tables(tmp_path / "runs-killed"), reference)


def test_two_runs_at_once_on_one_cache_both_finish_with_the_same_results(reference, tmp_path):
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            _cmd(tmp_path, f"twin{i}", cache), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    _assert_cache_consistent(cache)
    for i in range(2):
        _assert_same(_tables(tmp_path / f"runs-twin{i}"), reference)
        manifest = json.loads(next((tmp_path / f"runs-twin{i}").glob("*/manifest.json")).read_text())
        assert manifest["status"] == "complete"
