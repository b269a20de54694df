"""``advbench compare RUN_A RUN_B``: two runs' metrics side by side with B − A and seed-level intervals."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tabulate import tabulate

from advbench.analysis.compare import compare_runs, conclusion_check, reproduction_check
from advbench.cli.show_cmd import load_run
from advbench.errors import AdvbenchError
from advbench.reports.compare import render_comparison
from advbench.suite.numerics import describe, path_differences

EXAMPLE = """examples:
  advbench compare runs/quick-20261129-060141 runs/quick-20261129-071502
  advbench compare runs/quick-a runs/quick-b --section clean --section transfer --output cmp.md
  advbench compare reports/transfer/run runs/transfer-20261130-090000 --exact   # a reproduction, bit for bit

Metrics are matched by section, model names, attack, eps and metric name, so runs of different
suites compare where they overlap; what only one run has is listed at the end. With the same seeds
in both runs the interval is paired by seed, otherwise it is Welch's unpaired t interval.

--exact asks instead whether run B reproduces run A: every tidy table of the two results folders,
cell by cell, leaving out wall-clock columns (seconds); exit status 0 when every table is identical
(or within --tolerance), 1 otherwise. Bits are reproducible only on one numeric code path (the CPU
kind, its instruction sets, the library builds; each manifest records its path): when the two runs'
paths differ, --exact names the difference as the reason the tables differ.

--conclusions is the comparison for runs that cannot agree bit for bit (another CPU, another thread
count): each pre-registered claim's verdict in A and in B, with both estimates and intervals; exit
status 0 when every claim has the same verdict in both runs, 1 otherwise. With both flags, the exit
status is 0 only when both checks pass."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.add_argument(
        "--conclusions",
        action="store_true",
        help="check that A and B reach the same verdict on every claim (exit 1 if not)",
    )
    p.set_defaults(func=main)


def path_note(manifest_a: dict[str, Any], manifest_b: dict[str, Any]) -> str:
    """A sentence on the two runs' numeric code paths: the same, which fields differ, or which run lacks one."""
    pa = (manifest_a.get("numeric_path") or {}).get("keyed")
    pb = (manifest_b.get("numeric_path") or {}).get("keyed")
    if not pa or not pb:
        missing = [run for run, p in (("A", pa), ("B", pb)) if not p]
        return (
            f"Run {' and '.join(missing)} does not record its numeric code path (made before advbench recorded "
            f"it), so whether the two ran on one path is unknown."
        )
    diff = path_differences(pa, pb)
    if not diff:
        return f"Both runs computed on one numeric code path: {describe(pa)}."
    lines = "\n".join(f"  - {d}" for d in diff)
    return (
        "The runs computed on different numeric code paths, so their bits are not expected to agree "
        f"(compare the conclusions with --conclusions):\n  A: {describe(pa)}\n  B: {describe(pb)}\n{lines}"
    )


def _exact(args: argparse.Namespace, manifests: tuple[dict[str, Any], dict[str, Any]]) -> tuple[int, str]:
    table = reproduction_check(Path(args.run_a) / "results", Path(args.run_b) / "results", tolerance=args.tolerance)
    bad = table[~table["status"].isin(["identical", "within tolerance"])]
    text = tabulate(table.astype(object).fillna("").to_dict("list"), headers="keys", tablefmt="github")
    verdict = (
        f"B reproduces A: {len(table)} tables compared, "
        f"{int((table['status'] == 'identical').sum())} identical"
        + (f", the rest within {args.tolerance:g}" if (table["status"] == "within tolerance").any() else "")
        if bad.empty
        else f"B does not reproduce A: {len(bad)} of {len(table)} tables differ ({', '.join(bad['table'])})"
    )
    out = f"{text}\n\n{verdict}\n"
    if not bad.empty:
        out += f"\n{path_note(*manifests)}\n"
    return (0 if bad.empty else 1), out


def _conclusions(args: argparse.Namespace) -> tuple[int, str]:
    table = conclusion_check(Path(args.run_a) / "results", Path(args.run_b) / "results")
    if table.empty:
        raise AdvbenchError(
            f"neither {args.run_a} nor {args.run_b} has pre-registered claims (results/claims.csv); "
            f"compare their metrics without --conclusions"
        )
    agree = int((table["status"] == "agrees").sum())
    text = tabulate(table.fillna("").to_dict("list"), headers="keys", tablefmt="github", floatfmt="+.4g")
    verdict = (
        f"The conclusions agree: all {len(table)} claims have the same verdict in A and B."
        if agree == len(table)
        else f"The conclusions differ: {agree} of {len(table)} claims have the same verdict in A and B."
    )
    return (0 if agree == len(table) else 1), f"{text}\n\n{verdict}\n"


def main(args: argparse.Namespace) -> int:
    if args.exact or args.conclusions:
        manifests = (load_run(args.run_a)[1], load_run(args.run_b)[1])  # a clear error for a folder that is not a run
        if args.tolerance and not args.exact:
            raise AdvbenchError(f"--tolerance {args.tolerance:g} applies only to --exact; add --exact or drop it")
        parts = []
        if args.exact:
            parts.append(_exact(args, manifests))
        if args.conclusions:
            parts.append(_conclusions(args))
        out = "\n".join(text for _, text in parts)
        sys.stdout.write(out)
        if args.output:
            Path(args.output).write_text(out)
        return max(rc for rc, _ in parts)
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
