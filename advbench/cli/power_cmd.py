"""``advbench power RUN_DIR``: the power of a finished run's paired comparisons, from its saved results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from advbench.analysis.results import Results
from advbench.errors import AdvbenchError

EXAMPLE = """example:
  advbench power reports/transfer/run
  advbench power runs/quick-20261123-101500 --metric transfer_rate --delta 0.01

Per paired comparison (variant minus reference, same seed): the between-seed SD of the per-seed
differences, the seeds, the smallest difference detectable with 80% power (MDD), the power to detect
--delta and the seeds that would detect it with 80% power (two-sided paired t, alpha = 0.05)."""

#: Columns printed, in order.
POWER_COLUMNS = ("variant", "role", "other", "attack", "eps", "metric", "sd_between", "n_seeds", "mdd_80",
                 "power_2pt", "seeds_for_2pt")  # fmt: skip


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "power",
        help="power and seeds needed of a run's paired comparisons",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `advbench run`")
    p.add_argument("--metric", default=None, help="only this metric (e.g. transfer_rate, adv_accuracy)")
    p.add_argument("--delta", type=float, default=0.02, help="difference of interest, as a fraction (default 0.02)")
    p.set_defaults(func=main)


def power_table(results: Results, *, delta: float = 0.02, metric: str | None = None) -> pd.DataFrame:
    """One row per paired comparison of ``results`` with :data:`POWER_COLUMNS` (saturated rows left out)."""
    from advbench.analysis.stats import paired_comparisons

    m = results.shared_metrics()
    if m.empty:
        raise AdvbenchError("the run has no transfer metrics, so no paired comparison to compute power for")
    ref = results.reference_model()
    present = set(m["source"]) | set(m["target"])
    variants = [x["name"] for x in results.suite["models"] if x["name"] != ref and x["name"] in present]
    if not variants:
        raise AdvbenchError(f"the run has no model besides the reference {ref!r} to compare with it")
    table = (
        results.paired()
        if delta == 0.02
        else paired_comparisons(m, ref, variants, outcomes=results.outcomes, delta=delta)
    )
    if metric is not None:
        known = sorted(set(table["metric"]))
        if metric not in known:
            raise AdvbenchError(f"--metric {metric!r}: expected one of {', '.join(known)}")
        table = table[table["metric"] == metric]
    return table[~table["saturated"].astype(bool)].loc[:, list(POWER_COLUMNS)].reset_index(drop=True)


def _fmt(table: pd.DataFrame, delta: float) -> pd.DataFrame:
    pts = f"{100 * delta:g}"
    out = table.copy()
    out["other"] = out["other"].fillna("")
    out["sd_between"] = [f"{100 * v:.2f}" if np.isfinite(v) else "n/a" for v in out["sd_between"]]
    out["mdd_80"] = [f"{100 * v:.1f}" if np.isfinite(v) else "n/a" for v in out["mdd_80"]]
    out["power_2pt"] = [f"{100 * v:.0f}%" if np.isfinite(v) else "n/a" for v in out["power_2pt"]]
    out["seeds_for_2pt"] = ["n/a" if pd.isna(v) else str(int(v)) for v in out["seeds_for_2pt"]]
    return out.rename(
        columns={
            "sd_between": "sd_between (pp)",
            "mdd_80": "mdd_80 (pp)",
            "power_2pt": f"power at {pts} pts",
            "seeds_for_2pt": f"seeds for ±{pts} pts",
        }
    )


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "results").is_dir():
        raise AdvbenchError(f"{run_dir}: no results folder; expected a run directory written by `advbench run`")
    if not 0 < args.delta < 1:
        raise AdvbenchError(f"--delta {args.delta}: expected a fraction in (0, 1), e.g. 0.02 for 2 points")
    table = power_table(Results.load(run_dir / "results"), delta=args.delta, metric=args.metric)
    data: object = _fmt(table, args.delta)
    sys.stdout.write(tabulate(data, headers="keys", tablefmt="github", showindex=False) + "\n")  # type: ignore[arg-type]
    sys.stdout.write(f"\n{len(table)} paired comparisons (saturated ones left out)\n")
    return 0
