"""``advbench report RUN_DIR``: re-render the Markdown report of a run without recomputing."""

from __future__ import annotations

import argparse
import sys

from advbench import api

EXAMPLE = """example:
  advbench report runs/transfer-20261123-101500
  advbench report runs/quick-20261123-101500 --output /tmp/quick.md

From Python: advbench.load(RUN_DIR).report()"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    out = api.render_report(args.run_dir, args.output, replace=args.replace_report)
    sys.stdout.write(f"report written to {out}\n")
    failed = int(api.read_manifest(api.run_folder(args.run_dir)).get("failed_cells") or 0)
    if failed:
        sys.stderr.write(f"{failed} cells of this run failed or were skipped; the report's 'Failed cells' lists them\n")
        return 1
    return 0
