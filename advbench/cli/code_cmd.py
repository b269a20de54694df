"""``advbench code``: the code identity of cells: check and update the lock, explain a key, migrate a cache."""

from __future__ import annotations

import argparse
import fnmatch
import sys

from tabulate import tabulate

from advbench.cli.run_cmd import parse_threads
from advbench.codeversion import LOCK_FILE, advbench_component, read_lock
from advbench.errors import AdvbenchError
from advbench.io import display_path
from advbench.suite.codelock import check_lock, lock_roots, write_lock
from advbench.suite.context import CellContext, RunOptions
from advbench.suite.threads import resolve_threads
from advbench.suite.validate import load_suite

EXAMPLE = """examples:
  advbench code check                          # does every component's code match advbench/code.lock.json?
  advbench code lock --bump advbench.attacks.pgd   # PGD's results change: its cells (and dependents) recompute
  advbench code lock                           # a refactor that changes no result: re-lock, nothing recomputes
  advbench code why suites/quick.yaml --cell 'attack pgd*'   # the components behind those cells' keys
  advbench code migrate suites/transfer.yaml --computed-here   # carry an old cache over (once; made here)

A component is a cell kind's handler module or a registry entry's module (an attack, an architecture,
a dataset, a regulariser) with everything of advbench it imports. Its cells are keyed by its version in
the lock, so a change shown to leave results alone (`advbench compare --exact` on suites/quick.yaml) is
re-locked for free, and one that changes results bumps exactly its own cells."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "code",
        help="the code identity of cells: check or update the lock, explain a key, migrate a cache",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="exit 1 when a component's code differs from the lock (CI runs it)")
    check.add_argument("--all", action="store_true", help="list every component, not only the problems")
    check.set_defaults(func=_check)
    lock = actions.add_parser("lock", help="re-lock every component at its current code")
    lock.add_argument(
        "--bump", action="append", default=[], metavar="MODULE", help="raise this component's version (repeatable)"
    )
    lock.add_argument("--bump-changed", action="store_true", help="raise the version of every changed component")
    lock.set_defaults(func=_lock)
    for name, func, text in (
        ("why", _why, "the components, versions and libraries behind each cell's key"),
        ("migrate", _migrate, "publish the legacy per-kind entries of a suite's unchanged cells under their new keys"),
    ):
        q = actions.add_parser(name, help=text)
        q.add_argument("file", metavar="FILE", help="suite YAML file")
        q.add_argument("--cache-dir", default=None, help="the cache (default as `advbench run`)")
        q.add_argument("--executor", default="local", choices=["local", "ray"], help="as for `advbench run`")
        q.add_argument("--threads", type=parse_threads, default=None, metavar="N", help="as for `advbench run`")
        q.add_argument("--data-dir", default=None, help="as for `advbench run`")
        if name == "migrate":
            q.add_argument(
                "--computed-here",
                action="store_true",
                help="state that the legacy entries were computed on this machine's numeric path (their keys do "
                "not say; required)",
            )
        if name == "why":
            q.add_argument("--cell", default="*", metavar="PATTERN", help="only cells whose label matches this glob")
            q.add_argument("--closure", action="store_true", help="also list each component's modules")
        q.set_defaults(func=func)


def _check(args: argparse.Namespace) -> int:
    problems = check_lock()
    if args.all:
        lock = read_lock()
        rows = [
            {"component": m, "version": lock.get(m, {}).get("version", "-"), "key uses": advbench_component(m).version}
            for m in lock_roots()
        ]
        sys.stdout.write(tabulate(rows, headers="keys", tablefmt="github") + "\n")
    if not problems:
        sys.stdout.write(f"{display_path(LOCK_FILE)}: every component's code matches its lock\n")
        return 0
    for p in problems:
        what = {
            "changed": f"its code changed since version {p.locked_version} was locked",
            "new": "it is not in the lock",
            "gone": "it is no longer a component",
        }[p.problem]
        sys.stdout.write(f"{p.module}: {what}\n")
    sys.stdout.write(
        f"\n{len(problems)} component(s) differ from {display_path(LOCK_FILE)}. Choose per component:\n"
        "  results change:  advbench code lock --bump MODULE   (its cells and their dependents recompute)\n"
        "  a refactor:      advbench code lock                 (after `advbench compare --exact` shows no change)\n"
    )
    return 1


def _lock(args: argparse.Namespace) -> int:
    before = read_lock()
    after = write_lock(args.bump, bump_changed=args.bump_changed)["components"]
    for module, new in after.items():
        old = before.get(module)
        if old is None:
            sys.stdout.write(f"{module}: locked at version {new['version']}\n")
        elif old != new:
            change = "bumped to" if new["version"] != old["version"] else "re-locked at"
            sys.stdout.write(f"{module}: {change} version {new['version']}\n")
    for module in sorted(set(before) - set(after)):
        sys.stdout.write(f"{module}: dropped (no longer a component)\n")
    return 0


def _context(args: argparse.Namespace) -> CellContext:
    suite = load_suite(args.file)
    opts = RunOptions(
        cache_dir=args.cache_dir,
        data_dir=args.data_dir,
        executor=args.executor,
        threads=resolve_threads(args.threads),
        progress=False,
    )
    return CellContext.create(suite, opts)


def _why(args: argparse.Namespace) -> int:
    ctx = _context(args)
    cells = [c for c in ctx.plan.cells if fnmatch.fnmatch(c.label, args.cell)]
    if not cells:
        raise AdvbenchError(
            f"no cell of {args.file} matches {args.cell!r}; `advbench run {args.file} --plan` lists them"
        )
    for c in cells:
        code = c.spec["code"]
        cached = "cached" if ctx.cache.exists(c.kind, c.key) else "not cached"
        sys.stdout.write(f"{c.label}  [{c.key[:12]}, {cached}]\n  threads: {code['threads']}\n")
        for role, ident in code["components"].items():
            sys.stdout.write(f"  {role}: {', '.join(ident) if isinstance(ident, list) else ident}\n")
            if args.closure:
                for i in ident if isinstance(ident, list) else [ident]:
                    module = i.rpartition("@")[0]
                    if module.startswith("advbench."):
                        sys.stdout.write(f"    closure: {', '.join(advbench_component(module).modules)}\n")
        libs = ", ".join(f"{k} {v}" for k, v in code["libraries"].items())
        sys.stdout.write(f"  libraries: {libs or 'none'}\n")
        inputs = [d[:12] for d in c.deps]
        sys.stdout.write(f"  inputs: {', '.join(inputs) or 'none'}\n")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from advbench.suite.migrate import migrate
    from advbench.suite.numerics import describe

    ctx = _context(args)
    if not args.computed_here:
        raise AdvbenchError(
            "the legacy keys carry no numeric code path, and new keys do: a migrated entry is filed under this "
            f"machine's path ({describe(ctx.plan.numeric_path)}). If the legacy cells were computed on this "
            "machine (this CPU kind, these library builds), pass --computed-here; otherwise let them be "
            "recomputed (`advbench run`)"
        )
    result = migrate(ctx.plan, ctx.cache)
    kinds = sorted({c.kind for c in ctx.plan.cells})
    rows = [
        {
            "kind": k,
            "migrated": result.adopted[k],
            "already cached": result.already[k],
            "no legacy entry": result.absent[k],
            "recomputed (code changed or unkeyed)": result.not_migratable[k],
        }
        for k in kinds
    ]
    sys.stdout.write(tabulate(rows, headers="keys", tablefmt="github") + "\n")
    sys.stdout.write(
        f"\n{sum(result.adopted.values())} cells migrated in {ctx.cache.root}; the legacy entries are kept. "
        f"`advbench run {args.file} --plan` shows what is left to compute.\n"
    )
    return 0
