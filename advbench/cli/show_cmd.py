"""``advbench show RUN_DIR``: the headline of a finished run (what ``advbench run`` prints at its end)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from advbench import api
from advbench.analysis.results import Results

__all__ = ["load_run"]

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
  Report: reports/quick.md; run folder: runs/quick-20261129-060141

From Python: advbench.load(RUN_DIR).headline()"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    run = api.load(run_dir)
    return run.results, run.manifest


def main(args: argparse.Namespace) -> int:
    run = api.load(args.run_dir)
    run.path = Path(args.run_dir)  # printed as the user wrote it
    sys.stdout.write(run.headline() + "\n")
    return 0
