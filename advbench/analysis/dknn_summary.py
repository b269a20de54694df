"""Seed-level summaries of the DkNN set records (``dknn.csv.gz``) for the report's DkNN and OOD tables.

Every function reads the tidy rows of :func:`advbench.evaluation.calibration.dknn_set_records`
(``model, seed, input_set, kind, metric, value, n[, n_clean, source, attack, eps, distance, shift]``)
and returns one numeric row per table line; :mod:`advbench.reports.markdown` only formats them.

Across seeds a metric is summarised by its mean; an AUROC's standard error is that of the seed
mean, ``sqrt(sum_s SE_s^2) / S`` from the per-seed DeLong SEs. It treats the seeds as independent;
they score the same test examples, so it understates the SE when the seeds' errors are correlated
(the per-seed values and SEs are in ``dknn.csv.gz``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from advbench.evaluation.calibration import EPS_LEVELS

__all__ = ["conformal_summary", "detection_summary", "ood_summary", "softmax_summary", "white_box"]


def white_box(dk: pd.DataFrame) -> pd.DataFrame:
    """The adversarial rows of sets crafted on the scored model itself (``source == model``)."""
    adv = dk[dk["kind"] == "adversarial"]
    return adv[adv["source"] == adv["model"]] if "source" in adv.columns else adv


def _wide(rows: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per ``(*keys, seed)`` with a column per metric."""
    return rows.pivot_table(index=[*keys, "seed"], columns="metric", values="value", aggfunc="mean").reset_index()


def _se_of_mean(se: pd.Series) -> float:
    v = se.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(math.sqrt(np.sum(v**2)) / v.size) if v.size else math.nan


def conformal_summary(dk: pd.DataFrame, *, eps_levels: Sequence[float] = EPS_LEVELS) -> pd.DataFrame:
    """Per model and ``eps`` on the clean test set: validity and efficiency of the DkNN's conformal p-values.

    Columns: ``model, eps, n`` (clean examples per seed), ``n_seeds``, ``rate`` (mean over seeds of the
    fraction of true-label p-values below eps; valid when <= eps up to noise), ``rate_min``,
    ``rate_max``, ``pvalue_min`` (smallest per-seed validity p-value), ``violated`` (number of seeds
    flagged), ``set_size`` (mean prediction-set size at 1 - eps), ``singleton_rate``.
    """
    clean = dk[dk["kind"] == "clean"]
    rows = []
    for model, g in clean.groupby("model", sort=False):
        for eps in eps_levels:

            def per_seed(metric: str, g: pd.DataFrame = g, eps: float = eps) -> pd.Series:
                return g[g["metric"] == f"{metric}@{eps:g}"].groupby("seed")["value"].mean()

            rate = per_seed("p_true_below")
            if rate.empty:
                continue
            rows.append(
                {
                    "model": model,
                    "eps": eps,
                    "n": int(g[g["metric"] == f"p_true_below@{eps:g}"]["n"].max()),
                    "n_seeds": int(rate.size),
                    "rate": float(rate.mean()),
                    "rate_min": float(rate.min()),
                    "rate_max": float(rate.max()),
                    "pvalue_min": float(per_seed("validity_pvalue").min()),
                    "violated": int((per_seed("validity_violated") > 0.5).sum()),
                    "set_size": float(per_seed("set_size").mean()),
                    "singleton_rate": float(per_seed("singleton_rate").mean()),
                }
            )
    return pd.DataFrame(rows)


def _detection(rows: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Seed means of the detection metrics of credibility, MSP and Mahalanobis (NaN if unscored) per ``keys``."""
    out = []
    for key, g in rows.groupby(list(keys), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rec: dict[str, object] = dict(zip(keys, key, strict=True))
        w = g.pivot_table(index="seed", columns="metric", values="value", aggfunc="mean")
        for score in ("credibility", "msp", "mahalanobis"):
            for m in ("auroc", "aupr_out", "tpr_at_5fpr"):
                col = f"{score}_{m}"
                rec[col] = float(w[col].mean()) if col in w else math.nan
            se = f"{score}_auroc_se"
            rec[se] = _se_of_mean(w[se]) if se in w else math.nan
        auc = g[g["metric"] == "credibility_auroc"]
        rec["n_clean"] = int(auc["n_clean"].sum()) if "n_clean" in auc else 0
        rec["n_out"] = int(auc["n"].sum())
        rec["n_seeds"] = int(auc["seed"].nunique())
        rec["credibility_minus_msp"] = float(rec["credibility_auroc"]) - float(rec["msp_auroc"])  # type: ignore[arg-type]
        out.append(rec)
    return pd.DataFrame(out)


def detection_summary(dk: pd.DataFrame) -> pd.DataFrame:
    """Per model, attack and eps (white-box sets): detection of the *successful* adversarial inputs.

    Clean test inputs (positive) against the adversarial inputs that fooled the classifier.
    Columns: ``model, attack, eps``, for ``s`` in credibility / msp / mahalanobis: ``{s}_auroc`` (seed mean),
    ``{s}_auroc_se`` (SE of that mean), ``{s}_aupr_out``, ``{s}_tpr_at_5fpr``; ``n_clean`` and ``n_out``
    (clean and fooled inputs, summed over seeds), ``n_seeds``, ``credibility_minus_msp`` (AUROC).
    """
    wb = white_box(dk)
    if wb.empty:
        return pd.DataFrame()
    return _detection(wb, ["model", "attack", "eps"])


def ood_summary(dk: pd.DataFrame) -> pd.DataFrame:
    """Per OOD set (named dataset and shift sets) and model: detection of all its inputs, and accuracy.

    Columns as :func:`detection_summary` with ``input_set`` and ``distance`` instead of attack and eps,
    plus ``dknn_accuracy`` / ``softmax_accuracy`` (seed means; NaN for an unlabelled dataset).
    """
    ood = dk[dk["kind"] == "ood"].copy()
    if ood.empty:
        return pd.DataFrame()
    if "distance" not in ood.columns:
        ood["distance"] = "far"
    det = _detection(ood, ["input_set", "distance", "model"])
    for metric in ("dknn_accuracy", "softmax_accuracy"):
        acc = ood[ood["metric"] == metric].groupby(["input_set", "model"])["value"].mean()
        det[metric] = [acc.get((s, m), math.nan) for s, m in zip(det["input_set"], det["model"], strict=True)]
    return det


def softmax_summary(dk: pd.DataFrame) -> pd.DataFrame:
    """Per model on the clean test set: DkNN and softmax accuracy, the MSP's ECE, mean credibility and MSP.

    Seed means; ``n`` is the clean examples per seed. The ECE is of the maximum softmax probability
    only (a probability); credibility, a conformal p-value, has none.
    """
    clean = dk[dk["kind"] == "clean"]
    if clean.empty:
        return pd.DataFrame()
    metrics = ["dknn_accuracy", "softmax_accuracy", "msp_ece", "mean_msp", "mean_credibility"]
    w = _wide(clean[clean["metric"].isin(metrics)], ["model"])
    out = w.groupby("model")[[m for m in metrics if m in w.columns]].mean().reindex(clean["model"].unique())
    out = out.rename_axis("model").reset_index()
    out["n"] = [int(clean[clean["model"] == m]["n"].max()) for m in out["model"]]
    out["n_seeds"] = [int(clean[clean["model"] == m]["seed"].nunique()) for m in out["model"]]
    return out
