"""End to end: an L2 suite on the quick digits, and the CIFAR-10 / SVHN smoke suites on generated files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
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
    medians = {}  # (source, eps) -> the median of CW's own L2 perturbations over the examples it fooled
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
                fooled = raw.double().numpy()
                fooled = fooled[np.isfinite(fooled)]
                label = json.loads((f.parent / "MANIFEST.json").read_text())["meta"]["label"]
                source = re.search(r" on (\S+) seed=", label).group(1)
                medians[(source, eps)] = (float(np.median(fooled)), len(fooled), int((fooled <= eps).sum()))
            seen.add((meta["norm"], eps))
    assert seen == {("linf", 0.1), ("l2", 0.5), ("l2", 1.0)}
    report = (tmp_path / "report.md").read_text()
    assert "### pgd, L-inf eps 0.1" in report
    assert "### pgd-l2, L2 eps 0.5" in report and "### cw-l2, L2 eps 1" in report
    # L-inf results come before the L2 ones, apart
    assert report.index("### pgd, L-inf eps 0.1") < report.index("### pgd-l2, L2 eps 0.5")
    # the L-inf-only flags are not raised on L2 radii
    assert "above_chance_at_full_range" not in report
    # CW (minimum-norm) reports its median perturbation: one row per model, equal to the stored raw norms'
    norms = pd.read_csv(next((tmp_path / "runs").rglob("attack_norms.csv")))
    assert set(norms["attack"]) == {"cw-l2"} and set(norms["source"]) == {"baseline", "entangled"}
    assert (norms["norm"] == "l2").all() and (norms["n"] == 150).all()
    assert len(norms) == len(medians) == 2
    for r in norms.itertuples():
        median, n_fooled, n_within = medians[(r.source, r.eps)]
        assert r.median_raw_norm == pytest.approx(median, rel=1e-9)
        assert (r.n_fooled, r.n_within_eps) == (n_fooled, n_within) and 0 < n_within <= n_fooled <= r.n
        assert r.q25_raw_norm <= r.median_raw_norm <= r.q75_raw_norm
    section = report[report.index("## Minimum-norm attacks") :].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    for r in norms.itertuples():
        want = [r.source, "cw-l2", "L2", "1", f"{r.median_raw_norm:.3g}", f"{r.n_within_eps} / {r.n_fooled}", "150"]
        assert want + ["1"] in rows, (want, rows)
    # the DkNN section names the norm of L2 sets and leaves L-inf labels as they were
    assert "pgd-l2 L2 eps=0.5" in report and "cw-l2 L2 eps=1" in report and "pgd eps=0.1" in report


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
