"""``advbench report RUN_DIR``: re-render the Markdown report of a run without recomputing."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from advbench.analysis.results import Results
from advbench.errors import AdvbenchError
from advbench.io import project_root, relative_to_project, suite_path_problems
from advbench.reports.markdown import check_report_path, suite_identity, write_run_report
from advbench.suite.paths import report_template_problems

EXAMPLE = """example:
  advbench report runs/transfer-20261123-101500
  advbench report runs/quick-20261123-101500 --output /tmp/quick.md"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="re-render a run's report from its saved results",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `advbench run`")
    p.add_argument("--output", default=None, help="Markdown path (default: the suite's report.output)")
    p.add_argument(
        "--replace-report",
        action="store_true",
        help="replace the report at that path even if another suite (another name or suite file) made it",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise AdvbenchError(f"{run_dir}: no manifest.json; expected a folder written by `advbench run`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise AdvbenchError(
            f"{manifest_path}: damaged ({exc}); expected the JSON manifest `advbench run` writes. "
            f"Re-run the suite with `advbench run SUITE` to make a new run folder"
        ) from exc
    if not isinstance(manifest, dict):
        raise AdvbenchError(f"{manifest_path}: damaged (not a JSON object); re-run the suite with `advbench run SUITE`")
    status = manifest.get("status")
    if status != "complete":
        # an incomplete run's results miss whole sections; a report of them would look like a full one
        why = f": {manifest['error']}" if manifest.get("error") else ""
        raise AdvbenchError(
            f"{run_dir}: the run is not complete (status {status!r}{why}); its results lack the cells it did not "
            f"finish, so no report is written. Run `advbench run {manifest.get('suite_file', 'SUITE')}` again: it "
            f"resumes from the cache and writes the report"
        )
    results = Results.load(run_dir / "results")
    suite_id = suite_identity(str(results.suite["name"]), manifest.get("suite_file"))
    out = check_report_path(
        Path(args.output) if args.output else _suite_output(results.suite),
        suite_id=suite_id,
        replace=args.replace_report,
    )
    # the derived tables (claims, paired comparisons) as the analysis code computes them now, as the report does
    results.save_derived(run_dir / "results")
    manifest["run_dir"] = relative_to_project(run_dir)
    # rendered even when up to date (that is what the command is for); its stamp lets a re-run skip it
    write_run_report(results, out, results_dir=run_dir / "results", manifest=manifest, force=True, suite_id=suite_id)
    sys.stdout.write(f"report written to {out}\n")
    failed = int(manifest.get("failed_cells") or 0)
    if failed:
        sys.stderr.write(f"{failed} cells of this run failed or were skipped; the report's 'Failed cells' lists them\n")
        return 1
    return 0


def _suite_output(suite: dict[str, Any]) -> Path:
    """The report path the run's suite names, checked like a suite file's (inside reports/, {name} only)."""
    problems = report_template_problems(suite["report"].get("output"))
    if problems:
        raise AdvbenchError("; ".join(problems))
    value = str(suite["report"]["output"]).format(name=suite["name"])
    found = suite_path_problems(value, field="report.output", allowed_roots=[project_root() / "reports"])
    if found:
        raise AdvbenchError("; ".join(found) + "; or pass --output")
    return Path(value)
