"""The headline of a run: what it found, in a few lines (printed by ``advbench run`` and ``advbench show``).

* clean test accuracy per model, mean over seeds with its 95% CI;
* worst-case white-box robust accuracy per model and eps: from the per-example worst case over
  attacks (``results.worst_case``, quantity ``classifier``) when the results carry it, else the
  lowest single attack's white-box accuracy (an upper bound on the worst case; the headline says which);
* the suite's pre-registered claims and their verdicts (:meth:`~advbench.analysis.results.Results.claims`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from advbench.analysis.inference import rate_interval
from advbench.analysis.stats import mean_ci

__all__ = ["PER_EXAMPLE", "SINGLE_ATTACK", "Headline", "headline"]

#: ``Headline.robust_basis`` when computed from the per-example worst case over attacks.
PER_EXAMPLE = "per-example worst case over attacks"
#: ``Headline.robust_basis`` when computed from the lowest single attack (no worst-case table).
SINGLE_ATTACK = "lowest single attack"


@dataclass
class Headline:
    """What a run found.

    * ``clean``: ``model, mean, ci_low, ci_high, n_seeds, n`` (``n`` test examples per seed);
    * ``robust``: ``model, eps, mean, ci_low, ci_high, n_seeds, n, attack`` (the attack that reached it
      when ``robust_basis`` is :data:`SINGLE_ATTACK`; the strongest single attack otherwise);
    * ``robust_basis``: :data:`PER_EXAMPLE` or :data:`SINGLE_ATTACK`;
    * ``claims``: the claims table (``name, verdict, estimate, ci_low, ci_high, reason, ...``), empty
      when the claims could not be evaluated (``claims_error`` says why);
    * ``failed_cells``: how many cells failed or were skipped.
    """

    clean: pd.DataFrame
    robust: pd.DataFrame
    robust_basis: str
    claims: pd.DataFrame
    failed_cells: int = 0
    claims_error: str = ""
    models: list[str] = field(default_factory=list)
    #: the convergence checks of the attacks on the DkNN (``convergence`` table), and how many failed
    convergence_checks: int = 0
    not_converged: int = 0
    #: the largest drop of the DkNN's accuracy a longer attack found (a fraction; 0 when none)
    largest_drop: float = 0.0


def _summary(df: pd.DataFrame, by: list[str], value: str, extra: dict[str, Any] | None = None) -> pd.DataFrame:
    rows = []
    for key, g in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        rates = g[value].to_numpy(dtype=float)
        if "n" in g and g["n"].notna().all():
            # accuracies are rates: a logit-scale interval over seeds stays inside [0, 1] without clipping
            n = g["n"].to_numpy(dtype=float)
            r = rate_interval(np.rint(rates * n), n)
            m, lo, hi = r.estimate, r.low, r.high
        else:
            m, lo, hi = mean_ci(rates)
        row = {
            **dict(zip(by, key, strict=True)),
            "mean": m,
            "ci_low": lo,
            "ci_high": hi,
            "n_seeds": g["seed"].nunique(),
        }
        rows.append(row | (extra or {}))
    return pd.DataFrame(rows)


def _clean(results: Any) -> pd.DataFrame:
    clean = results.clean
    cols = ["model", "mean", "ci_low", "ci_high", "n_seeds", "n"]
    if clean is None or clean.empty:
        return pd.DataFrame(columns=cols)
    out = _summary(clean, ["model"], "test_accuracy")
    out["n"] = clean.groupby("model", sort=False)["n"].first().to_numpy() if "n" in clean else pd.NA
    return out[cols]


def _robust_from_worst_case(wc: pd.DataFrame) -> pd.DataFrame:
    if "quantity" in wc:
        wc = wc[wc["quantity"] == "classifier"]
    out = _summary(wc, ["model", "eps"], "robust_accuracy")
    if out.empty:
        return out
    n = wc.groupby(["model", "eps"], sort=False)["n"].first() if "n" in wc else None
    strongest = (
        wc.groupby(["model", "eps"], sort=False)["strongest_attack"].agg(lambda s: ";".join(sorted(set(map(str, s)))))
        if "strongest_attack" in wc
        else None
    )
    keys = list(zip(out["model"], out["eps"], strict=True))
    out["n"] = [n.get(k) if n is not None else pd.NA for k in keys]
    out["attack"] = [strongest.get(k) if strongest is not None else "" for k in keys]
    return out


def _robust_lowest_single(metrics: pd.DataFrame) -> pd.DataFrame:
    cols = ["model", "eps", "mean", "ci_low", "ci_high", "n_seeds", "n", "attack"]
    if metrics is None or metrics.empty:
        return pd.DataFrame(columns=cols)
    wb = metrics[(metrics["source"] == metrics["target"]) & (metrics["metric"] == "adv_accuracy")]
    if wb.empty:
        return pd.DataFrame(columns=cols)
    per_attack = _summary(wb.rename(columns={"source": "model"}), ["model", "eps", "attack"], "value")
    n = wb.groupby(["source", "eps", "attack"], sort=False)["denominator"].first()
    per_attack["n"] = [n.get(k) for k in zip(per_attack["model"], per_attack["eps"], per_attack["attack"], strict=True)]
    # the attack with the lowest mean over seeds per (model, eps); ties broken by name
    per_attack = per_attack.sort_values(["model", "eps", "mean", "attack"], kind="stable")
    out = per_attack.groupby(["model", "eps"], sort=False).head(1)
    return out[cols].reset_index(drop=True)


def headline(results: Any, *, claims: bool = True) -> Headline:
    """The headline of ``results`` (an :class:`~advbench.analysis.results.Results`)."""
    models = [m["name"] for m in (results.suite.get("models") or [])]
    order = {m: i for i, m in enumerate(models)}
    clean = _clean(results)
    wc = getattr(results, "worst_case", None)
    if callable(wc):  # Results computes it from the outcomes and the DkNN's per-example results
        wc = wc()
    if isinstance(wc, pd.DataFrame) and not wc.empty and {"model", "seed", "eps", "robust_accuracy"} <= set(wc):
        robust, basis = _robust_from_worst_case(wc), PER_EXAMPLE
    else:
        robust, basis = _robust_lowest_single(results.metrics), SINGLE_ATTACK
    if not robust.empty:
        robust = robust.assign(_o=robust["model"].map(order)).sort_values(["_o", "eps"], kind="stable")
        robust = robust.drop(columns="_o").reset_index(drop=True)
    table, error = pd.DataFrame(), ""
    if claims:
        try:
            # the suite's own claims (``claims:``), as the report's Claims table shows them
            table = results.claims()
        except Exception as exc:  # a faulty claim plugin must not hide the rest of the headline
            error = f"{type(exc).__name__}: {exc}"
    failures = getattr(results, "failures", None)
    conv = getattr(results, "convergence", None)
    checked = conv[conv["converged"].notna()] if isinstance(conv, pd.DataFrame) and "converged" in conv else None
    bad = checked[checked["converged"].astype(str) == "False"] if checked is not None else None
    return Headline(
        clean=clean,
        robust=robust,
        robust_basis=basis,
        claims=table,
        failed_cells=0 if failures is None else len(failures),
        claims_error=error,
        models=models,
        convergence_checks=0 if checked is None else len(checked),
        not_converged=0 if bad is None else len(bad),
        largest_drop=float(bad["drop"].max()) if bad is not None and len(bad) else 0.0,
    )
