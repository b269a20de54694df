"""``advbench show RUN_DIR``: the headline of a finished run (what ``advbench run`` prints at its end)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from advbench.analysis.headline import headline
from advbench.analysis.results import Results
from advbench.errors import AdvbenchError
from advbench.io import display_path, project_root
from advbench.reports.headline import render_headline

__all__ = ["load_run", "run_headline"]

EXAMPLE = """example:
  $ advbench show runs/quick-20261129-060141
  Results: mean [95% CI] over 2 seeds; clean accuracy on 400 test examples per seed; white-box robust
  accuracy on 300 attacked examples per seed, lowest single attack (an upper bound on the worst case)
  model         clean                  robust eps=0.1               robust eps=0.2
  ------------  ---------------------  ---------------------------  -----------------
  baseline      0.951 [0.926, 0.976]   0.040 [0.000, 0.101] (pgd)   0.000 (bim)
  ...
  Claims (7):
    supported: c-entangled-clean-accuracy
    inconclusive: a-entangled-snnl-higher, ...
  Report: reports/quick.md; run folder: runs/quick-20261129-060141"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="print the headline of a finished run: accuracies, claims' verdicts, report path",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `advbench run`")
    p.set_defaults(func=main)


def load_run(run_dir: str | Path) -> tuple[Results, dict[str, Any]]:
    """The saved results and the manifest of a run folder; an error naming what is missing otherwise."""
    folder = Path(run_dir)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise AdvbenchError(
            f"{folder}: no manifest.json; expected a run folder written by `advbench run` (e.g. runs/quick-...)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as exc:
        raise AdvbenchError(f"{manifest_path}: not valid JSON ({exc}); the run folder is damaged") from None
    return Results.load(folder / "results"), manifest


def run_headline(results: Results, *, report: str | None = None, run_dir: str | None = None) -> str:
    """The headline text of ``results`` (shared by ``advbench run`` and ``advbench show``)."""
    return render_headline(headline(results), report=report, run_dir=run_dir)


def main(args: argparse.Namespace) -> int:
    results, manifest = load_run(args.run_dir)
    report = manifest.get("report") or results.suite["report"]["output"].format(name=results.suite["name"])
    # the manifest records the report relative to the project; print it as `advbench run` did
    if not report.startswith("<outside project>"):
        report = display_path(project_root() / report)
    sys.stdout.write(run_headline(results, report=report, run_dir=display_path(args.run_dir)) + "\n")
    return 0
