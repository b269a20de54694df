"""Plain-text rendering of a run's headline (:mod:`advbench.analysis.headline`) for the console."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from tabulate import tabulate

from advbench.analysis.claims import claims_tally
from advbench.analysis.headline import SINGLE_ATTACK, Headline

__all__ = ["render_headline"]

_VERDICTS = ("supported", "contradicted", "inconclusive", "not applicable", "error")


def _ci(mean: Any, lo: Any, hi: Any) -> str:
    mean, lo, hi = float(mean), float(lo), float(hi)
    if not math.isfinite(mean):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo == hi == mean:
        return f"{mean:.3f}"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _count(values: pd.Series) -> str:
    vals = sorted({int(v) for v in values.dropna()})
    return "/".join(map(str, vals)) if vals else "?"


def _table(h: Headline) -> tuple[list[dict[str, Any]], list[str]]:
    rows: dict[str, dict[str, Any]] = {}
    for m in h.models:
        rows[m] = {"model": m}
    for r in h.clean.to_dict("records"):
        rows.setdefault(str(r["model"]), {"model": r["model"]})["clean"] = _ci(r["mean"], r["ci_low"], r["ci_high"])
    eps_cols: list[str] = []
    for r in h.robust.to_dict("records"):
        col = f"robust eps={float(r['eps']):g}"
        if col not in eps_cols:
            eps_cols.append(col)
        text = _ci(r["mean"], r["ci_low"], r["ci_high"])
        if h.robust_basis == SINGLE_ATTACK and r.get("attack"):
            text += f" ({r['attack']})"
        rows.setdefault(str(r["model"]), {"model": r["model"]})[col] = text
    table = [
        {"model": v["model"], "clean": v.get("clean", ""), **{c: v.get(c, "") for c in eps_cols}} for v in rows.values()
    ]
    return table, eps_cols


def render_headline(h: Headline, *, report: str | None = None, run_dir: str | None = None) -> str:
    """The headline as console text (about ten lines): accuracies, claims' verdicts, where things are."""
    lines: list[str] = []
    table, eps_cols = _table(h)
    n_seeds = _count(
        pd.concat([h.clean.get("n_seeds", pd.Series(dtype=float)), h.robust.get("n_seeds", pd.Series(dtype=float))])
    )
    n_clean = _count(h.clean["n"]) if "n" in h.clean else "?"
    n_rob = _count(h.robust["n"]) if "n" in h.robust else "?"
    lines.append(
        f"Results: mean [95% CI, logit scale] over {n_seeds} seeds; clean accuracy on {n_clean} test examples per seed"
        + (
            f"; white-box robust accuracy on {n_rob} attacked examples per seed, {h.robust_basis}"
            + (" (an upper bound on the worst case)" if h.robust_basis == SINGLE_ATTACK else "")
            if eps_cols
            else "; no white-box attack results"
        )
    )
    if table:
        lines.append(tabulate(table, headers="keys", tablefmt="simple"))
    if h.claims_error:
        lines.append(f"Claims: could not be evaluated ({h.claims_error})")
    elif not h.claims.empty:
        lines.append(f"Claims ({claims_tally(h.claims)}), at this run's setting (the report states it):")
        kinds = h.claims["kind"] if "kind" in h.claims.columns else pd.Series("finding", index=h.claims.index)
        for verdict in _VERDICTS:
            sel = h.claims[h.claims["verdict"] == verdict]
            if not sel.empty:
                names = [
                    n if k == "finding" else f"{n} ({k})" for n, k in zip(sel["name"], kinds[sel.index], strict=True)
                ]
                lines.append(f"  {verdict}: {', '.join(map(str, names))}")
    if h.not_converged:
        lines.append(
            f"Attack on the DkNN not converged in {h.not_converged} of {h.convergence_checks} checks: a longer run "
            f"lowers the DkNN's accuracy by up to {100 * h.largest_drop:.1f} points (see the report)"
        )
    if h.failed_cells:
        lines.append(f"{h.failed_cells} cells failed or were skipped: the results are partial (see the report)")
    where = [f"Report: {report}"] if report else []
    where += [f"run folder: {run_dir}"] if run_dir else []
    if where:
        lines.append("; ".join(where))
    return "\n".join(lines)
