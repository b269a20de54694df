"""``advbench report RUN_DIR``: re-render the Markdown report of a run without recomputing."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from advbench.errors import AdvbenchError
from advbench.evaluation.results import Results
from advbench.reports.markdown import write_report

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
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise AdvbenchError(f"{run_dir}: no manifest.json; expected a folder written by `advbench run`")
    manifest = json.loads(manifest_path.read_text())
    results = Results.load(run_dir / "results")
    out = Path(args.output or results.suite["report"]["output"].format(name=results.suite["name"]))
    manifest["run_dir"] = str(run_dir)
    write_report(results, out, manifest=manifest, plots=results.suite["report"].get("plots", True))
    sys.stdout.write(f"report written to {out}\n")
    return 0
