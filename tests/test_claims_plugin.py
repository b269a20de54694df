"""A claim from a separate package, found through the ``advbench.claims`` entry point, reaches the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = Path(__file__).parent / "plugins" / "advbench-claim-plugin"


def _install_on_path(site: Path) -> None:
    """A dist-info with the plugin's entry point next to its source: what pip would install, without touching
    the shared environment."""
    dist = site / "advbench_claim_plugin-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: advbench-claim-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[advbench.claims]\ndemo = advbench_claim_demo\n")


@pytest.mark.integration
def test_installed_claim_plugin_appears_in_the_report_with_its_verdict(tmp_path):
    site = tmp_path / "site"
    _install_on_path(site)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(PLUGIN / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    listed = subprocess.run(
        [sys.executable, "-m", "advbench.cli.main", "list", "claims", "demo-*"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "demo-baseline-beats-chance" in listed.stdout and "advbench-claim-plugin" in listed.stdout

    # the committed run's suite pre-registers claims (a)-(g); a suite without a `claims:` list reads every
    # registered claim, the installed plugin's included: render a copy of the run with that list removed
    run_dir = tmp_path / "run"
    shutil.copytree(ROOT / "reports" / "transfer" / "run", run_dir)
    suite_json = run_dir / "results" / "suite.json"
    suite = json.loads(suite_json.read_text())
    suite.pop("claims", None)
    suite_json.write_text(json.dumps(suite, indent=1))
    (run_dir / "results" / "SHA256SUMS").unlink()  # an edited copy: the folder's checksums would refuse it
    out = tmp_path / "report" / "transfer.md"
    run = subprocess.run(
        [sys.executable, "-m", "advbench.cli.main", "-q", "report", str(run_dir), "--output", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    text = out.read_text()
    claims = text.split("## Claims", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in claims.splitlines() if "demo-baseline-beats-chance" in line)
    # the committed run's baselines reach about 91% clean accuracy in every seed: far above chance
    assert "**supported**" in row
    assert text.index("## Claims") < text.index("## Clean accuracy")
