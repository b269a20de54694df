"""Entry point of the ``advbench`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from advbench import __version__
from advbench.cli import (
    code_cmd,
    compare_cmd,
    list_cmd,
    power_cmd,
    report_cmd,
    run_cmd,
    schema_cmd,
    show_cmd,
    validate_cmd,
)
from advbench.cli.console import configure_logging
from advbench.errors import AdvbenchError

SUBCOMMANDS = (run_cmd, validate_cmd, schema_cmd, list_cmd, report_cmd, show_cmd, compare_cmd, power_cmd, code_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advbench",
        description="Benchmark adversarial transfer and DkNN calibration of SNNL-shaped models.",
        epilog="example:\n  advbench validate suites/quick.yaml && advbench run suites/quick.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"advbench {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output: -v per-epoch and per-stage detail, -vv debug and third-party libraries' logs",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except AdvbenchError as exc:
        logging.getLogger("advbench").debug("failure", exc_info=True)
        sys.stderr.write(f"advbench: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("advbench: interrupted; finished cells are cached, run the same command to resume\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
