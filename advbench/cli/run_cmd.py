"""``advbench run FILE``: train, attack, evaluate and report a suite (cached and resumable)."""

from __future__ import annotations

import argparse

EXAMPLE = """examples:
  advbench run suites/quick.yaml             # the embedded digits, about a minute on 2 cores
  advbench run suites/transfer.yaml --plan   # the cells, which are cached, the work left
  advbench run suites/transfer.yaml          # resumes where an interrupted run stopped

The suite is validated first; nothing runs if it has problems. Results are cached by content, so
a re-run only computes what is missing. The report goes to reports/<suite>.md."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run a suite end to end", epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("file", metavar="FILE", help="suite YAML file")
    p.add_argument("--plan", action="store_true", help="print the plan and what is cached; compute nothing")
    p.add_argument("--resume", action="store_true", help="continue the latest run of this suite (the default)")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (overrides the suite)")
    p.add_argument(
        "--cache-dir", default=None, help="content-addressed cache (default $ADVBENCH_CACHE or ~/.cache/advbench)"
    )
    p.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs/)")
    p.add_argument("--report", default=None, help="Markdown report path (overrides the suite's report.output)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"], help="override the suite's device")
    p.add_argument("--executor", default="local", choices=["local", "ray"], help="where cells run (default local)")
    p.add_argument(
        "--address", default=None, help="Ray cluster address with --executor ray (default: start Ray on this machine)"
    )
    p.add_argument(
        "--fail-fast", action="store_true", help="stop at the first failed cell (default: record it and go on)"
    )
    p.add_argument(
        "--time-limit",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="stop an attack cell that runs longer than this and record it as failed (default: no limit)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="torch threads per cell (default: torch's own locally, 1 per Ray task); results are "
        "bit-identical across executors for the same N",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from advbench.suite.runner import run_from_cli

    return run_from_cli(args)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 thread, got {text!r}")
    return value
