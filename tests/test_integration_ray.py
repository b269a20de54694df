"""``advbench run --executor ray`` against a real local Ray cluster (a head and a worker node on loopback).

The Ray run of ``suites/quick.yaml`` must give bit-identical tables to the local executor's run with
the same thread count, even though a worker process is killed (``kill -9``) while it trains a
model: Ray retries the cell, and the manifest records the second attempt and the nodes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "suites" / "quick.yaml"
TABLES = ["outcomes.csv.gz", "clean.csv", "dknn.csv.gz", "dknn_examples.csv.gz", "transfer_metrics.csv"]
pytestmark = pytest.mark.integration


def _args(tmp: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "advbench.cli.main",
        "run",
        str(SUITE),
        "--threads",
        "1",
        "--runs-dir",
        str(tmp / f"runs-{name}"),
        "--cache-dir",
        str(tmp / f"cache-{name}"),
        "--report",
        str(tmp / f"{name}.md"),
        *extra,
    ]


def _run_dir(tmp: Path, name: str) -> Path:
    return next((tmp / f"runs-{name}").glob("quick-*"))


def _table(run_dir: Path, name: str) -> pd.DataFrame:
    df = pd.read_csv(run_dir / "results" / name)
    return df.sort_values(list(df.columns)).reset_index(drop=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def test_ray_run_equals_local_run_and_survives_a_killed_worker(cluster, tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    local = subprocess.run(_args(tmp_path, "local"), env=env, capture_output=True, text=True, timeout=900)
    assert local.returncode == 0, local.stderr[-3000:]

    proc = subprocess.Popen(
        _args(tmp_path, "ray", "--executor", "ray", "--address", cluster.address),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Kill -9 the worker process running the first training cell, as soon as it has started.
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and proc.poll() is None:
        logs = list((tmp_path / "runs-ray").glob("*/ray-attempts.jsonl")) if (tmp_path / "runs-ray").exists() else []
        if logs:
            for line in logs[0].read_text().splitlines():
                attempt = json.loads(line)
                manifest = json.loads((logs[0].parent / "manifest.json").read_text())
                train_keys = {c["key"] for c in manifest.get("cells", {}).values() if c["kind"] == "train"}
                if attempt["key"] not in train_keys:  # not finished yet: kill its worker mid-cell
                    os.kill(attempt["pid"], signal.SIGKILL)
                    killed = attempt
                    break
        time.sleep(0.05)
    assert killed is not None, "no cell started on the cluster"
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]

    ray_dir, local_dir = _run_dir(tmp_path, "ray"), _run_dir(tmp_path, "local")
    for table in TABLES:
        pd.testing.assert_frame_equal(_table(ray_dir, table), _table(local_dir, table), check_exact=True)
    assert (tmp_path / "ray.md").read_text().count("## ") == (tmp_path / "local.md").read_text().count("## ")

    manifest = json.loads((ray_dir / "manifest.json").read_text())
    assert manifest["executor"] == "ray" and len(manifest["ray"]["nodes"]) == 2
    cells = manifest["cells"]
    assert all(not c["cached"] for c in cells.values())
    retried = [c for c in cells.values() if c["key"] == killed["key"]]
    assert retried and retried[0]["attempts"] >= 2, "the killed cell was not retried"
    assert len({c["node"] for c in cells.values()}) == 2, "both nodes should have run cells"


def test_missing_ray_gives_a_clear_error(tmp_path, monkeypatch):
    from advbench.errors import AdvbenchError
    from advbench.suite import ray_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(AdvbenchError, match=r"pip install 'advbench\[ray\]'"):
        ray_executor.require_ray()
