"""End to end: an L2 suite on the quick digits, and the CIFAR-10 / SVHN smoke suites on generated files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from advbench.attacks.base import FLOAT_ATOL

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def _run(suite: Path, tmp: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADVBENCH_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "2", **(env_extra or {})}
    args = ["run", str(suite), "--runs-dir", str(tmp / "runs"), "--report", str(tmp / "report.md"), "--threads", "2"]
    args += ["--cache-dir", str(tmp / "cache")]
    return subprocess.run(
        [sys.executable, "-m", "advbench.cli.main", *args], env=env, capture_output=True, text=True, timeout=900
    )


def test_l2_suite_end_to_end(tmp_path):
    proc = _run(ROOT / "tests" / "suites" / "quick-l2.yaml", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every stored adversarial set: inside its own ball
    seen = set()
    for f in (tmp_path / "cache" / "attack").rglob("adv.safetensors"):
        with safe_open(str(f), framework="pt") as fh:
            meta = fh.metadata()
            eps = float(meta["eps"])
            if meta["norm"] == "l2":
                assert float(fh.get_tensor("l2").max()) <= eps + FLOAT_ATOL, (f, meta)
            else:
                assert float(fh.get_tensor("linf").max()) <= eps + FLOAT_ATOL, (f, meta)
            if "CarliniWagner" in meta["attack"]:
                raw = fh.get_tensor("raw_norm")
                assert raw.shape == fh.get_tensor("l2").shape  # kept for the median perturbation size
            seen.add((meta["norm"], eps))
    assert seen == {("linf", 0.1), ("l2", 0.5), ("l2", 1.0)}
    report = (tmp_path / "report.md").read_text()
    assert "### pgd, L-inf eps 0.1" in report
    assert "### pgd-l2, L2 eps 0.5" in report and "### cw-l2, L2 eps 1" in report
    # L-inf results come before the L2 ones, apart
    assert report.index("### pgd, L-inf eps 0.1") < report.index("### pgd-l2, L2 eps 0.5")
    # the L-inf-only flags are not raised on L2 radii
    assert "above_chance_at_full_range" not in report


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_colour_smoke_suite_on_generated_official_files(tmp_path, name):
    from test_data_colour import write_cifar_tarball, write_svhn

    data = tmp_path / "data"
    if name == "cifar10":
        write_cifar_tarball(data / "cifar10" / "cifar-10-binary.tar.gz", per_batch=80, n_test=120)
    else:
        write_svhn(data / "svhn", n_train=400, n_test=120)
    proc = _run(ROOT / "tests" / "suites" / f"{name}-smoke.yaml", tmp_path, {"ADVBENCH_DATA": str(data)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    assert "## Clean accuracy" in report and "### pgd-l2, L2 eps 0.5" in report
