"""Calibration and detection metrics of DkNN credibility: pure functions over numpy arrays.

Conventions (used everywhere below):

* **Bins** are ``n_bins`` equal-width intervals of [0, 1], closed on the right: bin ``b`` holds the
  scores in ``(b / n_bins, (b + 1) / n_bins]`` and the first bin also holds 0. The edges are
  ``numpy.linspace(0, 1, n_bins + 1)``.
* **Expected calibration error** (Guo et al. 2017) ``ECE = sum_b (n_b / N) |accuracy_b - mean score_b|``
  over the non-empty bins.
* **Detection** (:func:`detection_scores`): the *positive class is the clean / in-distribution input*
  and the score is the credibility (higher = more likely clean). ``auroc`` is the probability that a
  random clean input gets a higher credibility than a random adversarial / out-of-distribution one
  (ties count one half); it is symmetric, so it equals the AUROC of detecting the attack with
  ``-credibility``. ``aupr`` is the average precision with clean as positive ("AUPR-In");
  ``aupr_out`` is the average precision with the adversarial / OOD input as positive and
  ``-credibility`` as its score ("AUPR-Out"). 0.5 AUROC = no separation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "calibration_records",
    "detection_scores",
    "expected_calibration_error",
    "reliability_bins",
    "reliability_records",
]


def _scores(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct)
    if conf.ndim != 1 or corr.shape != conf.shape:
        raise ValueError(
            f"expected 1-d confidence and correct of equal length, got shapes {conf.shape} and {corr.shape}"
        )
    if corr.dtype != np.bool_:
        if corr.size and not np.isin(corr, (0, 1)).all():
            raise ValueError("expected correct as booleans (or 0/1), got other values")
        corr = corr.astype(bool)
    if conf.size and (not np.isfinite(conf).all() or conf.min() < 0.0 or conf.max() > 1.0):
        raise ValueError(f"expected confidence scores in [0, 1], got values in [{conf.min()}, {conf.max()}]")
    return conf, corr


def _bin_index(conf: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"expected n_bins an integer >= 1, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    return edges, idx


def reliability_bins(confidence: Any, correct: Any, *, n_bins: int = 10) -> pd.DataFrame:
    """The reliability diagram as a table: one row per bin (empty bins included).

    Columns: ``bin`` (0-based), ``lower``, ``upper`` (edges; the bin is ``(lower, upper]``, the first
    also holds 0), ``count``, ``mean_confidence`` and ``accuracy`` (NaN for empty bins).
    """
    conf, corr = _scores(confidence, correct)
    edges, idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(idx, weights=corr.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        acc = np.where(count > 0, hit_sum / np.maximum(count, 1), np.nan)
    return pd.DataFrame(
        {
            "bin": np.arange(n_bins, dtype=np.int64),
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count.astype(np.int64),
            "mean_confidence": mean_conf,
            "accuracy": acc,
        }
    )


def expected_calibration_error(confidence: Any, correct: Any, *, n_bins: int = 10) -> float:
    """``sum_b (n_b / N) |accuracy_b - mean confidence_b|`` over equal-width, right-closed bins.

    ``confidence``: scores in [0, 1] (the DkNN credibility); ``correct``: whether each prediction
    was right. NaN for empty input.
    """
    bins = reliability_bins(confidence, correct, n_bins=n_bins)
    n = int(bins["count"].sum())
    if n == 0:
        return float("nan")
    full = bins[bins["count"] > 0]
    return float(np.sum(full["count"] / n * np.abs(full["accuracy"] - full["mean_confidence"])))


def detection_scores(scores_in: Any, scores_out: Any) -> dict[str, float]:
    """AUROC and AUPR of a score (credibility) separating clean inputs from the others.

    Positive class: ``scores_in`` (clean / in-distribution), higher score = more likely positive.
    ``scores_out``: the adversarial or out-of-distribution inputs. Returns ``auroc``, ``aupr`` (average
    precision, clean positive) and ``aupr_out`` (average precision, the other set positive with the
    negated score). NaN if either set is empty.
    """
    s_in = np.asarray(scores_in, dtype=np.float64).ravel()
    s_out = np.asarray(scores_out, dtype=np.float64).ravel()
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("expected finite scores; got NaN or infinity")
    if s_in.size == 0 or s_out.size == 0:
        nan = float("nan")
        return {"auroc": nan, "aupr": nan, "aupr_out": nan}
    y = np.concatenate([np.ones(s_in.size, dtype=np.int64), np.zeros(s_out.size, dtype=np.int64)])
    s = np.concatenate([s_in, s_out])
    return {
        "auroc": float(roc_auc_score(y, s)),
        "aupr": float(average_precision_score(y, s)),
        "aupr_out": float(average_precision_score(1 - y, -s)),
    }


def calibration_records(
    *,
    model: str,
    seed: int,
    input_set: str,
    prediction: Any,
    credibility: Any,
    labels: Any | None,
    clean_credibility: Any | None = None,
    n_bins: int = 10,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Tidy rows ``(model, seed, input_set, metric, value, n)`` for one model and one input set.

    Metrics:

    * ``dknn_accuracy`` -- fraction of DkNN predictions equal to ``labels`` (omitted when ``labels``
      is None: out-of-distribution inputs have no true class);
    * ``mean_credibility``;
    * ``ece_credibility`` -- :func:`expected_calibration_error` of the credibility against
      correctness; with ``labels=None`` every prediction counts as wrong, so the ideal credibility is 0;
    * ``auroc_clean_vs_set``, ``aupr_clean_vs_set``, ``aupr_out_clean_vs_set`` -- :func:`detection_scores`
      with ``clean_credibility`` (the same model's credibility on the clean test set) as the positive
      class, when it is given. ``n`` counts this set's examples; the clean set's size is in the
      ``n_clean`` column of those rows.

    ``extra`` columns (e.g. ``source``, ``attack``, ``eps``) are copied into every row.
    """
    pred = np.asarray(prediction)
    cred = np.asarray(credibility, dtype=np.float64)
    if pred.shape != cred.shape or pred.ndim != 1:
        raise ValueError(f"expected 1-d prediction and credibility of equal length, got {pred.shape} and {cred.shape}")
    n = int(cred.size)
    if labels is not None:
        y = np.asarray(labels)
        if y.shape != pred.shape:
            raise ValueError(f"expected {n} labels, got shape {y.shape}")
        correct = pred == y
    else:
        correct = np.zeros(n, dtype=bool)
    base = {"model": model, "seed": int(seed), "input_set": input_set, **(extra or {})}
    rows: list[dict[str, Any]] = []

    def add(metric: str, value: float, **more: Any) -> None:
        rows.append({**base, "metric": metric, "value": float(value), "n": n, **more})

    if labels is not None:
        add("dknn_accuracy", float(np.mean(correct)) if n else float("nan"))
    add("mean_credibility", float(np.mean(cred)) if n else float("nan"))
    add("ece_credibility", expected_calibration_error(cred, correct, n_bins=n_bins))
    if clean_credibility is not None:
        clean = np.asarray(clean_credibility, dtype=np.float64).ravel()
        det = detection_scores(clean, cred)
        for key in ("auroc", "aupr", "aupr_out"):
            add(f"{key}_clean_vs_set", det[key], n_clean=int(clean.size))
    return rows


def reliability_records(
    *,
    model: str,
    seed: int,
    input_set: str,
    credibility: Any,
    correct: Any,
    n_bins: int = 10,
    extra: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """:func:`reliability_bins` with identifying columns, for stacking across models, seeds and sets."""
    bins = reliability_bins(credibility, correct, n_bins=n_bins)
    ident: dict[str, Any] = {"model": model, "seed": int(seed), "input_set": input_set, **(extra or {})}
    for i, (key, value) in enumerate(ident.items()):
        bins.insert(i, key, value)
    return bins
