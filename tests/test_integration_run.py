"""`advbench run suites/quick.yaml` end to end through the CLI: kill it part way, resume, compare."""

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
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration

TABLES = ["outcomes.csv.gz", "clean.csv", "dknn.csv.gz", "transfer_metrics.csv"]


def _cli(*args: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "advbench.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "ADVBENCH_CACHE": str(cache), "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "0"}


def _run_args(tmp: Path, name: str) -> list[str]:
    return [
        "run",
        str(ROOT / "suites" / "quick.yaml"),
        "--runs-dir",
        str(tmp / f"runs-{name}"),
        "--report",
        str(tmp / f"report-{name}.md"),
    ]


def _latest_results(runs: Path) -> Path:
    dirs = sorted(p for p in runs.iterdir() if (p / "manifest.json").is_file())
    return dirs[-1] / "results"


def _read(results: Path, table: str) -> pd.DataFrame:
    df = pd.read_csv(results / table)
    return df.sort_values(list(df.columns)).reset_index(drop=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("whole")
    proc = _cli(*_run_args(tmp, "a"), cwd=tmp, env=_env(tmp / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tmp / "console-a.err").write_text(proc.stderr)
    (tmp / "console-a.out").write_text(proc.stdout)
    return tmp, _latest_results(tmp / "runs-a")


def test_quiet_console_ends_with_headline(uninterrupted):
    """Not in a terminal, the default console is about 20 lines: progress, stages, warnings, then the headline."""
    tmp, results = uninterrupted
    err, out = (tmp / "console-a.err").read_text(), (tmp / "console-a.out").read_text()
    lines = err.splitlines() + out.splitlines()
    assert len(lines) <= 24, "\n".join(lines)
    assert "epoch" not in err and "faiss" not in err
    assert sum("done:" in x for x in err.splitlines()) == 7  # one line per stage (cell kind, the convergence check too)
    assert out.startswith("Results:") and "Claims (" in out
    # paths relative to the project (here the test's folder, which is no git work tree), never absolute
    assert out.splitlines()[-1] == f"Report: report-a.md; run folder: {results.parent.relative_to(tmp).as_posix()}"
    show = _cli("show", str(results.parent), cwd=tmp, env=_env(tmp / "cache"))
    assert show.returncode == 0 and show.stdout == out


def test_report_written_with_every_section(uninterrupted):
    tmp, _ = uninterrupted
    text = (tmp / "report-a.md").read_text()
    for heading in (
        "## Clean accuracy",
        "## Entanglement per hidden layer",
        "## White-box robustness",
        "## Transfer matrices",
        "## Paired differences",
        "## DkNN credibility",
        "## Evaluation-quality flags",
        "## Provenance",
    ):
        assert heading in text
    assert (tmp / "report-a" / "credibility.png").is_file()
    assert "Denominator" in text
    for heading in (
        "### Conformal validity and efficiency",
        "### Detection of successful attacks",
        "### Softmax calibration and accuracy",
        "### Out-of-distribution sets",
        "## Worst case over attacks",
    ):
        assert heading in text
    # a calibration error only for the softmax: no ECE of credibility in any table header
    headers = [line for line in text.splitlines() if line.startswith("| ") and "ECE" in line]
    assert headers and all("MSP ECE" in line and "credibility ECE" not in line for line in headers)
    # the flags section lists every check with its numbers, not only the raised ones
    checks = pd.read_csv(tmp / "report-a" / "evaluation_checks.csv")
    assert {"adaptive_weaker_than_non_adaptive", "iterative_weaker_than_single_step"} <= set(checks["check"])
    assert (checks["outcome"] == "passed").any()
    for name in set(checks["check"]):
        assert f"| {name} " in text


def test_report_renders_the_same_without_the_per_example_table(uninterrupted):
    """A run folder kept without dknn_examples.csv.gz (too large for git in a powered run) re-renders the same
    report from the per-seed summaries saved next to it: claims, worst case and figures included."""
    import shutil

    tmp, results = uninterrupted
    for f in ("neighbour_agreement.csv", "dknn_worst_case.csv", "dknn_bins.csv"):
        assert (results / f).is_file(), f
    texts = {}
    for name, strip in (("full", False), ("slim", True)):
        run = tmp / f"copy-{name}"
        shutil.copytree(results.parent, run)
        if strip:
            (run / "results" / "dknn_examples.csv.gz").unlink()
        proc = _cli("report", str(run), "--output", str(tmp / name / "report.md"), cwd=tmp, env=_env(tmp / "cache"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        texts[name] = (tmp / name / "report.md").read_text().replace(f"copy-{name}", "copy")
    assert texts["slim"] == texts["full"]
    assert "| DkNN " in texts["slim"] and "credibility.png" in texts["slim"]
    for png in ("credibility.png", "reliability_clean.png"):
        assert (tmp / "slim" / "report" / png).read_bytes() == (tmp / "full" / "report" / png).read_bytes()


def test_the_convergence_check_agrees_with_the_dknns_own_scores(uninterrupted):
    """The check's accuracy of the attack's own set is what the DkNN scoring cell measured on the same examples."""
    tmp, results = uninterrupted
    conv = pd.read_csv(results / "attack_convergence.csv")
    examples = pd.read_csv(results / "dknn_examples.csv.gz")
    suite = yaml.safe_load((ROOT / "suites" / "quick.yaml").read_text())
    checked = sum(len(a["eps"]) for a in suite["attacks"] if a["name"] == "dknn-adaptive") * len(suite["models"])
    assert checked == 9  # both objectives: dknn-adaptive at 2 eps, dknn-credible at 1, on 3 models
    assert len(conv) == checked and set(conv["seed"]) == {0} and (conv["n"] == 200).all()
    for row in conv.itertuples():
        scored = examples[
            (examples["model"] == row.model)
            & (examples["seed"] == row.seed)
            & (examples["input_set"] == f"{row.attack}@{row.eps:g} from {row.model}")
        ].sort_values("example")
        assert scored["correct"].iloc[: row.n].mean() == pytest.approx(row.dknn_accuracy, abs=1e-12)
        assert 0 <= row.dknn_accuracy_longer <= 1 and row.drop == pytest.approx(
            row.dknn_accuracy - row.dknn_accuracy_longer
        )
    assert "## Convergence of the attacks on the DkNN" in (tmp / "report-a.md").read_text()


def test_worst_case_never_weaker_than_any_single_attack(uninterrupted):
    """The ensemble's robust accuracy is at most every white-box attack's accuracy, read from the other tables."""
    tmp, results = uninterrupted
    worst = pd.read_csv(tmp / "report-a" / "worst_case.csv").set_index(["quantity", "model", "seed", "eps"])
    metrics = pd.read_csv(results / "transfer_metrics.csv")
    single = metrics[(metrics["metric"] == "adv_accuracy") & (metrics["source"] == metrics["target"])]
    if "target_seed" in single.columns:  # white-box: the source model itself, not its cross-seed twin
        single = single[single["target_seed"].isna() | (single["target_seed"] == single["seed"])]
    dk = pd.read_csv(results / "dknn.csv.gz")
    dk_single = dk[(dk["kind"] == "adversarial") & (dk["source"] == dk["model"]) & (dk["metric"] == "dknn_accuracy")]
    pairs = [("classifier", r.target, r.seed, r.eps, r.attack, r.value) for r in single.itertuples()]
    pairs += [("dknn", r.model, r.seed, r.eps, r.attack, r.value) for r in dk_single.itertuples()]
    assert len(pairs) == 2 * len(single) and single["attack"].nunique() >= 4
    for quantity, model, seed, eps, attack, acc in pairs:
        robust = worst.loc[(quantity, model, seed, eps), "robust_accuracy"]
        assert robust <= acc + 1e-9, (quantity, model, seed, eps, attack, robust, acc)
    # each attack on the DkNN (both objectives) is at least as strong on it as every other attack, at every eps,
    # model and seed where it runs
    wide = dk_single.pivot_table(index=["model", "seed", "eps"], columns="attack", values="value")
    adaptive = ["dknn-adaptive", "dknn-credible"]
    others = wide.drop(columns=adaptive).min(axis=1)
    for a in adaptive:
        ran = wide[a].notna()
        assert ran.any() and (wide.loc[ran, a] <= others[ran] + 0.01).all(), wide  # 0.01: the flags' tolerance


def test_report_opens_with_claims_and_paired_intervals_agree_with_tests(uninterrupted):
    """Issue 14's done-when on the quick run: the Claims table first, all 8 built-ins of the paper's claims (a-g and
    d-strongest) with a verdict; no paired row whose interval and test disagree; the cross-seed control reaches
    claim (f) and `advbench power`."""
    tmp, results = uninterrupted
    text = (tmp / "report-a.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Claims"
    claims = pd.read_csv(results / "claims.csv")
    builtin = [n for n in claims["name"] if n[:2] in {f"{c}-" for c in "abcdefg"}]
    assert len(builtin) == 8
    table = text.split("## Claims", 1)[1].split("\n## ", 1)[0]
    for name, verdict, reason in claims[["name", "verdict", "reason"]].itertuples(index=False):
        assert verdict in ("supported", "contradicted", "inconclusive", "not applicable")
        assert f"| {name} " in table and f"**{verdict}**" in table
        assert verdict != "not applicable" or reason.startswith("not applicable: ")
    f = claims.set_index("name").loc["f-less-transfer-to-entangled-than-independent-baseline"]
    assert f["verdict"] != "not applicable", f["reason"]  # the cross-seed cells exist and are read
    paired = pd.read_csv(results / "paired_comparisons.csv")
    finite = paired[paired["ci_low"].notna() & paired["ci_high"].notna()]
    excludes = (finite["ci_low"] > 0) | (finite["ci_high"] < 0)
    assert len(finite) > 0 and int(((finite["p_t"] < 0.05) != excludes).sum()) == 0
    assert paired.loc[paired["saturated"], "ci_low"].isna().all()
    metrics = pd.read_csv(results / "transfer_metrics.csv")
    assert (metrics["target_seed"] != metrics["seed"]).any() and (metrics["target_seed"] == metrics["seed"]).any()
    assert "## Independent transfer (cross-seed control)" in text and "## Power" in text
    power = _cli("power", str(results.parent), cwd=tmp, env=_env(tmp / "cache"))
    assert power.returncode == 0, power.stderr
    assert "mdd_80 (pp)" in power.stdout and "paired comparisons" in power.stdout


def test_killed_run_resumes_to_identical_results(uninterrupted, tmp_path):
    _, whole = uninterrupted
    env = _env(tmp_path / "cache")
    proc = subprocess.Popen(
        [sys.executable, "-m", "advbench.cli.main", *_run_args(tmp_path, "b")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # wait until a few cells are finished, then kill -9 mid-run
    deadline = time.time() + 300
    manifest = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "runs-b").glob("*/manifest.json")) if (tmp_path / "runs-b").exists() else []
        if found:
            try:
                manifest = json.loads(found[0].read_text())
            except ValueError:
                manifest = None
            if manifest and len(manifest.get("cells", {})) >= 4:
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(manifest["cells"])

    resumed = _cli(*_run_args(tmp_path, "b"), cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = _latest_results(tmp_path / "runs-b")
    cells = json.loads((results.parent / "manifest.json").read_text())["cells"]
    assert sum(c["cached"] for c in cells.values()) >= done_before
    for table in TABLES:
        pd.testing.assert_frame_equal(_read(results, table), _read(whole, table), check_exact=True)

    # a re-run of a finished suite is all cache hits (its speed is a benchmark, benchmarks/test_bench_suite.py)
    again = _cli(*_run_args(tmp_path, "b"), cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = _latest_results(tmp_path / "runs-b")
    cells = json.loads((rerun.parent / "manifest.json").read_text())["cells"]
    assert all(c["cached"] for c in cells.values()) and len(cells) == len(
        json.loads((results.parent / "manifest.json").read_text())["cells"]
    )
    # ... and a lookup: the finished run's results folder comes from the cache, byte for byte, cells unread
    manifest = json.loads((rerun.parent / "manifest.json").read_text())
    assert manifest["results_from_cache"] and "results_from_cache" not in json.loads(
        (results.parent / "manifest.json").read_text()
    )
    assert sorted(p.name for p in rerun.iterdir()) == sorted(p.name for p in results.iterdir())
    for f in results.iterdir():
        assert (rerun / f.name).read_bytes() == f.read_bytes(), f.name
    assert again.stdout.split("Report:")[0] == resumed.stdout.split("Report:")[0]  # the same headline


def test_plan_lists_cells_and_computes_nothing(uninterrupted, tmp_path):
    tmp, _ = uninterrupted
    proc = _cli(
        "run",
        str(ROOT / "suites" / "quick.yaml"),
        "--plan",
        "--runs-dir",
        str(tmp_path / "runs"),
        cwd=tmp_path,
        env=_env(tmp / "cache"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "train baseline seed=0" in proc.stdout and "0 to compute" in proc.stdout
    assert "from baseline seed=0 to seed=1" in proc.stdout  # the cross-seed (ring) transfer cells
    assert not (tmp_path / "runs").exists()
