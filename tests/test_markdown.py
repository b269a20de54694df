"""The trust pieces wired into runs: keys follow the code and the thread count, the report path is
checked before anything runs, the report follows its own code, damaged runs give clear errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

import advbench.codeversion as cv
from advbench.analysis.results import Results
from advbench.attacks.contract import CHILD_THREADS
from advbench.cli.main import main
from advbench.config import Suite
from advbench.errors import AdvbenchError
from advbench.io import DiskFullError, generated_marker
from advbench.reports import markdown
from advbench.suite.context import CellContext, RunOptions

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())


def _results(**suite) -> Results:
    empty = pd.DataFrame()
    doc = {"name": "t", "models": [], "report": {"output": "x", "plots": False}} | suite
    return Results.from_parts(
        suite=doc,
        outcomes=empty,
        training=empty,
        clean=empty,
        dknn=empty,
        dknn_examples=empty,
        gradient_flags=empty,
        failures=pd.DataFrame(columns=["cell", "kind", "status", "error"]),
    )


def _keys(**opts) -> dict[str, str]:
    ctx = CellContext.create(Suite.model_validate(TINY), RunOptions(cache_dir="/tmp/unused", progress=False, **opts))
    return {c.label: c.key for c in ctx.plan.cells}


def _kinds(**opts) -> dict[str, dict]:
    ctx = CellContext.create(Suite.model_validate(TINY), RunOptions(cache_dir="/tmp/unused", progress=False, **opts))
    return {c.label: (c.kind, c.spec["code"]) for c in ctx.plan.cells}


def test_every_cell_key_holds_its_kinds_handler_and_threads():
    for _label, (kind, code) in _kinds(threads=3).items():
        assert code["threads"] == 3
        assert code["components"]["cell"].startswith(f"advbench.suite.cells.{kind.replace('-', '_')}@")


def test_local_and_ray_with_equal_threads_give_equal_keys():
    assert _keys(threads=2) == _keys(threads=2, executor="ray")
    assert _keys(threads=1) == _keys(executor="ray")  # Ray's default is one thread per task


def test_different_thread_counts_never_share_a_key():
    one, two = _keys(threads=1), _keys(threads=2)
    assert not set(one.values()) & set(two.values())


def test_time_limited_attacks_are_keyed_with_the_childs_thread_count():
    limited = _kinds(threads=4, time_limit=30.0)
    for kind, code in limited.values():
        assert code["threads"] == (CHILD_THREADS if kind == "attack" else 4)
    assert {k for k, (kind, _) in limited.items() if kind == "train"} and _keys(threads=1) != _keys(threads=4)


@pytest.mark.parametrize("kind", ["train", "attack", "transfer", "dknn-index", "dknn-score"])
def test_changing_one_kinds_code_moves_its_keys_and_those_downstream(monkeypatch, kind):
    before = _kinds(threads=1)
    keys_before = _keys(threads=1)
    module = f"advbench.suite.cells.{kind.replace('-', '_')}"
    lock = {m: {**v, "version": v["version"] + (m == module)} for m, v in cv.read_lock().items()}
    monkeypatch.setattr(cv, "_lock", lambda: lock)
    after = _keys(threads=1)
    for label, (k, _) in before.items():
        if k == kind:
            assert after[label] != keys_before[label], label
    untouched = [label for label, (k, _) in before.items() if k == "train"] if kind != "train" else []
    assert all(after[label] == keys_before[label] for label in untouched)


@pytest.fixture
def renderings(tmp_path, monkeypatch) -> list[int]:
    """Saved results in ``tmp_path/results``; ``write_report`` replaced by a stub that writes ``tmp_path/r.md``
    and records each call in the returned list."""
    _results().save(tmp_path / "results")
    calls: list[int] = []
    monkeypatch.setattr(
        markdown,
        "write_report",
        lambda *a, **k: calls.append(1) or (tmp_path / "r.md").write_text(generated_marker("r.md")),
    )
    return calls


def test_report_is_rerendered_when_its_code_changes(tmp_path, monkeypatch, renderings):
    results_dir, res, calls = tmp_path / "results", _results(), renderings
    out = tmp_path / "r.md"
    assert markdown.write_run_report(res, out, results_dir=results_dir, manifest={})
    assert not markdown.write_run_report(res, out, results_dir=results_dir, manifest={})
    monkeypatch.setattr(markdown, "report_code_version", lambda: "f" * 64)
    assert markdown.write_run_report(res, out, results_dir=results_dir, manifest={})
    assert len(calls) == 2


def test_report_is_rerendered_when_the_claims_rules_or_its_own_bytes_change(tmp_path, monkeypatch, renderings):
    """The stamp covers the analysis code (claims and statistics) and the report's bytes: neither is kept stale."""
    import advbench.codeversion as codeversion

    results_dir, res, calls = tmp_path / "results", _results(), renderings
    out = tmp_path / "r.md"
    assert markdown.write_run_report(res, out, results_dir=results_dir, manifest={})
    assert not markdown.write_run_report(res, out, results_dir=results_dir, manifest={})
    monkeypatch.setattr(codeversion, "results_code_version", lambda: "e" * 64)  # a claims rule changed
    assert markdown.write_run_report(res, out, results_dir=results_dir, manifest={})
    assert not markdown.write_run_report(res, out, results_dir=results_dir, manifest={})
    out.write_text(out.read_text() + "| a row added by hand |\n")  # an edited report is never kept
    assert markdown.write_run_report(res, out, results_dir=results_dir, manifest={})
    assert len(calls) == 3
    fields = markdown._stamp_fields(tmp_path / "r" / markdown.STAMP_NAME)
    assert {"results", "report-code", "results-code", "claims", "report"} <= set(fields)


def test_a_report_another_suite_made_is_replaced_only_on_request(tmp_path, renderings):
    results_dir, res = tmp_path / "results", _results()
    out = tmp_path / "r.md"
    mine = markdown.suite_identity("transfer", "suites/transfer.yaml")
    assert markdown.write_run_report(res, out, results_dir=results_dir, manifest={}, suite_id=mine)
    assert markdown.check_report_path(out, suite_id=mine) == out  # the same suite (edited or not) re-renders
    impostor = markdown.suite_identity("transfer", "suites/evil.yaml")  # merely named like it
    with pytest.raises(AdvbenchError, match=r"made from another suite \(transfer from suites/transfer.yaml\)"):
        markdown.check_report_path(out, suite_id=impostor)
    assert markdown.check_report_path(out, suite_id=impostor, replace=True) == out


def test_a_forced_rendering_leaves_a_stamp_and_the_per_example_table_is_not_digested(tmp_path, renderings):
    results_dir, calls = tmp_path / "results", renderings
    out = tmp_path / "r.md"
    assert markdown.write_run_report(_results(), out, results_dir=results_dir, manifest={}, force=True)
    assert markdown.write_run_report(_results(), out, results_dir=results_dir, manifest={}, force=True)
    # `advbench report` forces; its stamp is what a later re-run with the same results finds up to date
    digest = markdown.results_digest(results_dir)
    (results_dir / "dknn_examples.csv.gz").write_bytes(gzip.compress(b"model,seed\nx,0\n", mtime=0))
    assert markdown.results_digest(results_dir) == digest  # a committed folder lacks it: same report
    assert not markdown.write_run_report(_results(), out, results_dir=results_dir, manifest={})
    (results_dir / "clean.csv").write_text("model,seed,test_accuracy\nx,0,0.5\n")
    assert markdown.results_digest(results_dir) != digest
    assert markdown.write_run_report(_results(), out, results_dir=results_dir, manifest={})
    assert len(calls) == 3


@pytest.mark.parametrize("content", ["# my notes\n", "", "<!-- generated by someone else -->\n"])
def test_a_report_path_holding_a_foreign_file_is_refused_before_anything_runs(tmp_path, content, capsys):
    target = tmp_path / "notes.md"
    target.write_text(content)
    runs = tmp_path / "runs"
    suite = str(ROOT / "tests" / "suites" / "tiny.yaml")
    code = main(
        ["run", suite, "--report", str(target), "--runs-dir", str(runs), "--cache-dir", str(tmp_path / "cache")]
    )
    assert code == 2 and "refusing to write the report" in capsys.readouterr().err
    assert target.read_text() == content
    assert not runs.exists() and not (tmp_path / "cache").exists()  # nothing ran, nothing was written


def test_symlinked_report_and_report_folder_are_refused(tmp_path):
    (tmp_path / "elsewhere.md").write_text("x")
    (tmp_path / "link.md").symlink_to(tmp_path / "elsewhere.md")
    with pytest.raises(AdvbenchError, match="symlink"):
        markdown.check_report_path(tmp_path / "link.md")
    (tmp_path / "r").write_text("a file where the figures go")
    with pytest.raises(AdvbenchError, match="figures"):
        markdown.check_report_path(tmp_path / "r.md")
    with pytest.raises(AdvbenchError, match=r"\.md"):
        markdown.check_report_path(tmp_path / "r.pth")
    assert markdown.check_report_path(tmp_path / "new.md") == tmp_path / "new.md"


def test_the_committed_report_is_advbenchs_own():
    from advbench.io import is_generated_file

    assert is_generated_file(ROOT / "reports" / "transfer.md")


def test_results_save_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno

    res = _results()
    calls = {"n": 0}
    real = pd.DataFrame.to_csv

    def full(self, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            Path(path).write_bytes(b"par")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with pytest.raises(DiskFullError, match="results table"):
        res.save(tmp_path / "results")
    files = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert "suite.json" not in files  # not marked complete
    assert len(files) == 2 and all((tmp_path / "results" / f).stat().st_size > 0 for f in files)


def _report_cli(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`advbench report RUN --output ...` in this process: its exit status and stderr (an uncaught exception
    propagates, so a pass means the command answered with an error of its own)."""
    code = main(["report", str(run_dir), "--output", str(tmp_path / "out.md")])
    return code, capsys.readouterr().err


def _fake_run(tmp_path: Path, status: str = "complete") -> Path:
    run = tmp_path / "run"
    res = _results()
    res.save(run / "results")
    (run / "manifest.json").write_text(json.dumps({"status": status, "failed_cells": 0}))
    return run


@pytest.mark.parametrize(
    "damage",
    [
        lambda run: (run / "manifest.json").write_text("{not json"),
        lambda run: (run / "manifest.json").write_text("[1, 2]"),
        lambda run: (run / "results" / "suite.json").write_text("\x00\x01"),
        lambda run: (run / "results" / "suite.json").unlink(),
        lambda run: (run / "results" / "outcomes.csv.gz").write_bytes(b"\x1f\x8b\x08\x00garbage" * 10),
        lambda run: (run / "results").rename(run / "moved"),
    ],
)
def test_report_on_a_damaged_run_is_a_clear_error(tmp_path, damage, capsys):
    run = _fake_run(tmp_path)
    damage(run)
    code, err = _report_cli(run, tmp_path, capsys)
    assert code != 0 and "error" in err.lower(), err


@pytest.mark.parametrize("status", ["running", "failed", "rendering", "interrupted"])
def test_report_on_an_incomplete_run_says_so_and_exits_non_zero(tmp_path, status, capsys):
    code, err = _report_cli(_fake_run(tmp_path, status), tmp_path, capsys)
    assert code != 0
    assert status in err and "advbench run" in err


@pytest.mark.parametrize("inside", ["run", "run/results", "run/results/deeper"])
def test_a_report_never_writes_into_a_run_folder(tmp_path, inside):
    """`report.output: reports/transfer/run/results.md` made the report's figure folder the committed run's results
    folder, whose tables it replaced: a report path whose figure folder is, or lies inside, a run folder is refused."""
    run = tmp_path / "reports" / "transfer" / "run"
    (run / "results").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"suite": "transfer", "cells": {}}))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    target = (tmp_path / "reports" / "transfer" / inside).with_suffix(".md")
    if inside == "run":
        target = run / "results.md"
    with pytest.raises(AdvbenchError, match="run folder"):
        markdown.check_report_path(target)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # the run's own report beside it (figures in reports/transfer/, which holds the run folder) is fine
    assert markdown.check_report_path(tmp_path / "reports" / "transfer.md") == tmp_path / "reports" / "transfer.md"
