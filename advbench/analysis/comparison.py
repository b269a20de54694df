"""Every model against the reference on the quantities a representation regulariser could change.

One row per (quantity, model): the seed mean with its 95% Student-t interval and, for every model but
the reference, the paired difference to the reference (same seed = same initial weights and batch
order) with its interval and paired t-test (:func:`advbench.analysis.inference.paired_t`, so the
interval and the test agree). The quantities, each one value per seed:

* ``clean accuracy``: test accuracy (denominator: the test split);
* ``robust accuracy @ eps``: the per-example worst case over every white-box attack at that eps
  (:func:`advbench.analysis.worstcase.worst_case`, classifier; denominator: the attacked examples);
* ``transfer into``: the transfer rate of examples crafted on every *other* model of the seed into
  this one (denominator: examples this model classifies correctly when clean), mean over sources,
  attacks and eps; ``transfer out of``: the same from this model to every other. Their paired
  differences compare like with like (:func:`matched_transfer_differences`): into this model and into
  the reference *from the same third models*, out of this model and out of the reference *to the same
  third models* (the pair's own transfer, and each model's transfer from the other, are left out);
  with no third model there is no such difference;
* ``adversarial detection AUROC (<score>)``: clean test inputs vs the white-box adversarial inputs
  that fooled the classifier, mean over attacks and eps, for the DkNN credibility, the maximum
  softmax probability and the Mahalanobis confidence;
* ``OOD detection AUROC (<score>)``: clean vs every out-of-distribution set, mean over the sets.

A quantity the run lacks (no OOD sets, no Mahalanobis scores) has no rows. Transfer rows read only
the same-seed cells: cross-seed cells are another design (the report's independent-transfer section).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from advbench.analysis import inference as _inf
from advbench.analysis.dknn_summary import white_box

__all__ = [
    "COMPARISON_COLUMNS",
    "DETECTION_SCORES",
    "matched_transfer_differences",
    "model_comparison",
    "per_seed_quantities",
]

#: The transfer quantities, and the side of a transfer pair each reads (``into``: the target; ``out of``: the source).
TRANSFER_QUANTITIES = {"transfer into": "target", "transfer out of": "source"}

#: Columns of :func:`model_comparison`.
COMPARISON_COLUMNS: tuple[str, ...] = (
    "quantity",
    "unit",
    "model",
    "n_seeds",
    "mean",
    "ci_low",
    "ci_high",
    "status",
    "diff",
    "diff_low",
    "diff_high",
    "p",
    "denominator",
)

#: Detection scores compared, as named in the DkNN tables (``{score}_auroc``).
DETECTION_SCORES: tuple[str, ...] = ("credibility", "msp", "mahalanobis")


Quantity = tuple[str, str, str, pd.DataFrame]


def _quantity(
    name: str, unit: str, denominator: str, frame: pd.DataFrame, value: str, count: str
) -> Iterator[Quantity]:
    """One quantity as a frame indexed by (model, seed) with ``value`` (the mean of ``value`` over the rows of
    each model and seed) and ``n`` (the mean of ``count``, the examples behind one value)."""
    if frame.empty or value not in frame.columns:
        return
    n = frame[count] if count in frame.columns else pd.Series(np.nan, index=frame.index)
    g = frame.assign(_v=frame[value].astype(float), _n=n.astype(float)).groupby(["model", "seed"])
    out = pd.DataFrame({"value": g["_v"].mean(), "n": g["_n"].mean()}).dropna(subset=["value"])
    if len(out):
        yield name, unit, denominator, out


def per_seed_quantities(results: Any) -> Iterator[Quantity]:
    """``(quantity, unit, denominator, frame)`` for every quantity the run has; ``frame`` is indexed by
    (model, seed) with columns ``value`` and ``n`` (the examples behind the value). ``results`` is an
    :class:`advbench.analysis.results.Results` (or anything with its ``clean``, ``dknn``,
    ``shared_metrics()`` and ``worst_case()``)."""
    clean = results.clean
    yield from _quantity("clean accuracy", "%", "the test split", clean, "test_accuracy", "n")
    worst = results.worst_case()
    if len(worst):
        w = worst[worst["quantity"] == "classifier"]
        for eps, g in w.groupby("eps", sort=True):
            yield from _quantity(
                f"robust accuracy @ {eps:g} (worst case)",
                "%",
                "attacked test examples, robust to every white-box attack at that eps",
                g,
                "robust_accuracy",
                "n",
            )
    m = results.shared_metrics()
    if len(m):
        tr = m[(m["metric"] == "transfer_rate") & (m["source"] != m["target"])]
        denom = (
            "examples the target classifies correctly when clean; mean over other models, attacks and eps; "
            "Δ over the same third models on both sides"
        )
        for name, side in TRANSFER_QUANTITIES.items():
            yield from _quantity(name, "%", denom, tr.rename(columns={side: "model"}), "value", "denominator")
    dk = results.dknn
    if len(dk) and {"kind", "metric", "value"} <= set(dk.columns):
        adv, ood = white_box(dk), dk[dk["kind"] == "ood"]
        for what, rows, denom in (
            ("adversarial", adv, "clean test inputs vs white-box adversarial inputs that fooled the classifier"),
            ("OOD", ood, "clean test inputs vs every input of each OOD set; mean over the sets"),
        ):
            for score in DETECTION_SCORES:
                sel = rows[rows["metric"] == f"{score}_auroc"]
                yield from _quantity(f"{what} detection AUROC ({score})", "auroc", denom, sel, "value", "n")


def matched_transfer_differences(metrics: pd.DataFrame, model: str, reference: str, side: str) -> pd.Series:
    """Per seed, ``model``'s transfer minus ``reference``'s over the same third models (indexed by seed).

    ``side`` is ``"target"`` (transfer *into* the model: from each third model into ``model`` minus from the same
    model, attack and eps into ``reference``) or ``"source"`` (transfer *out of* it, to each third model). Each
    seed's value is the mean of the matched differences; a seed without a third model has none. ``metrics`` is the
    same-seed transfer table (:meth:`~advbench.analysis.results.Results.shared_metrics`).
    """
    other = "source" if side == "target" else "target"
    tr = metrics[(metrics["metric"] == "transfer_rate") & (metrics["source"] != metrics["target"])]
    third = tr[~tr[other].isin([model, reference])]
    keys = [c for c in (other, "attack", "norm", "eps", "seed") if c in third.columns]
    mine = third[third[side] == model][[*keys, "value"]]
    theirs = third[third[side] == reference][[*keys, "value"]]
    matched = mine.merge(theirs, on=keys, suffixes=("", "_reference"))
    if matched.empty:
        return pd.Series(dtype=float, name="diff")
    diff = matched["value"].astype(float) - matched["value_reference"].astype(float)
    return diff.groupby(matched["seed"]).mean().rename("diff")


def model_comparison(results: Any, reference: str, order: list[str] | None = None) -> pd.DataFrame:
    """Columns :data:`COMPARISON_COLUMNS`: per quantity and model, the seed mean [95% CI] and the paired
    difference to ``reference`` [95% CI] with its p-value (NaN for the reference itself).

    Every quantity lies in [0, 1], so its interval is :func:`~.inference.rate_interval`'s logit-scale
    interval (never outside [0, 1], never clipped; the shown mean is its centre), with each seed's
    value counted over the ``n`` examples behind it; ``status`` says "saturated" when every seed is at 0
    or 1. The differences are plain paired t over seeds; a transfer quantity's are matched on the third models
    (:func:`matched_transfer_differences`).
    """
    rows: list[dict[str, Any]] = []
    shared = results.shared_metrics() if hasattr(results, "shared_metrics") else None
    for name, unit, denom, frame in per_seed_quantities(results):
        models = list(dict.fromkeys(frame.index.get_level_values("model")))
        if order:
            models = [m for m in order if m in models] + [m for m in models if m not in order]
        ref = frame["value"].xs(reference, level="model") if reference in models else None
        for model in models:
            f = frame.xs(model, level="model")
            v = f["value"]
            n = f["n"].where(f["n"] > 0, 1000.0).fillna(1000.0).to_numpy(float)  # no count: a neutral 1,000
            r = _inf.rate_interval(v.to_numpy(float) * n, n)
            t = None
            if model != reference and ref is not None:
                if name in TRANSFER_QUANTITIES and shared is not None:
                    d = matched_transfer_differences(shared, model, reference, TRANSFER_QUANTITIES[name])
                else:
                    d = (v - ref).dropna()
                t = _inf.paired_t(d.to_numpy(float)) if len(d) else None
            rows.append(
                {
                    "quantity": name,
                    "unit": unit,
                    "model": model,
                    "n_seeds": int(v.size),
                    "mean": r.estimate,
                    "ci_low": r.low,
                    "ci_high": r.high,
                    "status": r.status,
                    "diff": t.estimate if t else np.nan,
                    "diff_low": t.low if t else np.nan,
                    "diff_high": t.high if t else np.nan,
                    "p": t.p if t else np.nan,
                    "denominator": denom,
                }
            )
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
