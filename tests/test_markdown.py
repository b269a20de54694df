"""advbench.reports.markdown: the report follows its own code, the claims rules and its own bytes; a report path is
checked before anything is written (another suite's report, a symlink, a run folder); a suite's own text is shown
as text, not markup."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from advbench.errors import AdvbenchError
from advbench.io import generated_marker
from advbench.reports import markdown


@pytest.fixture
def renderings(tmp_path, monkeypatch, empty_results) -> list[int]:
    """Saved results in ``tmp_path/results``; ``write_report`` replaced by a stub that writes ``tmp_path/r.md``
    and records each call in the returned list."""
    empty_results().save(tmp_path / "results")
    calls: list[int] = []
    monkeypatch.setattr(
        markdown,
        "write_report",
        lambda *a, **k: calls.append(1) or (tmp_path / "r.md").write_text(generated_marker("r.md")),
    )
    return calls


def test_report_is_rerendered_when_its_code_changes(tmp_path, monkeypatch, renderings, empty_results):
    results_dir, res, calls = tmp_path / "results", empty_results(), renderings
    out = tmp_path / "r.md"
    assert markdown.write_run_report(res, out, results_dir=results_dir, manifest={})
    assert not markdown.write_run_report(res, out, results_dir=results_dir, manifest={})
    monkeypatch.setattr(markdown, "report_code_version", lambda: "f" * 64)
    assert markdown.write_run_report(res, out, results_dir=results_dir, manifest={})
    assert len(calls) == 2


def test_report_is_rerendered_when_the_claims_rules_or_its_own_bytes_change(
    tmp_path, monkeypatch, renderings, empty_results
):
    """The stamp covers the analysis code (claims and statistics) and the report's bytes: neither is kept stale."""
    import advbench.codeversion as codeversion

    results_dir, res, calls = tmp_path / "results", empty_results(), renderings
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


def test_a_report_another_suite_made_is_replaced_only_on_request(tmp_path, renderings, empty_results):
    results_dir, res = tmp_path / "results", empty_results()
    out = tmp_path / "r.md"
    mine = markdown.suite_identity("transfer", "suites/transfer.yaml")
    assert markdown.write_run_report(res, out, results_dir=results_dir, manifest={}, suite_id=mine)
    assert markdown.check_report_path(out, suite_id=mine) == out  # the same suite (edited or not) re-renders
    impostor = markdown.suite_identity("transfer", "suites/evil.yaml")  # merely named like it
    with pytest.raises(AdvbenchError, match=r"made from another suite \(transfer from suites/transfer.yaml\)"):
        markdown.check_report_path(out, suite_id=impostor)
    assert markdown.check_report_path(out, suite_id=impostor, replace=True) == out


def test_a_forced_rendering_leaves_a_stamp_and_the_per_example_table_is_not_digested(
    tmp_path, renderings, empty_results
):
    results_dir, calls = tmp_path / "results", renderings
    out = tmp_path / "r.md"
    assert markdown.write_run_report(empty_results(), out, results_dir=results_dir, manifest={}, force=True)
    assert markdown.write_run_report(empty_results(), out, results_dir=results_dir, manifest={}, force=True)
    # `advbench report` forces; its stamp is what a later re-run with the same results finds up to date
    digest = markdown.results_digest(results_dir)
    (results_dir / "dknn_examples.csv.gz").write_bytes(gzip.compress(b"model,seed\nx,0\n", mtime=0))
    assert markdown.results_digest(results_dir) == digest  # a committed folder lacks it: same report
    assert not markdown.write_run_report(empty_results(), out, results_dir=results_dir, manifest={})
    (results_dir / "clean.csv").write_text("model,seed,test_accuracy\nx,0,0.5\n")
    assert markdown.results_digest(results_dir) != digest
    assert markdown.write_run_report(empty_results(), out, results_dir=results_dir, manifest={})
    assert len(calls) == 3


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


def test_a_suite_description_is_shown_as_text_not_markup():
    hostile = "Paired <img src=x onerror=alert(1)> ![t](http://tracker/p.png) [c](javascript:x) | *b*\n# H"
    text = markdown.escape_markdown(hostile)
    # every character that could open a tag, a link, an image, emphasis, a cell or a heading is escaped
    assert re.search(r"(?<!\\)[<>\[\]()*|!#&]", text) is None and "\n" not in text
    assert text.replace("\\", "") == " ".join(hostile.split())  # and nothing else changes
    assert markdown.escape_markdown("- a").startswith("\\-") and markdown.escape_markdown("1. a").startswith("1\\.")
