"""``advbench list {attacks,models,datasets,regularisers,claims}``: what the registries hold."""

from __future__ import annotations

import argparse
import fnmatch
import inspect
import sys
from typing import Any

from tabulate import tabulate

EXAMPLE = """examples:
  advbench list attacks            # every attack, built-in, wrapped or from a plugin
  advbench list attacks sign       # names containing 'sign', any case
  advbench list attacks 'torchattacks.*PGD*'
  advbench list models
  advbench list datasets
  advbench list regularisers       # representation regularisers for recipe.regularisers
  advbench list claims             # pre-registered claims a suite's `claims:` may name"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "list",
        help="list registered attacks, models, datasets regularisers or claims",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=["attacks", "models", "datasets", "regularisers", "claims"])
    p.add_argument(
        "pattern",
        nargs="?",
        default="*",
        help="a substring of the name, or a glob with * ? [ ]; case-insensitive (default: all)",
    )
    p.set_defaults(func=main)


def _registry(kind: str) -> Any:
    if kind == "attacks":
        from advbench.attacks import ATTACKS

        return ATTACKS
    if kind == "claims":
        from advbench.analysis.claims import CLAIMS

        return CLAIMS
    if kind == "models":
        from advbench.models import MODELS

        return MODELS
    if kind == "regularisers":
        from advbench.training import REGULARISERS

        return REGULARISERS
    from advbench.data import DATASETS

    return DATASETS


def _params(obj: Any) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    skip = {"self", "model", "num_classes", "input_shape", "data_dir", "ctx"}
    return ", ".join(
        n if p.default is inspect.Parameter.empty else f"{n}={p.default!r}"
        for n, p in sig.parameters.items()
        if n not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    )


def matches(name: str, pattern: str) -> bool:
    """Whether ``name`` matches ``pattern``: a glob when it has ``*``, ``?`` or ``[``, else a substring; any case."""
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name.lower(), pattern.lower())
    return pattern.lower() in name.lower()


def rows(kind: str, pattern: str = "*") -> list[dict[str, Any]]:
    """One row per registered component whose name :func:`matches` ``pattern`` (used by the CLI and the tests)."""
    out = []
    for e in _registry(kind).entries():
        if not matches(e.name, pattern):
            continue
        row: dict[str, Any] = {"name": e.name}
        if kind == "attacks":
            row["norm"] = e.meta.get("norm", getattr(e.obj, "norm", ""))
            row["targeted"] = e.meta.get("targeted", getattr(e.obj, "supports_targeted", ""))
        if kind == "regularisers":
            row["default layers"] = getattr(e.obj, "default_layers", "")
        row["source"] = e.meta.get("package", e.source)
        if kind == "datasets":
            lookup = e.meta.get("lookup")
            row["looked for in"] = (lookup() if callable(lookup) else lookup) or "(no files: built in or generated)"
        if kind == "claims":
            row["statement"] = e.obj.statement
            row["direction"] = e.obj.direction
            out.append(row)
            continue
        describe = getattr(e.obj, "describe_params", None)
        row["parameters"] = describe() if callable(describe) else _params(e.obj)
        out.append(row)
    return out


def main(args: argparse.Namespace) -> int:
    table = rows(args.kind, args.pattern)
    if not table:
        sys.stdout.write(f"no {args.kind} match {args.pattern!r}\n")
        return 1
    widths = [None] * (len(table[0]) - 1) + [70]  # wrap only the parameters column
    sys.stdout.write(tabulate(table, headers="keys", tablefmt="github", maxcolwidths=widths) + "\n")
    sys.stdout.write(f"\n{len(table)} {args.kind}\n")
    return 0
