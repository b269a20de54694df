"""``advbench report RUN_DIR``: re-render the Markdown report of a run without recomputing."""

from __future__ import annotations

import argparse

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
    from advbench.suite.runner import report_from_cli

    return report_from_cli(args)
