"""``advbench validate FILE``: check suites without running anything."""

from __future__ import annotations

import argparse
import sys

from advbench.errors import ConfigError
from advbench.suite import load_suite

EXAMPLE = """example:
  advbench validate suites/transfer.yaml suites/quick.yaml

Every problem is reported at once, each with the file, line, field, what was given and what was
expected. Exit status 0 when all files are valid, 2 otherwise. Nothing is run or written."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "validate",
        help="check suite files without running them",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="suite YAML files")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    status = 0
    for f in args.files:
        try:
            suite = load_suite(f)
        except ConfigError as exc:
            sys.stderr.write(f"{exc}\n")
            status = 2
            continue
        n_models = len(suite.models) * len(suite.seeds)
        n_sets = sum(len(a.eps) for a in suite.attacks) * n_models
        sys.stdout.write(
            f"{f}: valid suite {suite.name!r} ({suite.dataset.name}; {len(suite.models)} models x "
            f"{len(suite.seeds)} seeds = {n_models} trainings; {n_sets} adversarial sets)\n"
        )
    return status
