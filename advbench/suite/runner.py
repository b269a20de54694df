"""Runs a suite: plan, cache, execute cells, report."""

from __future__ import annotations

import argparse

from advbench.errors import AdvbenchError
from advbench.suite.validate import load_suite


def run_from_cli(args: argparse.Namespace) -> int:
    load_suite(args.file)
    raise AdvbenchError("the suite is valid, but the runner is not built yet (issue 7); nothing was run")


def report_from_cli(args: argparse.Namespace) -> int:
    raise AdvbenchError("reports are not built yet (issue 7)")
