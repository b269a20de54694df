"""Speed-up of a multi-seed suite on 2 local Ray workers over the local executor, side by side.

``suites/quick.yaml`` (3 models x 2 seeds) from an empty cache, through the CLI, three ways in one
session: the local executor with torch's default threads (all cores inside each cell), the local
executor with 1 thread, and ``--executor ray --threads 1`` with Ray started on this machine (one
worker per core, cells in parallel). Wall time includes process start-up and, for Ray, starting
Ray. The ratio is what a user of this machine gains by adding ``--executor ray``.

Run with: pytest benchmarks/test_bench_ray.py -m benchmark -p no:cacheprovider
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "suites" / "quick.yaml"


def _run(tmp: Path, name: str, *extra: str) -> float:
    cmd = [sys.executable, "-m", "advbench.cli.main", "-q", "run", str(SUITE)]
    cmd += ["--runs-dir", str(tmp / f"runs-{name}"), "--cache-dir", str(tmp / f"cache-{name}")]
    cmd += ["--report", str(tmp / f"{name}.md"), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env={**os.environ, "PYTHONHASHSEED": "0"})
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wall


def test_ray_speedup_on_quick_suite(benchmark, figure, tmp_path):
    walls: dict[str, float] = {}

    def all_three() -> None:
        walls["local"] = _run(tmp_path, "local")
        walls["local-1thread"] = _run(tmp_path, "local1", "--threads", "1")
        walls["ray"] = _run(tmp_path, "ray", "--executor", "ray", "--threads", "1")

    benchmark.pedantic(all_three, rounds=1, iterations=1)
    figure("quick.yaml local executor (default threads)", walls["local"], unit="s", digits=1)
    figure("quick.yaml local executor, 1 thread", walls["local-1thread"], unit="s", digits=1)
    figure("quick.yaml --executor ray, 2 workers x 1 thread", walls["ray"], unit="s", digits=1)
    figure("ray speed-up over local (default threads)", walls["local"] / walls["ray"], unit="x", digits=2)
    figure("ray speed-up over local (1 thread)", walls["local-1thread"] / walls["ray"], unit="x", digits=2)
