"""``advbench run FILE``: train, attack, evaluate and report a suite (cached and resumable)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from tabulate import tabulate

from advbench import api
from advbench.cli.console import RunProgress
from advbench.io import display_path
from advbench.suite.plan import describe_plan
from advbench.suite.runner import Runner
from advbench.suite.threads import AUTO, MAX_THREADS, available_memory_mb

log = logging.getLogger(__name__)

EXAMPLE = """examples:
  advbench run suites/quick.yaml             # the embedded digits, about a minute on 2 cores
  advbench run suites/transfer.yaml --plan   # the cells, which are cached, the work left
  advbench run suites/transfer.yaml          # resumes where an interrupted run stopped

The suite is validated first; nothing runs if it has problems. Results are cached by content, so
a re-run only computes what is missing. The report goes to reports/<suite>.md."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.add_argument(
        "--replace-report",
        action="store_true",
        help="replace the report at that path even if another suite (another name or suite file) made it",
    )
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
        type=parse_threads,
        default=None,
        metavar="N",
        help="torch threads per cell (default 1: cells run in parallel, one per CPU, locally and on Ray; "
        "'auto': the CPUs free when the run starts, recorded in the manifest); part of every cell's key, and "
        "results are bit-identical across executors and worker counts for the same N",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=None,
        metavar="N",
        help="worker processes of the local executor (default: the CPUs this process may use divided by "
        "--threads; 1 runs every cell in this process); does not change any result",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    options = {
        "runs_dir": args.runs_dir,
        "cache_dir": args.cache_dir,
        "data_dir": args.data_dir,
        "device": args.device,
        "report": args.report,
        "resume": args.resume,
        "executor": args.executor,
        "address": args.address,
        "fail_fast": args.fail_fast,
        "time_limit": args.time_limit,
        "threads": args.threads,
        "workers": args.workers,
        "progress": not getattr(args, "quiet", False) and sys.stderr.isatty(),
    }
    if args.plan:
        return _print_plan(args.file, options)
    run = api.run(
        args.file,
        replace_report=args.replace_report,
        on_plan=lambda plan: RunProgress(plan, periodic=not options["progress"]),
        **options,
    )
    if not getattr(args, "quiet", False):
        sys.stdout.write(run.headline() + "\n")
    # 1 when cells failed: the results are partial (the report lists what is missing).
    return 0 if run.failures.empty else 1


def _print_plan(file: str, options: dict[str, Any]) -> int:
    suite, source = api.suite_of(file)
    runner = Runner(suite, source=source, options=api.run_options(**options))
    rows = describe_plan(runner.plan, runner.ctx.cache)
    todo = [r for r in rows if not r["cached"]]
    sys.stdout.write(tabulate(rows, headers="keys", tablefmt="github") + "\n\n")
    bases = Counter(r["basis"] for r in todo)
    basis = ", ".join(f"{n} from {b}" for b, n in sorted(bases.items()))
    sys.stdout.write(
        f"{len(rows)} cells, {len(rows) - len(todo)} cached, {len(todo)} to compute; "
        f"estimated {sum(r['estimate_s'] for r in todo) / 60:.1f} min of work ({basis or 'nothing to do'}; "
        f"'model' is the work model's 2-core CPU figure) (cache: {runner.ctx.cache.root})\n"
    )
    sys.stdout.write(_execution_line(runner) + "\n")
    return 0


def _execution_line(runner: Runner) -> str:
    """Where the cells would run: executor, workers, threads, and the memory a worker needs."""
    threads = runner.opt.cell_threads("train")
    if runner.opt.executor == "ray":
        return f"executor: ray, {threads} thread(s) per cell, one task per {threads} cluster CPU(s)"
    workers = runner.local_workers() if not runner.plan.local_code else 1
    measured = runner.worker_memory()
    free = available_memory_mb()
    memory = (
        f"{measured[0]:,.0f} MiB per worker at most (measured in {display_path(measured[1])})"
        if measured
        else "memory per worker not measured yet (the first run records it)"
    )
    avail = f"; {free:,.0f} MiB available" if free is not None else ""
    where = f"{workers} worker processes" if workers > 1 else "this process"
    return f"executor: local, {where}, {threads} thread(s) per cell; {memory}{avail}"


#: The longest --time-limit (a timer that long is no limit; ``inf`` would overflow the timer).
MAX_TIME_LIMIT_S = api.MAX_TIME_LIMIT_S


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    if not math.isfinite(value) or value > MAX_TIME_LIMIT_S:
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_TIME_LIMIT_S:,.0f} seconds (30 days), got {text!r}; leave --time-limit out for none"
        )
    return value


def parse_threads(text: str) -> int | str:
    return AUTO if text.strip().lower() == AUTO else _positive_int(text)


def _count(one: str, many: str, most: int | None = None) -> Callable[[str], int]:
    """An argparse type for a whole number >= 1 (and <= ``most``) of something (``one``: "thread", ``many``:
    "threads")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number of {many}, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected at least 1 {one}, got {text!r}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"expected at most {most} {many.split(' or ')[0]}, got {text!r}")
        return value

    return parse


_positive_int = _count("thread", "threads or 'auto'", MAX_THREADS)
_workers = _count("worker process", "worker processes", MAX_THREADS)
