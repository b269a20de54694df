"""``advbench compare RUN_A RUN_B``: two runs' metrics side by side with B − A and seed-level intervals."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from advbench.cli.show_cmd import load_run
from advbench.evaluation.compare import compare_runs
from advbench.reports.compare import render_comparison

EXAMPLE = """examples:
  advbench compare runs/quick-20261129-060141 runs/quick-20261129-071502
  advbench compare runs/quick-a runs/quick-b --section clean --section transfer --output cmp.md

Metrics are matched by section, model names, attack, eps and metric name, so runs of different
suites compare where they overlap; what only one run has is listed at the end. With the same seeds
in both runs the interval is paired by seed, otherwise it is Welch's unpaired t interval."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare two runs: metrics side by side, differences and intervals, as Markdown",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_a", metavar="RUN_A", help="the reference run folder (A)")
    p.add_argument("run_b", metavar="RUN_B", help="the run compared with it (B); differences are B − A")
    p.add_argument(
        "--section",
        action="append",
        choices=["clean", "transfer", "dknn"],
        help="only these sections (repeatable; default: all three)",
    )
    p.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--output", default=None, help="also write the Markdown to this file")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    a, _ = load_run(args.run_a)
    b, _ = load_run(args.run_b)
    comparison = compare_runs(a, b, confidence=args.confidence)
    text = render_comparison(
        comparison,
        label_a=Path(args.run_a).name,
        label_b=Path(args.run_b).name,
        sections=tuple(args.section or ("clean", "transfer", "dknn")),
    )
    sys.stdout.write(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0
