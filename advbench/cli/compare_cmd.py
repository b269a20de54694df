"""``advbench compare RUN_A RUN_B``: two runs' metrics side by side with B − A and seed-level intervals."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tabulate import tabulate

from advbench.analysis.compare import compare_runs, reproduction_check
from advbench.cli.show_cmd import load_run
from advbench.errors import AdvbenchError
from advbench.reports.compare import render_comparison

EXAMPLE = """examples:
  advbench compare runs/quick-20261129-060141 runs/quick-20261129-071502
  advbench compare runs/quick-a runs/quick-b --section clean --section transfer --output cmp.md
  advbench compare reports/transfer/run runs/transfer-20261130-090000 --exact   # a reproduction, bit for bit

Metrics are matched by section, model names, attack, eps and metric name, so runs of different
suites compare where they overlap; what only one run has is listed at the end. With the same seeds
in both runs the interval is paired by seed, otherwise it is Welch's unpaired t interval.

--exact asks instead whether run B reproduces run A: every tidy table of the two results folders,
cell by cell, leaving out wall-clock columns (seconds); exit status 0 when every table is identical
(or within --tolerance, e.g. across thread counts), 1 otherwise."""


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
    p.add_argument(
        "--exact",
        action="store_true",
        help="check that B reproduces A: every tidy table identical, wall-clock columns left out (exit 1 if not)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="with --exact: the largest absolute numeric difference accepted (default 0: bit for bit)",
    )
    p.set_defaults(func=main)


def _exact(args: argparse.Namespace) -> int:
    for run in (args.run_a, args.run_b):
        load_run(run)  # the same clear error as without --exact for a folder that is not a run
    table = reproduction_check(Path(args.run_a) / "results", Path(args.run_b) / "results", tolerance=args.tolerance)
    bad = table[~table["status"].isin(["identical", "within tolerance"])]
    text = tabulate(table.fillna("").to_dict("list"), headers="keys", tablefmt="github")
    verdict = (
        f"B reproduces A: {len(table)} tables compared, "
        f"{int((table['status'] == 'identical').sum())} identical"
        + (f", the rest within {args.tolerance:g}" if (table["status"] == "within tolerance").any() else "")
        if bad.empty
        else f"B does not reproduce A: {len(bad)} of {len(table)} tables differ ({', '.join(bad['table'])})"
    )
    out = f"{text}\n\n{verdict}\n"
    sys.stdout.write(out)
    if args.output:
        Path(args.output).write_text(out)
    return 0 if bad.empty else 1


def main(args: argparse.Namespace) -> int:
    if args.exact:
        return _exact(args)
    if args.tolerance:
        raise AdvbenchError(f"--tolerance {args.tolerance:g} was given without --exact; it applies only to --exact")
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
