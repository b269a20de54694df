"""``advbench schema``: the suite format as JSON Schema (for editors), its Markdown reference, or a check of files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from advbench.api import check_against_schema
from advbench.config.schema import SCHEMA_FILE, suite_reference, suite_schema_text
from advbench.errors import AdvbenchError
from advbench.io import atomic_write_text

EXAMPLE = f"""examples:
  advbench schema > suite.schema.json          # the JSON Schema of a suite file
  advbench schema --output {SCHEMA_FILE}   # refresh the schema the shipped suites point at
  advbench schema suites/*.yaml                # check suites against the schema (shape only)
  advbench schema --markdown                   # the suite reference of the documentation

Editors with the YAML language server read the schema from a suite's first line:
  # yaml-language-server: $schema=suite.schema.json
The schema checks fields, types and ranges as you type; `advbench validate` also checks the
registered names (attacks, models, datasets, claims) and their parameters."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "schema",
        help="print the suite format as JSON Schema, or check suite files against it",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="suite YAML files to check against the schema")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--output", metavar="PATH", help="write the JSON Schema to PATH instead of printing it")
    what.add_argument("--markdown", action="store_true", help="print the suite reference as Markdown")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.files:
        if args.output or args.markdown:
            raise AdvbenchError("advbench schema FILE...: checks files; expected no --output or --markdown with them")
        status = 0
        for f in args.files:
            problems = check_against_schema(f)
            for problem in problems:
                sys.stderr.write(f"{f}: {problem}\n")
            if problems:
                status = 2
            else:
                sys.stdout.write(f"{f}: matches the suite schema\n")
        return status
    if args.markdown:
        sys.stdout.write(suite_reference())
    elif args.output:
        atomic_write_text(Path(args.output), suite_schema_text(), what="the suite schema")
    else:
        sys.stdout.write(suite_schema_text())
    return 0
