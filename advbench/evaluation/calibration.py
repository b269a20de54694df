"""Conformal, detection and calibration metrics of the DkNN and the softmax: pure functions over numpy/pandas.

What each number means:

* **DkNN credibility is a conformal p-value, not a probability.** It is judged by *validity* (the
  fraction of clean test points whose true-label p-value is below ``eps`` should be at most ``eps``:
  :func:`conformal_validity`) and *efficiency* (the size of the prediction set ``{j : p_j > eps}``:
  :func:`prediction_set_stats`). Reliability bins of the credibility are kept as descriptive data
  only (:func:`reliability_records` with ``score="credibility"``); no calibration error is computed
  for it.
* **Calibration error** (ECE, reliability diagram) is computed for the maximum softmax probability
  (MSP, Hendrycks & Gimpel 2017), which is a probability.
* **Detection** of adversarial inputs uses only the attacks that succeeded (``fooled``); the
  all-examples AUROC is labelled ``*_auroc_all_examples``. Credibility and MSP are scored on the same
  sets so the report can say which separates better.

Conventions (used everywhere below):

* **Bins** are ``n_bins`` equal-width intervals of [0, 1], closed on the right: bin ``b`` holds the
  scores in ``(b / n_bins, (b + 1) / n_bins]`` and the first bin also holds 0. The edges are
  ``numpy.linspace(0, 1, n_bins + 1)``. The default is 15 bins (Guo et al. 2017).
* **Expected calibration error** (Guo et al. 2017) ``ECE = sum_b (n_b / N) |accuracy_b - mean score_b|``
  over the non-empty bins.
* **Detection**: the *positive class of the AUROC is the clean / in-distribution input* and the score
  is higher = more likely clean (credibility, MSP). ``auroc`` is the probability that a random clean
  input scores higher than a random adversarial / out-of-distribution one (ties count one half); it
  is symmetric, so it equals the AUROC of detecting the attack with the negated score. ``aupr_in``
  is the average precision with clean as positive; ``aupr_out`` the average precision with the
  adversarial / OOD input as positive and the negated score (the usual "detect the attack" AUPR).
  ``tpr_at_5fpr`` is the fraction of adversarial / OOD inputs flagged at the threshold that flags at
  most 5% of the clean inputs (largest such TPR on the empirical ROC curve, no interpolation).
  ``auroc_se`` is DeLong's (1988) standard error, computed from the data (midranks, so ties are
  handled); :func:`auroc_standard_error` is Hanley & McNeil's (1982) formula from the AUROC and the
  two sample sizes, used for planning (:func:`examples_for_auroc_se`). 0.5 AUROC = no separation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "EPS_LEVELS",
    "MSP_BINS",
    "auroc_standard_error",
    "calibration_records",
    "conformal_validity",
    "delong_se",
    "detection_metrics",
    "detection_scores",
    "dknn_set_records",
    "examples_for_auroc_se",
    "expected_calibration_error",
    "prediction_set_stats",
    "reliability_bins",
    "reliability_records",
    "tpr_at_fpr",
]

#: significance levels of the conformal metrics
EPS_LEVELS: tuple[float, ...] = (0.05, 0.1, 0.2)
#: equal-width bins of the MSP's ECE and reliability diagram (Guo et al. 2017)
MSP_BINS = 15


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


def reliability_bins(confidence: Any, correct: Any, *, n_bins: int = MSP_BINS) -> pd.DataFrame:
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


def expected_calibration_error(confidence: Any, correct: Any, *, n_bins: int = MSP_BINS) -> float:
    """``sum_b (n_b / N) |accuracy_b - mean confidence_b|`` over equal-width, right-closed bins.

    ``confidence``: probabilities in [0, 1] of the predicted class (the MSP); ``correct``: whether each
    prediction was right. NaN for empty input. Not for the DkNN credibility, which is a p-value.
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


def _two_samples(scores_in: Any, scores_out: Any) -> tuple[np.ndarray, np.ndarray]:
    s_in = np.asarray(scores_in, dtype=np.float64).ravel()
    s_out = np.asarray(scores_out, dtype=np.float64).ravel()
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("expected finite scores; got NaN or infinity")
    return s_in, s_out


def tpr_at_fpr(scores_in: Any, scores_out: Any, *, fpr: float = 0.05) -> float:
    """Fraction of ``scores_out`` flagged (score below the threshold) when at most ``fpr`` of ``scores_in`` are.

    The largest true-positive rate on scikit-learn's empirical ROC curve (the out-set positive,
    negated scores) whose false-positive rate is <= ``fpr``; no interpolation between thresholds, so
    with tied scores it may be lower than a randomised threshold would give. NaN if a set is empty.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"expected fpr in [0, 1], got {fpr!r}")
    s_in, s_out = _two_samples(scores_in, scores_out)
    if s_in.size == 0 or s_out.size == 0:
        return float("nan")
    y = np.concatenate([np.zeros(s_in.size, dtype=np.int64), np.ones(s_out.size, dtype=np.int64)])
    f, t, _ = roc_curve(y, -np.concatenate([s_in, s_out]), drop_intermediate=False)
    return float(t[f <= fpr + 1e-12].max())


def delong_se(scores_in: Any, scores_out: Any) -> float:
    """DeLong et al. (1988) standard error of the AUROC of ``scores_in`` (positive) vs ``scores_out``.

    From the structural components computed with midranks (Sun & Xu 2014), so ties count one half as
    in the AUROC itself. NaN unless both sets have at least two scores.
    """
    x, y = _two_samples(scores_in, scores_out)
    m, n = x.size, y.size
    if m < 2 or n < 2:
        return float("nan")
    tz = stats.rankdata(np.concatenate([x, y]))
    v10 = (tz[:m] - stats.rankdata(x)) / n  # per positive: fraction of negatives below it
    v01 = 1.0 - (tz[m:] - stats.rankdata(y)) / m  # per negative: fraction of positives above it
    var = np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n
    return float(math.sqrt(max(var, 0.0)))


def auroc_standard_error(auroc: float, n_clean: int, n_out: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUROC from its value and the two sample sizes.

    ``SE^2 = [A(1-A) + (n_out - 1)(Q1 - A^2) + (n_clean - 1)(Q2 - A^2)] / (n_clean n_out)`` with
    ``Q1 = A / (2 - A)``, ``Q2 = 2A^2 / (1 + A)``; ``n_out`` is the "abnormal" (adversarial / OOD)
    group. It assumes exponential-like score distributions; DeLong's (:func:`delong_se`) needs the
    scores. Used to plan sample sizes.
    """
    A = float(auroc)
    if not 0.0 <= A <= 1.0:
        raise ValueError(f"expected an AUROC in [0, 1], got {auroc!r}")
    if n_clean < 1 or n_out < 1:
        raise ValueError(f"expected at least one example per group, got n_clean={n_clean}, n_out={n_out}")
    q1, q2 = A / (2.0 - A), 2.0 * A * A / (1.0 + A)
    var = (A * (1 - A) + (n_out - 1) * (q1 - A * A) + (n_clean - 1) * (q2 - A * A)) / (n_clean * n_out)
    return math.sqrt(max(var, 0.0))


def examples_for_auroc_se(auroc: float, target_se: float, *, out_fraction: float = 1.0) -> int:
    """Smallest number ``n`` of scored examples per set giving a Hanley-McNeil AUROC SE <= ``target_se``.

    ``n`` clean examples are scored and ``out_fraction * n`` of the other set count (for an attack:
    its success rate on the scored examples, as only the fooled inputs enter the detection AUROC).
    """
    if not 0.0 < target_se < 0.5:
        raise ValueError(f"expected target_se in (0, 0.5), got {target_se!r}")
    if not 0.0 < out_fraction <= 1.0:
        raise ValueError(f"expected out_fraction in (0, 1], got {out_fraction!r}")

    def se(n: int) -> float:
        return auroc_standard_error(auroc, n, max(1, math.floor(out_fraction * n)))

    hi = 2
    while se(hi) > target_se:
        hi *= 2
        if hi > 10**9:
            raise ValueError(f"no n up to 1e9 reaches SE {target_se} at AUROC {auroc}")
    lo = hi // 2
    while lo < hi:  # SE decreases with n: bisect for the first n that reaches the target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if se(mid) > target_se else (lo, mid)
    return lo


def detection_metrics(scores_in: Any, scores_out: Any, *, fpr: float = 0.05) -> dict[str, float]:
    """AUROC (with DeLong SE), AUPR in / out and TPR at ``fpr`` of a score separating clean from other inputs.

    Positive class of the AUROC: ``scores_in`` (clean), higher = more likely clean (see the module
    docstring). Keys: ``auroc, auroc_se, aupr_in, aupr_out, tpr_at_<fpr%>fpr, n_clean, n_out``. The
    metrics are NaN (the counts still given) if either set is empty.
    """
    s_in, s_out = _two_samples(scores_in, scores_out)
    key = f"tpr_at_{100 * fpr:g}fpr"
    out: dict[str, float] = {"n_clean": float(s_in.size), "n_out": float(s_out.size)}
    if s_in.size == 0 or s_out.size == 0:
        return {"auroc": math.nan, "auroc_se": math.nan, "aupr_in": math.nan, "aupr_out": math.nan, key: math.nan} | out
    det = detection_scores(s_in, s_out)
    return {
        "auroc": det["auroc"],
        "auroc_se": delong_se(s_in, s_out),
        "aupr_in": det["aupr"],
        "aupr_out": det["aupr_out"],
        key: tpr_at_fpr(s_in, s_out, fpr=fpr),
    } | out


def conformal_validity(
    p_true: Any, *, eps_levels: Sequence[float] = EPS_LEVELS, n_calibration: int | None = None, alpha: float = 0.05
) -> pd.DataFrame:
    """Validity of conformal p-values on exchangeable (clean) test points, one row per ``eps``.

    Columns: ``eps``, ``n``, ``n_below`` (true-label p-value ``< eps``), ``rate``, ``expected``
    (the largest rate validity allows), ``pvalue`` (one-sided: the chance of at least ``n_below`` under
    validity) and ``violated`` (``pvalue < alpha``: the rate exceeds ``eps`` beyond sampling noise).

    With ``n_calibration`` (the DkNN's ``|A|``) the null is exact for the DkNN's p-value
    ``|{a >= alpha}| / |A|``: ``p < eps`` iff fewer than ``m = ceil(eps |A|)`` calibration scores reach
    the test point's, so given the calibration set each test point falls below with probability ``R``,
    ``R ~ Beta(m, |A| + 1 - m)`` (Vovk 2012), and ``n_below`` is beta-binomial -- this accounts for the
    one calibration set all test points share (a binomial test would flag its sampling noise). Ties
    between nonconformities only make the p-values larger (conservative). Without ``n_calibration``
    it is the one-sided binomial test of ``rate <= eps`` (scipy.stats.binomtest).
    """
    p = np.asarray(p_true, dtype=np.float64).ravel()
    if p.size and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
        raise ValueError("expected true-label p-values in [0, 1]; got NaN or values outside")
    rows = []
    for eps in eps_levels:
        if not 0.0 < eps < 1.0:
            raise ValueError(f"expected eps levels in (0, 1), got {eps!r}")
        n, k = int(p.size), int(np.sum(p < eps))
        if n == 0:
            rows.append({"eps": eps, "n": 0, "n_below": 0, "rate": math.nan, "expected": eps, "pvalue": math.nan})
            continue
        if n_calibration is not None:
            if n_calibration < 1:
                raise ValueError(f"expected n_calibration >= 1, got {n_calibration}")
            m = math.ceil(eps * n_calibration - 1e-9)
            a, b = m, n_calibration + 1 - m
            expected = a / (a + b)
            pvalue = float(stats.betabinom.sf(k - 1, n, a, b)) if m > 0 else float(k == 0)
        else:
            expected = eps
            pvalue = float(stats.binomtest(k, n, eps, alternative="greater").pvalue)
        rows.append({"eps": eps, "n": n, "n_below": k, "rate": k / n, "expected": expected, "pvalue": pvalue})
    df = pd.DataFrame(rows, columns=["eps", "n", "n_below", "rate", "expected", "pvalue"])
    df["violated"] = df["pvalue"] < alpha
    return df


def prediction_set_stats(
    p_values: Any, labels: Any | None = None, *, eps_levels: Sequence[float] = EPS_LEVELS
) -> pd.DataFrame:
    """Efficiency of the conformal prediction sets ``{j : p_j > eps}`` (confidence ``1 - eps``), per ``eps``.

    Columns: ``eps``, ``n``, ``mean_set_size``, ``singleton_rate`` (exactly one label), ``empty_rate``
    and, with ``labels``, ``coverage`` (the true label is in the set).
    """
    P = np.asarray(p_values, dtype=np.float64)
    if P.ndim != 2:
        raise ValueError(f"expected (N, C) p-values, got shape {P.shape}")
    y = None if labels is None else np.asarray(labels).astype(np.int64)
    if y is not None and y.shape != (P.shape[0],):
        raise ValueError(f"expected {P.shape[0]} labels, got shape {y.shape}")
    rows = []
    for eps in eps_levels:
        in_set = P > eps
        size = in_set.sum(axis=1)
        row = {
            "eps": eps,
            "n": int(P.shape[0]),
            "mean_set_size": float(size.mean()) if size.size else math.nan,
            "singleton_rate": float(np.mean(size == 1)) if size.size else math.nan,
            "empty_rate": float(np.mean(size == 0)) if size.size else math.nan,
        }
        if y is not None:
            row["coverage"] = float(in_set[np.arange(len(y)), y].mean()) if len(y) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _present(col: pd.Series) -> np.ndarray:
    return col.notna().to_numpy()


def dknn_set_records(
    examples: pd.DataFrame,
    *,
    model: str,
    seed: int,
    input_set: str,
    kind: str,
    clean_examples: pd.DataFrame | None = None,
    n_calibration: int | None = None,
    eps_levels: Sequence[float] = EPS_LEVELS,
    n_bins: int = MSP_BINS,
    fpr: float = 0.05,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Tidy rows ``(model, seed, input_set, kind, metric, value, n[, n_clean])`` for one model and input set.

    ``examples`` is :func:`advbench.evaluation.dknn.example_records` of this set; ``clean_examples``
    the same model's clean test set (for detection; omit for the clean set itself). ``kind`` is
    ``"clean"``, ``"adversarial"`` or ``"ood"`` (shift sets are ``"ood"``). Metrics:

    * accuracy: ``dknn_accuracy``, ``softmax_accuracy`` (labelled sets); ``mean_credibility``, ``mean_msp``;
    * calibration of the softmax: ``msp_ece`` (``n_bins`` equal-width bins; labelled sets);
    * conformal, per ``eps`` in ``eps_levels`` (suffix ``@eps``): ``set_size``, ``singleton_rate``,
      ``empty_rate``; labelled sets also ``p_true_below`` (fraction of true-label p-values below eps);
      the clean set also ``validity_expected``, ``validity_pvalue`` and ``validity_violated`` (1.0 =
      flagged) from :func:`conformal_validity` (beta-binomial when ``n_calibration`` is given);
    * detection, for every set but the clean one, for ``score`` in ``credibility``, ``msp`` and (when
      both sets have the column) ``mahalanobis``:
      ``{score}_auroc``, ``{score}_auroc_se`` (DeLong), ``{score}_aupr_in``, ``{score}_aupr_out``,
      ``{score}_tpr_at_5fpr``: all clean examples vs, for adversarial sets, only those that
      ``fooled`` the classifier (``n`` = their number, ``n_clean`` the clean set's), for OOD sets all
      of them; adversarial sets add ``{score}_auroc_all_examples`` over every adversarial input
      and ``fooled_rate``.

    ``extra`` columns (e.g. ``source``, ``attack``, ``eps``) are copied into every row.
    """
    if kind not in ("clean", "adversarial", "ood"):
        raise ValueError(f"expected kind 'clean', 'adversarial' or 'ood', got {kind!r}")
    if kind == "adversarial" and "fooled" not in examples:
        raise ValueError("an adversarial set needs the 'fooled' column: pass clean_correct to example_records")
    base = {"model": model, "seed": int(seed), "input_set": input_set, "kind": kind, **(extra or {})}
    rows: list[dict[str, Any]] = []
    n = len(examples)

    def add(metric: str, value: Any, count: int = n, **more: Any) -> None:
        rows.append({**base, "metric": metric, "value": float(value), "n": int(count), **more})

    labelled = _present(examples["label"]) if n else np.zeros(0, dtype=bool)
    has_labels = bool(n) and bool(labelled.all())
    if has_labels:
        add("dknn_accuracy", examples["correct"].astype(bool).mean())
        add("softmax_accuracy", examples["softmax_correct"].astype(bool).mean())
    add("mean_credibility", examples["credibility"].mean() if n else math.nan)
    add("mean_msp", examples["msp"].mean() if n else math.nan)
    if has_labels:
        add(
            "msp_ece",
            expected_calibration_error(examples["msp"], examples["softmax_correct"].astype(bool), n_bins=n_bins),
        )
    p_cols = sorted(
        (str(c) for c in examples if str(c).startswith("p_") and str(c)[2:].isdigit()), key=lambda c: int(c[2:])
    )
    sets = prediction_set_stats(examples[p_cols].to_numpy(), eps_levels=eps_levels)
    for r in sets.to_dict("records"):
        add(f"set_size@{r['eps']:g}", r["mean_set_size"])
        add(f"singleton_rate@{r['eps']:g}", r["singleton_rate"])
        add(f"empty_rate@{r['eps']:g}", r["empty_rate"])
    if has_labels:
        val = conformal_validity(examples["p_true"], eps_levels=eps_levels, n_calibration=n_calibration)
        for r in val.to_dict("records"):
            add(f"p_true_below@{r['eps']:g}", r["rate"])
            if kind == "clean":
                add(f"validity_expected@{r['eps']:g}", r["expected"])
                add(f"validity_pvalue@{r['eps']:g}", r["pvalue"])
                add(f"validity_violated@{r['eps']:g}", float(r["violated"]))
    if kind != "clean" and clean_examples is not None:
        chosen = examples
        if kind == "adversarial":
            fooled = examples["fooled"].astype(bool).to_numpy()
            add("fooled_rate", fooled.mean() if n else math.nan)
            chosen = examples[fooled]
        scores = ["credibility", "msp"]
        if "mahalanobis" in examples and "mahalanobis" in clean_examples:
            scores.append("mahalanobis")
        for score in scores:
            det = detection_metrics(clean_examples[score], chosen[score], fpr=fpr)
            n_clean, n_out = int(det.pop("n_clean")), int(det.pop("n_out"))
            for key, value in det.items():
                add(f"{score}_{key}", value, n_out, n_clean=n_clean)
            if kind == "adversarial":
                add(
                    f"{score}_auroc_all_examples",
                    detection_scores(clean_examples[score], examples[score])["auroc"],
                    n_clean=n_clean,
                )
    return rows


def calibration_records(
    *,
    model: str,
    seed: int,
    input_set: str,
    prediction: Any,
    credibility: Any,
    labels: Any | None,
    clean_credibility: Any | None = None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Credibility-only rows ``(model, seed, input_set, metric, value, n)``, for callers without the softmax.

    Prefer :func:`dknn_set_records`, which adds the conformal metrics, the softmax baseline and
    detection on successful attacks only. Metrics: ``dknn_accuracy`` (labelled sets),
    ``mean_credibility`` and, when ``clean_credibility`` is given, ``credibility_auroc_all_examples``
    with its DeLong SE ``credibility_auroc_all_examples_se`` (clean vs *every* input of this set,
    failed attacks included; ``n_clean`` column). No calibration error: credibility is a p-value.
    """
    pred = np.asarray(prediction)
    cred = np.asarray(credibility, dtype=np.float64)
    if pred.shape != cred.shape or pred.ndim != 1:
        raise ValueError(f"expected 1-d prediction and credibility of equal length, got {pred.shape} and {cred.shape}")
    n = int(cred.size)
    base = {"model": model, "seed": int(seed), "input_set": input_set, **(extra or {})}
    rows: list[dict[str, Any]] = []

    def add(metric: str, value: float, **more: Any) -> None:
        rows.append({**base, "metric": metric, "value": float(value), "n": n, **more})

    if labels is not None:
        y = np.asarray(labels)
        if y.shape != pred.shape:
            raise ValueError(f"expected {n} labels, got shape {y.shape}")
        add("dknn_accuracy", float(np.mean(pred == y)) if n else float("nan"))
    add("mean_credibility", float(np.mean(cred)) if n else float("nan"))
    if clean_credibility is not None:
        clean = np.asarray(clean_credibility, dtype=np.float64).ravel()
        add("credibility_auroc_all_examples", detection_scores(clean, cred)["auroc"], n_clean=int(clean.size))
        add("credibility_auroc_all_examples_se", delong_se(clean, cred), n_clean=int(clean.size))
    return rows


def reliability_records(
    *,
    model: str,
    seed: int,
    input_set: str,
    scores: Any,
    correct: Any,
    score: str = "msp",
    n_bins: int = MSP_BINS,
    extra: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """:func:`reliability_bins` with identifying columns and a ``score`` column, for stacking.

    ``score="msp"`` is the softmax's reliability diagram (its ECE is :func:`expected_calibration_error`).
    ``score="credibility"`` gives the same bins for the DkNN credibility as *descriptive* data (accuracy
    per credibility bin, a histogram via ``count``): a p-value is not a probability of being right, so
    its gap to the diagonal is not a calibration error.
    """
    bins = reliability_bins(scores, correct, n_bins=n_bins)
    ident: dict[str, Any] = {"model": model, "seed": int(seed), "input_set": input_set, **(extra or {}), "score": score}
    for i, (key, value) in enumerate(ident.items()):
        bins.insert(i, key, value)
    return bins
