"""advbench compare: numbers checked against the two runs' saved CSVs; paired vs Welch; unmatched rows; a table
linked out of a run folder is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from advbench.analysis.compare import PAIRED, WELCH, compare_runs, welch_interval
from advbench.analysis.results import Results
from advbench.cli.main import main


def _outcomes(models: list[str], seeds: list[int], shift: float, n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(int(shift * 1000) + len(models))
    rows = []
    for seed in seeds:
        for src in models:
            for tgt in models:
                p = 0.3 + shift + 0.05 * seed + (0.2 if src != tgt else 0.0)
                for ex in range(n):
                    cc = bool(rng.random() < 0.95)
                    rows.append(
                        {
                            "seed": seed,
                            "source": src,
                            "attack": "pgd",
                            "eps": 0.1,
                            "target": tgt,
                            "example": ex,
                            "y": ex % 10,
                            "clean_correct": cc,
                            "adv_correct": bool(cc and rng.random() < p),
                            "source_success": bool(rng.random() < 0.7),
                        }
                    )
    return pd.DataFrame(rows)


def _run(folder: Path, models: list[str], seeds: list[int], shift: float) -> Path:
    clean = pd.DataFrame(
        [
            {"model": m, "seed": s, "test_accuracy": 0.9 + shift / 10 + 0.01 * s + 0.003 * i, "n": 400}
            for i, m in enumerate(models)
            for s in seeds
        ]
    )
    dknn = pd.DataFrame(
        [
            {
                "model": m,
                "seed": s,
                "input_set": "clean",
                "kind": "clean",
                "metric": "mean_credibility",
                "value": 0.6 + shift + 0.02 * s,
                "n": 100,
            }
            for m in models
            for s in seeds
        ]
    )
    empty = pd.DataFrame()
    res = Results.from_parts(
        suite={"name": folder.name, "models": [{"name": m} for m in models], "report": {"output": "r.md"}},
        outcomes=_outcomes(models, seeds, shift),
        training=empty,
        clean=clean,
        dknn=dknn,
        dknn_examples=empty,
        gradient_flags=empty,
    )
    res.save(folder / "results")
    (folder / "manifest.json").write_text(json.dumps({"status": "complete"}))
    return folder


def _value(md: str, first_cells: list[str]) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[: len(first_cells)] == first_cells:
            return cells
    raise AssertionError(f"no row {first_cells} in\n{md}")


def test_compare_paired_matches_the_csvs(tmp_path, capsys):
    a = _run(tmp_path / "run-a", ["baseline", "entangled"], [0, 1, 2], 0.0)
    b = _run(tmp_path / "run-b", ["baseline", "entangled", "extra"], [0, 1, 2], 0.1)
    assert main(["compare", str(a), str(b)]) == 0
    md = capsys.readouterr().out
    assert "paired by seed" in md
    ca = pd.read_csv(a / "results" / "clean.csv").query("model == 'entangled'").set_index("seed")["test_accuracy"]
    cb = pd.read_csv(b / "results" / "clean.csv").query("model == 'entangled'").set_index("seed")["test_accuracy"]
    d = (cb - ca).to_numpy()
    q = stats.t.ppf(0.975, len(d) - 1)
    se = d.std(ddof=1) / math.sqrt(len(d))
    row = _value(md, ["entangled"])
    assert row[1:4] == [f"{ca.mean():.3f}", f"{cb.mean():.3f}", f"{d.mean():+.3f}"]
    assert row[4] == f"[{d.mean() - q * se:+.3f}, {d.mean() + q * se:+.3f}]"
    # a transfer metric, from the saved transfer_metrics.csv
    ma = pd.read_csv(a / "results" / "transfer_metrics.csv")
    mb = pd.read_csv(b / "results" / "transfer_metrics.csv")
    sel = "source == 'baseline' and target == 'entangled' and metric == 'adv_accuracy'"
    va, vb = ma.query(sel).set_index("seed")["value"], mb.query(sel).set_index("seed")["value"]
    row = _value(md, ["baseline", "entangled", "pgd", "0.1", "adv_accuracy"])
    assert row[5:8] == [f"{va.mean():.3f}", f"{vb.mean():.3f}", f"{(vb - va).mean():+.3f}"]
    # what only B has is listed, not silently dropped
    assert "Only in run-b" in md and "extra" in md
    assert "Denominators" in md


def test_compare_welch_when_seeds_differ(tmp_path):
    a = _run(tmp_path / "a", ["baseline"], [0, 1, 2], 0.0)
    b = _run(tmp_path / "b", ["baseline"], [3, 4], 0.05)
    c = compare_runs(Results.load(a / "results"), Results.load(b / "results"))
    assert c.method == WELCH
    row = c.table.query("section == 'clean'").iloc[0]
    xa = pd.read_csv(a / "results" / "clean.csv")["test_accuracy"].to_numpy()
    xb = pd.read_csv(b / "results" / "clean.csv")["test_accuracy"].to_numpy()
    ref = stats.ttest_ind(xb, xa, equal_var=False).confidence_interval(0.95)
    assert row["diff"] == pytest.approx(xb.mean() - xa.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ref.low, ref.high))
    same = compare_runs(Results.load(a / "results"), Results.load(a / "results"))
    assert same.method == PAIRED and (same.table["diff"].abs() < 1e-12).all()


def test_welch_interval_edge_cases():
    d, lo, hi, _ = welch_interval(np.array([0.5]), np.array([0.6, 0.7]))
    assert d == pytest.approx(0.15) and math.isnan(lo) and math.isnan(hi)
    d, lo, hi, _ = welch_interval(np.array([0.5, 0.5]), np.array([0.7, 0.7]))
    assert (d, lo, hi) == pytest.approx((0.2, 0.2, 0.2))


ALPHA_RUN = Path(__file__).resolve().parents[1] / "reports" / "alpha-sweep" / "run"


def _copy_run(dst: Path) -> Path:
    import shutil

    shutil.copytree(ALPHA_RUN, dst)
    return dst


@pytest.mark.skipif(not ALPHA_RUN.is_dir(), reason="committed alpha-sweep run not present")
def _reseal(run: Path) -> None:
    """The copy stands for another run: its results checksums are those of its (edited) files."""
    import hashlib

    from advbench.analysis.results import CHECKSUMS, write_checksums

    folder = run / "results"
    write_checksums(folder, {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                             for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS})  # fmt: skip


def test_exact_reproduction_ignores_wall_clock_and_gzip_headers(tmp_path, capsys):
    import gzip
    import time

    from advbench.analysis.compare import reproduction_check

    b = _copy_run(tmp_path / "b")
    tr = pd.read_csv(b / "results" / "training.csv")
    tr["seconds"] = tr["seconds"] + 1.5  # another run's wall clock
    tr.to_csv(b / "results" / "training.csv", index=False)
    gz = b / "results" / "outcomes.csv.gz"
    data = gzip.decompress(gz.read_bytes())
    time.sleep(1.1)
    gz.write_bytes(gzip.compress(data, mtime=int(time.time())))  # same content, another header
    _reseal(b)
    table = reproduction_check(ALPHA_RUN / "results", b / "results")
    assert set(table["status"]) == {"identical"} and "suite.json" in set(table["table"])
    assert main(["compare", str(ALPHA_RUN), str(b), "--exact"]) == 0
    assert "B reproduces A" in capsys.readouterr().out


@pytest.mark.skipif(not ALPHA_RUN.is_dir(), reason="committed alpha-sweep run not present")
def test_exact_reproduction_names_what_differs(tmp_path, capsys):
    from advbench.analysis.compare import reproduction_check

    b = _copy_run(tmp_path / "b")
    clean = pd.read_csv(b / "results" / "clean.csv")
    clean.loc[3, "test_accuracy"] += 1e-7
    clean.to_csv(b / "results" / "clean.csv", index=False)
    (b / "results" / "failures.csv").unlink()
    _reseal(b)
    table = reproduction_check(ALPHA_RUN / "results", b / "results").set_index("table")
    assert table.loc["clean.csv", "status"] == "differs" and table.loc["clean.csv", "max_abs_diff"] == pytest.approx(
        1e-7
    )
    assert table.loc["failures.csv", "status"] == "only in A"
    assert main(["compare", str(ALPHA_RUN), str(b), "--exact"]) == 1
    assert "does not reproduce" in capsys.readouterr().out
    loose = reproduction_check(ALPHA_RUN / "results", b / "results", tolerance=1e-6).set_index("table")
    assert loose.loc["clean.csv", "status"] == "within tolerance"
    labels = pd.read_csv(b / "results" / "clean.csv")
    labels.loc[0, "model"] = "renamed"
    labels.to_csv(b / "results" / "clean.csv", index=False)
    _reseal(b)
    detail = reproduction_check(ALPHA_RUN / "results", b / "results").set_index("table").loc["clean.csv", "detail"]
    assert "column model, row 0" in detail


def test_tolerance_needs_exact(tmp_path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path), "--tolerance", "0.1"]) != 0
    assert "without --exact" in capsys.readouterr().err


def test_compare_exact_refuses_a_table_linked_out_of_the_run_folder(tmp_path, capsys):
    import shutil

    run = Path(__file__).resolve().parents[1] / "reports" / "cdd-sweep" / "run"
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(run, a)
    shutil.copytree(run, b)
    (b / "results" / "clean.csv").unlink()
    (b / "results" / "clean.csv").symlink_to("/etc/hostname")
    assert main(["compare", str(a), str(b), "--exact"]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and "clean.csv" in err
